"""The reviewer PNG of one case: four views with structure contours, then the flags and the structure table.

The views (:mod:`autoseg.report.views`) are axial, coronal and sagittal slices in the radiological
convention, with anatomical letters on every edge, plus an axial projection of every structure. The window
is a CT soft-tissue window (level 40, width 400 HU) when the intensities look like Hounsfield units, the
0.5-99.5 percentiles otherwise. The subtitle gives the file's axis code (``Geometry.orientation_code``), the
spacing, the window and, for an oblique acquisition, how far the views are tilted from the true planes.

The table lists flagged structures first, then the others by decreasing volume, with each structure's
contour colour as a swatch (the legend); with many structures (e.g. 41 in a TotalSegmentator case) it shows
the first :data:`MAX_TABLE_ROWS` in two column blocks and says how many more are in the JSON table.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from autoseg.errors import ImageWriteError, UsageError
from autoseg.io import Geometry, write_bytes_atomically
from autoseg.report.structures import StructureRow, format_ml
from autoseg.report.views import SliceView, intensity_window, slice_views, tilt_degrees
from autoseg.types import TargetVolume

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


MAX_TABLE_ROWS = 40
"""Structures listed in the figure (two blocks of 20); the JSON table always has all of them."""
DPI = 80
_TOP_IN = 1.2  # inches above the views for the title, the subtitle and the view titles


def render_report(
    image: npt.NDArray[np.float32],
    labels: TargetVolume,
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
        labels: ``(Z, Y, X)`` predicted label map on the same grid, or a ``(K, Z, Y, X)`` region target
            (each structure's contour drawn, overlapping contours where the structures overlap).
        geometry: their geometry (orientation, spacing).
        rows: the structure table of the case (:func:`autoseg.report.structures.structure_table`).
        path: the ``.png`` to write; nothing is left there if drawing or writing fails.
        title: first line of the figure, e.g. the case identifier.
        window: display window ``(low, high)``; None chooses one (:func:`intensity_window`).

    Raises:
        UsageError: image and labels differ in shape or are not 3D.
        ImageWriteError: the file system refused the file.
    """
    if image.ndim != 3 or image.shape != labels.shape[-3:] or labels.ndim not in (3, 4):
        raise UsageError(
            f"report: image {image.shape} and labels {labels.shape} must be the same (Z, Y, X) grid"
        )
    low, high, window_text = intensity_window(image)
    if window is not None:
        (low, high), window_text = window, f"window {window[0]:g} to {window[1]:g}"
    tilt = tilt_degrees(geometry)
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
    try:
        write_bytes_atomically(packed.getvalue(), path)
    except ImageWriteError as error:  # write_bytes_atomically names the file and the OS reason
        reason = error.message.removeprefix(f"{path}: ")
        raise ImageWriteError(f"{path}: cannot write the report ({reason})") from None


def structure_colours(values: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """A distinct RGB colour per label value (tab10 up to 9 structures, tab20/b/c beyond; grey left out)."""
    from matplotlib import colormaps

    names = ("tab10",) if len(values) <= 9 else ("tab20", "tab20b", "tab20c")
    palette = [colour[:3] for name in names for colour in colormaps[name].colors]  # type: ignore[attr-defined]
    palette = [c for c in palette if max(c) - min(c) > 0.05]  # greys vanish on a grey image
    return {value: palette[index % len(palette)] for index, value in enumerate(sorted(values))}


# ------------------------------------------------------------------------------------------- internals


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
    heights = [3.8, 0.2 * flag_lines, 0.2 * table_lines]
    inches = sum(heights) + _TOP_IN + 0.4  # hspace adds about 0.4 in between the rows
    figure = Figure(figsize=(13.0, inches))
    grid = figure.add_gridspec(3, 4, height_ratios=heights, top=1 - _TOP_IN / inches, bottom=0.1 / inches)
    grid.update(left=0.01, right=0.99, hspace=0.12, wspace=0.05)
    colours = structure_colours([r.value for r in rows if r.voxels])  # distinct among those present
    for column, view in enumerate(views):
        _draw_view(figure.add_subplot(grid[0, column]), view, colours, window)
    unchecked = [] if any(r.training_volume_ml for r in rows) else ["volumes (no training reference)"]
    unchecked += [] if any(r.mean_confidence is not None for r in rows) else ["confidence (no probabilities)"]
    _draw_flags(figure.add_subplot(grid[1, :]), reasons, unchecked)
    _draw_table(figure.add_subplot(grid[2, :]), shown, colours, blocks, ordered[len(shown) :])
    figure.text(0.01, 1 - 0.25 / inches, title, fontsize=13, fontweight="bold", va="center")
    figure.text(0.01, 1 - 0.52 / inches, subtitle, fontsize=8.5, va="center", color="0.3")
    return figure


def _draw_view(
    axes: Axes, view: SliceView, colours: dict[int, tuple[float, float, float]], window: tuple[float, float]
) -> None:
    from matplotlib import patheffects

    low, high = view.window or window
    axes.imshow(
        view.image, cmap="gray", vmin=low, vmax=high, aspect=view.pixel_aspect, interpolation="nearest"
    )
    rows, columns = view.image.shape
    for value, mask in view.outlines.items():
        if value not in colours or not mask.any():
            continue  # a value without a row (not in the label names)
        padded = np.pad(mask, 1).astype(np.float32)  # closed contours at the image edge
        axes.contour(
            np.arange(-1, columns + 1),
            np.arange(-1, rows + 1),
            padded,
            levels=[0.5],
            colors=[colours[value]],
            linewidths=1.3,
        )
    axes.set_xlim(-0.5, columns - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"{view.name}\n{view.caption}", fontsize=9)
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
    from matplotlib.transforms import Bbox

    hidden, absent = len(hidden_rows), sum(not r.voxels for r in hidden_rows)
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
        bbox=Bbox.from_bounds(0.0, footer, 0.6 if blocks == 1 else 1.0, 1.0 - footer),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for cell in table.get_celld().values():
        cell.set_edgecolor("0.85")
    for index, row in enumerate(shown):
        line, block = index % per_block, index // per_block
        table[line + 1, block * len(header)].set_facecolor(colours.get(row.value, (1.0, 1.0, 1.0)))
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
