"""Canonical orientation: what the network sees does not depend on how a file stores its axes.

The canonical orientation is the identity DICOM/ITK direction (``plans.CANONICAL_AXIS_CODE``, "LPS"): array
axes ``(z, y, x)`` increase towards patient superior, posterior and left. Most axial CT is stored so and
passes through untouched; a NIfTI in RAS, a series with reversed slice order, or a sagittal acquisition
stored with its axes permuted is brought to it by an exact permutation and flip of its array (a numpy view:
no resampling, no interpolation, bit-exact inverse). An oblique image, one whose array axes are more than
``OrientationPlan.oblique_threshold_deg`` from the nearest patient axes, has no exact permutation: it is
resampled in world space onto the axis-aligned grid at the plan's spacing that covers it, and predictions
are resampled back onto its own grid. :class:`Reorientation` records what was done (in
``CaseProperties``), so that restoring is exact.

Why a threshold of 3 degrees: scanners store axial series with a few tenths of a degree of gantry tilt or
table misalignment; treating those as axis-aligned keeps them exact (the world positions the network sees
are off by at most ``sin(3 deg)`` = 5 % of the distance from the origin voxel along the other axes, less
than one voxel across a 20-voxel patch), while a real oblique acquisition (tens of degrees) is resampled.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from autoseg.io import IDENTITY_DIRECTION, Geometry
from autoseg.plans import OrientationPlan
from autoseg.preprocessing.resample import resample_onto_grid

logger = logging.getLogger(__name__)

Axes = tuple[int, int, int]
Flips = tuple[bool, bool, bool]


@dataclass(frozen=True)
class AxisAlignment:
    """The signed permutation nearest to a direction: canonical axis ``k`` is array axis ``axes[k]``, reversed
    where ``flips[k]``; ``angle_deg`` is the largest angle between an array axis and its patient axis."""

    axes: Axes
    flips: Flips
    angle_deg: float

    @property
    def is_identity(self) -> bool:
        """Whether the array already is in canonical order."""
        return self.axes == (0, 1, 2) and not any(self.flips)


def axis_alignment(direction: Sequence[float]) -> AxisAlignment:
    """The nearest signed permutation of a 3x3 row-major direction (rows physical ``z, y, x``, columns array
    axes, as ``io.Geometry``): the assignment of array axes to patient axes with the largest smallest
    cosine (ties: the first in lexicographic order)."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=0, keepdims=True), 1e-12)
    best: tuple[float, float, Axes] | None = None
    for perm in itertools.permutations(range(3)):
        cosines = [abs(float(matrix[k, perm[k]])) for k in range(3)]
        key = (round(min(cosines), 12), round(sum(cosines), 12), (perm[0], perm[1], perm[2]))
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    axes = best[2]
    flips = (bool(matrix[0, axes[0]] < 0), bool(matrix[1, axes[1]] < 0), bool(matrix[2, axes[2]] < 0))
    angle = math.degrees(math.acos(min(1.0, best[0])))
    return AxisAlignment(axes, flips, angle)


