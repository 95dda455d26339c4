"""A synthetic thorax for radiotherapy structure sets: shapes in millimetres and CT intensities in HU.

Used by :mod:`autoseg.dataset.rt_synthetic`. Array axes are ``(z, y, x)`` with an identity direction, so they
run along LPS: x towards the patient's left, y towards the back, z towards the head. The thorax is an
elliptical body (a fat layer under the skin) holding a vertebra with the spinal cord in its canal at the
back, two lungs (the right one, at smaller x, a little larger), the heart in front and to the left behind a
rim of pericardial fat, the oesophagus in front of the vertebra (an air lumen inside its wall), and a lung
tumour (GTV) with its margins: CTV = GTV + 4 mm, PTV = CTV + 4 mm (inside the body), a ring 2-8 mm outside
the PTV (closed on a slice where the PTV keeps clear of the skin), the skin (the body's outer 4 mm: a ring
on every slice) and the cord's planning risk volume (cord + 4 mm). Every structure lies inside the body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autoseg.types import BoolVolume, FloatVolume, IntTriple, Triple

_F64 = npt.NDArray[np.float64]
CTV_MARGIN_MM = 4.0
PTV_MARGIN_MM = 4.0
RING_MM = (2.0, 8.0)
PRV_MARGIN_MM = 4.0
SKIN_MM = 4.0
# Mean HU per tissue; each case shifts them a little. Organs differ from their surroundings by >= 20 HU.
_HU = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -95.0,
    "soft": 40.0,
    "bone": 650.0,
    "csf": 8.0,
    "cord": 30.0,
    "heart": 65.0,
    "esophagus": 20.0,
    "tumour": 10.0,
}


@dataclass(frozen=True)
class Thorax:
    """One synthetic case.

    Attributes:
        image: ``(Z, Y, X)`` float32 CT values in HU (integers in [-1024, 3071]).
        masks: TG-263 standard name -> ``(Z, Y, X)`` bool mask, every structure (contoured or not).
    """

    image: FloatVolume
    masks: dict[str, BoolVolume]


@dataclass(frozen=True)
class _Space:
    """Voxel centres in mm (broadcastable ``z``, ``y``, ``x``), the body's centre and semi-axes (mm)."""

    z: _F64
    y: _F64
    x: _F64
    spacing: Triple
    centre: _F64
    axes: _F64


def make_thorax(shape: IntTriple, spacing_mm: Triple, rng: np.random.Generator) -> Thorax:
    """Build the structures and the CT image of one case; deterministic in ``rng``'s state.

    Args:
        shape: ``(Z, Y, X)`` voxels.
        spacing_mm: ``(z, y, x)`` voxel size in mm.
        rng: the case's generator.
    """
    extent = np.asarray(shape, np.float64) * spacing_mm
    indices = [np.arange(n, dtype=np.float64) * s for n, s in zip(shape, spacing_mm, strict=True)]
    space = _Space(
        indices[0][:, None, None],
        indices[1][None, :, None],
        indices[2][None, None, :],
        spacing_mm,
        (extent - np.asarray(spacing_mm)) / 2,
        extent * [0.5, 0.36, 0.45] * rng.uniform(0.93, 1.0, 3),
    )
    masks, tissue = _organs(space, rng)
    masks.update(_targets(space, masks, rng))
    return Thorax(_render(space, tissue, masks, rng), masks)


def _organs(space: _Space, rng: np.random.Generator) -> tuple[dict[str, BoolVolume], dict[str, BoolVolume]]:
    """Body, organs and the unlabelled tissues (fat, bone, canal, oesophageal lumen)."""
    c, a = space.centre, space.axes
    ratio = _body_ratio(space, rng)
    body = ratio <= 1.0
    inner = ratio <= 0.86
    step = float(min(space.spacing[1:]))
    canal_radius = max(0.1 * a[2], 2.0 * step)
    canal = _cylinder(space, c[1] + 0.62 * a[1], c[2], canal_radius, rng)
    cord = _cylinder(space, c[1] + 0.62 * a[1], c[2], 0.65 * canal_radius, rng) & canal
    vertebra = _cylinder(space, c[1] + 0.35 * a[1], c[2], 0.17 * a[2], rng)
    bone = (vertebra | _cylinder(space, c[1] + 0.62 * a[1], c[2], 1.8 * canal_radius, rng)) & ~canal
    eso_y, eso_x = c[1] + 0.05 * a[1], c[2] + 0.06 * a[2]
    eso_radius = max(0.08 * a[2], 1.6 * step)
    esophagus = _cylinder(space, eso_y, eso_x, eso_radius, rng) & ~bone
    lumen = _cylinder(space, eso_y, eso_x, 0.4 * eso_radius, rng) & esophagus
    heart_centre = c + a * [-0.45, -0.4, 0.15] + rng.uniform(-0.04, 0.04, 3) * a
    heart = _ellipsoid(space, heart_centre, a * [0.45, 0.36, 0.36] * rng.uniform(0.9, 1.1, 3)) & inner
    heart &= ~_grow(esophagus, space.spacing, 1.5)
    pericardium = _grow(heart, space.spacing, 1.5) & ~heart & inner
    spare = _grow(heart | esophagus | bone, space.spacing, 2.0) | ~inner
    lungs = {}
    for name, side, scale in (("Lung_R", -1.0, 1.08), ("Lung_L", 1.0, 1.0)):
        centre = c + a * [0.1, -0.08, side * 0.47]
        radii = a * [0.95, 0.62, 0.4 * scale] * rng.uniform(0.92, 1.05, 3)
        lungs[name] = _ellipsoid(space, centre, radii) & ~spare
    skin = body & (ndimage.distance_transform_edt(body, sampling=space.spacing) <= SKIN_MM)
    masks = {
        "External": body,
        "Skin": skin,
        "SpinalCord": cord,
        "Esophagus": esophagus,
        "Heart": heart,
        **lungs,
    }
    tissue = {"fat": (body & ~inner) | pericardium, "bone": bone, "csf": canal & ~cord, "air": lumen}
    return masks, tissue


