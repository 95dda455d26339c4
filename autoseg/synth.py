"""Anatomy-like synthetic datasets in the nnU-Net v2 raw layout, for tests, the demo and benchmarks.

Each case is a deformed ellipsoid "body" holding organ-like shapes, all built in millimetres, so anisotropic
spacing still gives physically round shapes. Classes (see ``CLASS_NAMES``): 1 a large organ; 2 a lesion nested
inside it (absent in about 1 case in 8 when there are >= 4 cases); 3 an organ touching class 1; 4 a small
nodule; 5-8 extra organs elsewhere, not overlapping the others. CT cases hold Hounsfield-like values (air
-1000, an unlabelled bright spine); MR cases hold positive arbitrary units with a smooth bias field,
Rician-like noise and exactly 0 outside the body. Case ``i`` depends only on ``(config.seed, i)``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autoseg.errors import UsageError
from autoseg.io import Geometry, write_image, write_labels
from autoseg.parallel import map_cases
from autoseg.types import BoolVolume, FloatVolume, IntTriple, LabelVolume, Triple

logger = logging.getLogger(__name__)

FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
"""Single-file endings a synthetic dataset can be written with."""

CLASS_NAMES = ("organ", "lesion", "adjacent_organ", "nodule", "extra_organ_1", "extra_organ_2",
               "extra_organ_3", "extra_organ_4")
"""Names of foreground classes 1..8, in label order."""

CHANNEL_NAMES = {"CT": ("CT", "CT_arterial", "CT_venous", "CT_delayed"), "MR": ("T1", "T2", "PD", "T1c")}
"""Channel names per modality, channel 0 first."""

_F64 = npt.NDArray[np.float64]
_AIR, _FAT, _SOFT, _BONE = 0, 1, 2, 3  # tissue ids; class k has tissue id 3 + k
# Tissue means; columns [air, fat, soft, bone, organ, lesion, adjacent, nodule, extra organs]. CT rows are
# the contrast shifts of the arterial, venous and delayed phases; MR rows are T1, T2, PD, T1c.
_CT_BASE = (-1000.0, -100.0, 25.0, 700.0)
_CT_SHIFTS = ((0, 0, 10, 0, 25, 70, 140, 40, 60), (0, 0, 20, 0, 70, 30, 110, 60, 50),
              (0, 0, 15, 0, 40, 45, 60, 40, 30))
_MR_MEANS = ((0, 800, 320, 150, 480, 220, 360, 560, 420), (0, 560, 230, 90, 210, 720, 620, 400, 330),
             (0, 650, 420, 120, 520, 640, 580, 470, 460), (0, 800, 350, 150, 620, 520, 700, 720, 560))
_BODY_WOBBLE, _ORGAN_WOBBLE = 0.1, 0.2  # relative radius perturbation of the body and of organs


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic dataset looks like; stored in its ``dataset.json`` under ``"autoseg_synth"``.

    Attributes:
        cases: number of training cases, 1..10000.
        shape: ``(z, y, x)`` voxels of the median case, each 16..2048; cases vary by +-10 % (never < 16).
        spacing_mm: ``(z, y, x)`` voxel size in mm; cases vary by +-5 % per axis.
        classes: foreground classes, 1..8 (see ``CLASS_NAMES``).
        channels: image channels, 1..4 (see ``CHANNEL_NAMES``).
        modality: ``"CT"`` (int16 Hounsfield units on disk) or ``"MR"`` (float32 arbitrary units).
        seed: non-negative seed; case ``i`` uses ``np.random.SeedSequence([seed, i])``.
        file_ending: one of ``FILE_ENDINGS``.
    """

    cases: int = 8
    shape: IntTriple = (40, 96, 96)
    spacing_mm: Triple = (2.5, 0.8, 0.8)
    classes: int = 3
    channels: int = 1
    modality: Literal["CT", "MR"] = "CT"
    seed: int = 0
    file_ending: str = ".nii.gz"

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON-compatible dict (tuples become lists, spacing floats)."""
        data = asdict(self)
        data["shape"] = [int(v) for v in self.shape]
        data["spacing_mm"] = [float(v) for v in self.spacing_mm]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SynthConfig:
        """Build and validate a config from a dict like ``to_json()`` returns; missing keys take defaults.

        Raises:
            UsageError: an unknown key, or a value of the wrong type or out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"synthetic dataset config: unknown key(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**values)
        validate_config(config)
        return config


