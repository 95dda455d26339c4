"""The own sliding window against MONAI's ``sliding_window_inference``: same windows, same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers.utils import sliding_window_inference
from torch import nn

from autoseg.inference.sliding_window import gaussian_importance, sliding_window, window_starts


def _conv_predictor(seed: int = 0) -> nn.Module:
    """Not pointwise, so where a window sits and how it is weighted change the answer."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 3, 3, padding=1)).eval()


@pytest.mark.parametrize(
    ("shape", "patch", "step", "per_batch"),
    [
        ((20, 30, 26), (8, 12, 10), 0.5, 1),
        ((20, 30, 26), (8, 12, 10), 0.75, 3),
        ((17, 23, 41), (8, 8, 8), 0.3, 4),
        ((5, 9, 7), (8, 12, 10), 0.5, 1),  # smaller than the patch on every axis: padded
        ((6, 40, 9), (8, 12, 10), 0.5, 2),  # smaller on two axes only
        ((4, 30, 26), (1, 16, 16), 0.5, 5),  # a 2D configuration slides a one-slice window
        ((8, 12, 10), (8, 12, 10), 0.5, 1),  # exactly one window
    ],
)
def test_windows_and_weights_match_monai(
    rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...], step: float, per_batch: int
) -> None:
    network = _conv_predictor()
    image = torch.from_numpy(rng.normal(size=(1, 2, *shape)).astype(np.float32))
    with torch.no_grad():
        ours = sliding_window(image, patch, network, step=step, windows_per_batch=per_batch)
        overlap = [0.0 if p == 1 else 1.0 - step for p in patch]
        theirs = sliding_window_inference(
            image, patch, per_batch, network, overlap=overlap, mode="gaussian", sigma_scale=0.125
        )
    assert isinstance(theirs, torch.Tensor)
    assert ours.shape == theirs.shape == (1, 3, *shape)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5, rtol=1e-5)


def test_window_grid_covers_every_voxel_and_ends_flush() -> None:
    assert window_starts(40, 40, 0.5) == [0]
    assert window_starts(30, 40, 0.5) == [0]  # padded to the patch by the caller
    assert window_starts(50, 40, 0.5) == [0, 10]  # the second window is moved back to end at 50
    assert window_starts(100, 40, 0.7) == [0, 28, 56, 60]  # int(40 * 0.7) = 28 despite float rounding
    assert window_starts(7, 1, 0.5) == list(range(7))  # a one-voxel axis: every slice
    for size, patch, step in [(97, 40, 0.5), (64, 20, 0.75), (33, 32, 1.0), (12, 5, 0.1)]:
        starts = window_starts(size, patch, step)
        covered = np.zeros(size, bool)
        for start in starts:
            covered[start : start + patch] = True
        assert covered.all() and starts[-1] + patch == size and starts == sorted(set(starts))


def test_gaussian_weights_peak_in_the_middle_and_never_vanish() -> None:
    weights = gaussian_importance((9, 16, 40))
    assert weights.shape == (9, 16, 40) and weights.dtype == torch.float32
    assert float(weights[4, 7, 19]) == pytest.approx(float(weights.max()))  # centre (even axes: two middles)
    assert float(weights.min()) >= 1e-3
    torch.testing.assert_close(weights, weights.flip(0).flip(1).flip(2))


def test_bad_arguments_are_refused() -> None:
    image = torch.zeros((1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="step"):
        sliding_window(image, (4, 4, 4), lambda x: x, step=0.0)
    with pytest.raises(ValueError, match="windows_per_batch"):
        sliding_window(image, (4, 4, 4), lambda x: x, step=0.5, windows_per_batch=0)
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window(image[0], (4, 4, 4), lambda x: x, step=0.5)


def _whole_volume_blend(
    image: torch.Tensor, patch: tuple[int, ...], predictor: nn.Module, step: float, per_batch: int
) -> torch.Tensor:
    """The blending as it was before slabs (one float32 volume of sums and one of weights): the oracle
    :func:`blend_slabs` must equal bit for bit."""
    import itertools

    import torch.nn.functional as F

    original = image.shape[2:]
    before = [max(p - s, 0) // 2 for p, s in zip(patch, original, strict=True)]
    after = [max(p - s, 0) - b for p, s, b in zip(patch, original, before, strict=True)]
    image = F.pad(image, [n for pair in zip(before[::-1], after[::-1], strict=True) for n in pair])
    spatial = image.shape[2:]
    corners = list(
        itertools.product(*(window_starts(s, p, step) for s, p in zip(spatial, patch, strict=True)))
    )
    weights = gaussian_importance(patch)
    output, weight_sum = None, torch.zeros(spatial)
    for first in range(0, len(corners), per_batch):
        regions = [
            tuple(slice(c, c + p) for c, p in zip(k, patch, strict=True))
            for k in corners[first : first + per_batch]
        ]
        outputs = (
            predictor(torch.cat([image[(slice(None), slice(None), *r)] for r in regions])).float() * weights
        )
        if output is None:
            output = torch.zeros((1, outputs.shape[1], *spatial))
        for index, region in enumerate(regions):
            output[0][(slice(None), *region)] += outputs[index]
            weight_sum[region] += weights
    assert output is not None
    output /= weight_sum
    return output[
        (slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, original, strict=True)))
    ]


@pytest.mark.parametrize(
    ("shape", "patch", "step", "per_batch"),
    [
        ((20, 30, 26), (8, 12, 10), 0.5, 1),
        ((23, 30, 26), (8, 12, 10), 0.7, 3),  # uneven last step, batches across window rows
        ((17, 23, 41), (8, 8, 8), 1.0, 2),  # windows that do not overlap
        ((5, 9, 7), (8, 12, 10), 0.5, 1),  # padded on every axis
        ((4, 30, 26), (1, 16, 16), 0.5, 5),  # slice by slice
    ],
)
def test_slabs_equal_the_whole_volume_blend_bit_for_bit_and_hold_one_band(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, ...],
    patch: tuple[int, ...],
    step: float,
    per_batch: int,
) -> None:
    import importlib

    module = importlib.import_module("autoseg.inference.sliding_window")  # the package exports the function

    network = _conv_predictor()
    image = torch.from_numpy(rng.normal(size=(1, 2, *shape)).astype(np.float32))
    sizes: list[tuple[int, ...]] = []
    real_zeros = torch.zeros

    def recording_zeros(*args: object, **kwargs: object) -> torch.Tensor:
        tensor: torch.Tensor = real_zeros(*args, **kwargs)  # type: ignore[call-overload]
        sizes.append(tuple(tensor.shape))
        return tensor

    monkeypatch.setattr(module.torch, "zeros", recording_zeros)
    with torch.no_grad():
        slabs = list(module.blend_slabs(image, patch, network, step=step, windows_per_batch=per_batch))
    monkeypatch.undo()
    with torch.no_grad():
        expected = _whole_volume_blend(image, patch, network, step, per_batch)
    firsts = [first for first, _ in slabs]
    depths = [slab.shape[1] for _, slab in slabs]
    assert firsts == sorted(firsts) and sum(depths) == shape[0]
    assert [f + d for f, d in zip(firsts, depths, strict=True)][:-1] == firsts[1:]  # no gap, no overlap
    joined = torch.cat([slab for _, slab in slabs], dim=1)[None]
    assert torch.equal(joined, expected)  # bit for bit
    assert torch.equal(
        module.sliding_window(image, patch, network, step=step, windows_per_batch=per_batch), expected
    )
    band_depth = max(patch[0], 1)
    assert sizes and all(size[-3] == band_depth for size in sizes)  # only a band, never the whole volume