def _targets(space: _Space, masks: dict[str, BoolVolume], rng: np.random.Generator) -> dict[str, BoolVolume]:
    """GTV inside a lung, CTV and PTV around it, the PTV ring and the cord's PRV."""
    lung = masks["Lung_L" if rng.random() < 0.5 else "Lung_R"]
    depth = ndimage.distance_transform_edt(lung, sampling=space.spacing)
    radius = min(float(rng.uniform(4.0, 7.0)), max(float(depth.max()), 1.0))
    candidates = np.argwhere(depth >= 0.7 * radius)
    if rng.random() < 0.5:  # half the tumours lie at the mediastinum: the PTV reaches the heart or oesophagus
        medial = np.abs(candidates[:, 2] * space.spacing[2] - space.centre[2])
        candidates = candidates[medial <= np.quantile(medial, 0.2)]
    centre_index = candidates[rng.integers(len(candidates))]
    centre = centre_index * np.asarray(space.spacing)
    gtv = _ellipsoid(space, centre, radius * rng.uniform(0.8, 1.2, 3)) & lung
    if not gtv.any():
        gtv[tuple(centre_index)] = True
    body = masks["External"]
    ctv = _grow(gtv, space.spacing, CTV_MARGIN_MM) & body
    ptv = _grow(ctv, space.spacing, PTV_MARGIN_MM) & body
    ring = _grow(ptv, space.spacing, RING_MM[1]) & ~_grow(ptv, space.spacing, RING_MM[0]) & body
    prv = _grow(masks["SpinalCord"], space.spacing, PRV_MARGIN_MM) & body
    return {"GTVp": gtv, "CTVp": ctv, "PTVp": ptv, "PTV_Ring": ring, "SpinalCord_PRV05": prv}


def _body_ratio(space: _Space, rng: np.random.Generator) -> FloatVolume:
    """Elliptical distance from the body axis over a radius wobbling with angle and slice (<= 1 inside)."""
    u = (space.x - space.centre[2]) / space.axes[2]
    v = (space.y - space.centre[1]) / space.axes[1]
    angle = np.arctan2(v, u)
    phases = rng.uniform(0, 2 * math.pi, 3)
    wobble = 1 + 0.03 * np.cos(2 * angle + phases[0]) + 0.02 * np.cos(3 * angle + phases[1])
    wobble = wobble * (1 + 0.03 * np.sin(space.z / max(space.axes[0], 1.0) * 2.5 + phases[2]))
    ratio: FloatVolume = (np.sqrt(u**2 + v**2) / wobble).astype(np.float32)
    return ratio


def _cylinder(space: _Space, y: float, x: float, radius: float, rng: np.random.Generator) -> BoolVolume:
    """A tube along z of ``radius`` mm whose centre drifts by up to 15 % of the radius over the slices."""
    phase = float(rng.uniform(0, 2 * math.pi))
    drift = 0.15 * radius * np.sin(space.z / max(space.axes[0], 1.0) * 2.0 + phase)
    mask: BoolVolume = (space.y - y - drift) ** 2 + (space.x - x) ** 2 <= radius**2
    return mask


def _ellipsoid(space: _Space, centre: _F64, radii: _F64) -> BoolVolume:
    mask: BoolVolume = (
        ((space.z - centre[0]) / radii[0]) ** 2
        + ((space.y - centre[1]) / radii[1]) ** 2
        + ((space.x - centre[2]) / radii[2]) ** 2
    ) <= 1.0
    return mask


def _grow(mask: BoolVolume, spacing: Triple, margin_mm: float) -> BoolVolume:
    """``mask`` expanded by ``margin_mm`` (Euclidean, in mm: every voxel centre within the margin)."""
    if not mask.any():
        return mask.copy()
    grown: BoolVolume = ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm
    return grown


def _render(
    space: _Space, tissue: dict[str, BoolVolume], masks: dict[str, BoolVolume], rng: np.random.Generator
) -> FloatVolume:
    """CT values: tissue means (jittered per case), slow texture, a slight blur, noise; rounded HU."""
    hu = {name: value + float(rng.uniform(-6, 6)) for name, value in _HU.items()}
    shape = masks["External"].shape
    image = np.full(shape, hu["air"], np.float32)
    layers = (
        (masks["External"], "soft"),
        (tissue["fat"], "fat"),
        (masks["Lung_L"] | masks["Lung_R"], "lung"),
        (masks["Heart"], "heart"),
        (masks["Esophagus"], "esophagus"),
        (tissue["air"], "air"),
        (tissue["bone"], "bone"),
        (tissue["csf"], "csf"),
        (masks["SpinalCord"], "cord"),
        (masks["GTVp"], "tumour"),
    )
    for mask, name in layers:
        image[mask] = hu[name]
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=2.0)
    texture *= np.float32(6.0 / max(float(texture.std()), 1e-6))
    image += texture * masks["External"]
    image = ndimage.gaussian_filter(image, sigma=(0.3, 0.6, 0.6), truncate=3.0)
    image += rng.normal(0.0, float(rng.uniform(8.0, 14.0)), shape).astype(np.float32)
    result: FloatVolume = np.rint(np.clip(image, -1024.0, 3071.0)).astype(np.float32)
    return result
