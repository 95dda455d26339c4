"""The reviewer PNG of one case: three orthogonal slices with structure contours, and the structure table.

Orientation. Each view is the array plane closest to the anatomical plane (no resampling), turned and
flipped with the geometry's direction cosines into the radiological convention: axial seen from the feet
(patient's right on the image left, anterior up), coronal seen from the front (right on the left, superior
up), sagittal seen from the patient's left (anterior on the left, superior up). Every image edge carries the
anatomical letter (R/L, A/P, S/I) of the direction it points to, computed from the geometry, and the
subtitle gives the file's axis code (``Geometry.orientation_code``); for an oblique acquisition the subtitle
also says by how many degrees the views are tilted from the true planes.

Pixels keep their physical aspect ratio (row spacing / column spacing), so anisotropic voxels are not
squashed. Each view shows the slice with the largest foreground area along its axis, cropped to the
foreground's bounding box plus a margin (20 mm or 30 % of its extent, whichever is larger), so that a small
lesion in a large field of view stays visible. The window is a CT soft-tissue window (level 40, width 400 HU)
when the intensities look like Hounsfield units, the 0.5-99.5 percentiles otherwise.

The table lists flagged structures first, then the others by decreasing volume, with each structure's
contour colour as a swatch; with many structures (e.g. 41 in a TotalSegmentator case) it shows the first
:data:`MAX_TABLE_ROWS` in two column blocks and says how many more are in the JSON table.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from autoseg.errors import ImageWriteError, UsageError
from autoseg.io import Geometry
from autoseg.types import BoolVolume, LabelVolume

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from autoseg.report import StructureRow

MAX_TABLE_ROWS = 40
"""Structures listed in the figure (two blocks of 20); the JSON table always has all of them."""
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)
DPI = 80
_TOP_IN = 1.0  # inches above the views for the title, the subtitle and the view titles

_VIEWS = {  # physical axes (z, y, x) = (S, P, L): normal, (row axis, row sign), (column axis, column sign)
    "axial": (0, (1, +1), (2, +1)),
    "coronal": (1, (0, -1), (2, +1)),
    "sagittal": (2, (0, -1), (1, +1)),
}
_LETTERS = (("I", "S"), ("A", "P"), ("R", "L"))  # per physical axis (z, y, x): (negative, positive)


@dataclass(frozen=True)
class SliceView:
    """One 2D view, ready to draw: rows top to bottom, columns left to right.

    Attributes:
        name: "axial", "coronal" or "sagittal".
        image: ``(R, C)`` float32 intensities.
        labels: ``(R, C)`` label values.
        pixel_aspect: row spacing / column spacing (height / width of one pixel).
        edges: anatomical letters at the (left, right, top, bottom) edges.
        caption: which slice it is, e.g. ``"slice 12 of 40 (array axis 0)"``.
    """

    name: str
    image: npt.NDArray[np.float32]
    labels: LabelVolume
    pixel_aspect: float
    edges: tuple[str, str, str, str]
    caption: str


def intensity_window(image: npt.NDArray[np.float32]) -> tuple[float, float, str]:
    """Display window ``(low, high, description)`` of a ``(Z, Y, X)`` image.

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
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    return low, max(high, low + 1e-6), "window 0.5-99.5 percentiles"


def slice_views(image: npt.NDArray[np.float32], labels: LabelVolume, geometry: Geometry) -> list[SliceView]:
    """Axial, coronal and sagittal views through the largest foreground area (see the module docstring)."""
    axis_of, sign_of = _axis_assignment(geometry)
    foreground = labels > 0
    box = _display_box(foreground, geometry.spacing_mm)
    views = []
    for name, (normal, (row_phys, row_sign), (col_phys, col_sign)) in _VIEWS.items():
        normal_axis, row_axis, col_axis = axis_of[normal], axis_of[row_phys], axis_of[col_phys]
        index = _busiest_slice(foreground, normal_axis)
        order = (normal_axis, row_axis, col_axis)
        flips = (sign_of[row_axis] * row_sign < 0, sign_of[col_axis] * col_sign < 0)
        planes = [_plane(volume, order, index, box, flips) for volume in (image, labels)]
        direction = geometry.direction_matrix()
        row_vector = direction[:, row_axis] * (-1 if flips[0] else 1)
        col_vector = direction[:, col_axis] * (-1 if flips[1] else 1)
        left, right = _letters(col_vector)
        top, bottom = _letters(row_vector)
        views.append(
            SliceView(
                name=name,
                image=planes[0].astype(np.float32),
                labels=planes[1],
                pixel_aspect=geometry.spacing_mm[row_axis] / geometry.spacing_mm[col_axis],
                edges=(left, right, top, bottom),
                caption=f"slice {index + 1} of {labels.shape[normal_axis]} (array axis {normal_axis})",
            )
        )
    return views


