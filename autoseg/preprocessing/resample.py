"""Resampling between voxel grids of the same physical extent, through SimpleITK's multithreaded filters.

Voxel ``j`` of an axis resampled from ``n`` to ``m`` voxels sits at input index ``(j + 0.5) * n / m - 0.5``:
the grids share their outer edges, as in nnU-Net (``skimage.transform.resize``). Orders: 0 nearest, 1 linear,
3 cubic B-spline (interpolating). For anisotropic data the plan names a ``separate_axis``: that axis is
resampled on its own with its own order (0: nearest slice), the other two with the in-plane order. Labels are
resampled per class on one-hot masks and recombined by argmax, which keeps thin structures that nearest
neighbour would drop.

Memory stays bounded on large volumes: the output is produced in slabs along the first axis of at most
:data:`SLAB_VOXELS` voxels, each from the input slices it needs plus a halo (8 slices for the B-spline, whose
prefilter decays by 0.27 per voxel, so the truncation error stays below 1e-4 of the signal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from autoseg.io import Geometry
from autoseg.plans import ResamplingPlan
from autoseg.types import FloatVolume, LabelVolume, TargetVolume

_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}
_HALO = {0: 1, 1: 2, 3: 8}
SLAB_VOXELS = 8 * 2**20
"""Output voxels per slab (32 MiB of float32)."""


def target_shape(
    shape: Sequence[int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> tuple[int, int, int]:
    """``round(shape * spacing / target_spacing)`` per axis, at least 1: the grid of the same extent."""
    a, b, c = (max(1, round(n * s / t)) for n, s, t in zip(shape, spacing_mm, target_spacing_mm, strict=True))
    return a, b, c


def resample_volume(
    volume: np.ndarray, shape: Sequence[int], order: int, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` volume to ``shape`` (float32) with one interpolation order on every axis.

    Writes into ``out`` (float32, ``shape``) when given, so a caller can fill a preallocated array.
    """
    if order not in _INTERPOLATORS:
        raise ValueError(f"interpolation order {order} is not one of {sorted(_INTERPOLATORS)}")
    if out is None:
        if tuple(volume.shape) == tuple(shape):
            return volume
        out = np.empty(tuple(shape), np.float32)
    if tuple(volume.shape) == tuple(shape):
        out[...] = volume
        return out
    if order == 0:  # exact index arithmetic; ITK's rounding of ties can differ between slabs
        out[...] = _nearest(volume, shape)
        return out
    for (j0, j1), (i0, i1) in _slabs(volume.shape[0], shape, order):
        out[j0:j1] = _resample_block(volume[i0:i1], i0, volume.shape[0], shape, j0, j1, order)
    return out


def resample_image(image: FloatVolume, shape: Sequence[int], plan: ResamplingPlan) -> FloatVolume:
    """Resample every channel of ``(C, Z, Y, X)`` to ``shape`` as the plan says (float32)."""
    out = np.empty((image.shape[0], *shape), np.float32)
    for channel in range(image.shape[0]):
        _resample_with_plan(
            image[channel],
            shape,
            plan.image_order,
            plan.image_order_separate,
            plan.separate_axis,
            out=out[channel],
        )
    return out


def resample_labels(labels: LabelVolume, shape: Sequence[int], plan: ResamplingPlan) -> LabelVolume:
    """Resample a ``(Z, Y, X)`` label map: per-class masks with the plan's label orders, then argmax.

    Works slab by slab, so memory stays at the output plus one slab per class, whatever the number of classes.
    """
    if tuple(labels.shape) == tuple(shape):
        return labels
    if plan.label_order == 0 and (plan.separate_axis is None or plan.label_order_separate == 0):
        return _nearest(labels, shape)
    if plan.label_order == 1:
        separate, order_z = plan.separate_axis, plan.label_order_separate
        if separate == 0 and order_z == 0 and labels.shape[0] != shape[0]:  # nearest slice, then in plane
            return resample_labels_in_boxes(labels[nearest_index(labels.shape[0], shape[0])], shape)
        if separate is None or labels.shape[separate] == shape[separate] or order_z == 1:
            return resample_labels_in_boxes(labels, shape)
    return _resample_labels_whole(labels, shape, plan)