def validate_config(config: SynthConfig) -> None:
    """Check every field's type and range.

    Raises:
        UsageError: naming the bad field, its value and the allowed range.
    """
    _check_int("cases", config.cases, 1, 10000)
    _check_int("classes", config.classes, 1, len(CLASS_NAMES))
    _check_int("channels", config.channels, 1, 4)
    _check_int("seed", config.seed, 0, 2**63 - 1)
    shape, spacing = config.shape, config.spacing_mm
    if not isinstance(shape, tuple) or len(shape) != 3 or not all(_is_int(v) and 16 <= v <= 2048
                                                                   for v in shape):
        raise UsageError(f"synthetic dataset config: shape is {shape!r}; expected 3 integers (z, y, x), "
                         "each 16..2048 voxels")
    if not isinstance(spacing, tuple) or len(spacing) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 100 for v in spacing):
        raise UsageError(f"synthetic dataset config: spacing_mm is {spacing!r}; expected 3 numbers "
                         "(z, y, x), each > 0 and <= 100 mm")
    if config.modality not in CHANNEL_NAMES:
        raise UsageError(f"synthetic dataset config: modality is {config.modality!r}; expected 'CT' or 'MR'")
    if config.file_ending not in FILE_ENDINGS:
        raise UsageError(f"synthetic dataset config: file_ending is {config.file_ending!r}; expected one "
                         f"of {', '.join(FILE_ENDINGS)}")


def class_names(config: SynthConfig) -> dict[str, int]:
    """nnU-Net v2 ``labels``: ``{"background": 0, "organ": 1, ...}`` for the config's classes."""
    return {"background": 0, **{name: k + 1 for k, name in enumerate(CLASS_NAMES[: config.classes])}}


def channel_names(config: SynthConfig) -> dict[str, str]:
    """nnU-Net v2 ``channel_names``: ``{"0": "CT"}``, ``{"0": "T1", "1": "T2"}``, ..."""
    return {str(c): CHANNEL_NAMES[config.modality][c] for c in range(config.channels)}


def case_identifier(config: SynthConfig, index: int) -> str:
    """The case id of case ``index``, e.g. ``synthct_007`` (more digits beyond 1000 cases)."""
    return f"synth{config.modality.lower()}_{index:0{max(3, len(str(config.cases - 1)))}d}"


def synthesize_case(config: SynthConfig, index: int) -> tuple[FloatVolume, LabelVolume, Geometry]:
    """Make case ``index`` of the dataset; deterministic in ``(config.seed, index)`` alone.

    Returns:
        image ``(C, Z, Y, X)`` float32 (CT: Hounsfield units in [-1024, 3071]; MR: arbitrary units, 0
        outside the body), labels ``(Z, Y, X)`` uint8 with values ``0..config.classes``, and the geometry
        (identity direction; spacing and origin vary per case).

    Raises:
        UsageError: invalid config, or ``index`` outside ``0..config.cases - 1``.
    """
    validate_config(config)
    if not 0 <= index < config.cases:
        raise UsageError(f"case index {index} is outside 0..{config.cases - 1}")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    sizes = [max(16, round(n * f)) for n, f in zip(config.shape, rng.uniform(0.9, 1.1, 3), strict=True)]
    factors = rng.uniform(0.95, 1.05, 3)
    spacing = [round(float(s * f), 4) for s, f in zip(config.spacing_mm, factors, strict=True)]
    origin = [round(float(v), 2) for v in -np.multiply(sizes, spacing) / 2 + rng.uniform(-25.0, 25.0, 3)]
    geometry = Geometry((spacing[0], spacing[1], spacing[2]), (origin[0], origin[1], origin[2]))
    grid = _Grid((sizes[0], sizes[1], sizes[2]), np.asarray(spacing, dtype=np.float64))
    with_lesion = not (config.cases >= 4 and index % 8 == (config.seed + 3) % 8)
    labels, tissue, body = _make_anatomy(grid, config.classes, with_lesion, rng)
    render = _render_ct if config.modality == "CT" else _render_mr
    return render(tissue, body, config.channels, rng), labels, geometry


