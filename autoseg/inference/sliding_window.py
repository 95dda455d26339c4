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

The windows run in MONAI's order (the first axis slowest), so once every window starting at a given first-axis
index is done, the slices before it are final: :func:`blend_slabs` keeps only a band of one patch depth in
float32 and hands each finished slab on (divided, cropped), so the caller decides where the whole volume goes
and in which dtype; the band sums the same window outputs in the same order as a whole-volume sum, so the
values are bit for bit those of blending into one volume.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

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
    output: torch.Tensor | None = None
    for first, slab in blend_slabs(
        image,
        patch,
        predictor,
        step=step,
        windows_per_batch=windows_per_batch,
        sigma_scale=sigma_scale,
        compute_device=compute_device,
        output_device=output_device,
    ):
        if output is None:
            output = torch.empty(
                (1, slab.shape[0], *image.shape[2:]), dtype=torch.float32, device=slab.device
            )
        output[0, :, first : first + slab.shape[1]] = slab
    assert output is not None  # there is always at least one slab
    return output


def blend_slabs(
    image: torch.Tensor,
    patch: Sequence[int],
    predictor: Predictor,
    *,
    step: float,
    windows_per_batch: int = 1,
    sigma_scale: float = 0.125,
    compute_device: torch.device | None = None,
    output_device: torch.device | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`sliding_window`'s blended output as it becomes final, slab by slab along the first spatial axis.

    Takes the arguments of :func:`sliding_window`. Yields ``(first, slab)``: ``slab`` is the blended output
    ``(K, depth, *rest)`` (float32, on ``output_device``, cropped to ``image``'s own extent) of the first-axis
    indices ``first .. first + depth - 1``; slabs come in order and cover the axis once. Besides the windows,
    memory holds one band of ``patch[0]`` slices of the ``K`` sums and the weights.
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
    band = _Band(patch[0], spatial[1:], weights.to(output_device), output_device)
    crop = tuple(slice(b, b + s) for b, s in zip(before[1:], original[1:], strict=True))
    first_kept, end_kept = before[0], before[0] + original[0]

    def finished(start: int, stop: int, slab: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        low, high = max(start, first_kept), min(stop, end_kept)
        if low < high:
            yield low - first_kept, slab[(slice(None), slice(low - start, high - start), *crop)]

    for first in range(0, len(corners), windows_per_batch):
        batch_corners = corners[first : first + windows_per_batch]
        windows = torch.cat(
            [
                image[
                    (slice(None), slice(None), *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))
                ]
                for corner in batch_corners
            ]
        )
        outputs = (predictor(windows.to(compute_device)).float() * weights).to(output_device)
        for index, corner in enumerate(batch_corners):
            if band.start != corner[0]:
                for done in band.advance(corner[0]):
                    yield from finished(*done)
            band.add(outputs[index], corner[1:])
    for done in band.advance(spatial[0]):
        yield from finished(*done)


class _Band:
    """The float32 sums and weights of the first-axis slices ``start .. start + depth - 1``."""

    def __init__(self, depth: int, rest: Sequence[int], weights: torch.Tensor, device: torch.device) -> None:
        self.depth, self.rest, self.weights, self.device = depth, tuple(rest), weights, device
        self.start = 0
        self.sums: torch.Tensor | None = None
        self.weight_sums = torch.zeros((depth, *self.rest), dtype=torch.float32, device=device)

    def add(self, output: torch.Tensor, corner: Sequence[int]) -> None:
        """One weighted window output ``(K, *patch)`` whose first-axis start is :attr:`start`."""
        if self.sums is None:
            self.sums = torch.zeros(
                (output.shape[0], self.depth, *self.rest), dtype=torch.float32, device=self.device
            )
        region = tuple(slice(c, c + p) for c, p in zip(corner, output.shape[2:], strict=True))
        self.sums[(slice(None), slice(None), *region)] += output
        self.weight_sums[(slice(None), *region)] += self.weights

    def advance(self, start: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Move the band to begin at ``start`` (``start > self.start``, at most a band further): the slices
        left behind are final, yielded as ``(first, stop, (K, stop - first, *rest) blended)``."""
        shift = min(start - self.start, self.depth)
        if self.sums is not None and shift > 0:
            done = self.sums[:, :shift] / self.weight_sums[:shift]
            yield self.start, self.start + shift, done
            keep = self.depth - shift
            if keep:
                self.sums[:, :keep] = self.sums[:, shift:].clone()
                self.weight_sums[:keep] = self.weight_sums[shift:].clone()
            self.sums[:, keep:] = 0
            self.weight_sums[keep:] = 0
        self.start = start
