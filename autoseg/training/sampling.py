"""Random training patches with foreground oversampling and padding at the borders.

A batch of ``B`` patches forces ``max(1, ceil(B / 3))`` of them to contain foreground: a class is chosen
uniformly among the classes present in the case, then one of its stored voxel locations, and the patch is
placed around it (randomly shifted, so the object is not always in the centre). The others are placed
uniformly. A patch may reach beyond the image by up to half its size per axis (the border then is padding:
image 0, label 0), so voxels at the border are seen as often as those inside. 2D configurations draw a slice
first, then a 2D patch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

FOREGROUND_FRACTION = 1 / 3


def forced_foreground(batch_size: int) -> int:
    """How many samples of a batch must contain foreground: at least a third, at least one."""
    return max(1, math.ceil(batch_size * FOREGROUND_FRACTION))


def sample_patch(
    image: np.ndarray,
    labels: np.ndarray,
    foreground: Mapping[int, np.ndarray],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    *,
    force_foreground: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One patch from a (memory-mapped) case (:func:`sample_patch_with`, nothing beside the labels)."""
    image, target, _ = sample_patch_with(
        image, labels, None, foreground, patch_size, rng, force_foreground=force_foreground
    )
    return image, target


def sample_patch_with(
    image: np.ndarray,
    labels: np.ndarray,
    companion: np.ndarray | None,
    foreground: Mapping[int, np.ndarray],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    *,
    force_foreground: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One patch from a (memory-mapped) case, and the same window of ``companion`` (a label map or region
    target on the image's grid, e.g. a cascade's previous-stage prediction; ``None``: none).

    Args:
        image: ``(C, Z, Y, X)`` float32.
        labels: ``(Z, Y, X)`` uint8/uint16, or a ``(K, Z, Y, X)`` uint8 region target (every channel cropped
            alike).
        foreground: class -> ``(N, 3)`` voxel locations ``(z, y, x)``.
        patch_size: ``(z, y, x)`` for 3D, ``(y, x)`` for 2D (a random slice is taken).
        force_foreground: place the patch on a foreground voxel (if the case has any).

    Returns:
        ``(C, *patch_size)`` float32 and ``patch_size`` int64 arrays (``(K, *patch_size)`` uint8 for a region
        target), and the companion's window (its own dtype) or ``None``.
    """
    dims = len(patch_size)
    regions = labels.ndim == 4
    shape = labels.shape[-3:]
    anchor = _foreground_anchor(foreground, rng) if force_foreground else None
    if dims == 2:
        z = int(anchor[0]) if anchor is not None else int(rng.integers(0, shape[0]))
        image, labels, shape = image[:, z], labels[..., z, :, :], shape[1:]
        companion = None if companion is None else companion[..., z, :, :]
        anchor = anchor[1:] if anchor is not None else None
    starts = []
    for axis, (size, patch) in enumerate(zip(shape, patch_size, strict=True)):
        low, high = -(patch // 2), size - patch + patch // 2  # may reach half a patch beyond the image
        high = max(low, high)
        if anchor is not None:
            centre = int(anchor[axis]) - patch // 2 + int(rng.integers(-(patch // 4), patch // 4 + 1))
            starts.append(min(max(centre, low), high))
        else:
            starts.append(int(rng.integers(low, high + 1)))
    target = _crop_padded(labels, starts, patch_size, channels=regions)
    beside = None if companion is None else _crop_padded(companion, starts, patch_size, channels=regions)
    return (
        _crop_padded(image, starts, patch_size, channels=True),
        target.astype(np.uint8 if regions else np.int64),
        beside,
    )


def _foreground_anchor(foreground: Mapping[int, np.ndarray], rng: np.random.Generator) -> np.ndarray | None:
    present = sorted(k for k, v in foreground.items() if len(v))
    if not present:
        return None
    locations = foreground[present[int(rng.integers(len(present)))]]
    anchor: np.ndarray = locations[int(rng.integers(len(locations)))]
    return anchor


def _crop_padded(
    array: np.ndarray, starts: Sequence[int], patch_size: Sequence[int], *, channels: bool
) -> np.ndarray:
    """``array[starts : starts + patch]`` on the spatial axes, zero where the window leaves the array."""
    spatial = array.shape[1:] if channels else array.shape
    out = np.zeros(
        ((array.shape[0],) if channels else ()) + tuple(patch_size), np.float32 if channels else array.dtype
    )
    source, target = [], []
    for start, patch, size in zip(starts, patch_size, spatial, strict=True):
        a, b = max(start, 0), min(start + patch, size)
        source.append(slice(a, max(a, b)))
        target.append(slice(a - start, a - start + max(0, b - a)))
    prefix = (slice(None),) if channels else ()
    out[prefix + tuple(target)] = array[prefix + tuple(source)]
    return out
