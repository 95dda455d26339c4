"""The 2D views of the reviewer report: which planes, which way up, which slice, which window (no drawing).

Orientation. Each view is the array plane closest to the anatomical plane (no resampling), turned and
flipped with the geometry's direction cosines into the radiological convention: axial seen from the feet
(patient's right on the image left, anterior up), coronal seen from the front (right on the left, superior
up), sagittal seen from the patient's left (anterior on the left, superior up). Each view carries the
anatomical letter (R/L, A/P, S/I) of the direction every image edge points to, computed from the geometry,
and :func:`tilt_degrees` says how far an oblique acquisition is from the true planes.

Slices. The three slices pass through the largest foreground area along their axis. A fourth view projects
every structure along the axial direction (outline of its whole extent over the mean intensity), so that a
stray island or a leak away from the three slices is still seen. All views are cropped to the foreground's
bounding box plus a margin (20 mm or 30 % of its extent, whichever is larger), so that a small lesion in a
large field of view stays visible. Pixels keep their physical aspect ratio (``pixel_aspect``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from autoseg.io import Geometry
from autoseg.regions import (
    crop,
    foreground_mask,
    is_region_target,
    structure_boxes,
    structure_mask,
    structure_values,
)
from autoseg.types import BoolVolume, TargetVolume

SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)
_VIEWS = {  # physical axes (z, y, x) = (S, P, L): normal, (row axis, row sign), (column axis, column sign)
    "axial": (0, (1, +1), (2, +1)),
    "coronal": (1, (0, -1), (2, +1)),
    "sagittal": (2, (0, -1), (1, +1)),
}
_LETTERS = (("I", "S"), ("A", "P"), ("R", "L"))  # per physical axis (z, y, x): (negative, positive)
Mask2D = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SliceView:
    """One 2D view, ready to draw: rows top to bottom, columns left to right.

    Attributes:
        name: "axial", "coronal", "sagittal" or "axial projection".
        image: ``(R, C)`` float32 intensities.
        outlines: label value -> ``(R, C)`` bool mask of that structure in this view.
        pixel_aspect: row spacing / column spacing (height / width of one pixel).
        edges: anatomical letters at the (left, right, top, bottom) edges.
        caption: which slice it is, e.g. ``"slice 12 of 40 (array axis 0)"``.
        window: display window of this view; None to use the case's window.
    """

    name: str
    image: npt.NDArray[np.float32]
    outlines: dict[int, Mask2D]
    pixel_aspect: float
    edges: tuple[str, str, str, str]
    caption: str
    window: tuple[float, float] | None = None


def intensity_window(image: npt.NDArray[np.float32]) -> tuple[float, float, str]:
    """Display window ``(low, high, description)`` of an image (any shape).

    A CT soft-tissue window when the image looks like Hounsfield units (1st percentile below -500, as air
    is, and above -3100; 99th percentile above 0), the 0.5 and 99.5 percentiles otherwise.
    """
    sample = image.ravel()[:: max(1, image.size // 1_000_000)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0, "no finite intensities"
    p01, p99 = np.percentile(sample, [1.0, 99.0])
    if -3100.0 <= p01 < -500.0 and p99 > 0.0:
        low, high = SOFT_TISSUE_WINDOW_HU
        return low, high, "CT soft-tissue window W400 L40"
    return (*_percentile_window(sample), "window 0.5-99.5 percentiles")


def slice_views(image: npt.NDArray[np.float32], labels: TargetVolume, geometry: Geometry) -> list[SliceView]:
    """Axial, coronal and sagittal slices through the largest foreground area, then the axial projection.

    Args:
        image: ``(Z, Y, X)`` float32 intensities.
        labels: ``(Z, Y, X)`` label map on the same grid, or a ``(K, Z, Y, X)`` region target (one outline
            per structure, overlapping where the structures overlap).
        geometry: their geometry (direction for the orientation, spacing for the aspect ratio and crop).
    """
    foreground = foreground_mask(labels)
    box = _display_box(foreground, geometry.spacing_mm)
    views = []
    for name in _VIEWS:
        order, flips, edges, aspect = _orientation(geometry, name)
        index = _busiest_slice(foreground, order[0])
        outlines = _plane_outlines(labels, order, index, box, flips)
        pixels = _crop_flip(np.transpose(image, order)[index], box, order, flips).astype(np.float32)
        caption = f"slice {index + 1} of {foreground.shape[order[0]]} (array axis {order[0]})"
        views.append(SliceView(name, pixels, outlines, aspect, edges, caption))
    return [*views, _projection_view(image, labels, geometry, box)]


def tilt_degrees(geometry: Geometry) -> float:
    """Largest angle in degrees from an array axis to the anatomical axis it is shown as (0: not oblique)."""
    axis_of, _ = _axis_assignment(geometry)
    cosines = [abs(geometry.direction_matrix()[p, a]) for p, a in axis_of.items()]
    return float(np.degrees(np.arccos(np.clip(min(cosines), 0.0, 1.0))))


# ------------------------------------------------------------------------------------------- internals


def _plane_outlines(
    labels: TargetVolume,
    order: tuple[int, int, int],
    index: int,
    box: list[tuple[int, int]],
    flips: tuple[bool, bool],
) -> dict[int, Mask2D]:
    """Structure value -> its mask in slice ``index`` along ``order[0]``, cropped and flipped as the view."""
    if not is_region_target(labels):
        plane = _crop_flip(np.transpose(labels, order)[index], box, order, flips)
        return {int(v): plane == v for v in np.unique(plane) if v != 0}
    outlines = {}
    for channel, masks in enumerate(np.transpose(labels, (0, *(a + 1 for a in order)))[:, index]):
        mask = np.asarray(_crop_flip(masks > 0, box, order, flips), bool)
        if mask.any():
            outlines[channel + 1] = mask
    return outlines


def _projection_view(
    image: npt.NDArray[np.float32], labels: TargetVolume, geometry: Geometry, box: list[tuple[int, int]]
) -> SliceView:
    """Outline of every structure's whole extent along the axial direction, over the mean intensity."""
    order, flips, edges, aspect = _orientation(geometry, "axial")
    normal = order[0]
    start, stop = box[normal]
    slab = np.take(image, np.arange(start, stop), axis=normal).mean(axis=normal, dtype=np.float64)
    in_plane = tuple(a for a in range(3) if a != normal)  # array order of the two remaining axes
    if in_plane != order[1:]:
        slab = slab.T
    outlines = {}
    shape = labels.shape[-3:]
    for value, region in structure_boxes(labels, structure_values(labels)).items():
        canvas = np.zeros([shape[a] for a in order[1:]], bool)
        hit = np.transpose(structure_mask(crop(labels, region), value), order).any(axis=0)
        canvas[region[order[1]], region[order[2]]] = hit
        outlines[value] = np.asarray(_crop_flip(canvas, box, order, flips), bool)
    pixels = _crop_flip(slab, box, order, flips).astype(np.float32)
    caption = f"projection of slices {start + 1}-{stop} (mean intensity)"
    return SliceView("axial projection", pixels, outlines, aspect, edges, caption, _percentile_window(pixels))


