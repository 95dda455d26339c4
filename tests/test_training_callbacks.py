"""Training from parts and callbacks: a variant is a new part, extra callbacks see every epoch, the stage
entry point resolves and records the configuration, and importing the package stays cheap."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_train_config

from autoseg.training import (
    Callback,
    TrainingRun,
    default_parts,
    fold_batches,
    run_train,
    train_fold,
)
from autoseg.training.loss import DeepSupervisionLoss
from autoseg.workdir import Workdir


class PlainCrossEntropy(torch.nn.Module):
    """A variant's loss: cross-entropy alone."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)


class StepLosses(Callback):
    """Records every training iteration's loss and the epochs it saw end."""

    def __init__(self) -> None:
        self.losses: list[list[float]] = []
        self.ended: list[int] = []

    def on_epoch_start(self, run: TrainingRun) -> None:
        self.losses.append([])

    def on_step(self, run: TrainingRun) -> None:
        self.losses[-1].append(run.step_loss)

    def on_epoch_end(self, run: TrainingRun) -> None:
        self.ended.append(run.records[-1]["epoch"])


def test_a_different_loss_is_a_new_part(prepared: Path) -> None:
    workdir = Workdir(prepared)
    plans = workdir.read_plans()
    config = tiny_train_config(configuration="3d_fullres")
    plan = plans.configuration("3d_fullres")
    parts = default_parts(
        plan,
        config,
        num_channels=len(plans.channel_names),
        num_classes=len(plans.labels),
        batches=fold_batches(workdir, plan, config),
    )
    variant = replace(parts, loss=DeepSupervisionLoss(PlainCrossEntropy()))
    steps = StepLosses()
    result = train_fold(prepared, config, show_progress=False, parts=variant, callbacks=[steps])
    assert result.network is variant.network and result.summary is not None
    run = workdir.run("3d_fullres", "all")
    records = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    assert steps.ended == [0, 1] == [r["epoch"] for r in records]
    for record, losses in zip(records, steps.losses, strict=True):
        assert len(losses) == 2 and record["train_loss"] == pytest.approx(float(np.mean(losses)))
    assert "loss DeepSupervisionLoss(PlainCrossEntropy)" in run.text_log_path.read_text()
    assert run.checkpoint("final").is_file()


def test_run_train_resolves_and_records_the_default_configuration(prepared: Path) -> None:
    summary = run_train(prepared, tiny_train_config(epochs=1), show_progress=False)
    run = Workdir(prepared).run("3d_fullres", "all")
    assert summary == run.read_validation_summary()
    assert json.loads(run.train_config_path.read_text())["configuration"] == "3d_fullres"
    assert "loss DeepSupervisionLoss(DiceCELoss)" in run.text_log_path.read_text()


def test_importing_training_does_not_import_torch() -> None:
    code = "import sys, autoseg.training as t; assert 'torch' not in sys.modules; t.TrainConfig; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_resumed_training_log_starts_on_a_fresh_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """training.log whose last line a kill -9 (or a full disk) cut: the resumed run's first record starts
    on a line of its own, with its time stamp; every record is one whole line."""
    from types import SimpleNamespace

    from autoseg.training.callbacks import TextLog
    from autoseg.workdir import RunFolder

    folder = RunFolder(tmp_path / "fold_0")
    folder.path.mkdir()
    folder.text_log_path.write_text(
        "2026-01-01 10:00:00,000 INFO    epoch 0: train loss 1.93\n2026-01-01 10:0"
    )
    text_log = TextLog()
    run = SimpleNamespace(folder=folder)
    caplog.set_level(logging.INFO, logger="autoseg")
    text_log.on_train_start(run)  # type: ignore[arg-type]
    try:
        logging.getLogger("autoseg.training.loop").info("resuming at epoch %d of %d", 1, 4)
        logging.getLogger("autoseg.training.loop").info("second line")
    finally:
        text_log.on_close(run)  # type: ignore[arg-type]
    lines = folder.text_log_path.read_text().split("\n")
    assert lines[:2] == ["2026-01-01 10:00:00,000 INFO    epoch 0: train loss 1.93", "2026-01-01 10:0"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    resuming at epoch 1 of 4", lines[2])
    assert lines[3].endswith("INFO    second line") and lines[4:] == [""]
    text_log.on_train_start(run)  # type: ignore[arg-type]
    # a complete file: no blank line added
    text_log.on_close(run)  # type: ignore[arg-type]
    assert folder.text_log_path.read_text().split("\n") == lines


KILLED_WRITER = """
import logging, sys
from pathlib import Path
from autoseg.training.callbacks import LineAppender
handler = LineAppender(Path(sys.argv[1]))
handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
logger = logging.getLogger("writer")
logger.addHandler(handler)
logger.setLevel(logging.INFO)
print("ready", flush=True)
for index in range(10**7):
    logger.info("record %d %s end", index, "x" * (index % 3000))
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_minus_9_while_logging_leaves_whole_lines(tmp_path: Path, seed: int) -> None:
    """A process killed (SIGKILL) while it logs as fast as it can, records of up to 3 KiB: every line in
    training.log is a whole record (the last one included); a logging.FileHandler's buffered stream could
    leave half a record."""
    import signal
    import time

    log = tmp_path / "training.log"
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(log)], stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(np.random.default_rng(seed).uniform(0.05, 0.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    text = log.read_text()
    assert text.endswith("\n") and text.count("\n") > 10
    for line in text.splitlines():
        assert re.fullmatch(r"\S+ \S+ record (\d+) x* end", line), line[:80]
