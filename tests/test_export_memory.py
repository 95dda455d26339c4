"""Bounded-memory export (issue 17.2): the class-by-class restore gives the labels, masks and confidences of
the materialising path bit for bit; the streamed probabilities file is the ``.npz`` autoseg always wrote;
labels are resampled per class inside their boxes with the same output."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_configuration

from autoseg.inference.ensemble import labels_from_probabilities, regions_from_probabilities
from autoseg.inference.export import MemberPredictions, restore_target, target_confidences
from autoseg.io import Geometry, read_probabilities, stream_probabilities
from autoseg.plans import (
    ConfigurationPlan,
    ResamplingPlan,
)
from autoseg.postprocessing.components import keep_largest_component
from autoseg.preprocessing.case import CaseProperties, preprocess_case, restore_probabilities
from autoseg.preprocessing.resample import _resample_labels_whole, resample_labels
from autoseg.report.structures import structure_confidences


def _config(spacing: tuple[float, float, float], separate: int | None = None) -> ConfigurationPlan:
    return tiny_configuration(spacing, separate=separate)


def _rotation(degrees: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)


SAGITTAL = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# (image shape, image spacing, plan spacing, direction, separate axis): up- and downsampling, anisotropic,
# odd sizes, a permuted orientation and an oblique one
CASES = [
    ((13, 17, 19), (1.0, 1.0, 1.0), (1.6, 1.3, 0.7), IDENTITY, None),
    ((9, 23, 21), (4.0, 0.8, 0.8), (2.5, 1.5, 1.5), IDENTITY, 0),
    ((20, 11, 15), (0.7, 1.9, 1.1), (1.0, 1.0, 1.0), SAGITTAL, None),
    ((12, 14, 16), (1.5, 1.0, 1.0), (2.0, 1.7, 1.3), _rotation(20.0), None),
]


def _properties(
    rng: np.random.Generator, shape: tuple[int, int, int], geometry: Geometry, config: ConfigurationPlan
) -> CaseProperties:
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    image[0, :2] = 0.0  # a crop box smaller than the image
    return preprocess_case(image, None, geometry, config).properties


def _softmax(rng: np.random.Generator, classes: int, shape: tuple[int, ...], *, ties: bool) -> np.ndarray:
    logits = rng.normal(size=(classes, *shape)).astype(np.float32)
    if ties:  # quantised logits: many voxels where two classes are exactly equal
        logits = np.round(logits)
    e = np.exp(logits - logits.max(0, keepdims=True))
    probabilities: np.ndarray = (e / e.sum(0, keepdims=True)).astype(np.float32)
    return probabilities


def _materialised(
    predicted: list[np.ndarray], properties: list[CaseProperties], *, regions: bool
) -> np.ndarray:
    """Today's path (``_export`` before 17.2): every member restored whole, summed, averaged."""
    restored = restore_probabilities(predicted[0], properties[0], regions=regions)
    for probabilities, props in zip(predicted[1:], properties[1:], strict=True):
        restored += restore_probabilities(probabilities, props, regions=regions)
    if len(predicted) > 1:
        restored /= len(predicted)
    return restored


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("members", [1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_class_by_class_labels_equal_the_materialised_argmax(
    rng: np.random.Generator, case: int, members: int, ties: bool
) -> None:
    shape, spacing, plan_spacing, direction, separate = CASES[case]
    geometry = Geometry(spacing, (3.0, -2.0, 1.0), direction)
    configs = [_config(plan_spacing, separate), _config((1.1, 1.4, 0.9))][:members]
    properties = [_properties(rng, shape, geometry, c) for c in configs]
    predicted = [_softmax(rng, 5, p.preprocessed_shape, ties=ties) for p in properties]
    expected = _materialised(predicted, properties, regions=False)
    restored = restore_target(MemberPredictions(predicted, properties))
    np.testing.assert_array_equal(restored.target, labels_from_probabilities(expected))
    assert restored.winner is not None
    np.testing.assert_array_equal(restored.winner, expected.max(0))
    # the confidences after post-processing (voxels removed) are the full probabilities' ones
    final = keep_largest_component(restored.target, (1, 2, 3, 4))
    ours = target_confidences(final, restored, MemberPredictions(predicted, properties), [1, 2, 3, 4])
    assert ours == structure_confidences(final, expected, [1, 2, 3, 4])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_class_by_class_structures_equal_the_materialised_threshold(
    rng: np.random.Generator, case: int
) -> None:
    shape, spacing, plan_spacing, direction, separate = CASES[case]
    geometry = Geometry(spacing, (0.0, 0.0, 0.0), direction)
    properties = [_properties(rng, shape, geometry, _config(plan_spacing, separate))]
    sigmoids = rng.uniform(size=(3, *properties[0].preprocessed_shape)).astype(np.float32)
    sigmoids[1] = np.round(sigmoids[1] * 4) / 4  # exactly 0.5 in places
    predictions = MemberPredictions([sigmoids], properties, regions=True)
    expected = _materialised([sigmoids], properties, regions=True)
    restored = restore_target(predictions)
    np.testing.assert_array_equal(restored.target, regions_from_probabilities(expected))
    final = restored.target.copy()
    final[0] = keep_largest_component(final[0], (1,))  # post-processing changed structure 1 only
    ours = target_confidences(final, restored, predictions, [1, 2, 3])
    theirs = structure_confidences(final, expected, [1, 2, 3])
    assert ours.keys() == theirs.keys()
    for value, confidence in theirs.items():
        assert ours[value] == pytest.approx(confidence, rel=1e-12)


def test_an_uncropped_case_restores_without_the_fill(rng: np.random.Generator) -> None:
    """No crop and no reorientation: the resampled channel is the restored one (not a copy of a fill)."""
    geometry = Geometry((1.0, 0.8, 0.8), (0.0, 0.0, 0.0), IDENTITY)
    image = rng.normal(size=(1, 11, 13, 17)).astype(np.float32)
    for spacing in [(1.0, 0.8, 0.8), (1.3, 1.1, 0.6)]:  # the network grid, or another one
        properties = [preprocess_case(image.copy(), None, geometry, _config(spacing)).properties]
        assert properties[0].cropped_shape == properties[0].original_shape
        predicted = [_softmax(rng, 4, properties[0].preprocessed_shape, ties=True)]
        kept = predicted[0].copy()
        restored = restore_target(MemberPredictions(predicted, properties))
        expected = _materialised(predicted, properties, regions=False)
        np.testing.assert_array_equal(restored.target, labels_from_probabilities(expected))
        np.testing.assert_array_equal(predicted[0], kept)  # the network grid's array is left as it was


def test_streamed_probabilities_are_the_npz_autoseg_writes(rng: np.random.Generator, tmp_path: Path) -> None:
    shape, spacing, plan_spacing, direction, _ = CASES[1]
    properties = [
        _properties(rng, shape, Geometry(spacing, (0.0, 0.0, 0.0), direction), _config(plan_spacing))
    ]
    predicted = [_softmax(rng, 4, properties[0].preprocessed_shape, ties=False)]
    path = tmp_path / "case_probabilities.npz"
    names = ["background", "a", "b", "c"]
    with stream_probabilities(path, (4, *shape), class_names=names) as stream:
        restore_target(MemberPredictions(predicted, properties), stream=stream)
    expected = _materialised(predicted, properties, regions=False)
    with np.load(path, allow_pickle=False) as data:
        assert data["probabilities"].dtype == np.float16
        assert data["labels"].tolist() == names
    np.testing.assert_array_equal(read_probabilities(path), expected.astype(np.float16).astype(np.float32))


def test_an_unfinished_probability_stream_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "case_probabilities.npz"
    with (
        pytest.raises(ValueError, match="1 of 2 channels"),
        stream_probabilities(path, (2, 3, 4, 5)) as stream,
    ):
        stream.write(np.zeros((3, 4, 5), np.float32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="does not fit"), stream_probabilities(path, (2, 3, 4, 5)) as stream:
        stream.write(np.zeros((3, 4, 6), np.float32))
    assert list(tmp_path.iterdir()) == []


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int], classes: int) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for value in range(1, classes + 1):
        centre = [int(rng.integers(0, n)) for n in shape]
        radius = [int(rng.integers(1, max(2, n // 4))) for n in shape]
        labels[tuple(slice(max(0, c - r), c + r) for c, r in zip(centre, radius, strict=True))] = value
    return labels


@pytest.mark.parametrize(
    "plan",
    [
        ResamplingPlan(),
        ResamplingPlan(separate_axis=0),
        ResamplingPlan(separate_axis=0, label_order_separate=1),
    ],
)
def test_labels_resampled_in_their_boxes_equal_the_whole_volume_way(
    rng: np.random.Generator, plan: ResamplingPlan
) -> None:
    for trial in range(12):
        shape = tuple(int(n) for n in rng.integers(5, 30, 3))
        out = tuple(int(n) for n in rng.integers(3, 36, 3))
        labels = rng.integers(0, 4, shape).astype(np.uint8) if trial % 3 == 0 else _blobs(rng, shape, 9)  # type: ignore[arg-type]
        if trial == 1:
            labels[labels == 0] = 3  # no background at all
        np.testing.assert_array_equal(
            resample_labels(labels, out, plan),
            _resample_labels_whole(labels, out, plan),
            err_msg=f"{shape}->{out}",
        )


def test_the_memory_estimate_counts_the_class_by_class_export() -> None:
    """The input grid holds a few float32 volumes whatever K (softmax); a region model's K masks count."""
    from autoseg.inference.inputs import CaseHeader, estimate_peak_bytes

    header = CaseHeader((600, 512, 512), (1.0, 0.8, 0.8), 1, 2)
    voxels = 600 * 512 * 512
    coarse = [(6.0, 6.0, 6.0)]  # a network grid too small to matter
    softmax = estimate_peak_bytes(header, coarse, 117)
    assert 28 * voxels < softmax < 40 * voxels  # not 117 x 8 bytes per voxel as before 17.2
    assert estimate_peak_bytes(header, coarse, 117, regions=True) == softmax + 117 * voxels


def _conv_network(classes: int) -> object:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, classes, 3, padding=1)).eval()


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_float16_network_grid_is_the_float32_one_rounded(rng: np.random.Generator, activation: str) -> None:
    """The blending and the renormalisation stay float32, slab by slab: the float16 volume is exactly the
    float32 one rounded, so it only costs the rounding, and labels move only at near-ties."""
    from autoseg.inference.ensemble import InferenceSettings, predict_probabilities

    image = rng.normal(size=(1, 21, 18, 17)).astype(np.float32)
    settings = InferenceSettings(step=0.5, mirror_axes=(0, 2), precision="float32")
    network = _conv_network(5)
    kwargs = {"activation": activation}
    full = predict_probabilities([network], image, (8, 8, 8), 5, settings, **kwargs)  # type: ignore[arg-type, list-item]
    half = predict_probabilities([network], image, (8, 8, 8), 5, settings, dtype=np.float16, **kwargs)  # type: ignore[arg-type, list-item]
    assert full.dtype == np.float32 and half.dtype == np.float16
    np.testing.assert_array_equal(half, full.astype(np.float16))
    if activation == "softmax":
        np.testing.assert_allclose(full.sum(0), 1.0, atol=1e-6)
        differ = labels_from_probabilities(half) != labels_from_probabilities(full)
        gap = np.sort(full, axis=0)[-1] - np.sort(full, axis=0)[-2]
        assert np.all(gap[differ] < 2e-3)  # only near-ties may change label


def test_large_network_grids_are_kept_in_float16_and_estimated_so() -> None:
    from autoseg.inference import inputs
    from autoseg.inference.inputs import CaseHeader, estimate_peak_bytes, network_grid_dtype

    assert network_grid_dtype(3, (64, 64, 64)) is np.float32
    # 117 classes of a 600 x 512 x 512 CT at 1.5 mm (~13.9 GB in float32)
    assert network_grid_dtype(117, (400, 273, 273)) is np.float16
    limit = inputs.FLOAT16_ABOVE_BYTES
    assert (
        network_grid_dtype(1, (limit // 4,)) is np.float32
        and network_grid_dtype(1, (limit // 4 + 1,)) is np.float16
    )
    header = CaseHeader((600, 512, 512), (1.0, 0.8, 0.8), 1, 2)
    fine = estimate_peak_bytes(header, [(1.5, 1.5, 1.5)], 117)
    voxels = 600 * 512 * 512
    resampled = math.ceil(1.5 * voxels * 0.64 / 1.5**3)
    assert fine == voxels * (2 + 4 + 20 + 2) + resampled * (4 + 2 * 117 + 4)  # float16 on the network grid


@pytest.mark.parametrize("case", range(len(CASES)))
def test_resampling_on_a_torch_device_agrees_with_simpleitk(rng: np.random.Generator, case: int) -> None:
    """The GPU path of the export (``resample_device``), run here on the CPU device: trilinear with shared
    outer edges, as ITK; the labels move only where the two best classes are closer than the rounding."""
    from autoseg.inference.export import resample_linear_torch
    from autoseg.preprocessing.resample import resample_volume

    shape, spacing, plan_spacing, direction, separate = CASES[case]
    volume = rng.random((7, 11, 9)).astype(np.float32)
    for out in [(13, 5, 20), shape, (3, 30, 9)]:
        np.testing.assert_allclose(
            resample_linear_torch(volume, out, "cpu"), resample_volume(volume, out, 1), atol=2e-6
        )
    geometry = Geometry(spacing, (3.0, -2.0, 1.0), direction)
    properties = [_properties(rng, shape, geometry, _config(plan_spacing, separate))]
    predicted = [_softmax(rng, 5, properties[0].preprocessed_shape, ties=False)]
    cpu = restore_target(MemberPredictions(predicted, properties))
    device = restore_target(MemberPredictions(predicted, properties, resample_device="cpu"))
    assert cpu.winner is not None and device.winner is not None
    np.testing.assert_allclose(device.winner, cpu.winner, atol=2e-6)
    expected = _materialised(predicted, properties, regions=False)
    ranked = np.sort(expected, axis=0)
    moved = device.target != cpu.target
    assert np.all(ranked[-1][moved] - ranked[-2][moved] < 1e-5)