def write_synthetic_dataset(
    config: SynthConfig, out_dir: Path, *, num_workers: int = 1, show_progress: bool = True
) -> Path:
    """Write the dataset to ``out_dir`` in the nnU-Net v2 raw layout, atomically; skip it when up to date.

    Layout: ``dataset.json``, ``imagesTr/<case>_<CCCC><ending>``, ``labelsTr/<case><ending>``, case ids
    ``synthct_000`` or ``synthmr_000``. CT images are stored as int16, MR as float32, labels as uint8.
    The dataset is built in a hidden sibling folder, then renamed to ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        UsageError: invalid config or ``num_workers``, or ``out_dir`` holds something else.
    """
    validate_config(config)
    if num_workers < 1:
        raise UsageError(f"num_workers is {num_workers}; expected >= 1")
    if _is_up_to_date(config, out_dir):
        logger.info("%s: synthetic dataset is up to date", out_dir)
        return out_dir
    _require_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        (scratch / "imagesTr").mkdir()
        (scratch / "labelsTr").mkdir()
        write = partial(_write_case, config, scratch)
        for identifier in map_cases(write, range(config.cases), num_workers=num_workers,
                                    description="synthesizing", show_progress=show_progress):
            logger.debug("synthesized %s", identifier)
        (scratch / "dataset.json").write_text(json.dumps(_dataset_json(config), indent=2) + "\n")
        _move_into_place(config, scratch, out_dir)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    logger.info("wrote %d synthetic %s cases (%d classes, %d channel(s)) to %s", config.cases,
                config.modality, config.classes, config.channels, out_dir)
    return out_dir


# ------------------------------------------------------------------------------------------------ anatomy


@dataclass(frozen=True)
class _Grid:
    """A case's voxel grid: ``shape`` ``(Z, Y, X)``, ``spacing`` ``(3,)`` mm; voxel 0 sits at 0 mm."""

    shape: IntTriple
    spacing: _F64


@dataclass(frozen=True)
class _Blob:
    """A smoothly deformed, rotated ellipsoid: centre and radii ``(3,)`` mm, rotation ``(3, 3)``."""

    center: _F64
    radii: _F64
    rotation: _F64
    wobble: float  # relative radius perturbation

    @property
    def reach(self) -> float:
        """Largest distance in mm from the centre that the shape can cover."""
        return float(self.radii.max()) * (1 + self.wobble)


def _make_anatomy(
    grid: _Grid, classes: int, with_lesion: bool, rng: np.random.Generator
) -> tuple[LabelVolume, npt.NDArray[np.uint8], BoolVolume]:
    """Paint body, spine and classes: labels and tissue ids (both (Z, Y, X) uint8), body mask."""
    extent = grid.spacing * np.asarray(grid.shape)
    body_blob = _Blob((extent - grid.spacing) / 2, extent * [0.47, 0.38, 0.45], np.eye(3), _BODY_WOBBLE)
    ratio = _blob_ratio(body_blob, grid, tuple(slice(0, n) for n in grid.shape), (6, 6, 6), rng)
    body = ratio <= 1.0
    tissue = np.where(body, np.uint8(_SOFT), np.uint8(_AIR))
    tissue[body & (ratio > 0.88)] = _FAT  # a subcutaneous fat layer
    del ratio
    tissue[_spine(grid, body_blob, rng) & (tissue == _SOFT)] = _BONE
    labels = np.zeros(grid.shape, np.uint8)
    organ = _paint_organs(labels, grid, body_blob, classes, with_lesion, rng)
    for label in range(4, classes + 1):
        size = 1.2 * grid.spacing.max() if label == 4 else organ.radii.mean() * rng.uniform(0.4, 0.55, 3)
        _paint_free(labels, body, grid, body_blob, label, np.broadcast_to(size, (3,)), rng)
    foreground = labels > 0
    body |= foreground  # a no-op by construction; keeps "every structure lies in the body" an invariant
    tissue[foreground] = labels[foreground] + 3
    return labels, tissue, body


