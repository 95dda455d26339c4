"""Data augmentation with batchgenerators, as nnU-Net: spatial (rotation, scaling), noise, blur, brightness,
contrast, low-resolution simulation, gamma, mirroring.

When the plan keeps laterality (``MirroringPlan.left_right`` False), :class:`PatientMirrorTransform` mirrors
each sample along every axis but its case's patient left-right one (the batch carries each sample's axes).

For anisotropic 3D plans (a separate coarse z axis) rotation is in-plane only (around z) and the
low-resolution simulation leaves z alone, because rotating thick slices out of plane invents data the scanner
never measured. In-plane rotation goes up to 180 degrees, as nnU-Net, except when the plan keeps laterality:
a 180-degree rotation followed by a mirror of the other in-plane axis is exactly a left-right mirror, so the
in-plane rotation is then capped at :data:`ROTATION_3D` (a reflection across a line within 15 degrees of the
left-right axis keeps left on the left).

A cascade stage's previous-stage channels (:mod:`autoseg.training.cascade`) are augmented spatially with the
image (they travel as ``seg`` channels), then perturbed as nnU-Net does (:func:`perturb_previous_stage`), so
the network learns to correct the coarse stage rather than copy it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from scipy import ndimage

ROTATION_3D = math.radians(30)
ROTATION_IN_PLANE = math.pi
SCALE_RANGE = (0.7, 1.4)

MORPHOLOGY_P_PER_SAMPLE = 0.4
MORPHOLOGY_RADIUS_VOXELS = (1, 8)
REMOVE_COMPONENT_P_PER_SAMPLE = 0.2
REMOVE_COMPONENT_MAX_FRACTION = 0.15
"""nnU-Net's augmentation of a cascade's previous-stage channels (``ApplyRandomBinaryOperatorTransform``,
``RemoveRandomConnectedComponentFromOneHotEncodingTransform``): for 40 % of the samples every channel, in
random order, gets a dilation, erosion, opening or closing by a ball of radius 1-8 voxels; for 20 % of the
samples every channel loses one random connected component among those covering less than 15 % of the
patch."""


def rotation_ranges(
    dims: int, in_plane_only: bool, *, keep_laterality: bool = False
) -> tuple[tuple[float, float], ...]:
    """Rotation ranges (radians) around batchgenerators' x, y, z: for our (z, y, x) arrays, its "x" rotation
    is in the (y, x) plane, i.e. around z. ``keep_laterality`` caps the in-plane rotation (see the module)."""
    if dims == 2 or in_plane_only:
        limit = ROTATION_3D if keep_laterality else ROTATION_IN_PLANE
        return (-limit, limit), (0.0, 0.0), (0.0, 0.0)
    return ((-ROTATION_3D, ROTATION_3D),) * 3


def enlarged_patch(patch_size: Sequence[int], dims: int, in_plane_only: bool) -> tuple[int, ...]:
    """The patch to cut before the spatial transform, so rotation and down-scaling find image, not padding."""
    size = np.array(patch_size, dtype=np.float64)
    if dims == 2 or in_plane_only:
        plane = size[-2:]
        diagonal = float(np.hypot(*plane))
        grown = np.concatenate([size[:-2], [diagonal, diagonal]])
    else:
        grown = np.full_like(size, float(np.linalg.norm(size)))
        grown = np.minimum(grown, size * 1.5)
    return tuple(math.ceil(g) for g in np.maximum(grown, size))


def training_transforms(
    patch_size: Sequence[int], *, in_plane_only: bool, mirror_left_right: bool = True
) -> AbstractTransform:
    """The augmentation pipeline for ``patch_size`` (``(z, y, x)`` or ``(y, x)``); with
    ``mirror_left_right`` False the batch must carry ``mirror_axes`` (see :class:`PatientMirrorTransform`)."""
    dims = len(patch_size)
    ignore_axes = (0,) if (dims == 3 and in_plane_only) else None
    return Compose(
        [
            _spatial_transform(
                patch_size, in_plane_only=in_plane_only, keep_laterality=not mirror_left_right
            ),
            GaussianNoiseTransform(p_per_sample=0.1),
            GaussianBlurTransform(
                (0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5
            ),
            BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
            ContrastAugmentationTransform(p_per_sample=0.15),
            SimulateLowResolutionTransform(
                zoom_range=(0.5, 1.0),
                per_channel=True,
                p_per_channel=0.5,
                order_downsample=0,
                order_upsample=3,
                p_per_sample=0.25,
                ignore_axes=ignore_axes,
            ),
            GammaTransform(
                (0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1
            ),
            GammaTransform(
                (0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3
            ),
            MirrorTransform(tuple(range(dims))) if mirror_left_right else PatientMirrorTransform(),
        ]
    )


class PatientMirrorTransform(AbstractTransform):  # type: ignore[misc]
    """Mirror sample ``b`` along each axis of ``batch["mirror_axes"][b]`` with probability 0.5 (the axes its
    case allows: all but the patient's left-right one, ``MirroringPlan.axes``), as batchgenerators'
    ``MirrorTransform`` does for fixed axes, drawing from the same global generator."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data, seg = batch["data"], batch.get("seg")
        for index, axes in enumerate(batch["mirror_axes"]):
            for axis in axes:
                if np.random.uniform() < 0.5:  # noqa: NPY002 (batchgenerators' private seeded state)
                    data[index] = np.flip(data[index], axis + 1).copy()
                    if seg is not None:
                        seg[index] = np.flip(seg[index], axis + 1).copy()
        return batch


def _spatial_transform(
    patch_size: Sequence[int], *, in_plane_only: bool, keep_laterality: bool
) -> SpatialTransform:
    """Rotation and scaling (no elastic deformation), each for 20 % of the samples, cropped to the patch."""
    angle_x, angle_y, angle_z = rotation_ranges(
        len(patch_size), in_plane_only, keep_laterality=keep_laterality
    )
    return SpatialTransform(
        tuple(patch_size),
        patch_center_dist_from_border=None,
        do_elastic_deform=False,
        do_rotation=True,
        angle_x=angle_x,
        angle_y=angle_y,
        angle_z=angle_z,
        do_scale=True,
        scale=SCALE_RANGE,
        border_mode_data="constant",
        border_cval_data=0,
        order_data=3,
        border_mode_seg="constant",
        border_cval_seg=0,
        order_seg=1,
        random_crop=False,
        p_rot_per_sample=0.2,
        p_scale_per_sample=0.2,
        p_el_per_sample=0.0,
    )


def perturb_previous_stage(channels: np.ndarray, rng: np.random.Generator, *, exclusive: bool) -> None:
    """Morphological noise and removed components on a batch of previous-stage one-hot channels
    ``(B, K, *patch)`` float32 0/1, in place (constants above). ``exclusive`` (one-hot classes, not
    overlapping structures): a voxel a channel gains is taken from the others, so one class per voxel stays.

    The balls are Euclidean in voxels, through distance transforms (exact, and fast at radius 8); the patch
    border is not treated as background (an erosion does not eat into the patch from its edges).
    """
    for sample in channels:
        if rng.uniform() < MORPHOLOGY_P_PER_SAMPLE:
            for k in rng.permutation(len(sample)):
                mask = sample[k] > 0.5
                if not mask.any():
                    continue
                operation = ("dilation", "erosion", "opening", "closing")[int(rng.integers(4))]
                radius = int(rng.integers(MORPHOLOGY_RADIUS_VOXELS[0], MORPHOLOGY_RADIUS_VOXELS[1] + 1))
                changed = binary_morphology(mask, operation, radius)
                if exclusive:
                    gained = changed & ~mask
                    sample[:, gained] = 0.0
                sample[k] = changed
        if rng.uniform() < REMOVE_COMPONENT_P_PER_SAMPLE:
            for k in range(len(sample)):
                remove_random_component(sample[k], rng, max_fraction=REMOVE_COMPONENT_MAX_FRACTION)


def binary_morphology(mask: np.ndarray, operation: str, radius: float) -> np.ndarray:
    """``mask`` dilated, eroded, opened or closed by a Euclidean ball of ``radius`` voxels."""
    if operation == "dilation":
        return _dilate(mask, radius)
    if operation == "erosion":
        return _erode(mask, radius)
    if operation == "opening":
        return _dilate(_erode(mask, radius), radius)
    if operation == "closing":
        return _erode(_dilate(mask, radius), radius)
    raise ValueError(f"unknown operation {operation!r}")


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    if mask.all() or not mask.any():
        return mask.copy()
    dilated: np.ndarray = ndimage.distance_transform_edt(~mask) <= radius
    return dilated


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    if mask.all() or not mask.any():
        return mask.copy()
    eroded: np.ndarray = ndimage.distance_transform_edt(mask) > radius
    return eroded


def remove_random_component(channel: np.ndarray, rng: np.random.Generator, *, max_fraction: float) -> bool:
    """Set one random connected component (face connectivity) of a 0/1 channel to 0, among those smaller
    than ``max_fraction`` of the channel's voxels, in place; whether one was removed."""
    components, count = ndimage.label(channel > 0.5)
    if count == 0:
        return False
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < max_fraction * channel.size) + 1
    if small.size == 0:
        return False
    channel[components == int(small[int(rng.integers(small.size))])] = 0.0
    return True
