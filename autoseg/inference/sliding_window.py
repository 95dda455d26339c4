"""Gaussian-weighted sliding window over a ``(1, C, *spatial)`` tensor.

The same windows and weights as MONAI's ``sliding_window_inference`` with ``mode="gaussian"`` (tested
against it in ``tests/test_sliding_window.py``), without importing MONAI: ``import monai`` loads all of MONAI
(transforms, data, apps, matplotlib...), 3 of the 5 seconds ``autoseg predict`` spent starting
(docs/benchmarks.md).

* Windows start every ``int(patch * step)`` voxels (at least 1) along each axis; the last one is moved back to
  end flush with the image, so every voxel is covered and no window hangs over the edge.
* An axis shorter than the patch is zero-padded (half before, half after) and cropped again at the end.
* Each window's output is weighted by a separable Gaussian (sigma ``sigma_scale`` x the patch, centred on
  the window), floored at its smallest value or 1e-3, whichever is larger, so no voxel has zero weight; the
  blended output is the weighted sum divided by the summed weights.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""``(B, C, *patch)`` windows -> ``(B, K, *patch)`` outputs."""

MIN_WEIGHT = 1e-3


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Start indices of the windows along one axis of ``size`` voxels (``size >= patch`` after padding)."""
    if patch >= size:
        return [0]
    interval = max(1, int(patch * step + 1e-9))  # 1e-9: 40 * 0.7 must give 28, not 27
    count = math.ceil((size - patch) / interval) + 1
    return [min(index * interval, size - patch) for index in range(count)]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """``patch``-shaped float32 weights: a product of 1D Gaussians centred on the window, floored."""
    weights = torch.ones(())
    for size in patch:
        offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
        profile = torch.exp(offsets**2 / (-2.0 * (size * sigma_scale) ** 2))
        weights = weights[..., None] * profile
    return weights.clamp(min=max(float(weights.min()), MIN_WEIGHT))


def sliding_window(
    image: torch.Tensor,
    patch: Sequence[int],
    predictor: Predictor,
    *,
    step: float,
    windows_per_batch: int = 1,
    sigma_scale: float = 0.125,
    compute_device: torch.device | None = None,
    output_device: torch.device | None = None,
) -> torch.Tensor:
    """Blend ``predictor``'s outputs over windows of ``patch`` covering ``image``.

    Args:
        image: ``(1, C, *spatial)``; windows are cut where it lies and moved to ``compute_device``.
        patch: the window size, one entry per spatial axis (``1`` for an axis slid slice by slice).
        predictor: maps a batch of windows to a batch of ``K``-channel outputs of the same spatial size.
        step: distance between window starts as a fraction of the patch, in ``(0, 1]``.
        windows_per_batch: windows per predictor call.
        sigma_scale: Gaussian sigma as a fraction of the patch, per axis.
        compute_device: where the predictor runs (default: the image's device).
        output_device: where the blended output and the weight sums accumulate (default: the image's device).

    Returns:
        ``(1, K, *spatial)`` float32 on ``output_device``.
    """
    if image.ndim != len(patch) + 2 or image.shape[0] != 1:
        raise ValueError(f"expected a (1, C, {len(patch)} spatial axes) tensor, got {tuple(image.shape)}")
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    compute_device = compute_device or image.device
    output_device = output_device or image.device
    original = image.shape[2:]
    before = [max(p - s, 0) // 2 for p, s in zip(patch, original, strict=True)]
    after = [max(p - s, 0) - b for p, s, b in zip(patch, original, before, strict=True)]
    if any(before) or any(after):
        # F.pad takes (last axis before, last axis after, second-last before, ...)
        image = F.pad(image, [n for pair in zip(before[::-1], after[::-1], strict=True) for n in pair])
    spatial = image.shape[2:]
    grids = [window_starts(s, p, step) for s, p in zip(spatial, patch, strict=True)]
    corners = list(itertools.product(*grids))  # the last axis fastest, as MONAI
    weights = gaussian_importance(patch, sigma_scale).to(compute_device)
    output_weights = weights.to(output_device)
    output: torch.Tensor | None = None
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=output_device)
    for first in range(0, len(corners), windows_per_batch):
        batch_corners = corners[first : first + windows_per_batch]
        regions = [
            tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in batch_corners
        ]
        windows = torch.cat([image[(slice(None), slice(None), *region)] for region in regions])
        outputs = predictor(windows.to(compute_device)).float() * weights
        if output is None:
            output = torch.zeros((1, outputs.shape[1], *spatial), dtype=torch.float32, device=output_device)
        outputs = outputs.to(output_device)
        for index, region in enumerate(regions):
            output[0][(slice(None), *region)] += outputs[index]
            weight_sum[region] += output_weights
    assert output is not None  # there is always at least one window
    output /= weight_sum
    crop = tuple(slice(b, b + s) for b, s in zip(before, original, strict=True))
    return output[(slice(None), slice(None), *crop)]
