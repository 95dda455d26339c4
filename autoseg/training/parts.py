"""The parts a fold is trained with (:class:`TrainingParts`): network, loss, optimiser, gradient scaler and
the fold's batches. :func:`default_parts` builds nnU-Net's; a variant swaps one part::

    parts = replace(default_parts(plan, config, ...), loss=DeepSupervisionLoss(MyLoss()))
    train_fold(workdir, config, parts=parts)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoseg.errors import UsageError
from autoseg.inference.ensemble import Precision, resolve_precision
from autoseg.network import build_network
from autoseg.plans import ConfigurationPlan
from autoseg.training.cascade import PreviousStage
from autoseg.training.config import TrainConfig
from autoseg.training.data import BatchSpec, default_workers, epoch_batches, split_batches
from autoseg.training.distributed import Rank, barrier, unwrap
from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss, RegionLoss
from autoseg.training.splits import load_or_create_splits, read_groups
from autoseg.workdir import Workdir

Batch = dict[str, torch.Tensor]
"""``{"image": (B, C, ...) float32, "target": (B, ...) int64}``."""

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
"""The names ``--precision`` takes."""

VALIDATION_WORKERS = 2
"""At most this many workers produce validation patches (they are few and not augmented)."""


@dataclass(frozen=True)
class FoldBatches:
    """The fold's training and validation patches, one seeded stream per epoch."""

    train: BatchSpec
    validation: BatchSpec
    num_workers: int

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """Augmented training batches of ``epoch``."""
        return epoch_batches(self.train, epoch, num_workers=self.num_workers)

    def validation_batches(self, epoch: int) -> Iterator[Batch]:
        """Validation batches of ``epoch`` (no augmentation)."""
        return epoch_batches(self.validation, epoch, num_workers=min(self.num_workers, VALIDATION_WORKERS))


@dataclass
class TrainingParts:
    """What a fold is trained with; swap one part to make a variant."""

    network: nn.Module
    loss: nn.Module
    """Called as ``loss(network(image), target)``; Dice + CE wrapped for deep supervision by default."""
    optimizer: torch.optim.Optimizer
    batches: FoldBatches
    scaler: torch.amp.GradScaler
    """Loss scaling, enabled for float16 only (bfloat16 has float32's range and needs none)."""


def default_parts(
    plan: ConfigurationPlan,
    config: TrainConfig,
    *,
    num_channels: int,
    num_classes: int,
    batches: FoldBatches,
    regions: bool = False,
    ignore_label: int | None = None,
) -> TrainingParts:
    """nnU-Net's parts: the planned network (weights seeded from ``config.seed``), Dice + CE with deep
    supervision (with ``regions``, the plan's region-based target: ``num_classes`` structures, Dice + BCE,
    :class:`RegionLoss`; ``ignore_label``: the plan's ignore label, left out of the loss), SGD with
    Nesterov momentum, and a gradient scaler for float16 training (``config.precision`` resolved)."""
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[]):  # seeded weight initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        network = build_network(plan.network, num_channels, num_classes).to(device)
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=config.initial_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    return TrainingParts(
        network=network,
        loss=DeepSupervisionLoss(
            RegionLoss(batch_dice=plan.batch_dice)
            if regions
            else DiceCELoss(batch_dice=plan.batch_dice, ignore_label=ignore_label)
        ),
        optimizer=optimizer,
        batches=batches,
        scaler=torch.amp.GradScaler(device.type, enabled=config.precision == "float16"),
    )


def resolve_training_precision(precision: str, device: torch.device, *, deterministic: bool) -> Precision:
    """What ``precision`` means for training on ``device``: an explicit choice stays; ``auto`` is float32
    for a ``deterministic`` run (bitwise repeatable and exactly resumable without relying on reduced-precision
    kernels), otherwise as predict (:func:`autoseg.inference.ensemble.resolve_precision`: float16 with a
    gradient scaler on CUDA, bfloat16 on a CPU with native bfloat16, float32 elsewhere).

    Raises:
        UsageError: an unknown name, or float16 on the CPU (no float16 convolutions there).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "float16" and device.type != "cuda":
        raise UsageError("--precision float16 needs a CUDA device; on the CPU use bfloat16 or float32")
    if precision == "auto" and deterministic:
        return "float32"
    return resolve_precision(precision, device)


def as_float32(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """The network's output (a list of them with deep supervision) in float32, for the loss."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return [output.float() for output in outputs]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; ``None`` for float32 (no autocast)."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)


