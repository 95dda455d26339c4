"""Training batches from preprocessed cases, augmented in background worker processes.

:class:`PatchBatches` is an endless stream of ``{"image": (B, C, ...) float32, "target": (B, ...) int64}``
batches (region targets: ``(B, K, ...)`` uint8, and ``"annotated"``, ``(B, K)`` uint8, 1 where the sample's
case has structure ``k`` contoured). Its randomness derives from ``(seed, epoch, worker)`` only, so an
epoch's data can be reproduced, which is what makes ``--resume`` exact. batchgenerators draws from the
global generators of NumPy and ``random``: they get private seeded states, swapped in only while a transform
runs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from autoseg.errors import PreprocessError, WorkdirError, WorkerError
from autoseg.plans import MirroringPlan
from autoseg.preprocessing.store import StoredCase, load_case
from autoseg.training.augment import enlarged_patch, training_transforms
from autoseg.training.cascade import PreviousStage, move_previous_stage_to_data
from autoseg.training.sampling import forced_foreground, sample_patch, sample_patch_with

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSpec:
    """What to sample: cases of a data folder, patch and batch size, augmentation on or off.

    Attributes:
        augment: spatial and intensity augmentation (training) or plain patches (validation).
        in_plane_only: rotate and scale in the ``(y, x)`` plane only (anisotropic data, resampled per axis).
        seed: the stream's randomness, with the epoch and the worker index.
        mirroring: the plan's mirroring; without left-right mirroring each sample is mirrored along the axes
            its case's canonical direction allows (the array it trains on).
        regions: the stored targets are ``(K, Z, Y, X)`` region targets; batches then carry ``(B, K, ...)``
            uint8 targets, every channel augmented alike (batchgenerators transforms each ``seg`` channel).
        ignore_label: the plan's ignore label (voxels of unknown class): never a foreground class to place
            a patch on.
    """

    folder: Path
    identifiers: tuple[str, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    _: KW_ONLY
    augment: bool
    in_plane_only: bool = False
    seed: int
    mirroring: MirroringPlan = field(default_factory=MirroringPlan)
    regions: bool = False
    ignore_label: int | None = None
    previous_stage: PreviousStage | None = None
    """A cascade stage's previous stage: its stored predictions are cropped with each patch, augmented
    spatially with it, and join ``image`` as one-hot channels (perturbed when ``augment``)."""


class PatchBatches(IterableDataset[dict[str, torch.Tensor]]):
    """Endless batches for one epoch's seed; split across workers by giving each its own generator."""

    def __init__(self, spec: BatchSpec, epoch: int) -> None:
        super().__init__()
        self.spec = spec
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.spec.seed, self.epoch, worker])
        private = _GlobalRandomState(int(rng.integers(2**31)))
        spec = self.spec
        transform = (
            training_transforms(
                spec.patch_size,
                in_plane_only=spec.in_plane_only,
                mirror_left_right=spec.mirroring.left_right,
            )
            if spec.augment
            else None
        )
        size = (
            enlarged_patch(spec.patch_size, len(spec.patch_size), spec.in_plane_only)
            if spec.augment
            else spec.patch_size
        )
        cases: dict[str, StoredCase] = {}
        while True:
            batch = _sample_batch(spec, size, cases, rng)
            annotated = batch.pop("annotated")
            if transform is not None:
                with private:
                    batch = transform(**batch)
            if spec.previous_stage is not None:
                batch = move_previous_stage_to_data(batch, spec.previous_stage, rng if spec.augment else None)
            out = {
                "image": torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32)),
                "target": _target_tensor(batch["seg"], spec.regions),
            }
            yield out | ({"annotated": torch.from_numpy(annotated)} if spec.regions else {})


def _target_tensor(seg: np.ndarray, regions: bool) -> torch.Tensor:
    """batchgenerators' ``(B, 1, ...)`` float segmentation as ``(B, ...)`` int64 class indices, or its
    ``(B, K, ...)`` region channels as uint8 0/1 (:data:`autoseg.regions.UNKNOWN` kept: the loss masks it)."""
    if regions:
        return torch.from_numpy(np.rint(seg).astype(np.uint8))
    return torch.from_numpy(np.rint(seg[:, 0]).astype(np.int64))