def render_report(
    image: npt.NDArray[np.float32],
    labels: LabelVolume,
    geometry: Geometry,
    rows: Sequence[StructureRow],
    path: Path,
    *,
    title: str,
    window: tuple[float, float] | None = None,
) -> None:
    """Draw the reviewer PNG of one case and write it atomically (temporary file, then rename).

    Args:
        image: ``(Z, Y, X)`` float32 raw intensities (one channel, e.g. the first).
        labels: ``(Z, Y, X)`` predicted label map on the same grid.
        geometry: their geometry (orientation, spacing).
        rows: the structure table of the case (:func:`autoseg.report.structure_table`).
        path: the ``.png`` to write; nothing is left there if drawing or writing fails.
        title: first line of the figure, e.g. the case identifier.
        window: display window ``(low, high)``; None chooses one (:func:`intensity_window`).

    Raises:
        UsageError: image and labels differ in shape or are not 3D.
        ImageWriteError: the file system refused the file.
    """
    if image.ndim != 3 or image.shape != labels.shape:
        raise UsageError(
            f"report: image {image.shape} and labels {labels.shape} must be the same (Z, Y, X) grid"
        )
    low, high, window_text = intensity_window(image)
    if window is not None:
        (low, high), window_text = window, f"window {window[0]:g} to {window[1]:g}"
    tilt = _tilt_degrees(geometry)
    spacing = " x ".join(f"{s:.3g}" for s in geometry.spacing_mm)
    subtitle = f"file axes {geometry.orientation_code()}, spacing (z, y, x) {spacing} mm, {window_text}"
    if tilt > 1.0:
        subtitle += f"; oblique: views tilted up to {tilt:.0f} deg from the true planes"
    figure = _figure(slice_views(image, labels, geometry), rows, (low, high), title, subtitle)
    save_figure_atomically(figure, path)


def save_figure_atomically(figure: Figure, path: Path) -> None:
    """Save ``figure`` as a 256-colour PNG through a temporary file beside ``path``, then rename it.

    The palette (no dithering) keeps a report near 100 kB instead of 250 kB or more for a noisy CT; grey
    levels and contour colours stay distinguishable. Nothing is written unless the whole PNG is ready.

    Raises:
        ImageWriteError: the folder or the file cannot be written.
    """
    from PIL import Image

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=DPI)
    with Image.open(rendered) as image:
        palette = image.convert("RGB").quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    packed = io.BytesIO()
    palette.save(packed, format="PNG", optimize=True)
    _write_bytes_atomically(packed.getvalue(), path)


def structure_colours(values: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """A distinct RGB colour per label value (tab10 up to 9 structures, tab20/b/c beyond; grey left out)."""
    from matplotlib import colormaps

    names = ("tab10",) if len(values) <= 9 else ("tab20", "tab20b", "tab20c")
    palette = [colour[:3] for name in names for colour in colormaps[name].colors]  # type: ignore[attr-defined]
    palette = [c for c in palette if max(c) - min(c) > 0.05]  # greys vanish on a grey image
    return {value: palette[index % len(palette)] for index, value in enumerate(sorted(values))}


def format_ml(volume_ml: float) -> str:
    """A volume in ml with sensible digits: 1234, 56.7, 1.23, 0.012."""
    for limit, digits in ((100.0, 0), (10.0, 1), (1.0, 2)):
        if volume_ml >= limit:
            return f"{volume_ml:.{digits}f}"
    return f"{volume_ml:.3f}"


# ------------------------------------------------------------------------------------------- internals


def _write_bytes_atomically(data: bytes, path: Path) -> None:
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        temporary = Path(name)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except OSError as error:
        raise ImageWriteError(f"{path}: cannot write the report ({error})") from error
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _axis_assignment(geometry: Geometry) -> tuple[dict[int, int], dict[int, int]]:
    """Physical axis -> nearest array axis, and array axis -> +1/-1 (whether it points along that axis)."""
    direction = geometry.direction_matrix()
    magnitude = np.abs(direction)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(magnitude[p[a], a] for a in range(3)))
    axis_of = {best[a]: a for a in range(3)}
    sign_of = {a: 1 if direction[best[a], a] >= 0 else -1 for a in range(3)}
    return axis_of, sign_of


