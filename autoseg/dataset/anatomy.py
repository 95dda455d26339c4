"""Shapes and intensities of synthetic cases: a deformed body holding organ-like structures, in millimetres.

Used by :mod:`autoseg.dataset.synthetic`; see its docstring for what each class looks like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autoseg.types import BoolVolume, FloatVolume, IntTriple, LabelVolume

_F64 = npt.NDArray[np.float64]
_AIR, _FAT, _SOFT, _BONE = 0, 1, 2, 3  # tissue ids; class k has tissue id 3 + k
# Tissue means; columns [air, fat, soft, bone, organ, lesion, adjacent, nodule, extra organs]. CT rows are
# the contrast shifts of the arterial, venous and delayed phases; MR rows are T1, T2, PD, T1c.
_CT_BASE = (-1000.0, -100.0, 25.0, 700.0)
_CT_SHIFTS = (
    (0, 0, 10, 0, 25, 70, 140, 40, 60),
    (0, 0, 20, 0, 70, 30, 110, 60, 50),
    (0, 0, 15, 0, 40, 45, 60, 40, 30),
)
_MR_MEANS = (
    (0, 800, 320, 150, 480, 220, 360, 560, 420),
    (0, 560, 230, 90, 210, 720, 620, 400, 330),
    (0, 650, 420, 120, 520, 640, 580, 470, 460),
    (0, 800, 350, 150, 620, 520, 700, 720, 560),
)
_BODY_WOBBLE, _ORGAN_WOBBLE = 0.1, 0.2  # relative radius perturbation of the body and of organs
EASY_LESION_SCALE = 1.4
"""``difficulty="easy"``: the lesion's radii relative to the standard draw."""
EASY_LESION_HU, EASY_ADJACENT_HU = -70.0, 60.0
"""``difficulty="easy"``: lesion and touching organ relative to the organ (CT, HU)."""


@dataclass(frozen=True)
class Grid:
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


def make_anatomy(
    grid: Grid, classes: int, with_lesion: bool, rng: np.random.Generator, *, easy: bool = False
) -> tuple[LabelVolume, npt.NDArray[np.uint8], BoolVolume]:
    """Paint body, spine and classes: labels and tissue ids (both (Z, Y, X) uint8), body mask; ``easy``
    makes the lesion :data:`EASY_LESION_SCALE` times larger (same random draws)."""
    extent = grid.spacing * np.asarray(grid.shape)
    body_blob = _Blob((extent - grid.spacing) / 2, extent * [0.47, 0.38, 0.45], np.eye(3), _BODY_WOBBLE)
    ratio = _blob_ratio(body_blob, grid, tuple(slice(0, n) for n in grid.shape), (6, 6, 6), rng)
    body = ratio <= 1.0
    tissue = np.where(body, np.uint8(_SOFT), np.uint8(_AIR))
    tissue[body & (ratio > 0.88)] = _FAT  # a subcutaneous fat layer
    del ratio
    tissue[_spine(grid, body_blob, rng) & (tissue == _SOFT)] = _BONE
    labels = np.zeros(grid.shape, np.uint8)
    organ = _paint_organs(labels, grid, body_blob, classes, with_lesion, rng, easy)
    for label in range(4, classes + 1):
        size = 1.2 * grid.spacing.max() if label == 4 else organ.radii.mean() * rng.uniform(0.4, 0.55, 3)
        _paint_free(labels, body, grid, body_blob, label, np.broadcast_to(size, (3,)), rng)
    foreground = labels > 0
    body |= foreground  # a no-op by construction; keeps "every structure lies in the body" an invariant
    tissue[foreground] = labels[foreground] + 3
    return labels, tissue, body


def _paint_organs(
    labels: LabelVolume,
    grid: Grid,
    body: _Blob,
    classes: int,
    with_lesion: bool,
    rng: np.random.Generator,
    easy: bool = False,
) -> _Blob:
    """Paint class 1, class 3 touching it and class 2 nested in it; return the class-1 blob."""
    size = min(body.radii[1], body.radii[2]) * 0.5
    organ = _Blob(
        np.zeros(3),
        np.maximum(size * rng.uniform(0.8, 1.25, 3), 2.5 * grid.spacing),
        _rotation(rng, math.pi / 4),
        _ORGAN_WOBBLE,
    )
    organ = replace(organ, center=_place(body, organ, rng.uniform([-0.2, -0.35, -0.75], [0.2, -0.05, -0.45])))
    box, mask = _blob_mask(organ, grid, rng)
    labels[box][mask] = 1
    adjacent = _Blob(
        np.zeros(3),
        np.maximum(size * rng.uniform(0.5, 0.7, 3), 2.0 * grid.spacing),
        _rotation(rng, math.pi / 4),
        _ORGAN_WOBBLE,
    )
    direction = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.5, 0.5), 1.0])
    seed = int(rng.integers(2**32))
    if classes >= 3:
        _paint_touching(labels, grid, body, organ, adjacent, direction / np.linalg.norm(direction), seed)
    lesion = _Blob(
        organ.center + organ.radii * rng.uniform(-0.25, 0.25, 3),
        np.maximum(
            organ.radii * rng.uniform(0.3, 0.5, 3) * (EASY_LESION_SCALE if easy else 1.0), grid.spacing
        ),
        _rotation(rng, math.pi),
        _ORGAN_WOBBLE,
    )
    box = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, grid.shape, strict=True))
    core = ndimage.binary_erosion(labels[box] == 1, structure=np.ones((3, 3, 3), bool))  # touches only 1
    nested = core & (_blob_ratio(lesion, grid, box, (4, 4, 4), rng) <= 1.0)
    if classes >= 2 and with_lesion:
        labels[box][nested if nested.any() else core] = 2
    return organ


