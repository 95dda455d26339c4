"""Sliding-window inference: invariants with hand-made networks whose answer is known voxel by voxel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.inference import ensemble as inference
from autoseg.inference.ensemble import (
    InferenceSettings,
    labels_from_probabilities,
    mirror_combinations,
    predict_probabilities,
    resolve_precision,
)


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


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolve_precision(explicit, cpu) == explicit
    assert resolve_precision("auto", cuda) == "float16"
    monkeypatch.setattr(inference, "native_bfloat16_cpu", lambda: True)
    assert resolve_precision("auto", cpu) == "bfloat16"
    monkeypatch.setattr(inference, "native_bfloat16_cpu", lambda: False)
    assert resolve_precision("auto", cpu) == "float32"
    assert resolve_precision("auto", torch.device("mps")) == "float32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", cpu)


def test_native_bfloat16_probe_reads_torch_and_survives_its_absence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert inference.native_bfloat16_cpu()
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not inference.native_bfloat16_cpu()


def test_bfloat16_runs_the_network_in_bfloat16_and_stays_close(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(8, 3, 3, padding=1)
    ).eval()
    image = rng.normal(size=(1, 12, 14, 10)).astype(np.float32)
    with torch.no_grad():
        full, half = (
            predict_probabilities(
                [network], image, (8, 8, 8), 3, InferenceSettings(mirror_axes=(0, 1, 2), precision=p)
            )
            for p in ("float32", "bfloat16")
        )
    assert half.dtype == np.float32
    np.testing.assert_allclose(half.sum(0), 1.0, atol=1e-6)  # blending stays float32
    assert not np.array_equal(full, half)  # the convolutions really ran in bfloat16
    np.testing.assert_allclose(half, full, atol=0.02)


def test_labels_from_probabilities_dtype_follows_the_class_count() -> None:
    rng = np.random.default_rng(0)
    few = rng.random((3, 4, 5, 6)).astype(np.float32)
    labels = labels_from_probabilities(few)
    assert labels.dtype == np.uint8 and labels.shape == (4, 5, 6)
    np.testing.assert_array_equal(labels, few.argmax(0))
    many = np.zeros((300, 2, 2, 3), np.float32)  # 300 classes: values up to 299 need uint16
    many[299, 0, 0, 0] = many[256, 1, 1, 2] = many[7, 0, 1, 1] = 1.0
    labels = labels_from_probabilities(many)
    assert labels.dtype == np.uint16
    assert (labels[0, 0, 0], labels[1, 1, 2], labels[0, 1, 1], labels[1, 0, 0]) == (299, 256, 7, 0)
    assert labels_from_probabilities(np.zeros((256, 1, 1, 1), np.float32)).dtype == np.uint8
    assert labels_from_probabilities(np.zeros((257, 1, 1, 1), np.float32)).dtype == np.uint16
    tie = np.full((3, 1, 1, 1), 0.5, np.float32)
    assert labels_from_probabilities(tie)[0, 0, 0] == 0  # a tie goes to the lowest label value
