"""What happens around the training loop, as callbacks: the text log, the progress bar, the epoch's log line,
the time limit, ``log.jsonl``, the checkpoints and ``progress.png`` (validation is in
:mod:`autoseg.training.validation`). A callback subclasses :class:`Callback` and overrides the hooks it needs.

Per epoch the loop calls ``on_epoch_start``, ``on_step`` after every training iteration, ``on_validation``
once the iterations are done (callbacks add their measurements to ``run.record``), then completes the record
(``lr``, ``epoch_seconds``), appends it to ``run.records``, counts the epoch in ``run.state`` and calls
``on_epoch_end``. ``on_train_end`` follows the last epoch; ``on_close`` always runs, also after a failure.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from autoseg.training.checkpoint import save_checkpoint, training_checkpoint
from autoseg.training.config import RunState, TrainConfig
from autoseg.training.distributed import Rank, first_rank_value
from autoseg.training.parts import TrainingParts
from autoseg.training.progress import plot_progress, write_log
from autoseg.workdir import RunFolder

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """One fold's training as the callbacks see it; they may read everything and change ``state``,
    ``record`` and ``summary``."""

    config: TrainConfig
    parts: TrainingParts
    state: RunState
    folder: RunFolder
    iterations: int
    """Training iterations per epoch."""
    validation_iterations: int
    """Validation batches per epoch."""
    rank: Rank = field(default_factory=Rank)
    records: list[dict[str, Any]] = field(default_factory=list)
    """``log.jsonl``: one record per finished epoch."""
    record: dict[str, Any] = field(default_factory=dict)
    """The current epoch's record while it is made."""
    step_loss: float = math.nan
    """The loss of the latest training iteration."""
    summary: dict[str, Any] | None = None
    """The final validation's summary, once made."""
    started: float = 0.0
    """``time.monotonic()`` when the run would have started had it never stopped (resumes count their
    earlier time)."""

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)


class Callback(Protocol):
    """Hooks around the training loop; every hook does nothing unless overridden."""

    def on_train_start(self, run: TrainingRun) -> None:
        """Before anything is restored or trained."""
        return None

    def on_epoch_start(self, run: TrainingRun) -> None:
        """The learning rate is set; the iterations follow."""
        return None

    def on_step(self, run: TrainingRun) -> None:
        """After one training iteration (``run.step_loss``)."""
        return None

    def on_validation(self, run: TrainingRun) -> None:
        """After the iterations: add measurements to ``run.record``."""
        return None

    def on_epoch_end(self, run: TrainingRun) -> None:
        """The epoch is complete: ``run.records[-1]``, ``run.state.epoch`` counts it."""
        return None

    def on_train_end(self, run: TrainingRun) -> None:
        """After the last epoch."""
        return None

    def on_close(self, run: TrainingRun) -> None:
        """Always, last, also when training failed: release what the callback holds."""
        return None