def describe_parts(parts: TrainingParts) -> dict[str, str]:
    """The class names of the parts, the loss with the losses it wraps (for the run's log)."""
    return {
        "network": type(unwrap(parts.network)).__name__,
        "loss": _module_name(parts.loss),
        "optimizer": type(parts.optimizer).__name__,
    }


def _module_name(module: nn.Module) -> str:
    inner = [_module_name(child) for child in module.children()]
    return type(module).__name__ + (f"({', '.join(inner)})" if inner else "")


def fold_batches(
    workdir: Workdir,
    plan: ConfigurationPlan,
    config: TrainConfig,
    *,
    rank: Rank | None = None,
    regions: bool = False,
    ignore_label: int | None = None,
    previous_stage: PreviousStage | None = None,
) -> FoldBatches:
    """The batches of ``config.fold`` for this process: its cases from ``splits.json`` (made by rank 0 on
    first use), its share of the planned batch, its own seed; ``ignore_label`` (the plan's) is never
    sampled as foreground; ``previous_stage`` (a cascade stage's) joins every patch as input channels.

    Raises:
        UsageError: the fold does not exist, or the batch cannot be shared by the processes.
    """
    rank = rank or Rank()
    folder = workdir.data_dir(config.configuration_name)
    train_ids, val_ids = fold_cases(workdir, config, rank=rank)
    share = split_batches(plan.batch_size, rank.count)[rank.index]
    if share < 1:
        raise UsageError(f"batch size {plan.batch_size} cannot be shared by {rank.count} processes")
    workers = config.num_workers
    if workers is None:
        workers = max(0, default_workers(os.cpu_count()) // rank.count)
    train = BatchSpec(
        folder,
        tuple(train_ids),
        plan.patch_size,
        share,
        augment=True,
        in_plane_only=plan.resampling.separate_axis is not None,
        seed=config.seed + 1009 * rank.index,
        mirroring=plan.mirroring,
        regions=regions,
        ignore_label=ignore_label,
        previous_stage=previous_stage,
    )
    validation = BatchSpec(
        folder,
        tuple(val_ids),
        plan.patch_size,
        share,
        augment=False,
        in_plane_only=False,
        seed=config.seed + 1,
        regions=regions,
        ignore_label=ignore_label,
        previous_stage=previous_stage,
    )
    return FoldBatches(train, validation, workers)


def fold_cases(
    workdir: Workdir, config: TrainConfig, *, rank: Rank | None = None
) -> tuple[list[str], list[str]]:
    """Training and validation case identifiers of ``config.fold`` (``all``: every case, both ways). Rank 0
    makes ``splits.json`` if needed; the other ranks wait for it."""
    rank = rank or Rank()
    identifiers = [case.identifier for case in workdir.read_fingerprint().cases]
    groups = read_groups(Path(config.groups_file), identifiers) if config.groups_file else None
    cases = _fold_cases(workdir, identifiers, config.fold, groups) if rank.writes else ([], [])
    barrier()  # rank 0 made splits.json; the others read it now
    if not rank.writes:
        cases = _fold_cases(workdir, identifiers, config.fold, groups)
    return cases


def _fold_cases(
    workdir: Workdir, identifiers: list[str], fold: str, groups: dict[str, str] | None
) -> tuple[list[str], list[str]]:
    if fold == "all":
        return identifiers, identifiers
    splits = load_or_create_splits(workdir, identifiers, groups=groups)
    if not fold.isdigit() or int(fold) >= len(splits):
        raise UsageError(f"fold '{fold}' is not 0..{len(splits) - 1} or 'all'")
    return splits[int(fold)]["train"], splits[int(fold)]["val"]