def _paint_organs(
    labels: LabelVolume, grid: _Grid, body: _Blob, classes: int, with_lesion: bool, rng: np.random.Generator
) -> _Blob:
    """Paint class 3 (touching class 1), then class 1 over it, then class 2 inside class 1; return 1."""
    size = min(body.radii[1], body.radii[2]) * 0.5
    organ = _Blob(np.zeros(3), np.maximum(size * rng.uniform(0.8, 1.25, 3), 2.5 * grid.spacing),
                  _rotation(rng, math.pi / 4), _ORGAN_WOBBLE)
    organ = replace(organ, center=_place(body, organ, rng.uniform([-0.2, -0.35, -0.75], [0.2, -0.05, -0.45])))
    adjacent = _Blob(np.zeros(3), np.maximum(size * rng.uniform(0.5, 0.7, 3), 2.0 * grid.spacing),
                     _rotation(rng, math.pi / 4), _ORGAN_WOBBLE)
    direction = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.5, 0.5), 1.0])
    # the two organs' inner balls (radius min(radii) * (1 - wobble)) overlap, so the organs touch
    distance = 0.95 * (organ.radii.min() + adjacent.radii.min()) * (1 - _ORGAN_WOBBLE)
    target = organ.center + distance * direction / np.linalg.norm(direction)
    adjacent = replace(adjacent, center=_pull_inside(body, adjacent, organ.center, target))
    lesion = _Blob(organ.center + organ.radii * rng.uniform(-0.25, 0.25, 3),
                   np.maximum(organ.radii * rng.uniform(0.3, 0.5, 3), grid.spacing),
                   _rotation(rng, math.pi), _ORGAN_WOBBLE)
    if classes >= 3:
        box, mask = _blob_mask(adjacent, grid, rng)
        labels[box][mask] = 3
    box, mask = _blob_mask(organ, grid, rng)
    labels[box][mask] = 1
    box = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, grid.shape, strict=True))
    core = ndimage.binary_erosion(labels[box] == 1, structure=np.ones((3, 3, 3), bool))  # touches only 1
    nested = core & (_blob_ratio(lesion, grid, box, (4, 4, 4), rng) <= 1.0)
    if classes >= 2 and with_lesion:
        labels[box][nested if nested.any() else core] = 2
    return organ


def _paint_free(
    labels: LabelVolume, body: BoolVolume, grid: _Grid, body_blob: _Blob, label: int, radii: _F64,
    rng: np.random.Generator,
) -> None:
    """Paint ``label`` as a blob where it overlaps the fewest labelled voxels (up to 30 random tries)."""
    best: tuple[int, tuple[slice, ...], BoolVolume] | None = None
    blob = _Blob(np.zeros(3), radii, _rotation(rng, math.pi), _ORGAN_WOBBLE)
    for _ in range(30):
        blob = replace(blob, center=_place(body_blob, blob, rng.uniform(-1.0, 1.0, 3)))
        box, mask = _blob_mask(blob, grid, rng)
        free = mask & (labels[box] == 0) & body[box]
        lost = int(mask.sum() - free.sum())
        if free.any() and (best is None or lost < best[0]):
            best = (lost, box, free)
        if best is not None and best[0] == 0:
            break
    if best is not None:
        labels[best[1]][best[2]] = label


def _spine(grid: _Grid, body: _Blob, rng: np.random.Generator) -> BoolVolume:
    """An unlabelled, slightly curved bone tube along z at the back of the body, (Z, Y, X) bool."""
    radius = 0.12 * min(body.radii[1], body.radii[2]) * rng.uniform(0.8, 1.2)
    z = np.arange(grid.shape[0]) * grid.spacing[0]
    center_y = body.center[1] + 0.6 * body.radii[1] * (1 - body.wobble) + 0.1 * radius * np.sin(z / 40.0)
    dy = ((np.arange(grid.shape[1]) * grid.spacing[1])[None, :] - center_y[:, None]) / radius
    dx = ((np.arange(grid.shape[2]) * grid.spacing[2]) - body.center[2]) / (1.1 * radius)
    tube: BoolVolume = (dy**2).astype(np.float32)[:, :, None] + (dx**2).astype(np.float32) <= 1.0
    return tube


def _place(body: _Blob, blob: _Blob, where: _F64) -> _F64:
    """Centre (mm) putting all of ``blob`` inside ``body``; ``where`` in the unit ball (clipped to it)."""
    norm = float(np.linalg.norm(where))
    return body.center + (where / max(norm, 1.0)) * _room(body, blob)


def _room(body: _Blob, blob: _Blob) -> _F64:
    """Semi-axes (mm) of the ellipsoid of centres keeping ``blob`` inside ``body``'s smallest extent.

    Exact for a ball of radius ``blob.reach`` in an ellipsoid: semi-axes ``a - r`` fit (Minkowski).
    """
    return np.maximum(body.radii * (1 - body.wobble) - blob.reach - 1e-3, 0.0)


def _pull_inside(body: _Blob, blob: _Blob, start: _F64, target: _F64) -> _F64:
    """The point nearest ``target`` on the segment ``start -> target`` that keeps ``blob`` in ``body``."""
    room = np.maximum(_room(body, blob), 1e-6)
    for fraction in np.linspace(1.0, 0.0, 21):
        point: _F64 = start + fraction * (target - start)
        if np.sum(((point - body.center) / room) ** 2) <= 1.0:
            return point
    return start