def resample_labels_in_boxes(labels: LabelVolume, shape: Sequence[int]) -> LabelVolume:
    """Linear one-hot resampling of a ``(Z, Y, X)`` label map, each class inside its bounding box only.

    The same labels as resampling every class over the whole volume (:func:`_resample_labels_whole`,
    tested equal): a class's interpolated mask is exactly 0 wherever its linear support holds none of its
    voxels, and a voxel goes to the lowest class with the highest score, which is positive (the masks sum
    to 1). So each class is interpolated on its box plus the voxels whose support reaches into it, and the
    work per class follows its size, not the volume's: the many-class case (117 structures) costs about
    one volume for the background plus the structures' boxes (``docs/benchmarks.md``).
    """
    from scipy.ndimage import find_objects

    result = np.zeros(tuple(shape), labels.dtype)
    boxes: list[tuple[int, tuple[slice, ...]]] = [(0, tuple(slice(0, n) for n in labels.shape))]
    boxes += [(v + 1, box) for v, box in enumerate(find_objects(labels)) if box is not None]
    rows = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
    for j0 in range(0, shape[0], rows):
        j1 = min(shape[0], j0 + rows)
        best = np.zeros((j1 - j0, *shape[1:]), np.float32)  # every voxel's winner scores above 0
        for value, box in boxes:
            out_box = _output_box(box, labels.shape, shape, (j0, j1))
            if out_box is None:
                continue
            inputs = [
                _input_range(n, m, a, b, 1) for n, m, (a, b) in zip(labels.shape, shape, out_box, strict=True)
            ]
            block = labels[tuple(slice(a, b) for a, b in inputs)] == value
            if value == 0 or block.any():
                score = _resample_region(block, inputs, labels.shape, shape, out_box)
                local = (
                    slice(out_box[0][0] - j0, out_box[0][1] - j0),
                    *(slice(a, b) for a, b in out_box[1:]),
                )
                better = score > best[local]
                result[j0:j1][local][better] = value
                np.maximum(best[local], score, out=best[local])
    return result


def _resample_labels_whole(labels: LabelVolume, shape: Sequence[int], plan: ResamplingPlan) -> LabelVolume:
    """Every class's mask interpolated over the whole volume, slab by slab, then argmax (the lowest class
    on a tie): the general path (any order, any separate axis)."""
    values = [int(v) for v in np.unique(labels)]
    result = np.zeros(tuple(shape), labels.dtype)
    for (j0, j1), block in _label_blocks(labels, shape, plan):
        best = np.full((j1 - j0, *shape[1:]), -1.0, np.float32)
        for value in values:  # background included: argmax over every class's interpolated mask
            score = block(value)
            better = score > best
            result[j0:j1][better] = value
            np.maximum(best, score, out=best)
    return result


def resample_target(target: TargetVolume, shape: Sequence[int], plan: ResamplingPlan) -> TargetVolume:
    """A label map (:func:`resample_labels`) or a ``(K, Z, Y, X)`` region target resampled structure by
    structure (each binary mask as a two-class label map: interpolated, kept where it is at least 0.5)."""
    if target.ndim == 3:
        return resample_labels(target, shape, plan)
    out = np.empty((target.shape[0], *shape), np.uint8)
    for k in range(target.shape[0]):
        out[k] = resample_labels(np.asarray(target[k], np.uint8), shape, plan)
    return out


def resample_probabilities(probabilities: FloatVolume, shape: Sequence[int]) -> FloatVolume:
    """Resample ``(K, Z, Y, X)`` class probabilities with linear interpolation (for predictions)."""
    out = np.empty((probabilities.shape[0], *shape), np.float32)
    for k, channel in enumerate(probabilities):
        resample_volume(channel, shape, 1, out=out[k])
    return out


# ------------------------------------------------------------------------------------------- internals


