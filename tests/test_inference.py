"""Sliding-window inference: invariants with hand-made networks whose answer is known voxel by voxel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.inference import InferenceSettings, mirror_combinations, predict_probabilities


class PointwiseModel(nn.Module):
    """Logits ``(-x, x)`` per voxel: class 1 has probability ``sigmoid(2 x)`` wherever the window sits."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.cat([-x[:, :1], x[:, :1]], dim=1) * self.scale


class CornerModel(nn.Module):
    """Marks the first z slice of every window as class 1: not mirror invariant, so mirroring shows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros((x.shape[0], 2, *x.shape[2:]))
        logits[:, 1, 0] = 5.0
        return logits


def _sigmoid(values: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-values))
    return result


@pytest.mark.parametrize("shape", [(20, 30, 26), (5, 9, 7)])  # larger than the patch, and smaller (padding)
@pytest.mark.parametrize("mirror", [(), (0, 1, 2)])
def test_a_pointwise_model_comes_back_exactly(
    rng: np.random.Generator, shape: tuple[int, int, int], mirror: tuple[int, ...]
) -> None:
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    settings = InferenceSettings(mirror_axes=mirror, windows_per_batch=2)
    probabilities = predict_probabilities([PointwiseModel()], image, (8, 12, 10), 2, settings)
    assert probabilities.shape == (2, *shape)
    np.testing.assert_allclose(probabilities[1], _sigmoid(2 * image[0]), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-6)


def test_2d_networks_run_slice_by_slice(rng: np.random.Generator) -> None:
    image = rng.normal(size=(1, 4, 30, 26)).astype(np.float32)
    model = PointwiseModel()
    settings = InferenceSettings(mirror_axes=(0, 1), windows_per_batch=4)
    probabilities = predict_probabilities([model], image, (16, 16), 2, settings)
    np.testing.assert_allclose(probabilities[1], _sigmoid(2 * image[0]), atol=1e-5)
    assert model.calls > 0


def test_an_ensemble_averages_probabilities(rng: np.random.Generator) -> None:
    image = rng.normal(size=(1, 10, 12, 12)).astype(np.float32)
    models = [PointwiseModel(1.0), PointwiseModel(3.0)]
    probabilities = predict_probabilities(models, image, (8, 8, 8), 2, InferenceSettings())
    expected = (_sigmoid(2 * image[0]) + _sigmoid(6 * image[0])) / 2
    np.testing.assert_allclose(probabilities[1], expected, atol=1e-5)


def test_mirroring_runs_every_flip_and_undoes_it(rng: np.random.Generator) -> None:
    image = np.zeros((1, 8, 8, 8), np.float32)
    plain = predict_probabilities([CornerModel()], image, (8, 8, 8), 2, InferenceSettings())
    mirrored = predict_probabilities(
        [CornerModel()], image, (8, 8, 8), 2, InferenceSettings(mirror_axes=(0,))
    )
    assert plain[1, 0].mean() > 0.9 and plain[1, -1].mean() < 0.6  # the model marks the first z slice
    # flipped along z, the model marks the last slice; flipped back and averaged, both ends look alike
    np.testing.assert_allclose(mirrored[1, 0], mirrored[1, -1], atol=1e-6)
    assert len(mirror_combinations((0, 1, 2))) == 8
    assert mirror_combinations(()) == [()]


def test_bad_settings_are_refused(rng: np.random.Generator) -> None:
    image = rng.normal(size=(1, 8, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="step"):
        predict_probabilities([PointwiseModel()], image, (8, 8, 8), 2, InferenceSettings(step=0.0))
    with pytest.raises(ValueError, match="no network"):
        predict_probabilities([], image, (8, 8, 8), 2, InferenceSettings())