def _paint_touching(
    labels: LabelVolume, grid: Grid, body: _Blob, organ: _Blob, adjacent: _Blob, direction: _F64, seed: int
) -> None:
    """Paint class 3 on background next to class 1: along ``direction`` (else along z or y), moving outward
    from where the organs' inner balls (radius ``min(radii) * (1 - wobble)``) overlap until it shows."""
    distance = 0.95 * (organ.radii.min() + adjacent.radii.min()) * (1 - _ORGAN_WOBBLE)
    for unit in (direction, *np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])):
        for step in range(6):
            target = organ.center + (distance + step * 0.25 * organ.reach) * unit
            adjacent = replace(adjacent, center=_pull_inside(body, adjacent, organ.center, target))
            box, mask = _blob_mask(adjacent, grid, np.random.default_rng(seed))
            free = mask & (labels[box] == 0)
            if (free & ndimage.binary_dilation(labels[box] == 1)).any():
                labels[box][free] = 3
                return


def _paint_free(
    labels: LabelVolume,
    body: BoolVolume,
    grid: Grid,
    body_blob: _Blob,
    label: int,
    radii: _F64,
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


def _spine(grid: Grid, body: _Blob, rng: np.random.Generator) -> BoolVolume:
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
    """Semi-axes (mm) of the ellipsoid of centres that keep all of ``blob`` inside ``body``.

    With ``body``'s smallest ellipsoid ``E`` (radii shrunk by its wobble): if ``blob`` fits in ``t * E`` then
    any centre in ``(1 - t) * E`` keeps it inside ``E``; ``t`` is the norm of the map from the unit ball to
    the blob's largest extent in units of ``E``.
    """
    inner = body.radii * (1 - body.wobble)
    extent = (blob.rotation.T * (blob.radii * (1 + blob.wobble))) / inner[:, None]
    fraction = float(np.linalg.norm(extent, ord=2)) + 1e-6
    return inner * max(1.0 - fraction, 0.0)


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


def _blob_mask(blob: _Blob, grid: Grid, rng: np.random.Generator) -> tuple[tuple[slice, ...], BoolVolume]:
    """The blob's bounding box (clipped to the grid) and its box-shaped bool mask."""
    half = np.ceil(blob.reach / grid.spacing).astype(int) + 1
    middle = np.round(blob.center / grid.spacing).astype(int)
    box = tuple(
        slice(int(max(0, m - h)), int(max(0, min(n, m + h + 1))))
        for m, h, n in zip(middle, half, grid.shape, strict=True)
    )
    return box, _blob_ratio(blob, grid, box, (5, 5, 5), rng) <= 1.0


def _blob_ratio(
    blob: _Blob, grid: Grid, box: tuple[slice, ...], nodes: IntTriple, rng: np.random.Generator
) -> FloatVolume:
    """Over ``box``: float32 ellipsoid distance over the smoothly perturbed radius (<= 1 inside)."""
    axes = [
        (np.arange(b.start, b.stop) * s - c).astype(np.float32)
        for b, s, c in zip(box, grid.spacing, blob.center, strict=True)
    ]
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


def render_ct(
    tissue: npt.NDArray[np.uint8],
    body: BoolVolume,
    channels: int,
    rng: np.random.Generator,
    *,
    easy: bool = False,
) -> FloatVolume:
    """CT channels (C, Z, Y, X) float32 in HU: tissue means, texture, partial-volume blur, noise; ``easy``:
    fixed high lesion and neighbour contrasts and half the noise (same random draws)."""
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
    if easy:
        native[5] = native[4] + EASY_LESION_HU
        native[6] = native[4] + EASY_ADJACENT_HU
        sigma *= np.float32(0.5)
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


def render_mr(
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
