"""``autoseg train FOLD``: train one fold of a planned configuration, resumably, then validate it.

SGD with Nesterov momentum 0.99, learning rate 1e-2 decayed per epoch as ``(1 - epoch / epochs) ** 0.9``,
weight decay 3e-5, gradient norm clipped at 12, mixed precision on CUDA. Every epoch: training loss,
validation loss and pseudo-Dice per class on validation patches (and its moving average), ``log.jsonl``,
``training.log``, ``progress.png``, and the ``latest`` checkpoint; ``best`` follows the moving-average
pseudo-Dice; ``final`` closes the run, followed by a sliding-window prediction of the fold's validation cases
(``validation/summary.json``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from autoseg.dataset.layout import load_dataset
from autoseg.errors import UsageError
from autoseg.fingerprint import load_fingerprint
from autoseg.io import write_json
from autoseg.network import build_network
from autoseg.plans import ConfigurationPlan, Plans, load_plans
from autoseg.training.checkpoint import load_checkpoint, save_checkpoint
from autoseg.training.data import BatchSpec, default_workers, epoch_batches, split_batches
from autoseg.training.distributed import Rank, barrier, init_from_environment
from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss
from autoseg.training.progress import plot_progress, read_log, write_log
from autoseg.training.splits import load_or_create_splits, read_groups
from autoseg.training.validation import validate_fold
from autoseg.workdir import Workdir

logger = logging.getLogger(__name__)

EMA_WEIGHT = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """A training run; ``None`` fields come from the plan's schedule. Written to ``train_config.json``."""

    configuration: str = "3d_fullres"
    fold: str = "0"
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    validation_iterations: int = 50
    initial_lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    gradient_clip: float = 12.0
    seed: int = 0
    deterministic: bool = False
    time_limit_s: float | None = None
    num_workers: int | None = None
    device: str = "cpu"
    groups_file: str | None = None


@dataclass
class RunState:
    """What a checkpoint restores: progress, the schedule's length, the best score so far."""

    epoch: int = 0
    epochs: int = 1
    ema_pseudo_dice: float | None = None
    best_ema: float | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class FoldResult:
    """What a fold's training leaves: its folder, the validation summary (rank 0 only) and the network."""

    run_dir: Path
    summary: dict[str, Any] | None
    network: nn.Module


def run_dir_of(workdir: Path, config: TrainConfig) -> Path:
    """``WORKDIR/trained/<configuration>/fold_<fold>``."""
    return workdir / "trained" / config.configuration / f"fold_{config.fold}"


def train_fold(
    workdir: Path, config: TrainConfig, *, resume: bool = False, show_progress: bool = True
) -> FoldResult:
    """Train (or resume) one fold and validate it. Inside a process group (``--num-gpus`` or torchrun) every
    rank
    trains its share of the batch and rank 0 writes."""
    plans = load_plans(workdir / "plans.json")
    plan = plans.configuration(config.configuration)
    folder = Workdir(workdir).data_dir(config.configuration)
    dataset = load_dataset(Path(load_fingerprint(workdir / "fingerprint.json").dataset_root))
    identifiers = [c.identifier for c in dataset.cases]
    groups = read_groups(Path(config.groups_file), identifiers) if config.groups_file else None
    rank = init_from_environment(torch.device(config.device).type)
    train_ids, val_ids = _fold_cases(workdir, identifiers, config.fold, groups) if rank.writes else ([], [])
    barrier()  # rank 0 made splits.json; the others read it now
    if not rank.writes:
        train_ids, val_ids = _fold_cases(workdir, identifiers, config.fold, groups)
    share = split_batches(plan.batch_size, rank.count)[rank.index]
    if share < 1:
        raise UsageError(f"batch size {plan.batch_size} cannot be shared by {rank.count} processes")
    run_dir = run_dir_of(workdir, config)
    if (run_dir / "checkpoint_latest.pt").is_file() and not resume:
        raise UsageError(
            f"{run_dir} already holds a training run; pass --resume to continue it, or delete it"
        )
    barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _file_log(run_dir / "training.log") if rank.writes else None
    try:
        device = torch.device(config.device)
        network, optimizer, scaler, state = _setup(plans, plan, config, device, run_dir, resume)
        if rank.count > 1:
            network = DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None
            )
        if rank.writes:
            write_json(asdict(config), run_dir / "train_config.json")
            write_json(plans.to_json(), run_dir / "plans.json")
        _train_epochs(
            network,
            optimizer,
            scaler,
            state,
            plans,
            plan,
            config,
            device,
            run_dir,
            BatchSpec(
                folder,
                tuple(train_ids),
                plan.patch_size,
                share,
                True,
                plan.resampling.separate_axis is not None,
                config.seed + 1009 * rank.index,
            ),
            BatchSpec(folder, tuple(val_ids), plan.patch_size, share, False, False, config.seed + 1),
            show_progress and rank.writes,
            rank,
        )
        summary = None
        if rank.writes:
            cases = [c for c in dataset.cases if c.identifier in set(val_ids)]
            summary = validate_fold(
                _unwrap(network), cases, folder, plan, plans.labels, run_dir / "validation", device
            )
            logger.info("fold %s validation: mean Dice %s", config.fold, summary["mean_dice_per_class"])
        barrier()
        return FoldResult(run_dir, summary, _unwrap(network))
    finally:
        if handler is not None:
            logging.getLogger("autoseg").removeHandler(handler)
            handler.close()