def _sample_batch(
    spec: BatchSpec, size: Sequence[int], cases: dict[str, StoredCase], rng: np.random.Generator
) -> dict[str, Any]:
    """One batch of ``size`` patches as batchgenerators takes it (``data``, ``seg``, and ``mirror_axes`` per
    sample when left-right mirroring is off, ``annotated`` per sample and structure); the last
    :func:`forced_foreground` samples are placed on the foreground of a structure annotated in their case.
    ``cases`` caches the opened cases."""
    images, targets, mirror_axes, annotated = [], [], [], []
    forced = forced_foreground(spec.batch_size)
    for index in range(spec.batch_size):
        identifier = spec.identifiers[int(rng.integers(len(spec.identifiers)))]
        if identifier not in cases:
            cases[identifier] = load_case(spec.folder, identifier)
        case = cases[identifier]
        previous = _previous_stage(spec, case)
        if case.labels is None:
            raise PreprocessError(
                f"{spec.folder / identifier}: no label map; training needs one, run 'autoseg preprocess'"
            )
        foreground = {
            k: v
            for k, v in case.foreground.items()
            if case.properties.is_annotated(k) and k != spec.ignore_label
        }
        force = index >= spec.batch_size - forced
        if previous is None:
            labels = case.labels
            image, target = sample_patch(case.image, labels, foreground, size, rng, force_foreground=force)
        else:  # a cascade stage: the previous stage's prediction cropped with the patch
            image, target, previous = sample_patch_with(
                case.image, case.labels, previous, foreground, size, rng, force_foreground=force
            )
        images.append(image)
        targets.append(target if previous is None else _stack_previous(target, previous, spec.regions))
        annotated.append(
            [case.properties.is_annotated(k + 1) for k in range(len(target) if spec.regions else 0)]
        )
        direction = case.properties.network_geometry.direction  # the canonical array's, which it trains on
        mirror_axes.append(spec.mirroring.axes(len(spec.patch_size), direction))
    stacked = np.stack(targets).astype(np.float32)
    with_channels = spec.regions or spec.previous_stage is not None  # (B, channels, ...) already
    batch: dict[str, Any] = {"data": np.stack(images), "seg": stacked if with_channels else stacked[:, None]}
    batch["annotated"] = np.array(annotated, np.uint8)
    if not spec.mirroring.left_right:
        batch["mirror_axes"] = mirror_axes
    return batch


def _previous_stage(spec: BatchSpec, case: StoredCase) -> np.ndarray | None:
    """The stored previous-stage prediction of a cascade stage's case, checked to be on its grid."""
    if spec.previous_stage is None:
        return None
    previous = spec.previous_stage.load(case.properties.identifier)
    if tuple(previous.shape[-3:]) != tuple(case.image.shape[1:]):
        raise WorkdirError(
            f"{spec.previous_stage.path(case.properties.identifier)}: shape {previous.shape} is not the "
            f"stored case's grid {case.image.shape[1:]}; delete it and train again (it is remade)"
        )
    return previous


def _stack_previous(target: np.ndarray, previous: np.ndarray, regions: bool) -> np.ndarray:
    """A patch's target with the previous stage's patch after it as ``seg`` channels: ``(2, ...)`` for a
    label map, ``(2K, ...)`` for a region target."""
    if regions:
        return np.concatenate([target, previous.astype(target.dtype)])
    return np.stack([target, previous.astype(target.dtype)])


class _GlobalRandomState:
    """Seeded states for the global generators batchgenerators draws from (NumPy's and Python's ``random``),
    swapped in only while a transform runs, so the caller's global state is never touched."""

    def __init__(self, seed: int) -> None:
        self.numpy = np.random.RandomState(seed).get_state()
        self.python = random.Random(seed).getstate()
        self.saved: tuple[Any, Any] | None = None

    def __enter__(self) -> None:
        self.saved = (np.random.get_state(), random.getstate())  # noqa: NPY002
        np.random.set_state(self.numpy)  # noqa: NPY002
        random.setstate(self.python)

    def __exit__(self, *exc: object) -> None:
        self.numpy, self.python = np.random.get_state(), random.getstate()  # noqa: NPY002
        assert self.saved is not None
        np.random.set_state(self.saved[0])  # noqa: NPY002
        random.setstate(self.saved[1])


def epoch_batches(
    spec: BatchSpec, epoch: int, *, num_workers: int, timeout_s: float = 600.0
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``epoch``, produced by ``num_workers`` processes (0: in this process).

    Raises:
        WorkerError: a worker died (killed, out of memory, crashed) or produced nothing for ``timeout_s``.
    """
    loader = DataLoader(
        PatchBatches(spec, epoch),
        batch_size=None,
        num_workers=num_workers,
        timeout=timeout_s if num_workers else 0,
        prefetch_factor=2 if num_workers else None,
    )
    iterator = iter(loader)
    while True:
        try:
            yield next(iterator)
        except RuntimeError as error:
            text = str(error)
            if "worker" in text.lower() or "timed out" in text.lower():
                raise WorkerError(
                    f"an augmentation worker failed ({text.splitlines()[0]}); the run stopped. "
                    "Free memory or lower --num-workers, then --resume"
                ) from None
            raise


def loss_extras(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The keyword arguments a batch adds to the loss call: ``annotated`` when some structure of some sample
    is unannotated (a partly contoured region dataset), else none (so a custom loss need not take it)."""
    annotated = batch.get("annotated")
    if annotated is None or bool(annotated.all()):
        return {}
    return {"annotated": annotated.to(device)}


def default_workers(cpu_count: int | None) -> int:
    """Augmentation workers: one per core, leaving one for the training process, at most 8."""
    return max(1, min(8, (cpu_count or 2) - 1))


def split_batches(batch_size: int, ranks: int) -> Sequence[int]:
    """How a global batch is shared across ``ranks`` processes (the first ranks take the remainder)."""
    return [batch_size // ranks + (1 if r < batch_size % ranks else 0) for r in range(ranks)]
