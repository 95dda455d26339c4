"""The cascade's previous stage (nnU-Net's ``3d_cascade_fullres``): a full-resolution stage that sees, besides
the image, the prediction of a low-resolution stage (``ConfigurationPlan.previous_stage``, ``3d_lowres``) as
extra one-hot input channels.

Training uses, for every case, the cross-validation prediction of the previous stage: the label map that the
previous stage's fold in which the case was a *validation* case wrote at the end of its training
(``trained/3d_lowres/fold_<k>/validation/<case>.nii.gz``, on the case's original grid). So every fold of the
previous stage must be trained and validated first, as in nnU-Net. :func:`prepare_previous_stage` brings each
of these label maps onto the cascade stage's preprocessed grid (:func:`~autoseg.preprocessing.case.
target_to_preprocessed`: canonical orientation, crop box, resampled per class with the plan's label scheme,
exactly what preprocessing does to a training label map) and stores it as
``trained/<cascade>/previous_stage/<case>.npy`` (:meth:`~autoseg.workdir.Workdir.previous_stage_path`),
memory-mapped by the batch workers, cropped with the image's patch and augmented spatially with it (it travels
as extra ``seg`` channels through batchgenerators), then turned into one-hot channels
(:func:`one_hot_channels`: one per foreground class, or one per structure for a region-based plan) with
morphological noise and removed components (:func:`autoseg.training.augment.perturb_previous_stage`).

``predict`` runs the previous stage first on the same case, restores its probabilities to the original
grid, takes the label map, and brings it onto the cascade stage's grid the same way
(:mod:`autoseg.inference.stage`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import WorkdirError
from autoseg.io import atomic_target, read_target
from autoseg.plans import Plans
from autoseg.preprocessing.case import target_to_preprocessed
from autoseg.preprocessing.store import load_case
from autoseg.training.augment import perturb_previous_stage
from autoseg.types import FloatVolume
from autoseg.workdir import CaseFolder, Workdir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviousStage:
    """Where a cascade stage finds its previous stage's predictions and how they become input channels.

    Attributes:
        configuration: the cascade stage (e.g. ``3d_cascade_fullres``).
        previous: the stage it follows (e.g. ``3d_lowres``).
        folder: the stored predictions on the cascade stage's preprocessed grid (``<case>.npy``).
        channels: the one-hot channels they add (:attr:`autoseg.plans.Plans.previous_stage_channels`).
        regions: the plan is region-based (the predictions are ``(K, Z, Y, X)`` structure masks).
    """

    configuration: str
    previous: str
    folder: Path
    channels: int
    regions: bool = False

    def path(self, identifier: str) -> Path:
        return self.folder / f"{identifier}.npy"

    def load(self, identifier: str) -> np.ndarray:
        """The stored prediction of ``identifier``, memory-mapped read-only.

        Raises:
            WorkdirError: it was not prepared (:func:`prepare_previous_stage`).
        """
        path = self.path(identifier)
        if not path.is_file():
            raise WorkdirError(
                f"{path}: missing; the {self.configuration} training prepares it from the "
                f"{self.previous} cross-validation predictions"
            )
        array: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        return array


def previous_stage_of(work: Workdir, plans: Plans, configuration: str) -> PreviousStage | None:
    """The :class:`PreviousStage` of ``configuration`` (its files are not checked), ``None`` unless it is a
    cascade stage."""
    previous = plans.configuration(configuration).previous_stage
    if previous is None:
        return None
    folder = work.previous_stage_path(configuration, "x").parent
    return PreviousStage(configuration, previous, folder, plans.previous_stage_channels, plans.region_based)


def cross_validation_sources(work: Workdir, previous: str, configuration: str) -> dict[str, Path]:
    """Case -> the label map the previous stage's fold predicted for it as a validation case, for every case
    of the work directory (``fingerprint.json``).

    Raises:
        WorkdirError: no ``splits.json`` yet, a fold of ``previous`` is not trained and validated, or a case
            has no prediction; the message names what is missing and the command that makes it.
    """
    splits = work.read_splits()
    if splits is None:
        raise WorkdirError(
            f"{work.splits_path}: missing; {configuration} needs the {previous} cross-validation "
            f"predictions: train every fold of {previous} first ('autoseg train 0 -c {previous}', ...)"
        )
    identifiers = [case.identifier for case in work.read_fingerprint().cases]
    sources: dict[str, Path] = {}
    missing_folds: list[str] = []
    details: list[str] = []
    for index, split in enumerate(splits):
        run = work.run(previous, index)
        if not run.is_validated():
            missing_folds.append(str(index))
            details.append(f"{run.validation_summary_path}: missing (fold {index} not trained and validated)")
            continue
        for case in split["val"]:
            path = run.validation.labels_path(case)
            if path.is_file():
                sources[case] = path
            else:
                details.append(f"{path}: missing")
    uncovered = [case for case in identifiers if case not in sources]
    if missing_folds or uncovered:
        commands = "; ".join(f"autoseg train {fold} -c {previous}" for fold in missing_folds)
        raise WorkdirError(
            f"{configuration} trains on the {previous} cross-validation predictions of every case (all "
            f"{len(splits)} folds, as nnU-Net); {len(uncovered)} of {len(identifiers)} case(s) have none"
            + (
                f": fold(s) {', '.join(missing_folds)} of {previous} are missing ({commands})"
                if commands
                else ""
            )
            + f" in {work.configuration_dir(previous)}",
            details=details[:20] + [f"no prediction for case '{case}'" for case in uncovered[:20]],
        )
    return {case: sources[case] for case in identifiers}


def prepare_previous_stage(work: Workdir, plans: Plans, configuration: str, data_dir: Path) -> PreviousStage:
    """Store every case's previous-stage cross-validation prediction on ``configuration``'s preprocessed grid
    (see the module); a stored one newer than both its source and the case's ``properties.json`` is kept.

    Raises:
        WorkdirError: ``configuration`` is no cascade stage, or predictions are missing
            (:func:`cross_validation_sources`).
    """
    stage = previous_stage_of(work, plans, configuration)
    if stage is None:
        raise WorkdirError(
            f"{configuration} has no previous_stage in {work.plans_path}; it is no cascade stage"
        )
    plan = plans.configuration(configuration)
    sources = cross_validation_sources(work, stage.previous, configuration)
    written = 0
    for case, source in sources.items():
        target = stage.path(case)
        properties = CaseFolder(data_dir / case).properties_path
        if _is_newer(target, [source, properties]):
            continue
        stored = load_case(data_dir, case)
        labels, _ = read_target(source)
        projected = target_to_preprocessed(labels, stored.properties, plan)
        with atomic_target(target) as temporary, temporary.open("wb") as stream:
            np.save(stream, projected, allow_pickle=False)
        written += 1
    logger.info(
        "%s: %s cross-validation predictions of %d case(s) on this stage's grid in %s (%d updated)",
        configuration,
        stage.previous,
        len(sources),
        stage.folder,
        written,
    )
    return stage


def _is_newer(path: Path, sources: Sequence[Path]) -> bool:
    if not path.is_file():
        return False
    mtime = path.stat().st_mtime_ns
    return all(source.is_file() and source.stat().st_mtime_ns <= mtime for source in sources)


def one_hot_channels(target: np.ndarray, channels: int, *, regions: bool) -> FloatVolume:
    """A previous stage's prediction as input channels ``(channels, ...)`` float32 0/1: label map values
    ``1..channels`` one channel each (background left out, as nnU-Net), or the structure masks of a region
    target ``(channels, ...)`` as they are."""
    if regions:
        if target.shape[0] != channels:
            raise ValueError(f"{target.shape[0]} structure masks for {channels} channels")
        return np.asarray(target == 1, dtype=np.float32)
    out = np.zeros((channels, *target.shape), np.float32)
    for k in range(channels):
        out[k] = target == k + 1
    return out


def with_previous_stage(
    image: FloatVolume, target: np.ndarray, channels: int, *, regions: bool
) -> FloatVolume:
    """``(C, ...)`` image with the previous stage's prediction ``target`` (same grid) appended one-hot:
    ``(C + channels, ...)`` float32, the network input of a cascade stage."""
    if tuple(target.shape[-image.ndim + 1 :]) != tuple(image.shape[1:]):
        raise ValueError(f"previous-stage prediction {target.shape} is not on the image's grid {image.shape}")
    return np.concatenate(
        [np.asarray(image, np.float32), one_hot_channels(target, channels, regions=regions)]
    )


def move_previous_stage_to_data(
    batch: dict[str, Any], stage: PreviousStage, rng: np.random.Generator | None
) -> dict[str, Any]:
    """A batchgenerators batch whose ``seg`` carries the previous stage's prediction after the target
    channels (1 for a label map, ``K`` for a region target), as cropped and spatially augmented with the
    image: those channels leave ``seg``, become one-hot channels after ``data``'s, and (``rng`` given:
    training) get :func:`~autoseg.training.augment.perturb_previous_stage`."""
    seg = batch["seg"]
    width = stage.channels if stage.regions else 1
    target, previous = seg[:, :-width], np.rint(seg[:, -width:])
    channels = np.stack(
        [
            one_hot_channels(p if stage.regions else p[0], stage.channels, regions=stage.regions)
            for p in previous
        ]
    )
    if rng is not None:
        perturb_previous_stage(channels, rng, exclusive=not stage.regions)
    batch["seg"] = np.ascontiguousarray(target)
    batch["data"] = np.concatenate([np.asarray(batch["data"], np.float32), channels], axis=1)
    return batch