def train_rank(
    index: int, count: int, workdir: Path, config: TrainConfig, resume: bool, show_progress: bool
) -> None:
    """Entry of one spawned process of ``--num-gpus``: rank ``index`` trains on GPU ``index``."""
    del count  # the process group knows it
    device = f"cuda:{index}" if config.device.startswith("cuda") else config.device
    train_fold(workdir, replace(config, device=device), resume=resume, show_progress=show_progress)


def _unwrap(network: nn.Module) -> nn.Module:
    module: nn.Module = network.module if isinstance(network, DistributedDataParallel) else network
    return module


def _fold_cases(
    workdir: Path, identifiers: list[str], fold: str, groups: dict[str, str] | None
) -> tuple[list[str], list[str]]:
    if fold == "all":
        return identifiers, identifiers
    splits = load_or_create_splits(workdir, identifiers, groups=groups)
    if not fold.isdigit() or int(fold) >= len(splits):
        raise UsageError(f"fold '{fold}' is not 0..{len(splits) - 1} or 'all'")
    return splits[int(fold)]["train"], splits[int(fold)]["val"]


def _setup(
    plans: Plans,
    plan: ConfigurationPlan,
    config: TrainConfig,
    device: torch.device,
    run_dir: Path,
    resume: bool,
) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler, RunState]:
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    with torch.random.fork_rng(devices=[]):  # seeded weight initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        network = build_network(plan.network, len(plans.channel_names), len(plans.labels)).to(device)
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=config.initial_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    epochs = config.epochs or plan.schedule.epochs
    state = RunState(epochs=epochs)
    if resume:
        checkpoint = load_checkpoint(run_dir / "checkpoint_latest.pt", device=device)
        network.load_state_dict(checkpoint["network"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = RunState(**checkpoint["state"])
        if config.epochs is not None:
            state.epochs = config.epochs
        torch.set_rng_state(checkpoint["torch_rng"])
        logger.info("resuming at epoch %d of %d", state.epoch, state.epochs)
    return network, optimizer, scaler, state


def _train_epochs(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: RunState,
    plans: Plans,
    plan: ConfigurationPlan,
    config: TrainConfig,
    device: torch.device,
    run_dir: Path,
    train: BatchSpec,
    validation: BatchSpec,
    show_progress: bool,
    rank: Rank,
) -> None:
    loss_function = DeepSupervisionLoss(DiceCELoss(batch_dice=plan.batch_dice))
    iterations = config.iterations_per_epoch or plan.schedule.iterations_per_epoch
    workers = (
        config.num_workers
        if config.num_workers is not None
        else max(0, default_workers(os.cpu_count()) // rank.count)
    )
    records = read_log(run_dir / "log.jsonl", before_epoch=state.epoch)
    class_names = [n for n, v in sorted(plans.labels.items(), key=lambda i: i[1]) if v]
    started = time.monotonic() - state.seconds
    while state.epoch < state.epochs:
        begin = time.monotonic()
        lr = config.initial_lr * (1 - state.epoch / state.epochs) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr
        network.train()
        train_loss = _run_iterations(
            network,
            optimizer,
            scaler,
            loss_function,
            epoch_batches(train, state.epoch, num_workers=workers),
            iterations,
            device,
            config.gradient_clip,
            f"epoch {state.epoch + 1}/{state.epochs}",
            show_progress,
        )
        val_loss, dice = _validate_patches(
            network,
            loss_function,
            epoch_batches(validation, state.epoch, num_workers=min(workers, 2)),
            config.validation_iterations,
            device,
            len(plans.labels),
        )
        mean_dice = float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else 0.0
        state.ema_pseudo_dice = (
            mean_dice
            if state.ema_pseudo_dice is None
            else (EMA_WEIGHT * state.ema_pseudo_dice + (1 - EMA_WEIGHT) * mean_dice)
        )
        seconds = time.monotonic() - begin
        records.append(
            {
                "epoch": state.epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "pseudo_dice": [None if math.isnan(d) else d for d in dice],
                "ema_pseudo_dice": state.ema_pseudo_dice,
                "lr": lr,
                "epoch_seconds": seconds,
            }
        )
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, pseudo-Dice %s (moving average %.4f), lr %.2e, %.1f s",
            state.epoch,
            train_loss,
            val_loss,
            [round(d, 4) for d in dice],
            state.ema_pseudo_dice,
            lr,
            seconds,
        )
        state.epoch += 1
        state.seconds = time.monotonic() - started
        _apply_time_limit(state, config, records, config.epochs or plan.schedule.epochs)
        if rank.writes:
            _save(network, optimizer, scaler, state, run_dir, records, class_names)
    if rank.writes:
        save_checkpoint(_checkpoint(network, optimizer, scaler, state), run_dir / "checkpoint_final.pt")


def _run_iterations(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_function: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    iterations: int,
    device: torch.device,
    clip: float,
    description: str,
    show_progress: bool,
) -> float:
    losses = []
    for _ in tqdm(range(iterations), desc=description, leave=False, disable=not show_progress):
        batch = next(batches)
        image, target = batch["image"].to(device, non_blocking=True), batch["target"].to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = loss_function(network(image), target)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(network.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _validate_patches(
    network: nn.Module,
    loss_function: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    iterations: int,
    device: torch.device,
    num_classes: int,
) -> tuple[float, list[float]]:
    """Validation loss and pseudo-Dice per foreground class (TP/FP/FN summed over all validation patches)."""
    network.eval()
    losses, counts = [], np.zeros((3, num_classes - 1))
    with torch.no_grad():
        for _ in range(iterations):
            batch = next(batches)
            image, target = batch["image"].to(device), batch["target"].to(device)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = network(image)
                losses.append(float(loss_function(logits, target)))
            predicted = logits.argmax(1)
            for k in range(1, num_classes):
                hit, truth = predicted == k, target == k
                counts[:, k - 1] += [
                    float((hit & truth).sum()),
                    float((hit & ~truth).sum()),
                    float((~hit & truth).sum()),
                ]
    tp, fp, fn = counts
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * tp / (2 * tp + fp + fn)
    return float(np.mean(losses)), [float(d) for d in dice]


def _apply_time_limit(
    state: RunState, config: TrainConfig, records: list[dict[str, Any]], planned: int
) -> None:
    """Fit the schedule into ``time_limit_s``: as many epochs as the recent epoch time allows, never more than
    ``planned``. Re-evaluated every epoch, so a slow spell (a busy machine) does not shorten the run for good;
    the learning rate follows the new length."""
    if config.time_limit_s is None or not records:
        return
    per_epoch = float(np.median([r["epoch_seconds"] for r in records[-5:]]))
    fit = state.epoch + int(max(0.0, config.time_limit_s - state.seconds) // per_epoch)
    epochs = max(state.epoch, min(planned, fit))
    if epochs != state.epochs:
        logger.info("time limit: %d epochs instead of %d (%.1f s per epoch)", epochs, state.epochs, per_epoch)
        state.epochs = epochs


def _checkpoint(
    network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, state: RunState
) -> dict[str, Any]:
    return {
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
        "torch_rng": torch.get_rng_state(),
    }


def _save(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: RunState,
    run_dir: Path,
    records: list[dict[str, Any]],
    class_names: list[str],
) -> None:
    checkpoint = _checkpoint(network, optimizer, scaler, state)
    ema = state.ema_pseudo_dice
    if ema is not None and (state.best_ema is None or ema > state.best_ema):
        state.best_ema = ema
        checkpoint["state"] = asdict(state)
        save_checkpoint(checkpoint, run_dir / "checkpoint_best.pt")
    write_log(records, run_dir / "log.jsonl")  # the log first: a checkpoint never points past its log
    save_checkpoint(checkpoint, run_dir / "checkpoint_latest.pt")
    plot_progress(records, class_names, run_dir / "progress.png")


def _file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("autoseg").addHandler(handler)
    return handler