def _tilt_degrees(geometry: Geometry) -> float:
    axis_of, _ = _axis_assignment(geometry)
    cosines = [abs(geometry.direction_matrix()[p, a]) for p, a in axis_of.items()]
    return float(np.degrees(np.arccos(np.clip(min(cosines), 0.0, 1.0))))


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


def _plane(
    volume: npt.NDArray[Any],
    order: tuple[int, int, int],
    index: int,
    box: Sequence[tuple[int, int]],
    flips: tuple[bool, bool],
) -> npt.NDArray[Any]:
    """Slice ``index`` along ``order[0]``, rows along ``order[1]``, columns along ``order[2]``, cropped."""
    (r0, r1), (c0, c1) = box[order[1]], box[order[2]]
    plane = np.transpose(volume, order)[index, r0:r1, c0:c1]
    if flips[0]:
        plane = plane[::-1]
    if flips[1]:
        plane = plane[:, ::-1]
    return np.ascontiguousarray(plane)


def _figure(
    views: Sequence[SliceView],
    rows: Sequence[StructureRow],
    window: tuple[float, float],
    title: str,
    subtitle: str,
) -> Figure:
    from matplotlib.figure import Figure

    ordered = sorted(rows, key=lambda r: (not r.flags, -r.volume_ml, r.value))
    shown = ordered[:MAX_TABLE_ROWS]
    blocks = 2 if len(shown) > 12 else 1
    table_lines = -(-len(shown) // blocks) + (2 if len(ordered) > len(shown) else 1)
    reasons = [f"{r.name}: {f.reason}" for r in ordered for f in r.flags]
    flag_lines = min(len(reasons), 8) + 1
    heights = [4.2, 0.2 * flag_lines, 0.2 * table_lines]
    inches = sum(heights) + _TOP_IN + 0.4  # hspace adds about 0.4 in between the rows
    figure = Figure(figsize=(13.0, inches))
    grid = figure.add_gridspec(3, 3, height_ratios=heights, top=1 - _TOP_IN / inches, bottom=0.1 / inches)
    grid.update(left=0.01, right=0.99, hspace=0.12, wspace=0.05)
    colours = structure_colours([r.value for r in rows])
    for column, view in enumerate(views):
        _draw_view(figure.add_subplot(grid[0, column]), view, colours, window)
    unchecked = [] if any(r.training_volume_ml for r in rows) else ["volumes (no training reference)"]
    unchecked += [] if any(r.mean_confidence is not None for r in rows) else ["confidence (no probabilities)"]
    _draw_flags(figure.add_subplot(grid[1, :]), reasons, unchecked)
    _draw_table(figure.add_subplot(grid[2, :]), shown, colours, blocks, ordered[len(shown) :])
    figure.text(0.01, 1 - 0.3 / inches, title, fontsize=13, fontweight="bold", va="center")
    figure.text(0.01, 1 - 0.6 / inches, subtitle, fontsize=8.5, va="center", color="0.3")
    return figure


def _draw_view(
    axes: Axes, view: SliceView, colours: dict[int, tuple[float, float, float]], window: tuple[float, float]
) -> None:
    from matplotlib import patheffects

    axes.imshow(
        view.image,
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        aspect=view.pixel_aspect,
        interpolation="nearest",
    )
    rows, columns = view.labels.shape
    for value in np.unique(view.labels):
        if int(value) not in colours:
            continue  # background, or a value without a row
        padded = np.pad(view.labels == value, 1).astype(np.float32)  # closed contours at the image edge
        axes.contour(
            np.arange(-1, columns + 1),
            np.arange(-1, rows + 1),
            padded,
            levels=[0.5],
            colors=[colours[int(value)]],
            linewidths=1.3,
        )
    axes.set_xlim(-0.5, columns - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"{view.name}, {view.caption}", fontsize=9)
    left, right, top, bottom = view.edges
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]  # readable on any grey
    style: dict[str, Any] = {"transform": axes.transAxes, "color": "yellow", "fontsize": 11}
    style.update(fontweight="bold", path_effects=outline)
    axes.text(0.02, 0.5, left, ha="left", va="center", **style)
    axes.text(0.98, 0.5, right, ha="right", va="center", **style)
    axes.text(0.5, 0.98, top, ha="center", va="top", **style)
    axes.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _draw_flags(axes: Axes, reasons: Sequence[str], unchecked: Sequence[str]) -> None:
    axes.axis("off")
    if not reasons:
        message = "No flags: every structure is within what the training data shows."
        if unchecked:
            message = "No flags. Not checked: " + "; ".join(unchecked) + "."
        axes.text(
            0.0,
            0.5,
            message,
            color="darkgreen",
            fontsize=9.5,
            fontweight="bold",
            va="center",
            transform=axes.transAxes,
        )
        return
    lines = [f"{len(reasons)} flag(s): check these structures"] + [f"  - {r}" for r in reasons[:8]]
    if len(reasons) > 8:
        lines[-1] = f"  ... and {len(reasons) - 7} more (see the structure table JSON)"
    text = "\n".join(textwrap.shorten(line, 190) for line in lines)
    axes.text(
        0.0, 1.0, text, color="firebrick", fontsize=8.5, va="top", transform=axes.transAxes, linespacing=1.35
    )