def _rotation(rng: np.random.Generator, max_angle: float) -> _F64:
    """A random rotation matrix (3, 3) of at most ``max_angle`` radians (Rodrigues' formula)."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    result: _F64 = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    return result


def _blob_mask(blob: _Blob, grid: _Grid, rng: np.random.Generator) -> tuple[tuple[slice, ...], BoolVolume]:
    """The blob's bounding box (clipped to the grid) and its box-shaped bool mask."""
    half = np.ceil(blob.reach / grid.spacing).astype(int) + 1
    middle = np.round(blob.center / grid.spacing).astype(int)
    box = tuple(slice(int(max(0, m - h)), int(max(0, min(n, m + h + 1))))
                for m, h, n in zip(middle, half, grid.shape, strict=True))
    return box, _blob_ratio(blob, grid, box, (5, 5, 5), rng) <= 1.0


def _blob_ratio(
    blob: _Blob, grid: _Grid, box: tuple[slice, ...], nodes: IntTriple, rng: np.random.Generator
) -> FloatVolume:
    """Over ``box``: float32 ellipsoid distance over the smoothly perturbed radius (<= 1 inside)."""
    axes = [(np.arange(b.start, b.stop) * s - c).astype(np.float32)
            for b, s, c in zip(box, grid.spacing, blob.center, strict=True)]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    squared = np.zeros((len(axes[0]), len(axes[1]), len(axes[2])), np.float32)
    for row, radius in zip(blob.rotation, blob.radii, strict=True):
        a, b, c = (np.float32(v / radius) for v in row)
        term = (a * z + b * y) + c * x
        squared += term * term
    field = _smooth_field(rng, squared.shape, nodes)
    field *= np.float32(blob.wobble)
    field += np.float32(1.0)
    ratio: FloatVolume = np.sqrt(squared, out=squared)
    ratio /= field
    return ratio


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], nodes: tuple[int, ...]) -> FloatVolume:
    """A smooth random float32 field of ``shape`` (Z, Y, X) in [-1, 1]: coarse noise, Gaussian-upsampled."""
    coarse = rng.standard_normal(nodes).astype(np.float32)
    if 0 in shape:
        return np.zeros(shape, np.float32)
    weights = []
    for count, size in zip(nodes, shape, strict=True):
        offsets = np.linspace(0.0, 1.0, size)[:, None] - np.linspace(0.0, 1.0, count)[None, :]
        bumps = np.exp(-0.5 * (offsets * (count - 1)) ** 2)
        weights.append((bumps / bumps.sum(axis=1, keepdims=True)).astype(np.float32))
    field = np.tensordot(weights[2], coarse, axes=([1], [2]))  # (X, a, b)
    field = np.tensordot(weights[1], field, axes=([1], [2]))  # (Y, X, a)
    result: FloatVolume = np.tensordot(weights[0], field, axes=([1], [2]))  # (Z, Y, X)
    result /= max(float(np.abs(result).max()), 1e-6)
    return result


# ------------------------------------------------------------------------------------------------ intensity