def _resample_with_plan(
    volume: np.ndarray,
    shape: Sequence[int],
    order: int,
    order_separate: int,
    separate: int | None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    if separate is None or volume.shape[separate] == shape[separate]:
        return resample_volume(volume, shape, order, out=out)
    if separate == 0 and order_separate == 0:  # nearest slice along z, then each slice in plane
        index = nearest_index(volume.shape[0], shape[0])
        result = np.empty(tuple(shape), np.float32) if out is None else out
        if order >= 2:
            for j, i in enumerate(index):
                _resample_slice(volume[i], shape[1:], order, result[j])
            return result
        rows = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
        for j0 in range(0, shape[0], rows):
            j1 = min(shape[0], j0 + rows)
            resample_volume(volume[index[j0:j1]], (j1 - j0, *shape[1:]), order, out=result[j0:j1])
        return result
    result = _resample_separable_axis(volume, shape, order, order_separate, separate)
    if out is not None:
        out[...] = result
        return out
    return result


def _resample_separable_axis(
    volume: np.ndarray, shape: Sequence[int], order: int, order_separate: int, separate: int
) -> np.ndarray:
    """The general (rarer) case: a separate axis other than z, or a non-nearest order along it."""
    in_plane = list(shape)
    in_plane[separate] = volume.shape[separate]
    planar = resample_volume(volume, in_plane, order)
    if order_separate == 0:
        taken: np.ndarray = np.take(
            planar, nearest_index(volume.shape[separate], shape[separate]), axis=separate
        )
        return taken
    moved = np.moveaxis(planar, separate, 0)
    resampled = resample_volume(
        moved, (shape[separate], *np.delete(np.array(shape), separate)), order_separate
    )
    return np.moveaxis(resampled, 0, separate)


def _nearest(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling by index arithmetic, in the input's dtype."""
    depth, rows, columns = (nearest_index(n, m) for n, m in zip(volume.shape, shape, strict=True))
    out = np.empty(tuple(shape), volume.dtype)
    step = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
    for j0 in range(0, shape[0], step):
        out[j0 : j0 + step] = volume[depth[j0 : j0 + step]][:, rows][:, :, columns]
    return out


def _resample_slice(plane: np.ndarray, shape: Sequence[int], order: int, out: np.ndarray) -> None:
    """In-plane spline resampling of one 2D slice with SciPy (same grid convention as ITK's path).

    Measured (``docs/design.md``): a cubic spline on 2D slices takes a quarter of the time per core that ITK's
    3D B-spline needs for the same in-plane resampling, since ITK evaluates 64 taps where 16 suffice.
    """
    if tuple(plane.shape) == tuple(shape):
        out[...] = plane
        return
    ratio = [n / m for n, m in zip(plane.shape, shape, strict=True)]
    ndimage.affine_transform(
        np.asarray(plane, dtype=np.float32),
        ratio,
        offset=[0.5 * r - 0.5 for r in ratio],
        output_shape=tuple(shape),
        output=out,
        order=order,
        mode="reflect",
    )


def nearest_index(n: int, m: int) -> np.ndarray:
    """For each of ``m`` output positions along an axis of ``n`` voxels, the nearest input index."""
    return np.minimum(np.floor((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)


def _label_blocks(
    labels: LabelVolume, shape: Sequence[int], plan: ResamplingPlan
) -> Iterator[tuple[tuple[int, int], Callable[[int], np.ndarray]]]:
    """Output slabs, each with a function giving one class's interpolated mask on that slab."""
    order, separate, order_z = plan.label_order, plan.separate_axis, plan.label_order_separate
    if separate == 0 and order_z == 0 and labels.shape[0] != shape[0]:
        index = nearest_index(labels.shape[0], shape[0])
        rows = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
        for j0 in range(0, shape[0], rows):
            j1 = min(shape[0], j0 + rows)
            yield (j0, j1), partial(_planar_mask, labels[index[j0:j1]], (j1 - j0, *shape[1:]), order)
        return
    if separate is None or labels.shape[separate] == shape[separate] or order_z == order:
        for (j0, j1), (i0, i1) in _slabs(labels.shape[0], shape, order):
            yield (j0, j1), partial(_block_mask, labels[i0:i1], i0, labels.shape[0], shape, j0, j1, order)
        return
    yield (0, shape[0]), partial(_separable_mask, labels, shape, order, order_z, separate)


def _planar_mask(slices: LabelVolume, shape: Sequence[int], order: int, value: int) -> np.ndarray:
    return resample_volume((slices == value).astype(np.float32), shape, order)


def _block_mask(
    block: LabelVolume, i0: int, n: int, shape: Sequence[int], j0: int, j1: int, order: int, value: int
) -> np.ndarray:
    return _resample_block((block == value).astype(np.float32), i0, n, shape, j0, j1, order)


def _separable_mask(
    labels: LabelVolume, shape: Sequence[int], order: int, order_z: int, separate: int, value: int
) -> np.ndarray:
    return _resample_with_plan((labels == value).astype(np.float32), shape, order, order_z, separate)


def _slabs(n: int, shape: Sequence[int], order: int) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """Output slabs ``[j0, j1)`` along the first axis with the input rows ``[i0, i1)`` they need."""
    m = shape[0]
    rows = max(1, SLAB_VOXELS // max(1, math.prod(shape[1:])))
    halo = _HALO[order]
    for j0 in range(0, m, rows):
        j1 = min(m, j0 + rows)
        first, last = (j0 + 0.5) * n / m - 0.5, (j1 - 0.5) * n / m - 0.5
        yield (j0, j1), (max(0, math.floor(first) - halo), min(n, math.ceil(last) + halo + 1))


def _input_range(n: int, m: int, j0: int, j1: int, order: int) -> tuple[int, int]:
    """The input rows ``[i0, i1)`` of an ``n``-row axis that output rows ``[j0, j1)`` of ``m`` need."""
    first, last = (j0 + 0.5) * n / m - 0.5, (j1 - 0.5) * n / m - 0.5
    halo = _HALO[order]
    return max(0, math.floor(first) - halo), min(n, math.ceil(last) + halo + 1)


def _output_box(
    box: tuple[slice, ...], size: Sequence[int], shape: Sequence[int], rows: tuple[int, int]
) -> list[tuple[int, int]] | None:
    """The output voxels (within output ``rows`` of the first axis) whose linear support reaches into the
    input ``box``, with a voxel to spare on each side; ``None`` when there are none."""
    found = []
    for axis, (part, n, m) in enumerate(zip(box, size, shape, strict=True)):
        a, b = int(part.start), int(part.stop)
        lo = max(0, math.floor((a - 0.5) * m / n - 0.5) - 1)
        hi = min(m, math.ceil((b + 0.5) * m / n - 0.5) + 2)
        if axis == 0:
            lo, hi = max(lo, rows[0]), min(hi, rows[1])
        if lo >= hi:
            return None
        found.append((lo, hi))
    return found


def _resample_region(
    block: np.ndarray,
    inputs: Sequence[tuple[int, int]],
    size: Sequence[int],
    shape: Sequence[int],
    out_box: Sequence[tuple[int, int]],
) -> np.ndarray:
    """Linear resampling of the input crop ``block`` (rows ``inputs`` of a ``size`` volume) onto the output
    voxels ``out_box`` of the ``shape`` grid (the grid convention of :func:`_resample_block`)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(block, dtype=np.float32))
    image.SetOrigin([float(inputs[axis][0]) for axis in (2, 1, 0)])
    ratio = [size[axis] / shape[axis] for axis in (2, 1, 0)]  # ITK order (x, y, z)
    starts = [out_box[axis][0] for axis in (2, 1, 0)]
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(out_box[axis][1] - out_box[axis][0]) for axis in (2, 1, 0)])
    resampler.SetOutputSpacing(ratio)
    resampler.SetOutputOrigin([(j + 0.5) * r - 0.5 for j, r in zip(starts, ratio, strict=True)])
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampled = resampler.Execute(image)
    del image
    return sitk.GetArrayViewFromImage(resampled).copy()


def _resample_block(
    block: np.ndarray, i0: int, n: int, shape: Sequence[int], j0: int, j1: int, order: int
) -> np.ndarray:
    """Resample input rows ``[i0, i0 + len(block))`` of an ``n``-row volume to output rows ``[j0, j1)``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(block, dtype=np.float32))
    image.SetOrigin((0.0, 0.0, float(i0)))
    ratio = [block.shape[2] / shape[2], block.shape[1] / shape[1], n / shape[0]]  # ITK order (x, y, z)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(shape[2]), int(shape[1]), int(j1 - j0)])
    resampler.SetOutputSpacing(ratio)
    resampler.SetOutputOrigin([0.5 * ratio[0] - 0.5, 0.5 * ratio[1] - 0.5, (j0 + 0.5) * ratio[2] - 0.5])
    resampler.SetInterpolator(_INTERPOLATORS[order])
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampled = resampler.Execute(image)
    del image
    return sitk.GetArrayViewFromImage(resampled).copy()


def resample_onto_grid(
    volume: np.ndarray,
    source: Geometry,
    target: Geometry,
    shape: Sequence[int],
    order: int,
    *,
    default: float = 0.0,
) -> FloatVolume:
    """Resample a ``(Z, Y, X)`` volume on grid ``source`` onto grid ``target`` of ``shape`` in world space
    (float32); target voxels outside the source take ``default``. Any directions: this is what brings an
    oblique image onto an axis-aligned grid and back (:mod:`autoseg.preprocessing.orientation`)."""
    if order not in _INTERPOLATORS:
        raise ValueError(f"interpolation order {order} is not one of {sorted(_INTERPOLATORS)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    _set_itk_geometry(image, source)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(shape[2]), int(shape[1]), int(shape[0])])
    resampler.SetOutputSpacing([float(v) for v in target.spacing_mm[::-1]])
    resampler.SetOutputOrigin([float(v) for v in target.origin_mm[::-1]])
    resampler.SetOutputDirection(_itk_direction(target))
    resampler.SetInterpolator(_INTERPOLATORS[order])
    resampler.SetDefaultPixelValue(float(default))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampled = resampler.Execute(image)
    del image
    return sitk.GetArrayViewFromImage(resampled).copy()


def _set_itk_geometry(image: sitk.Image, geometry: Geometry) -> None:
    image.SetSpacing([float(v) for v in geometry.spacing_mm[::-1]])
    image.SetOrigin([float(v) for v in geometry.origin_mm[::-1]])
    image.SetDirection(_itk_direction(geometry))


def _itk_direction(geometry: Geometry) -> list[float]:
    """ITK's direction (rows physical ``x, y, z``, columns index ``i, j, k``) of an autoseg geometry."""
    return [float(v) for v in geometry.direction_matrix()[::-1, ::-1].ravel()]