def _orientation(
    geometry: Geometry, name: str
) -> tuple[tuple[int, int, int], tuple[bool, bool], tuple[str, str, str, str], float]:
    """Array axes (normal, rows, columns), row/column flips, edge letters, pixel aspect of view ``name``."""
    normal, (row_phys, row_sign), (col_phys, col_sign) = _VIEWS[name]
    axis_of, sign_of = _axis_assignment(geometry)
    order = (axis_of[normal], axis_of[row_phys], axis_of[col_phys])
    flips = (sign_of[order[1]] * row_sign < 0, sign_of[order[2]] * col_sign < 0)
    direction = geometry.direction_matrix()
    top, bottom = _letters(direction[:, order[1]] * (-1 if flips[0] else 1))
    left, right = _letters(direction[:, order[2]] * (-1 if flips[1] else 1))
    aspect = geometry.spacing_mm[order[1]] / geometry.spacing_mm[order[2]]
    return order, flips, (left, right, top, bottom), aspect


def _axis_assignment(geometry: Geometry) -> tuple[dict[int, int], dict[int, int]]:
    """Physical axis -> nearest array axis, and array axis -> +1/-1 (whether it points along that axis)."""
    direction = geometry.direction_matrix()
    magnitude = np.abs(direction)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(magnitude[p[a], a] for a in range(3)))
    axis_of = {best[a]: a for a in range(3)}
    sign_of = {a: 1 if direction[best[a], a] >= 0 else -1 for a in range(3)}
    return axis_of, sign_of


def _letters(vector: npt.NDArray[np.float64]) -> tuple[str, str]:
    """Anatomical letters at the start and the end of an image axis pointing along ``vector`` (LPS)."""
    axis = int(np.argmax(np.abs(vector)))
    positive = bool(vector[axis] > 0)
    return _LETTERS[axis][not positive], _LETTERS[axis][positive]


def _display_box(foreground: BoolVolume, spacing_mm: tuple[float, float, float]) -> list[tuple[int, int]]:
    """Foreground bounding box ``[(start, stop)]`` per array axis plus a margin; the whole volume if empty."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(np.any(foreground, axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return [(0, n) for n in foreground.shape]
        extent_mm = (hits[-1] + 1 - hits[0]) * spacing_mm[axis]
        margin = int(np.ceil(max(20.0, 0.3 * extent_mm) / spacing_mm[axis]))
        box.append((max(0, int(hits[0]) - margin), min(foreground.shape[axis], int(hits[-1]) + 1 + margin)))
    return box


def _busiest_slice(foreground: BoolVolume, axis: int) -> int:
    areas = np.count_nonzero(foreground, axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(areas)) if areas.any() else foreground.shape[axis] // 2


def _crop_flip(
    plane: npt.NDArray[np.generic],
    box: list[tuple[int, int]],
    order: tuple[int, ...],
    flips: tuple[bool, bool],
) -> npt.NDArray[np.generic]:
    """Crop a ``(rows, columns)`` plane (array axes ``order[1]``, ``order[2]``) to the box, then flip."""
    (r0, r1), (c0, c1) = box[order[1]], box[order[2]]
    cropped = plane[r0:r1, c0:c1]
    cropped = cropped[::-1] if flips[0] else cropped
    return np.ascontiguousarray(cropped[:, ::-1] if flips[1] else cropped)


def _percentile_window(values: npt.NDArray[np.generic]) -> tuple[float, float]:
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return low, max(high, low + 1e-6)
