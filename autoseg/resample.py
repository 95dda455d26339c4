"""Resampling between voxel grids of the same physical extent, through SimpleITK's multithreaded filters.

Voxel ``j`` of an axis resampled from ``n`` to ``m`` voxels sits at input index ``(j + 0.5) * n / m - 0.5``:
the grids share their outer edges, as in nnU-Net (``skimage.transform.resize``). Orders: 0 nearest, 1 linear,
3 cubic B-spline (interpolating). For anisotropic data the plan names a ``separate_axis``: the other two axes
are resampled first with the in-plane order, then that axis with its own order (0: nearest slice). Labels are
resampled per class on one-hot masks and recombined by argmax, which keeps thin structures that nearest
neighbour would drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.plans import ResamplingPlan
from autoseg.types import FloatVolume, LabelVolume

_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


def target_shape(
    shape: Sequence[int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> tuple[int, int, int]:
    """``round(shape * spacing / target_spacing)`` per axis, at least 1: the grid of the same extent."""
    a, b, c = (max(1, round(n * s / t)) for n, s, t in zip(shape, spacing_mm, target_spacing_mm, strict=True))
    return a, b, c


def resample_volume(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` float32 volume to ``shape`` with one interpolation order on every axis."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    if order not in _INTERPOLATORS:
        raise ValueError(f"interpolation order {order} is not one of {sorted(_INTERPOLATORS)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    ratio = [n / m for n, m in zip(volume.shape[::-1], shape[::-1], strict=True)]  # ITK order (x, y, z)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(m) for m in shape[::-1]])
    resampler.SetOutputSpacing(ratio)
    resampler.SetOutputOrigin([0.5 * r - 0.5 for r in ratio])
    resampler.SetInterpolator(_INTERPOLATORS[order])
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampled: np.ndarray = sitk.GetArrayFromImage(resampler.Execute(image))
    return resampled


def resample_image(image: FloatVolume, shape: Sequence[int], plan: ResamplingPlan) -> FloatVolume:
    """Resample every channel of ``(C, Z, Y, X)`` to ``shape`` as the plan says."""
    channels = [
        _resample_separable(channel, shape, plan.image_order, plan.image_order_separate, plan.separate_axis)
        for channel in image
    ]
    return np.stack(channels).astype(np.float32, copy=False)


def resample_labels(labels: LabelVolume, shape: Sequence[int], plan: ResamplingPlan) -> LabelVolume:
    """Resample a ``(Z, Y, X)`` label map: per-class masks with the plan's label orders, then argmax."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    if plan.label_order == 0 and (plan.separate_axis is None or plan.label_order_separate == 0):
        return _nearest(labels, shape)
    best = np.full(tuple(shape), -1.0, np.float32)
    result = np.zeros(tuple(shape), labels.dtype)
    for value in np.unique(labels):  # background included: argmax over every class's interpolated mask
        mask = (labels == value).astype(np.float32)
        score = _resample_separable(
            mask, shape, plan.label_order, plan.label_order_separate, plan.separate_axis
        )
        better = score > best
        result[better] = value
        np.maximum(best, score, out=best)
    return result


def resample_probabilities(probabilities: FloatVolume, shape: Sequence[int]) -> FloatVolume:
    """Resample ``(K, Z, Y, X)`` class probabilities with linear interpolation (for predictions)."""
    return np.stack([resample_volume(p, shape, 1) for p in probabilities]).astype(np.float32, copy=False)


def _resample_separable(
    volume: np.ndarray, shape: Sequence[int], order: int, order_separate: int, separate: int | None
) -> np.ndarray:
    if separate is None or volume.shape[separate] == shape[separate]:
        return resample_volume(volume, shape, order)
    in_plane = list(shape)
    in_plane[separate] = volume.shape[separate]
    planar = resample_volume(volume, in_plane, order)
    return _along_axis(planar, shape[separate], separate, order_separate)


def _along_axis(volume: np.ndarray, size: int, axis: int, order: int) -> np.ndarray:
    """Resample one axis only: nearest slice (order 0) by indexing, otherwise through
    :func:`resample_volume`."""
    if order == 0:
        n = volume.shape[axis]
        index = np.minimum(np.floor((np.arange(size) + 0.5) * n / size).astype(np.int64), n - 1)
        taken: np.ndarray = np.take(volume, index, axis=axis)
        return taken
    shape = list(volume.shape)
    shape[axis] = size
    return resample_volume(volume.astype(np.float32, copy=False), shape, order)


def _nearest(labels: LabelVolume, shape: Sequence[int]) -> LabelVolume:
    result = labels
    for axis, size in enumerate(shape):
        if result.shape[axis] != size:
            result = _along_axis(result, size, axis, 0)
    return result
