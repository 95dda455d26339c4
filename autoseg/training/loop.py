"""``autoseg train FOLD``: train one fold of a planned configuration, resumably, then validate it.

SGD with Nesterov momentum 0.99, learning rate 1e-2 decayed per epoch as ``(1 - epoch / epochs) ** 0.9``,
weight decay 3e-5, gradient norm clipped at 12, mixed precision where it pays (bfloat16 autocast on a CPU
with native bfloat16, float16 with loss scaling on CUDA; weights, optimiser and loss float32:
:func:`~autoseg.training.parts.resolve_training_precision`; the parts: :mod:`.parts`). Every
epoch: training loss, validation loss and pseudo-Dice per class on validation patches (and its moving
average), ``log.jsonl``, ``training.log``, ``progress.png``, and the ``latest`` checkpoint; ``best`` follows
the moving-average pseudo-Dice; ``final`` closes the run, followed by a sliding-window prediction of the
fold's validation cases (``validation/summary.json``). All of these are callbacks (:mod:`.callbacks`,
:mod:`.validation`); :func:`train_fold` takes other parts and more callbacks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from autoseg.errors import UsageError
from autoseg.io import write_json
from autoseg.plans import ConfigurationPlan, Plans
from autoseg.training.callbacks import (
    Callback,
    Checkpoints,
    EpochLog,
    JsonLog,
    ProgressBar,
    ProgressPlot,
    TextLog,
    TimeLimit,
    TrainingRun,
)
from autoseg.training.cascade import PreviousStage, prepare_previous_stage, previous_stage_of
from autoseg.training.checkpoint import restore_training, run_random_state
from autoseg.training.config import (
    RunState,
    TrainConfig,
    learning_rate,
    most_epochs,
    resolve_configuration,
    resolve_time_limit,
)
from autoseg.training.data import loss_extras
from autoseg.training.distributed import Rank, barrier, init_from_environment, unwrap
from autoseg.training.parts import (
    Batch,
    TrainingParts,
    as_float32,
    autocast_dtype,
    default_parts,
    describe_parts,
    fold_batches,
    resolve_training_precision,
)
from autoseg.training.progress import read_log
from autoseg.training.validation import FinalValidation, PatchValidation
from autoseg.workdir import RunFolder, Workdir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldResult:
    """What a fold's training leaves: its folder, the validation summary (rank 0 only) and the network."""

    run_dir: Path
    summary: dict[str, Any] | None
    network: nn.Module


def train_fold(
    workdir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    show_progress: bool = True,
    parts: TrainingParts | None = None,
    callbacks: Sequence[Callback] = (),
) -> FoldResult:
    """Train (or resume) one fold and validate it. Inside a process group (``--num-gpus`` or torchrun) every
    rank trains its share of the batch and rank 0 writes.

    Args:
        parts: what to train with, by default :func:`~autoseg.training.parts.default_parts` with the fold's
            :func:`~autoseg.training.parts.fold_batches` (the final validation uses the cases of
            ``parts.batches.validation``).
        callbacks: called after the default ones (see :func:`default_callbacks`).

    Raises:
        UsageError: the run exists and ``resume`` is not set, or the fold does not exist.
        WorkdirError: the configuration is not preprocessed.
    """
    work = Workdir(workdir)
    plans = work.read_plans()
    config = resolve_configuration(config, work, list(plans.configurations))
    precision = resolve_training_precision(
        config.precision, torch.device(config.device), deterministic=config.deterministic
    )
    config = replace(config, precision=precision)
    limited = resolve_time_limit(config, plans.planner_options.get("time_budget_s"))
    if limited.time_limit_s is not None and config.time_limit_s is None:
        logger.info(
            "time limit %.0f min: the plan's time budget (--epochs or --time-limit to change it)",
            limited.time_limit_s / 60,
        )
    config = limited
    plan = plans.configuration(config.configuration_name)
    if config.validation_iterations is None:
        config = replace(config, validation_iterations=plan.schedule.validation_iterations)
    run = _new_run(work, plans, plan, config, resume=resume, parts=parts)
    defaults = default_callbacks(work, plans, plan, config, rank=run.rank, show_progress=show_progress)
    every = [*defaults, *callbacks]
    with run_random_state(config.seed, run.device):  # the run's own generators: a resume is exact
        try:
            _start(run, every, plans, resume=resume)
            while run.state.epoch < run.state.epochs:
                _run_epoch(run, every)
            for callback in every:
                callback.on_train_end(run)
            barrier()
        finally:
            for callback in every:
                callback.on_close(run)
    return FoldResult(run.folder.path, run.summary, unwrap(run.parts.network))