@dataclass(frozen=True)
class Reorientation:
    """What canonicalisation did to one image (``None`` in ``CaseProperties``: nothing, it was canonical).

    ``"permute"``: the canonical array is the original transposed so that canonical axis ``k`` is original
    axis ``axes[k]``, then reversed along the canonical axes where ``flips``. ``"resample"`` (oblique, by
    ``angle_deg``): the image was resampled in world space onto ``canonical_geometry`` (identity direction).
    ``canonical_shape`` and ``canonical_geometry`` describe the array preprocessing continued from.
    """

    kind: Literal["permute", "resample"]
    axes: Axes
    flips: Flips
    angle_deg: float
    canonical_shape: tuple[int, int, int]
    canonical_geometry: Geometry

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        geometry = self.canonical_geometry
        return {
            "kind": self.kind,
            "axes": list(self.axes),
            "flips": list(self.flips),
            "angle_deg": self.angle_deg,
            "canonical_shape": list(self.canonical_shape),
            "canonical_geometry": {
                "spacing_mm": list(geometry.spacing_mm),
                "origin_mm": list(geometry.origin_mm),
                "direction": list(geometry.direction),
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reorientation:
        """Inverse of :meth:`to_json`."""
        g = data["canonical_geometry"]
        kind = str(data["kind"])
        if kind not in ("permute", "resample"):
            raise ValueError(f"orientation kind '{kind}' is not 'permute' or 'resample'")
        return cls(
            kind="permute" if kind == "permute" else "resample",
            axes=_int3(data["axes"]),
            flips=_bool3(data["flips"]),
            angle_deg=float(data["angle_deg"]),
            canonical_shape=_int3(data["canonical_shape"]),
            canonical_geometry=Geometry(
                _float3(g["spacing_mm"]), _float3(g["origin_mm"]), tuple(float(v) for v in g["direction"])
            ),
        )


def plan_reorientation(
    geometry: Geometry,
    shape: Sequence[int],
    orientation: OrientationPlan,
    spacing_mm: Sequence[float],
) -> Reorientation | None:
    """How to bring an image of ``shape`` ``(Z, Y, X)`` on ``geometry`` to the canonical orientation;
    ``None`` when it already is (or the plan keeps the stored order). An oblique one is resampled at
    ``spacing_mm`` (the configuration's, canonical ``(z, y, x)``)."""
    if orientation.mode == "as-stored":
        return None
    alignment = axis_alignment(geometry.direction)
    if alignment.angle_deg <= orientation.oblique_threshold_deg:
        if alignment.is_identity:
            return None
        canonical = permuted_geometry(geometry, shape, alignment)
        new_shape = _int3([shape[a] for a in alignment.axes])
        return Reorientation(
            "permute", alignment.axes, alignment.flips, alignment.angle_deg, new_shape, canonical
        )
    grid, grid_shape = covering_grid(geometry, shape, spacing_mm)
    return Reorientation("resample", alignment.axes, alignment.flips, alignment.angle_deg, grid_shape, grid)


def oriented_direction(geometry: Geometry, orientation: OrientationPlan) -> tuple[float, ...]:
    """The direction of the array the network sees for an image on ``geometry`` (for the mirror axes)."""
    if orientation.mode == "as-stored":
        return geometry.direction
    alignment = axis_alignment(geometry.direction)
    if alignment.angle_deg > orientation.oblique_threshold_deg:
        return IDENTITY_DIRECTION
    return permuted_geometry(geometry, (1, 1, 1), alignment).direction


def permuted_geometry(geometry: Geometry, shape: Sequence[int], alignment: AxisAlignment) -> Geometry:
    """The exact geometry of the array transposed and flipped as ``alignment`` says (same voxels in the
    world): spacing and direction columns permuted (flipped columns negated), origin at the voxel that
    becomes index 0."""
    direction = geometry.direction_matrix()
    columns = [
        direction[:, a] * (-1.0 if f else 1.0) for a, f in zip(alignment.axes, alignment.flips, strict=True)
    ]
    first = [0.0, 0.0, 0.0]
    for axis, flip in zip(alignment.axes, alignment.flips, strict=True):
        first[axis] = float(shape[axis] - 1) if flip else 0.0
    origin = geometry.index_to_physical(first)
    return Geometry(
        _float3([geometry.spacing_mm[a] for a in alignment.axes]),
        _float3(origin),
        tuple(float(v) for v in np.stack(columns, axis=1).ravel()),
    )


def covering_grid(
    geometry: Geometry, shape: Sequence[int], spacing_mm: Sequence[float]
) -> tuple[Geometry, tuple[int, int, int]]:
    """The axis-aligned (identity direction) grid of ``spacing_mm`` whose extent covers the image's voxels
    (their outer edges) in world space, centred on it."""
    edges = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape])), dtype=np.float64)
    points = np.array([geometry.index_to_physical(e) for e in edges])
    low, high = points.min(axis=0), points.max(axis=0)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    counts = np.maximum(1, np.ceil((high - low) / spacing - 1e-6)).astype(int)
    origin = (low + high) / 2 - (counts - 1) * spacing / 2
    return Geometry(_float3(spacing), _float3(origin), IDENTITY_DIRECTION), _int3(counts)


def canonical_extent(
    alignment: AxisAlignment,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    box: Sequence[tuple[int, int]],
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[tuple[int, int], ...]]:
    """``(shape, spacing_mm, box)`` of an array in canonical axis order (for the fingerprint): permuted, the
    half-open ``box`` reversed along flipped axes. For an oblique image this is the nearest axis order (its
    canonical grid has about this shape at this spacing)."""
    new_shape = _int3([shape[a] for a in alignment.axes])
    new_box = []
    for axis, flip in zip(alignment.axes, alignment.flips, strict=True):
        start, stop = box[axis]
        new_box.append((shape[axis] - stop, shape[axis] - start) if flip else (start, stop))
    return new_shape, _float3([spacing_mm[a] for a in alignment.axes]), tuple(new_box)


def canonical_view(array: np.ndarray, reorientation: Reorientation) -> np.ndarray:
    """The canonical view (transpose + flip, no copy; writable when ``array`` is) of a ``(..., Z, Y, X)``
    array under a ``"permute"`` reorientation: reading it gives the canonical array, writing it fills the
    original."""
    assert reorientation.kind == "permute"
    lead = array.ndim - 3
    view = np.transpose(array, (*range(lead), *(lead + a for a in reorientation.axes)))
    flips = tuple(slice(None, None, -1) if f else slice(None) for f in reorientation.flips)
    return view[(Ellipsis, *flips)]


