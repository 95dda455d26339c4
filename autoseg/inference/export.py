"""Bounded-memory export: the members' probabilities back on the input's grid, one class at a time.

Today's way of bringing a prediction home (:func:`autoseg.preprocessing.case.restore_probabilities`, then
the argmax) holds ``(K, Z, Y, X)`` float32 on the input's grid: 73 GB for a 117-class model on a
600 x 512 x 512 CT. Here each class's channel is restored on its own (resampled linearly to the cropped grid,
uncropped, the canonical orientation undone, averaged over the configurations) with exactly the operations
``restore_probabilities`` applies to that channel, and folded into a running argmax (softmax: the lowest
class with the highest probability, as ``argmax``) or thresholded (region-based sigmoids, >= 0.5). So the
labels are bit for bit those of the materialising path (``tests/test_export_memory.py``), and the input grid
holds a few float32 volumes whatever the number of classes: the running maximum, the channel being restored,
its resampled crop (and for an ensemble the member being added).

The structure table's confidences come out of the same pass: for softmax the running maximum is the winning
class's probability, so a structure's mean confidence is the mean of that map inside it (post-processing only
removes voxels; a class that gained voxels anyway has its channel restored again); for region targets each
structure's sum inside its mask is kept, and a structure whose mask post-processing changed is restored
again. ``--save-probabilities`` streams each channel to the ``.npz`` as it is restored
(:class:`autoseg.io.ProbabilityStream`), so that file never exists in memory either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoseg.io import Geometry, ProbabilityStream
from autoseg.preprocessing.case import CaseProperties
from autoseg.preprocessing.orientation import canonical_view, from_canonical
from autoseg.preprocessing.resample import resample_volume
from autoseg.regions import REGION_THRESHOLD, crop, is_region_target, structure_boxes, structure_mask
from autoseg.types import FloatVolume, TargetVolume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberPredictions:
    """Each configuration's probabilities on its network grid, with the properties that map them back.

    Attributes:
        probabilities: per member ``(K, Z', Y', X')`` float32, or float16 for a large one (the plan's
            spacing, cropped, canonical; :func:`autoseg.inference.inputs.network_grid_dtype`).
        properties: per member, how its image was preprocessed.
        regions: per-structure sigmoids (region-based model) rather than softmax classes.
    """

    probabilities: Sequence[FloatVolume]
    properties: Sequence[CaseProperties]
    regions: bool = False
    resample_device: str | None = None
    """A torch device (``"cuda:0"``) to resample each channel on (:func:`resample_linear_torch`), as predict
    does when it runs on a GPU; ``None``: SimpleITK on the CPU. The two agree within 2e-6."""

    @classmethod
    def on_grid(
        cls, probabilities: FloatVolume, geometry: Geometry, *, regions: bool = False
    ) -> MemberPredictions:
        """One prediction already on the input's grid (``(K, Z, Y, X)``, nothing to undo)."""
        z, y, x = (int(n) for n in probabilities.shape[1:])
        properties = CaseProperties(
            identifier="case",
            original_shape=(z, y, x),
            original_geometry=geometry,
            crop_box=((0, z), (0, y), (0, x)),
            cropped_shape=(z, y, x),
            spacing_mm=geometry.spacing_mm,
            preprocessed_shape=(z, y, x),
        )
        return cls([probabilities], [properties], regions=regions)

    @property
    def num_channels(self) -> int:
        """``K``: the classes (background first), or the structures."""
        return int(self.probabilities[0].shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """The input's own grid."""
        return self.properties[0].original_shape

    def channel(self, index: int) -> FloatVolume:
        """Channel ``index`` on the input's grid, ``(Z, Y, X)`` float32, averaged over the members: the
        same values as channel ``index`` of the members' :func:`restore_probabilities` averaged."""
        device, fill = self.resample_device, self._fill(index)
        total = _restore_channel(self.probabilities[0][index], self.properties[0], fill, device)
        for probabilities, properties in zip(self.probabilities[1:], self.properties[1:], strict=True):
            total += _restore_channel(probabilities[index], properties, fill, device)
        if len(self.probabilities) > 1:
            total /= len(self.probabilities)
        return total

    def _fill(self, index: int) -> float:
        """The probability outside the crop box: the background is certain there."""
        return float(index == 0 and not self.regions)


@dataclass(frozen=True)
class RestoredTarget:
    """The prediction on the input's grid, before post-processing.

    Attributes:
        target: ``(Z, Y, X)`` label map (uint8, uint16 above 256 classes) or ``(K, Z, Y, X)`` uint8 masks.
        winner: softmax only: ``(Z, Y, X)`` float32, the probability of each voxel's label.
        sums: region targets only: structure number -> the sum of its sigmoid inside its mask.
    """

    target: TargetVolume
    winner: FloatVolume | None
    sums: dict[int, float]


def restore_target(
    predictions: MemberPredictions, *, stream: ProbabilityStream | None = None
) -> RestoredTarget:
    """Labels (or structure masks) of the members' mean probabilities on the input's grid, one channel at a
    time; each channel also goes to ``stream`` when given (``--save-probabilities``)."""
    if predictions.regions:
        return _restore_regions(predictions, stream)
    classes = predictions.num_channels
    if classes > 65536:
        raise ValueError(f"{classes} classes do not fit a uint16 label map")
    best = predictions.channel(0)
    if stream is not None:
        stream.write(best)
    labels = np.zeros(predictions.shape, np.uint8 if classes <= 256 else np.uint16)
    for index in range(1, classes):
        score = predictions.channel(index)
        if stream is not None:
            stream.write(score)
        better = score > best  # strictly: a tie stays with the lower class, as argmax
        np.putmask(labels, better, index)
        np.maximum(best, score, out=best)
        del score, better
    return RestoredTarget(labels, best, {})


def _restore_regions(predictions: MemberPredictions, stream: ProbabilityStream | None) -> RestoredTarget:
    masks = np.empty((predictions.num_channels, *predictions.shape), np.uint8)
    sums: dict[int, float] = {}
    for index in range(predictions.num_channels):
        score = predictions.channel(index)
        if stream is not None:
            stream.write(score)
        inside = score >= REGION_THRESHOLD
        masks[index] = inside
        if inside.any():
            sums[index + 1] = float(score[inside].sum(dtype=np.float64))
    return RestoredTarget(masks, None, sums)


def target_confidences(
    final: TargetVolume, restored: RestoredTarget, predictions: MemberPredictions, values: Sequence[int]
) -> dict[int, float]:
    """Mean probability of each present structure's own class (its own sigmoid) inside it, on the
    post-processed ``final`` target: what :func:`autoseg.report.structures.structure_confidences` gives
    with the full probabilities."""
    found: dict[int, float] = {}
    region = is_region_target(final)
    for value, box in structure_boxes(final, values).items():
        inside = structure_mask(crop(final, box), value)
        if region and np.array_equal(structure_mask(final, value), structure_mask(restored.target, value)):
            found[value] = restored.sums[value] / float(np.count_nonzero(inside))
        elif (
            not region
            and restored.winner is not None
            and not np.any(inside & ~structure_mask(crop(restored.target, box), value))
        ):
            found[value] = float(restored.winner[box][inside].mean(dtype=np.float64))
        else:  # post-processing changed the structure beyond removing voxels: restore its channel again
            channel = predictions.channel(value - 1 if region else value)
            found[value] = float(channel[box][inside].mean(dtype=np.float64))
    return found


def resample_linear_torch(volume: np.ndarray, shape: Sequence[int], device: str) -> FloatVolume:
    """:func:`autoseg.preprocessing.resample.resample_volume` of order 1 on a torch ``device``: trilinear
    interpolation with the grids sharing their outer edges (``align_corners=False``, which clamps at the
    edges as ITK does); float32, back on the CPU. Raises ``torch.OutOfMemoryError`` when it does not fit."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        tensor = torch.from_numpy(np.ascontiguousarray(volume, np.float32)).to(device)
        out = F.interpolate(tensor[None, None], size=tuple(shape), mode="trilinear", align_corners=False)
        result: FloatVolume = out[0, 0].cpu().numpy()
    return result


def _resample_channel(channel: FloatVolume, shape: tuple[int, int, int], device: str | None) -> np.ndarray:
    """Linear resampling of one channel, on ``device`` when given (SimpleITK on the CPU when it is not, or
    when the device runs out of memory)."""
    if device is None or tuple(channel.shape) == tuple(shape):
        return resample_volume(channel, shape, 1)
    import torch

    try:
        return resample_linear_torch(channel, shape, device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        logger.warning("resampling a %s channel did not fit %s; resampled on the CPU", shape, device)
        return resample_volume(channel, shape, 1)


def _restore_channel(
    channel: FloatVolume, properties: CaseProperties, fill: float, device: str | None = None
) -> FloatVolume:
    """One ``(Z', Y', X')`` channel -> the input's grid: linear resampling to the cropped grid (on
    ``device`` when given), ``fill`` outside the crop box, the canonical orientation undone (a permutation,
    or linear resampling in world space for an oblique image): the operations of ``restore_probabilities``
    on one channel."""
    restored = _resample_channel(channel, properties.cropped_shape, device)
    orientation = properties.orientation
    if orientation is None and properties.cropped_shape == properties.original_shape:  # nothing to uncrop
        return np.array(restored, np.float32) if restored is channel else np.asarray(restored, np.float32)
    oblique = orientation is not None and orientation.kind == "resample"
    shape = properties.canonical_shape if oblique else properties.original_shape
    full = np.full(shape, fill, np.float32)
    canonical = full if orientation is None or oblique else canonical_view(full, orientation)
    (z0, z1), (y0, y1), (x0, x1) = properties.crop_box
    canonical[z0:z1, y0:y1, x0:x1] = restored
    del restored
    if orientation is None or not oblique:
        return full
    original = properties.original_geometry
    result: FloatVolume = from_canonical(
        full, orientation, properties.original_shape, original, 1, default=fill
    )
    return result