def _new_run(
    work: Workdir,
    plans: Plans,
    plan: ConfigurationPlan,
    config: TrainConfig,
    *,
    resume: bool,
    parts: TrainingParts | None,
) -> TrainingRun:
    """Join the process group, choose the fold's batches (unless ``parts`` brings them), make the run folder
    and the parts; the state is that of a new run (``resume`` restores it later)."""
    rank = init_from_environment(torch.device(config.device).type)
    regions, ignore = plans.region_based, plans.target.label_map_ignore
    previous = _previous_stage(work, plans, config.configuration_name, rank)
    batches = (
        parts.batches
        if parts is not None
        else fold_batches(
            work, plan, config, rank=rank, regions=regions, ignore_label=ignore, previous_stage=previous
        )
    )
    folder = _open_run_folder(work, config, resume=resume)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    if parts is None:
        channels, classes = plans.input_channels(config.configuration_name), plans.num_outputs
        parts = default_parts(
            plan,
            config,
            num_channels=channels,
            num_classes=classes,
            batches=batches,
            regions=regions,
            ignore_label=ignore,
        )
    iterations = config.iterations_per_epoch or plan.schedule.iterations_per_epoch
    state = RunState(epochs=config.epochs or plan.schedule.epochs)
    validation_iterations = config.validation_iterations or plan.schedule.validation_iterations
    return TrainingRun(config, parts, state, folder, iterations, validation_iterations, rank)


def _previous_stage(work: Workdir, plans: Plans, configuration: str, rank: Rank) -> PreviousStage | None:
    """A cascade stage's previous stage, its cross-validation predictions brought onto this stage's grid
    by rank 0 (:func:`~autoseg.training.cascade.prepare_previous_stage`); ``None`` for other stages.

    Raises:
        WorkdirError: the previous stage's cross-validation predictions are not all there.
    """
    stage = previous_stage_of(work, plans, configuration)
    if stage is not None and rank.writes:
        prepare_previous_stage(work, plans, configuration, work.data_dir(configuration))
    barrier()
    return stage


def default_callbacks(
    workdir: Workdir,
    plans: Plans,
    plan: ConfigurationPlan,
    config: TrainConfig,
    *,
    rank: Rank,
    show_progress: bool,
) -> list[Callback]:
    """Patch validation, the epoch's log line and the time limit on every rank; on rank 0 also the text log,
    the progress bar, ``log.jsonl``, the checkpoints, ``progress.png`` and the final validation."""
    class_names = [n for n, v in sorted(plans.labels.items(), key=lambda i: i[1]) if v]
    ceiling = most_epochs(config, plan.schedule.epochs, plans.planner_options.get("time_budget_s"))
    limit = [TimeLimit(config.time_limit_s, ceiling)] if config.time_limit_s else []
    ignore = plans.target.label_map_ignore
    patches = PatchValidation(plans.num_outputs, regions=plans.region_based, ignore_label=ignore)
    if not rank.writes:
        return [patches, EpochLog(), *limit]
    return [
        TextLog(),
        *([ProgressBar()] if show_progress else []),
        patches,
        EpochLog(),
        *limit,
        JsonLog(),
        Checkpoints(),
        ProgressPlot(class_names),
        FinalValidation(
            workdir,
            plan,
            plans.labels,
            regions=plans.region_based,
            ignore_label=ignore,
            previous_stage=previous_stage_of(workdir, plans, config.configuration_name),
        ),
    ]


def train_rank(
    index: int, count: int, workdir: Path, config: TrainConfig, *, resume: bool, show_progress: bool
) -> None:
    """Entry of one spawned process of ``--num-gpus``: rank ``index`` trains on GPU ``index``."""
    del count  # the process group knows it
    device = f"cuda:{index}" if config.device.startswith("cuda") else config.device
    train_fold(workdir, replace(config, device=device), resume=resume, show_progress=show_progress)