def to_canonical(
    volume: np.ndarray,
    reorientation: Reorientation,
    geometry: Geometry,
    order: int,
    *,
    default: float = 0.0,
) -> np.ndarray:
    """A ``(Z, Y, X)`` volume on ``geometry`` in the canonical orientation: a view for ``"permute"``; for
    ``"resample"`` a new float32 array resampled with ``order``, ``default`` outside the image."""
    if reorientation.kind == "permute":
        return canonical_view(volume, reorientation)
    grid = reorientation.canonical_geometry
    return resample_onto_grid(volume, geometry, grid, reorientation.canonical_shape, order, default=default)


def from_canonical(
    volume: np.ndarray,
    reorientation: Reorientation,
    shape: Sequence[int],
    geometry: Geometry,
    order: int,
    *,
    default: float = 0.0,
) -> np.ndarray:
    """The inverse of :func:`to_canonical` for a ``(Z, Y, X)`` canonical volume: back onto the original
    ``shape`` and ``geometry`` (exact for ``"permute"``, a contiguous array in the input's dtype; float32
    resampled with ``order`` for ``"resample"``)."""
    if reorientation.kind == "permute":
        out = np.empty(tuple(shape), volume.dtype)
        canonical_view(out, reorientation)[...] = volume
        return out
    grid = reorientation.canonical_geometry
    return resample_onto_grid(volume, grid, geometry, shape, order, default=default)


def log_reorientation(
    identifier: str, reorientation: Reorientation, geometry: Geometry, threshold_deg: float
) -> None:
    """One log line per image that is not canonical: what was done, and for an oblique one that it was
    resampled (a note, since resampling blurs a little)."""
    if reorientation.kind == "permute":
        logger.debug(
            "%s: stored %s, brought to canonical orientation by axes %s flips %s (exact, no resampling)",
            identifier,
            geometry.orientation_code(),
            reorientation.axes,
            reorientation.flips,
        )
        return
    logger.info(
        "%s: oblique by %.1f deg (more than %g): resampled in world space onto an axis-aligned %s grid at "
        "%s mm; predictions are resampled back onto its own grid",
        identifier,
        reorientation.angle_deg,
        threshold_deg,
        "x".join(str(n) for n in reorientation.canonical_shape),
        "x".join(f"{s:g}" for s in reorientation.canonical_geometry.spacing_mm),
    )


def _int3(values: Sequence[Any] | np.ndarray) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in values)
    return a, b, c


def _float3(values: Sequence[Any] | np.ndarray) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def _bool3(values: Sequence[Any]) -> tuple[bool, bool, bool]:
    a, b, c = (bool(v) for v in values)
    return a, b, c


def target_to_canonical(
    target: np.ndarray, reorientation: Reorientation, geometry: Geometry, order: int
) -> np.ndarray:
    """A ``(Z, Y, X)`` label map or ``(K, Z, Y, X)`` region target in the canonical orientation: a view for
    ``"permute"``; resampled per class (structure) with ``order`` and recombined for ``"resample"``."""
    if reorientation.kind == "permute":
        return canonical_view(target, reorientation)
    grid, shape = reorientation.canonical_geometry, reorientation.canonical_shape
    return _resample_target_onto(target, geometry, grid, shape, order)


def target_from_canonical(
    target: np.ndarray, reorientation: Reorientation, shape: Sequence[int], geometry: Geometry, order: int
) -> np.ndarray:
    """The inverse of :func:`target_to_canonical`: a canonical label map (region target) on the original
    ``shape`` and ``geometry``."""
    if reorientation.kind == "permute":
        out = np.empty((*target.shape[:-3], *shape), target.dtype)
        canonical_view(out, reorientation)[...] = target
        return out
    return _resample_target_onto(target, reorientation.canonical_geometry, geometry, shape, order)


def _resample_target_onto(
    target: np.ndarray, source: Geometry, grid: Geometry, shape: Sequence[int], order: int
) -> np.ndarray:
    if target.ndim == 4:
        return np.stack([_resample_labels_onto(k, source, grid, shape, order) for k in target])
    return _resample_labels_onto(target, source, grid, shape, order)


def _resample_labels_onto(
    labels: np.ndarray, source: Geometry, grid: Geometry, shape: Sequence[int], order: int
) -> np.ndarray:
    """World-space resampling of a label map: per-class masks interpolated with ``order`` and recombined by
    argmax (nearest neighbour for order 0); background outside the source."""
    if order == 0:
        return resample_onto_grid(labels, source, grid, shape, 0).astype(labels.dtype)
    values = sorted({0, *(int(v) for v in np.unique(labels))})
    result = np.zeros(tuple(shape), labels.dtype)
    best = np.full(tuple(shape), -1.0, np.float32)
    for value in values:
        mask = (labels == value).astype(np.float32)
        score = resample_onto_grid(mask, source, grid, shape, order, default=1.0 if value == 0 else 0.0)
        better = score > best
        result[better] = value
        np.maximum(best, score, out=best)
    return result