def _draw_table(
    axes: Axes,
    shown: Sequence[StructureRow],
    colours: dict[int, tuple[float, float, float]],
    blocks: int,
    hidden_rows: Sequence[StructureRow],
) -> None:
    hidden, absent = len(hidden_rows), sum(not r.voxels for r in hidden_rows)
    from matplotlib.transforms import Bbox

    axes.axis("off")
    header = ["", "structure", "volume ml", "training ml", "confidence", "parts", "flags"]
    widths = [0.02, 0.17, 0.07, 0.1, 0.07, 0.04, 0.11]
    per_block = -(-len(shown) // blocks) if shown else 1
    cells = [[""] * len(header) * blocks for _ in range(per_block)]
    for index, row in enumerate(shown):
        line, block = index % per_block, index // per_block
        cells[line][block * len(header) : (block + 1) * len(header)] = _cells(row)
    footer = 1.0 / (per_block + 2) if hidden else 0.0  # room for the "more structures" line
    table = axes.table(
        cellText=cells,
        colLabels=header * blocks,
        colWidths=[w * 2 / blocks for w in widths] * blocks,
        cellLoc="left",
        bbox=Bbox.from_bounds(0.0, footer, 0.6 * blocks if blocks < 2 else 1.0, 1.0 - footer),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for cell in table.get_celld().values():
        cell.set_edgecolor("0.85")
    for index, row in enumerate(shown):
        line, block = index % per_block, index // per_block
        table[line + 1, block * len(header)].set_facecolor(colours[row.value])
        for column in range(1, len(header)):
            cell = table[line + 1, block * len(header) + column]
            if row.flags:
                cell.set_facecolor("#ffdede")
                cell.get_text().set_color("firebrick")
    if hidden:
        note = f"{hidden} more structure(s), {absent} of them absent: see the structure table JSON"
        axes.text(0.0, 0.0, note, fontsize=8, color="0.3", transform=axes.transAxes)


def _cells(row: StructureRow) -> list[str]:
    training = (
        "-" if row.training_volume_ml is None else "-".join(format_ml(v) for v in row.training_volume_ml)
    )
    confidence = "-" if row.mean_confidence is None else f"{row.mean_confidence:.2f}"
    kinds = ", ".join(dict.fromkeys(f.kind for f in row.flags))
    name = row.name if len(row.name) <= 24 else row.name[:23] + "~"
    return ["", name, format_ml(row.volume_ml), training, confidence, str(row.components), kinds]
