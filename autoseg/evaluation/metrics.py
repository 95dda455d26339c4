"""Segmentation metrics of one case: overlap, surface distance and volume, per class (label value).

:func:`evaluate_case` computes every field of :class:`ClassMetrics`; :func:`dice_per_label` is the fast path
(voxel counts only). Exact definitions, the conventions for empty masks and the libraries used are in
``docs/evaluation.md``. In short:

* Dice, IoU, precision and recall come from voxel counts (exact integers, counted here with numpy);
* a surface is the set of voxels of a mask with at least one face neighbour outside it (outside the image
  counts as outside); surface distances are Euclidean distances in mm between surface-voxel centres, from
  MONAI's ``get_edge_surface_distance`` (KD-tree, spacing-aware) on the bounding box of prediction or
  reference;
* ``hd95_mm`` is the larger of the two directed 95th percentiles (as MONAI's ``compute_hausdorff_distance``),
  ``assd_mm`` the mean of both directed distance sets together, ``surface_dice`` the fraction of both
  surfaces within ``tolerance_mm`` of the other (as MONAI's ``compute_surface_dice`` without sub-voxel areas);
* empty masks: both empty -> every ratio and distance is NaN (undefined; summaries leave it out of means and
  count it); exactly one empty -> Dice, IoU and surface Dice are 0, the distances NaN (counted as undefined),
  precision or recall NaN where its denominator is 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
import torch

from autoseg.errors import EvaluationError
from autoseg.regions import UNKNOWN, is_region_target, structure_mask
from autoseg.types import BoolVolume, LabelVolume, TargetVolume, Triple

DEFAULT_TOLERANCE_MM = 2.0
"""Default tolerance of the normalised surface Dice, in mm."""

CROP_MARGIN_VOXELS = 1
"""Margin in voxels around the bounding box of prediction or reference, kept for the surface computation."""


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case. NaN means undefined (see the module docstring).

    Attributes:
        dice: 2|P and R| / (|P| + |R|).
        iou: |P and R| / |P or R|.
        hd95_mm: 95th-percentile symmetric Hausdorff distance between the surfaces, mm.
        assd_mm: average symmetric surface distance, mm.
        surface_dice: normalised surface Dice at the evaluation tolerance, in [0, 1].
        precision: |P and R| / |P|.
        recall: |P and R| / |R| (sensitivity).
        prediction_volume_ml: |P| x voxel volume, millilitres.
        reference_volume_ml: |R| x voxel volume, millilitres.
        volume_difference_ml: prediction minus reference volume, millilitres (signed).
        prediction_empty: the prediction has no voxel of this class.
        reference_empty: the reference has no voxel of this class.
    """

    dice: float
    iou: float
    hd95_mm: float
    assd_mm: float
    surface_dice: float
    precision: float
    recall: float
    prediction_volume_ml: float
    reference_volume_ml: float
    volume_difference_ml: float
    prediction_empty: bool
    reference_empty: bool


METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ClassMetrics) if f.type == "float")
"""The numeric fields of :class:`ClassMetrics`, in order (summaries and CSV columns)."""


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of one class: true positives, predicted voxels, reference voxels."""

    true_positive: int
    predicted: int
    reference: int

    @property
    def dice(self) -> float:
        """Dice, NaN when both masks are empty (:func:`dice_from_counts`)."""
        return dice_from_counts(self.true_positive, self.predicted, self.reference)


def dice_from_counts(true_positive: int, predicted: int, reference: int) -> float:
    """Dice from voxel counts, ``2 |P and R| / (|P| + |R|)``: the one Dice of autoseg (evaluation, fold
    validation, the post-processing choice; training's pseudo-Dice on GPU tensors follows the same rule).

    Convention (``docs/evaluation.md``): NaN (undefined) when prediction and reference are both empty, to be
    left out of means and counted; 0 when exactly one is empty.
    """
    total = predicted + reference
    return 2.0 * true_positive / total if total else math.nan


def overlap_counts(
    prediction: LabelVolume, reference: LabelVolume, label_ids: Sequence[int]
) -> dict[int, OverlapCounts]:
    """Per-label voxel counts in three passes over the volumes (any label count, uint8 or uint16).

    Args:
        prediction: ``(Z, Y, X)`` unsigned integer label map, or a ``(K, Z, Y, X)`` region target
            (:mod:`autoseg.regions`: label id ``v`` is structure ``v``, channel ``v - 1``; masks may overlap).
        reference: the same kind, same shape.
        label_ids: label values (structure numbers) to count.
    """
    if prediction.shape != reference.shape:
        raise EvaluationError(f"prediction shape {prediction.shape} differs from reference {reference.shape}")
    if is_region_target(prediction):
        return {int(k): _mask_counts(prediction, reference, int(k)) for k in label_ids}
    size = max([int(prediction.max(initial=0)), int(reference.max(initial=0)), *label_ids]) + 1
    predicted = np.bincount(prediction.ravel(), minlength=size)
    actual = np.bincount(reference.ravel(), minlength=size)
    agreed = np.bincount(prediction[prediction == reference], minlength=size)
    return {int(k): OverlapCounts(int(agreed[k]), int(predicted[k]), int(actual[k])) for k in label_ids}


def _mask_counts(prediction: TargetVolume, reference: TargetVolume, value: int) -> OverlapCounts:
    predicted, actual = structure_mask(prediction, value), structure_mask(reference, value)
    return OverlapCounts(
        int(np.count_nonzero(predicted & actual)),
        int(np.count_nonzero(predicted)),
        int(np.count_nonzero(actual)),
    )


def without_ignored(
    prediction: TargetVolume, reference: TargetVolume, ignore_label: int | None
) -> tuple[TargetVolume, TargetVolume]:
    """Prediction and reference with the voxels the reference labels ``ignore_label`` (nnU-Net's ignore
    label: unknown class) set to background in both, so that no metric counts them, as nnU-Net's evaluation
    masks them out. A region reference marks them :data:`autoseg.regions.UNKNOWN` itself (read from an
    nnU-Net region dataset with an ignore label), channel by channel, whatever ``ignore_label`` (a label-map
    prediction loses the voxels unknown in any channel). Unchanged (not copied) when nothing is unknown."""
    if is_region_target(reference):
        unknown = reference == UNKNOWN
        if not unknown.any():
            return prediction, reference
        known_reference = np.where(unknown, 0, reference).astype(reference.dtype)
        hidden = unknown if is_region_target(prediction) else unknown.any(axis=0)
        return np.where(hidden, 0, prediction).astype(prediction.dtype), known_reference
    if ignore_label is None:
        return prediction, reference
    unknown = reference == ignore_label
    if not unknown.any():
        return prediction, reference
    return np.where(unknown, 0, prediction).astype(prediction.dtype), np.where(unknown, 0, reference).astype(
        reference.dtype
    )


def dice_per_label(
    prediction: LabelVolume, reference: LabelVolume, label_ids: Sequence[int]
) -> dict[int, float]:
    """Dice per label value (fast path, no distances); NaN where prediction and reference are both empty.

    Args:
        prediction: ``(Z, Y, X)`` uint8/uint16 label map.
        reference: ``(Z, Y, X)`` uint8/uint16 label map, same shape.
        label_ids: label values to score, e.g. the foreground classes ``(1, 2)``.
    """
    return {k: counts.dice for k, counts in overlap_counts(prediction, reference, label_ids).items()}


def surface_distances_mm(
    prediction: BoolVolume, reference: BoolVolume, spacing_mm: Triple
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distances from each prediction surface voxel to the reference surface, and back, in mm.

    Both masks are cropped to the bounding box of their union plus :data:`CROP_MARGIN_VOXELS` first.

    Args:
        prediction: ``(Z, Y, X)`` bool, not empty.
        reference: ``(Z, Y, X)`` bool, same shape, not empty.
        spacing_mm: voxel size ``(z, y, x)``.

    Returns:
        ``(prediction_to_reference, reference_to_prediction)``: 1D float64, one entry per surface voxel.
    """
    from monai.metrics.utils import get_edge_surface_distance  # imported here: MONAI is slow to import

    box = _bounding_box(prediction | reference, CROP_MARGIN_VOXELS)
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated ``always_return_as_numpy`` argument internally.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        _, distances, _ = get_edge_surface_distance(
            torch.from_numpy(np.ascontiguousarray(prediction[box])),
            torch.from_numpy(np.ascontiguousarray(reference[box])),
            spacing=[float(s) for s in spacing_mm],
            symmetric=True,
            warn_empty=False,
        )
    forward, backward = (np.asarray(d.numpy(), dtype=np.float64) for d in distances)
    return forward, backward


def evaluate_case(
    prediction: LabelVolume,
    reference: LabelVolume,
    spacing_mm: Triple,
    label_ids: Sequence[int],
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> dict[int, ClassMetrics]:
    """Every metric of :class:`ClassMetrics` for each label of one case.

    Args:
        prediction: ``(Z, Y, X)`` uint8/uint16 label map.
        reference: ``(Z, Y, X)`` uint8/uint16 label map on the same grid.
        spacing_mm: voxel size ``(z, y, x)`` in mm.
        label_ids: label values to evaluate (usually the foreground classes).
        tolerance_mm: tolerance of the normalised surface Dice.
    """
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = overlap_counts(prediction, reference, label_ids)
    result: dict[int, ClassMetrics] = {}
    for label, count in counts.items():
        distances = (math.nan, math.nan, math.nan)
        if count.predicted and count.reference:
            forward, backward = surface_distances_mm(
                structure_mask(prediction, label), structure_mask(reference, label), spacing_mm
            )
            distances = _distance_summaries(forward, backward, tolerance_mm)
        elif count.predicted or count.reference:
            distances = (math.nan, math.nan, 0.0)
        result[label] = class_metrics(count, distances, voxel_ml)
    return result


def _distance_summaries(
    forward: npt.NDArray[np.float64], backward: npt.NDArray[np.float64], tolerance_mm: float
) -> tuple[float, float, float]:
    """``(hd95_mm, assd_mm, surface_dice)`` from the two directed surface-distance sets."""
    hd95 = max(float(np.percentile(forward, 95)), float(np.percentile(backward, 95)))
    total = forward.size + backward.size
    assd = (float(forward.sum()) + float(backward.sum())) / total
    within = int(np.count_nonzero(forward <= tolerance_mm)) + int(np.count_nonzero(backward <= tolerance_mm))
    return hd95, assd, within / total


def class_metrics(
    count: OverlapCounts, distances: tuple[float, float, float], voxel_ml: float
) -> ClassMetrics:
    union = count.predicted + count.reference - count.true_positive
    return ClassMetrics(
        dice=count.dice,
        iou=count.true_positive / union if union else math.nan,
        hd95_mm=distances[0],
        assd_mm=distances[1],
        surface_dice=distances[2],
        precision=count.true_positive / count.predicted if count.predicted else math.nan,
        recall=count.true_positive / count.reference if count.reference else math.nan,
        prediction_volume_ml=count.predicted * voxel_ml,
        reference_volume_ml=count.reference * voxel_ml,
        volume_difference_ml=(count.predicted - count.reference) * voxel_ml,
        prediction_empty=count.predicted == 0,
        reference_empty=count.reference == 0,
    )


def _bounding_box(mask: BoolVolume, margin: int) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty mask, widened by ``margin`` voxels (clipped to the array)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(max(0, int(hits[0]) - margin), min(mask.shape[axis], int(hits[-1]) + 1 + margin)))
    return tuple(box)