def _open_run_folder(workdir: Workdir, config: TrainConfig, *, resume: bool) -> RunFolder:
    """The run folder, made; a run already there needs ``resume``."""
    folder = workdir.run(config.configuration_name, config.fold)
    if folder.checkpoint("latest").is_file() and not resume:
        raise UsageError(
            f"{folder.path} already holds a training run; pass --resume to continue it, or delete it"
        )
    if resume and folder.train_config_path.is_file():
        recorded = json.loads(folder.train_config_path.read_text()).get("initial_lr", config.initial_lr)
        if recorded != config.initial_lr:
            raise UsageError(
                f"{folder.path} was trained with --lr {recorded}; resume it with the same learning rate "
                f"(got {config.initial_lr})"
            )
    barrier()
    folder.path.mkdir(parents=True, exist_ok=True)
    return folder


def _start(run: TrainingRun, callbacks: Sequence[Callback], plans: Plans, *, resume: bool) -> None:
    """Start the callbacks, restore the latest checkpoint (``resume``), wrap the network for DDP, record the
    configuration and plans in the run folder and read the log of the epochs done."""
    for callback in callbacks:
        callback.on_train_start(run)
    logger.info("parts: %s", ", ".join(f"{k} {v}" for k, v in describe_parts(run.parts).items()))
    if resume:
        run.state = restore_training(run.parts, run.folder.checkpoint("latest"), epochs=run.config.epochs)
    if run.rank.count > 1:
        device = run.device
        run.parts.network = DistributedDataParallel(
            run.parts.network, device_ids=[device.index] if device.type == "cuda" else None
        )
    if run.rank.writes:
        write_json(asdict(run.config), run.folder.train_config_path)
        write_json(plans.to_json(), run.folder.plans_path)
    run.records = read_log(run.folder.log_path, before_epoch=run.state.epoch)
    run.started = time.monotonic() - run.state.seconds


def _run_epoch(run: TrainingRun, callbacks: Sequence[Callback]) -> None:
    """One epoch: set the learning rate, train, let the callbacks validate, complete and record it."""
    begin = time.monotonic()
    lr = learning_rate(run.config, run.state)
    for group in run.parts.optimizer.param_groups:
        group["lr"] = lr
    for callback in callbacks:
        callback.on_epoch_start(run)
    run.record = {"epoch": run.state.epoch, "train_loss": _train_iterations(run, callbacks)}
    for callback in callbacks:
        callback.on_validation(run)
    run.record |= {"lr": lr, "epoch_seconds": time.monotonic() - begin}
    run.records.append(run.record)
    run.state.epoch += 1
    run.state.seconds = time.monotonic() - run.started
    for callback in callbacks:
        callback.on_epoch_end(run)


def _train_iterations(run: TrainingRun, callbacks: Sequence[Callback]) -> float:
    """The epoch's training iterations; returns the mean loss."""
    parts, device = run.parts, run.device
    parts.network.train()
    batches = parts.batches.train_batches(run.state.epoch)
    losses = []
    dtype = autocast_dtype(run.config.precision)
    for _ in range(run.iterations):
        run.step_loss = training_step(parts, next(batches), device, dtype, run.config.gradient_clip)
        losses.append(run.step_loss)
        for callback in callbacks:
            callback.on_step(run)
    return float(np.mean(losses))


def training_step(
    parts: TrainingParts,
    batch: Batch,
    device: torch.device,
    dtype: torch.dtype | None,
    gradient_clip: float,
) -> float:
    """One optimiser step on ``batch`` (autocast to ``dtype`` when given; the loss on float32 outputs, the
    gradient scaled for float16 and clipped to ``gradient_clip``); returns the loss."""
    network, optimizer, scaler = parts.network, parts.optimizer, parts.scaler
    image, target = batch["image"].to(device, non_blocking=True), batch["target"].to(device)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        outputs = network(image)
    loss = parts.loss(as_float32(outputs), target, **loss_extras(batch, device))
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(network.parameters(), gradient_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())