class TextLog(Callback):
    """``training.log``: autoseg's log messages of the run, with time stamps."""

    def __init__(self) -> None:
        self.handler: logging.Handler | None = None

    def on_train_start(self, run: TrainingRun) -> None:
        self.handler = LineAppender(run.folder.text_log_path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        self.handler.setLevel(logging.INFO)
        logging.getLogger("autoseg").addHandler(self.handler)

    def on_close(self, run: TrainingRun) -> None:
        if self.handler is not None:
            logging.getLogger("autoseg").removeHandler(self.handler)
            self.handler.close()
            self.handler = None


class LineAppender(logging.Handler):
    """Appends each log record to a file as whole lines, with one ``os.write`` on an ``O_APPEND`` descriptor
    (no buffer: a ``kill -9`` between records leaves every line complete; the kernel does not cut a write of
    a few KiB to a local file: ``test_kill_minus_9_while_logging_leaves_whole_lines``). A file that ends
    inside a line (cut by an older autoseg, a full disk, or a crash of the machine) is continued on a fresh
    line, so a resumed run's first line starts with its time stamp."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.descriptor: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if _ends_inside_a_line(path):
            self._write(b"\n")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # logging's contract: a failing handler reports through handleError, never raises
            self.handleError(record)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.descriptor is not None:
            view = view[os.write(self.descriptor, view) :]

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None
        super().close()


def _ends_inside_a_line(path: Path) -> bool:
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return False
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


class ProgressBar(Callback):
    """A tqdm bar over each epoch's training iterations."""

    def __init__(self) -> None:
        self.bar: tqdm[Any] | None = None

    def on_epoch_start(self, run: TrainingRun) -> None:
        self.bar = tqdm(
            total=run.iterations, desc=f"epoch {run.state.epoch + 1}/{run.state.epochs}", leave=False
        )

    def on_step(self, run: TrainingRun) -> None:
        if self.bar is not None:
            self.bar.update()

    def on_validation(self, run: TrainingRun) -> None:
        self.on_close(run)

    def on_close(self, run: TrainingRun) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLog(Callback):
    """One log line per epoch: losses, pseudo-Dice and its moving average, learning rate, duration."""

    def on_epoch_end(self, run: TrainingRun) -> None:
        record = run.records[-1]
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, pseudo-Dice %s (moving average %.4f), lr %.2e, %.1f s",
            record["epoch"],
            record["train_loss"],
            record["val_loss"],
            [round(d, 4) if d is not None else math.nan for d in record["pseudo_dice"]],
            record["ema_pseudo_dice"],
            record["lr"],
            record["epoch_seconds"],
        )


class TimeLimit(Callback):
    """Fit the schedule into ``time_limit_s`` (see :func:`apply_time_limit`), never beyond ``planned``."""

    def __init__(self, time_limit_s: float, planned: int) -> None:
        self.time_limit_s = time_limit_s
        self.planned = planned

    def on_epoch_end(self, run: TrainingRun) -> None:
        apply_time_limit(run.state, run.records, time_limit_s=self.time_limit_s, planned=self.planned)
        run.state.epochs = first_rank_value(run.state.epochs)  # every rank stops at rank 0's epoch


def apply_time_limit(
    state: RunState, records: list[dict[str, Any]], *, time_limit_s: float | None, planned: int
) -> None:
    """Fit the schedule into ``time_limit_s``: as many epochs as the recent epoch time allows, never more than
    ``planned``. Re-evaluated every epoch, so a slow spell (a busy machine) does not shorten the run for good;
    the learning rate follows the new length."""
    if time_limit_s is None or not records:
        return
    per_epoch = float(np.median([r["epoch_seconds"] for r in records[-5:]]))
    fit = state.epoch + int(max(0.0, time_limit_s - state.seconds) // per_epoch)
    epochs = max(state.epoch, min(planned, fit))
    if epochs != state.epochs:
        logger.info("time limit: %d epochs instead of %d (%.1f s per epoch)", epochs, state.epochs, per_epoch)
        state.epochs = epochs


class JsonLog(Callback):
    """``log.jsonl``, rewritten after every epoch (before the checkpoint: a checkpoint never points past its
    log)."""

    def on_epoch_end(self, run: TrainingRun) -> None:
        write_log(run.records, run.folder.log_path)


class Checkpoints(Callback):
    """``checkpoint_best.pt`` when the moving-average pseudo-Dice improves, ``checkpoint_latest.pt`` every
    epoch, ``checkpoint_final.pt`` at the end."""

    def on_epoch_end(self, run: TrainingRun) -> None:
        state = run.state
        checkpoint = training_checkpoint(run.parts, state)
        ema = state.ema_pseudo_dice
        if ema is not None and (state.best_ema is None or ema > state.best_ema):
            state.best_ema = ema
            checkpoint["state"] = asdict(state)
            save_checkpoint(checkpoint, run.folder.checkpoint("best"))
        save_checkpoint(checkpoint, run.folder.checkpoint("latest"))

    def on_train_end(self, run: TrainingRun) -> None:
        save_checkpoint(training_checkpoint(run.parts, run.state), run.folder.checkpoint("final"))


class ProgressPlot(Callback):
    """``progress.png``: losses, pseudo-Dice, learning rate and epoch time so far."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = class_names

    def on_epoch_end(self, run: TrainingRun) -> None:
        plot_progress(run.records, self.class_names, run.folder.progress_plot_path)
