"""Choose post-processing on cross-validation predictions, as nnU-Net does, and write ``postprocessing.json``.

The candidates, tried in this order on the predictions of every fold's validation cases:

1. keep only the largest connected component of the whole foreground (all classes as one object);
2. per class, keep only the largest component of that class, or (second candidate) remove its components
   smaller than a volume learned from the training labels (:func:`min_volume_mm3_from_fingerprint`).

Region targets (structures that may overlap, :mod:`autoseg.regions`) are handled the same way per structure:
a structure's components are those of its own mask (a GTV inside its CTV is one component of each), the
foreground is the union of all structures, and a step is kept only when no structure's Dice drops.

A candidate is kept when it raises the mean over classes of the per-class mean Dice by more than
:data:`DICE_TOLERANCE` and lowers no class's mean Dice by more than it; later candidates are judged on the
predictions as post-processed by the steps kept so far. Of the two per-class candidates the one with the
higher Dice wins (a tie goes to removing small components, which never removes a large one). Dice is
undefined (NaN) and left out of a class's mean where prediction and reference are both empty, as in
:mod:`autoseg.evaluation.metrics`; removing a false-positive object from a case without that class therefore
raises the mean by taking a zero out of it. In a partly contoured dataset (``docs/dicom.md``, "Partly
contoured cases") a structure a case's reference never contoured is left out of that case's score the same
way (:attr:`CaseComponents.unannotated`): an empty reference there means "not drawn", not "absent".

Efficient: each case's components are labelled once (:func:`case_components`, face connectivity as in
:mod:`autoseg.postprocessing.components`); every candidate is then scored from per-component voxel counts,
without touching the volumes again. Only these counts are kept in memory, never all predictions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from autoseg.errors import EvaluationError
from autoseg.evaluation.metrics import dice_from_counts, without_ignored
from autoseg.evaluation.stage import CasePair, match_cases, read_pair
from autoseg.fingerprint import Fingerprint
from autoseg.parallel import map_cases
from autoseg.postprocessing.components import label_components
from autoseg.postprocessing.steps import (
    Candidate,
    Evidence,
    Postprocessing,
    PostprocessingStep,
    save_postprocessing,
)
from autoseg.regions import crop, foreground_mask, is_region_target, structure_mask
from autoseg.types import TargetVolume, Triple

logger = logging.getLogger(__name__)

DICE_TOLERANCE = 1e-6
"""Changes of mean Dice within this are float noise: neither a gain that accepts a step nor a loss."""

MIN_VOLUME_FRACTION = 0.1
"""Size threshold of the second candidate: this fraction of the 5th-percentile training component volume."""

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClassComponents:
    """The connected components of one class in one predicted case.

    Attributes:
        sizes: voxels of each component, in raster order (component ``i`` is ``i + 1`` of the labelling).
        overlaps: voxels of each component where the reference has this class.
        foreground: index of the foreground (all classes) component holding each component.
        reference_voxels: voxels of this class in the reference.
    """

    sizes: IntArray
    overlaps: IntArray
    foreground: IntArray
    reference_voxels: int


@dataclass(frozen=True)
class CaseComponents:
    """Per-class components of one case, the foreground component sizes, and the voxel volume (mm3);
    ``unannotated``: the classes its reference never contoured (left out of its score)."""

    classes: dict[int, ClassComponents]
    foreground_sizes: IntArray
    voxel_mm3: float
    unannotated: frozenset[int] = frozenset()


def case_components(
    prediction: TargetVolume, reference: TargetVolume, spacing_mm: Triple, label_ids: Sequence[int]
) -> CaseComponents:
    """Label the components of one predicted case once, on the bounding box of its foreground.

    Args:
        prediction: ``(Z, Y, X)`` uint8/uint16 predicted label map, or a ``(K, Z, Y, X)`` region target
            (structures that may overlap: each structure's components are those of its own mask).
        reference: the reference of the same kind, same grid.
        spacing_mm: voxel size ``(z, y, x)`` in mm.
        label_ids: foreground classes (structure numbers of a region target).
    """
    reference_voxels = _structure_voxels(reference, label_ids)
    foreground = foreground_mask(prediction)
    box = _bounding_box(foreground)
    foreground_map, foreground_sizes = label_components(foreground[box])
    cropped_prediction, cropped_reference = crop(prediction, box), crop(reference, box)
    classes = {}
    for label in label_ids:
        components, sizes = label_components(structure_mask(cropped_prediction, label))
        overlaps = np.bincount(
            components[structure_mask(cropped_reference, label)], minlength=sizes.size + 1
        )[1:]
        holder = np.zeros(sizes.size + 1, np.int64)
        inside = components > 0
        holder[components[inside]] = foreground_map[inside] - 1
        classes[label] = ClassComponents(
            sizes, overlaps.astype(np.int64), holder[1:], reference_voxels[label]
        )
    return CaseComponents(classes, foreground_sizes, float(np.prod(spacing_mm)))


def choose_postprocessing(
    cases: Sequence[tuple[TargetVolume, TargetVolume, Triple]],
    label_ids: Sequence[int],
    min_volume_mm3: Mapping[int, float] | None = None,
    *,
    tolerance: float = DICE_TOLERANCE,
) -> Postprocessing:
    """Choose post-processing steps on cross-validation cases (see the module docstring for the rule).

    Args:
        cases: ``(prediction, reference, spacing_mm)`` per case; label maps ``(Z, Y, X)`` uint8/uint16, or
            ``(K, Z, Y, X)`` region targets (every candidate then acts on each structure's own mask).
        label_ids: foreground classes.
        min_volume_mm3: per class, the size threshold of the "remove small components" candidate (mm3);
            classes without one get only the "keep the largest component" candidate.
        tolerance: Dice changes within this count as no change.
    """
    components = [case_components(p, r, s, label_ids) for p, r, s in cases]
    return choose_from_components(components, label_ids, min_volume_mm3, tolerance=tolerance)


def choose_from_components(
    cases: Sequence[CaseComponents],
    label_ids: Sequence[int],
    min_volume_mm3: Mapping[int, float] | None = None,
    *,
    tolerance: float = DICE_TOLERANCE,
) -> Postprocessing:
    """:func:`choose_postprocessing` on components labelled beforehand (e.g. in worker processes)."""
    kept = [{k: np.ones(c.classes[k].sizes.size, bool) for k in label_ids} for c in cases]
    before = current = _mean_dice(cases, kept, label_ids)
    candidates: list[Candidate] = []
    steps: list[PostprocessingStep] = []
    step = PostprocessingStep("keep_largest_component", "foreground")
    trial = [_keep_largest_foreground(c, k) for c, k in zip(cases, kept, strict=True)]
    after = _mean_dice(cases, trial, label_ids)
    accepted = _improves(current, after, tolerance)
    candidates.append(Candidate(step, current, after, accepted))
    if accepted:
        steps, kept, current = [step], trial, after
    for label in label_ids:
        options = [(PostprocessingStep("keep_largest_component", (label,)), _keep_largest_class)]
        threshold = (min_volume_mm3 or {}).get(label)
        if threshold:
            options.append(
                (PostprocessingStep("remove_small_components", (label,), threshold), _remove_small_class)
            )
        results = []
        for option, function in options:
            trial = [function(c, k, label, option) for c, k in zip(cases, kept, strict=True)]
            results.append((option, trial, _mean_dice(cases, trial, label_ids)))
        best = _best_of(results, current, label, tolerance)
        candidates += [Candidate(o, current, a, o is best) for o, _, a in results]
        for option, trial, after in results:
            if option is best:
                steps, kept, current = [*steps, option], trial, after
    evidence = Evidence(len(cases), tolerance, before, current, tuple(candidates))
    return Postprocessing(tuple(steps), evidence)


def min_volume_mm3_from_fingerprint(fingerprint: Fingerprint) -> dict[int, float]:
    """Per class, the "remove small components" threshold: :data:`MIN_VOLUME_FRACTION` of the 5th
    percentile of the training components' volumes (mm3). Classes without components get none.

    The 5th percentile, not the minimum: training labels hold annotation specks (hippocampus: 1-voxel
    components in both classes), which make the minimum useless; a tenth of the 5th percentile is an order of
    magnitude below 95 % of the real components. Cross-validation still has to confirm the step.
    """
    return {
        c.value: round(MIN_VOLUME_FRACTION * c.component_volume_mm3.percentile_05, 3)
        for c in fingerprint.classes
        if c.case_fraction > 0 and c.component_volume_mm3.percentile_05 > 0
    }


def run_choose_postprocessing(
    validation_folders: Sequence[Path],
    reference_folder: Path,
    fingerprint: Fingerprint,
    out_path: Path,
    *,
    num_workers: int = 1,
    show_progress: bool = True,
    annotated: Mapping[str, Sequence[int]] | None = None,
) -> Postprocessing:
    """Choose post-processing on the validation predictions of all folds and write ``postprocessing.json``.

    Args:
        validation_folders: the ``validation_dir`` of every fold's :class:`autoseg.workdir.RunFolder`.
        reference_folder: the reference label files (the work directory's ``reference_labels_dir``), matched
            by case name.
        fingerprint: the dataset fingerprint (labels, ignore label and training component volumes).
        out_path: where to write ``postprocessing.json``.
        annotated: case -> the structures its reference contoured (``Workdir.read_reference_annotated``);
            a case not listed has every structure.

    Raises:
        EvaluationError: a prediction without reference, a case predicted in two folders, or a grid mismatch.
    """
    pairs: dict[str, CasePair] = {}
    for folder in validation_folders:
        for pair in match_cases(folder, reference_folder, missing_predictions="ignore"):
            if pair.case in pairs:
                raise EvaluationError(
                    f"case {pair.case} is predicted twice: {pairs[pair.case].prediction} and "
                    f"{pair.prediction}"
                )
            pairs[pair.case] = pair
    label_ids = sorted(v for v in fingerprint.labels.values() if v != 0)
    work = partial(_pair_components, label_ids=label_ids, ignore_label=fingerprint.ignore_label)
    components = list(
        map_cases(work, list(pairs.values()), num_workers=num_workers, description="postprocessing",
                  show_progress=show_progress)
    )  # fmt: skip
    components = [
        _without_unannotated(c, label_ids, (annotated or {}).get(case))
        for case, c in zip(pairs, components, strict=True)
    ]
    chosen = choose_from_components(components, label_ids, min_volume_mm3_from_fingerprint(fingerprint))
    save_postprocessing(chosen, out_path)
    logger.info(
        "post-processing chosen on %d case(s): %s; wrote %s",
        len(components),
        ", ".join(s.describe() for s in chosen.steps) or "none",
        out_path,
    )
    return chosen


# ------------------------------------------------------------------------------------------- internals


def _pair_components(
    pair: CasePair, label_ids: Sequence[int], ignore_label: int | None = None
) -> CaseComponents:
    """A case's components; voxels its reference labels ``ignore_label`` (unknown class) are not scored."""
    prediction, reference, geometry = read_pair(pair)
    prediction, reference = without_ignored(prediction, reference, ignore_label)
    return case_components(prediction, reference, geometry.spacing_mm, label_ids)


def _without_unannotated(
    case: CaseComponents, label_ids: Sequence[int], contoured: Sequence[int] | None
) -> CaseComponents:
    if contoured is None:
        return case
    return replace(case, unannotated=frozenset(label_ids) - set(contoured))


def _structure_voxels(reference: TargetVolume, label_ids: Sequence[int]) -> dict[int, int]:
    """Reference voxels of each class (one pass over a label map; one per structure of a region target)."""
    if is_region_target(reference):
        return {label: int(np.count_nonzero(structure_mask(reference, label))) for label in label_ids}
    counts = np.bincount(reference.ravel(), minlength=max(label_ids) + 1)
    return {label: int(counts[label]) for label in label_ids}


def _keep_largest_foreground(case: CaseComponents, kept: dict[int, BoolArray]) -> dict[int, BoolArray]:
    if case.foreground_sizes.size == 0:
        return kept
    largest = int(np.argmax(case.foreground_sizes))
    return {k: mask & (case.classes[k].foreground == largest) for k, mask in kept.items()}


def _keep_largest_class(
    case: CaseComponents, kept: dict[int, BoolArray], label: int, step: PostprocessingStep
) -> dict[int, BoolArray]:
    if not kept[label].any():
        return kept
    sizes = np.where(kept[label], case.classes[label].sizes, -1)
    only = np.zeros_like(kept[label])
    only[int(np.argmax(sizes))] = True  # the first of equally large ones, as keep_largest_component
    return {**kept, label: only}


def _remove_small_class(
    case: CaseComponents, kept: dict[int, BoolArray], label: int, step: PostprocessingStep
) -> dict[int, BoolArray]:
    assert step.min_volume_mm3 is not None
    large = case.classes[label].sizes * case.voxel_mm3 >= step.min_volume_mm3  # as remove_small_components
    return {**kept, label: kept[label] & large}


def _mean_dice(
    cases: Sequence[CaseComponents], kept: Sequence[dict[int, BoolArray]], label_ids: Sequence[int]
) -> dict[int, float]:
    """Per class, mean Dice over the cases where it is defined and contoured (NaN when it is nowhere)."""
    means = {}
    for label in label_ids:
        scores = []
        for case, mask in zip(cases, kept, strict=True):
            if label in case.unannotated:
                continue
            c = case.classes[label]
            dice = dice_from_counts(
                int(c.overlaps[mask[label]].sum()), int(c.sizes[mask[label]].sum()), c.reference_voxels
            )
            if not math.isnan(dice):
                scores.append(dice)
        means[label] = float(np.mean(scores)) if scores else math.nan
    return means


def _improves(before: Mapping[int, float], after: Mapping[int, float], tolerance: float) -> bool:
    """The mean over classes rises by more than ``tolerance`` and no class falls by more than it."""
    if any(after[k] < before[k] - tolerance or math.isnan(after[k]) > math.isnan(before[k]) for k in before):
        return False
    return _mean(after) > _mean(before) + tolerance


def _best_of(
    results: Sequence[tuple[PostprocessingStep, object, dict[int, float]]],
    current: Mapping[int, float],
    label: int,
    tolerance: float,
) -> PostprocessingStep | None:
    """The accepted option with the highest Dice of ``label``; a tie goes to the later (gentler) option."""
    best: PostprocessingStep | None = None
    best_dice = -math.inf
    for option, _, after in results:
        if _improves(current, after, tolerance) and after[label] >= best_dice - tolerance:
            best, best_dice = option, after[label]
    return best


def _mean(dice: Mapping[int, float]) -> float:
    values = [v for v in dice.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _bounding_box(mask: BoolArray) -> tuple[slice, ...]:
    """Bounding box of a mask (an empty box when the mask is empty)."""
    if not mask.any():
        return tuple(slice(0, 0) for _ in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)