def _render_ct(
    tissue: npt.NDArray[np.uint8], body: BoolVolume, channels: int, rng: np.random.Generator
) -> FloatVolume:
    """CT channels (C, Z, Y, X) float32 in HU: tissue means, texture, partial-volume blur, noise."""
    native = np.array((*_CT_BASE, rng.uniform(50, 65)) + (0.0,) * 7)
    native[1:4] += rng.uniform([-15, -10, -200], [15, 10, 200])
    native[5] = native[4] + rng.uniform(25, 45) * (-1 if rng.random() < 0.75 else 1)  # lesion vs organ
    native[6:8] = [rng.uniform(75, 95), rng.uniform(120, 180)]  # adjacent organ, nodule
    native[8:] = native[_SOFT] + rng.uniform(30, 80, 4)
    shifts = np.array([row[:8] + (row[8],) * 4 for row in _CT_SHIFTS]) * rng.uniform(0.8, 1.2, (3, 1))
    texture = _smooth_field(rng, tissue.shape, tuple(int(np.clip(n // 10, 3, 16)) for n in tissue.shape))
    texture *= body
    texture *= np.float32(8.0)  # +-8 HU of slow tissue inhomogeneity
    sigma = np.float32(rng.uniform(10.0, 20.0))
    image = np.empty((channels, *tissue.shape), np.float32)
    for channel in range(channels):
        values = (native + (shifts[channel - 1] if channel else 0.0)).astype(np.float32)[tissue]
        values += texture
        ndimage.gaussian_filter(values, sigma=0.5, truncate=3.0, output=image[channel])
        rng.standard_normal(dtype=np.float32, out=values)
        values *= sigma
        image[channel] += values
        np.clip(image[channel], -1024.0, 3071.0, out=image[channel])
    return image


def _render_mr(
    tissue: npt.NDArray[np.uint8], body: BoolVolume, channels: int, rng: np.random.Generator
) -> FloatVolume:
    """MR channels (C, Z, Y, X) float32: per-sequence contrasts, bias field, Rician noise, 0 outside body."""
    gain = _smooth_field(rng, tissue.shape, tuple(int(np.clip(n // 10, 3, 16)) for n in tissue.shape))
    gain *= np.float32(0.06)  # +-6 % tissue inhomogeneity
    gain += np.float32(1.0)
    bias = _smooth_field(rng, tissue.shape, (3, 3, 3))
    bias *= np.float32(0.25)  # coil sensitivity 0.75..1.25, shared by the channels
    bias += np.float32(1.0)
    gain *= bias
    del bias
    image = np.empty((channels, *tissue.shape), np.float32)
    for channel in range(channels):
        row = _MR_MEANS[channel]
        table = np.array(row[:8] + (row[8],) * 4) * rng.uniform(0.9, 1.1, 12)
        table[8:] *= rng.uniform(0.75, 1.25, 4)
        scale = math.exp(rng.uniform(math.log(0.5), math.log(3.0)))  # MR is not quantitative
        sigma = np.float32(0.03 * float(np.median(table[1:4])) * scale)
        means = table.astype(np.float32)[tissue]
        ndimage.gaussian_filter(means, sigma=0.5, truncate=3.0, output=image[channel])
        del means
        image[channel] *= gain
        image[channel] *= np.float32(scale)
        real = rng.standard_normal(tissue.shape, dtype=np.float32)
        real *= sigma
        real += image[channel]
        real *= real
        imaginary = rng.standard_normal(tissue.shape, dtype=np.float32)
        imaginary *= sigma
        imaginary *= imaginary
        real += imaginary
        del imaginary
        np.sqrt(real, out=image[channel])
        image[channel][~body] = 0.0
    return image


# ------------------------------------------------------------------------------------------------ writing


def _write_case(config: SynthConfig, folder: Path, index: int) -> str:
    """Synthesize case ``index`` into ``folder``; module-level so that worker processes can run it."""
    image, labels, geometry = synthesize_case(config, index)
    identifier = case_identifier(config, index)
    for channel, volume in enumerate(image):
        stored = np.rint(volume).astype(np.int16) if config.modality == "CT" else volume
        write_image(stored, geometry, folder / "imagesTr" / f"{identifier}_{channel:04d}{config.file_ending}")
    write_labels(labels, geometry, folder / "labelsTr" / f"{identifier}{config.file_ending}")
    return identifier


def _dataset_json(config: SynthConfig) -> dict[str, Any]:
    return {
        "name": f"Synth{config.modality}",
        "description": f"autoseg synthetic {config.modality} dataset: {config.cases} cases, "
                       f"{config.classes} classes, {config.channels} channel(s), seed {config.seed}",
        "channel_names": channel_names(config),
        "labels": class_names(config),
        "numTraining": config.cases,
        "file_ending": config.file_ending,
        "autoseg_synth": config.to_json(),
    }


def _is_up_to_date(config: SynthConfig, out_dir: Path) -> bool:
    try:
        data = json.loads((out_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("autoseg_synth") == config.to_json()


def _require_replaceable(out_dir: Path) -> None:
    """Raise unless ``out_dir`` is absent or an empty folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir}: exists and is not this synthetic dataset (other config or other "
                         "content); pick another folder or delete it")


def _move_into_place(config: SynthConfig, scratch: Path, out_dir: Path) -> None:
    """Rename the finished ``scratch`` folder to ``out_dir`` (an empty ``out_dir`` is replaced)."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    try:
        scratch.replace(out_dir)
    except OSError:
        if not _is_up_to_date(config, out_dir):  # another process may have just written the same dataset
            _require_replaceable(out_dir)
            raise


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not _is_int(value) or not low <= int(value) <= high:
        raise UsageError(f"synthetic dataset config: {name} is {value!r}; expected an integer {low}..{high}")
