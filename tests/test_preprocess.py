"""Preprocessing: crop, normalise, resample, store; and the inverse back to the original grid."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import plan_and_preprocess_argv, tiny_configuration

from autoseg.cli.main import main
from autoseg.dataset.synthetic import SynthConfig, synthesize_case
from autoseg.errors import PreprocessError
from autoseg.io import Geometry
from autoseg.plans import (
    ChannelNormalization,
    ConfigurationPlan,
    ResamplingPlan,
)
from autoseg.preprocessing.case import normalise, preprocess_case, restore_labels, restore_probabilities
from autoseg.preprocessing.resample import resample_labels, target_shape
from autoseg.preprocessing.stage import PreprocessOptions, run_preprocess
from autoseg.preprocessing.store import load_case
from autoseg.workdir import Workdir


def _config(
    spacing: tuple[float, float, float],
    *,
    separate: int | None = None,
    normalization: tuple[ChannelNormalization, ...] = (ChannelNormalization("zscore"),),
) -> ConfigurationPlan:
    return tiny_configuration(spacing, separate=separate, normalization=normalization)


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 1.0 if not (x.any() or y.any()) else float(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_anisotropic_round_trip_keeps_every_class(index: int) -> None:
    # ~3 x 0.8 x 0.8 mm cases (spacing varies per case) preprocessed to the finer target spacing the
    # anisotropy rule typically picks (10th percentile in z), the coarse axis resampled separately, inverted
    config_synth = SynthConfig(
        cases=4, shape=(28, 72, 72), spacing_mm=(3.0, 0.8, 0.8), classes=3, modality="MR"
    )
    image, labels, geometry = synthesize_case(config_synth, index)
    config = _config((2.5, 0.7, 0.7), separate=0)
    result = preprocess_case(image, labels, geometry, config, identifier="c")
    assert result.labels is not None
    assert result.image.shape[1:] == result.labels.shape == result.properties.preprocessed_shape
    restored = restore_labels(result.labels, result.properties, config)
    assert restored.shape == labels.shape
    for value in (1, 2, 3):
        assert _dice(restored, labels, value) >= 0.98, value


def test_downsampled_round_trip_stays_aligned() -> None:
    # coarser in plane (0.8 -> 1.0 mm) loses boundary detail, but a misaligned inverse would lose far more
    image, labels, geometry = synthesize_case(
        SynthConfig(cases=1, shape=(28, 72, 72), classes=3, modality="MR"), 0
    )
    config = _config((2.5, 1.0, 1.0), separate=0)
    result = preprocess_case(image, labels, geometry, config)
    assert result.labels is not None
    restored = restore_labels(result.labels, result.properties, config)
    assert _dice(restored, labels, 1) >= 0.97
    shifted = np.roll(restored, 1, axis=2)
    assert _dice(shifted, labels, 1) < _dice(restored, labels, 1) - 0.01


def test_identity_spacing_round_trips_exactly(rng: np.random.Generator) -> None:
    labels = np.zeros((10, 20, 30), np.uint8)
    labels[3:7, 5:15, 8:20] = 1
    labels[4:6, 8:10, 10:12] = 2
    image = rng.normal(size=(2, 10, 20, 30)).astype(np.float32)
    image[:, :, :2] = 0.0  # a zero border that cropping removes
    geometry = Geometry((2.0, 1.0, 0.5), (1.0, 2.0, 3.0))
    config = _config((2.0, 1.0, 0.5), normalization=(ChannelNormalization("zscore"),) * 2)
    result = preprocess_case(image, labels, geometry, config)
    assert result.properties.crop_box == ((0, 10), (2, 20), (0, 30))
    assert result.image.shape == (2, 10, 18, 30)
    assert result.labels is not None
    np.testing.assert_array_equal(restore_labels(result.labels, result.properties, config), labels)
    probabilities = np.stack([result.labels == k for k in range(3)]).astype(np.float32)
    restored = restore_probabilities(probabilities, result.properties)
    np.testing.assert_array_equal(restored.argmax(0), labels)
    assert restored[0, :, :2].min() == 1.0  # background outside the crop


def test_normalisation_schemes() -> None:
    image = np.array([[[[0.0, 100.0, 2000.0, -3000.0]]], [[[0.0, 1.0, 2.0, 3.0]]]], np.float32)
    nonzero = np.any(image != 0, axis=0)
    schemes = (
        ChannelNormalization("ct", False, -1000.0, 1000.0, 0.0, 500.0),
        ChannelNormalization("zscore", True),
    )
    normalise(image, schemes, nonzero)
    np.testing.assert_allclose(image[0].ravel(), [0.0, 0.2, 2.0, -2.0])
    inside = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(image[1].ravel()[1:], (inside - inside.mean()) / inside.std(), rtol=1e-6)
    assert image[1].ravel()[0] == 0.0  # outside the nonzero mask


def test_labels_keep_thin_structures_that_nearest_neighbour_drops() -> None:
    labels = np.zeros((4, 40, 40), np.uint8)
    labels[:, 20, 5:35] = 1  # a one-voxel-thin line
    linear = resample_labels(labels, (4, 30, 30), ResamplingPlan(3, 1, None))
    assert (linear == 1).sum() > 0
    assert set(np.unique(resample_labels(labels, (4, 60, 60), ResamplingPlan(3, 0, None)))) == {0, 1}


def test_target_shape_keeps_the_extent() -> None:
    assert target_shape((100, 512, 512), (2.5, 0.7, 0.7), (2.5, 1.0, 1.0)) == (100, 358, 358)


def test_foreground_samples_lie_in_their_class() -> None:
    image, labels, geometry = synthesize_case(SynthConfig(cases=1, shape=(20, 40, 40), classes=4), 0)
    result = preprocess_case(image, labels, geometry, _config(geometry.spacing_mm), identifier="x")
    assert result.labels is not None
    for value, locations in result.foreground.items():
        assert locations.shape[1] == 3 and locations.dtype == np.int32
        assert np.all(result.labels[tuple(locations.T)] == value)
    again = preprocess_case(image, labels, geometry, _config(geometry.spacing_mm), identifier="x")
    assert all(np.array_equal(again.foreground[k], v) for k, v in result.foreground.items())


@pytest.fixture
def planned(tmp_path: Path, tiny_dataset: Path) -> Path:
    workdir = tmp_path / "work"
    assert main(["fingerprint", str(tiny_dataset), "--workdir", str(workdir), "-q"]) == 0
    assert main(["plan", "--workdir", str(workdir), "--planner", "default", "-q"]) == 0
    return workdir


def test_preprocess_stores_cases_and_shares_identical_configurations(planned: Path) -> None:
    folders = run_preprocess(planned, show_progress=False)
    assert set(folders) == {"2d", "3d_fullres"}
    assert folders["2d"] == folders["3d_fullres"]  # identical preprocessing: stored once
    assert Workdir(planned).read_configurations() == {"2d": "3d_fullres", "3d_fullres": "3d_fullres"}
    stored = load_case(folders["3d_fullres"], "case_001")
    assert isinstance(stored.image, np.memmap) and stored.image.dtype == np.float32
    assert stored.labels is not None and stored.labels.shape == stored.image.shape[1:]
    assert stored.properties.original_shape == (12, 16, 16)
    assert set(stored.foreground) == {1, 2}
    assert not [p for p in folders["3d_fullres"].iterdir() if p.name.startswith(".")]


def test_rerun_skips_up_to_date_cases_and_redoes_changed_ones(planned: Path, tiny_dataset: Path) -> None:
    folder = run_preprocess(planned, show_progress=False)["3d_fullres"]
    stamps = {p.name: (p / "image.npy").stat().st_mtime_ns for p in folder.iterdir() if p.is_dir()}
    run_preprocess(planned, PreprocessOptions(num_workers=2), show_progress=False)
    assert stamps == {p.name: (p / "image.npy").stat().st_mtime_ns for p in folder.iterdir() if p.is_dir()}
    label = tiny_dataset / "labelsTr" / "case_002.nii.gz"
    label.touch()
    run_preprocess(planned, show_progress=False)
    after = {p.name: (p / "image.npy").stat().st_mtime_ns for p in folder.iterdir() if p.is_dir()}
    assert [name for name in after if after[name] != stamps[name]] == ["case_002"]


def test_a_failure_mid_case_leaves_no_partial_case(planned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = np.savez

    def failing_savez(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        run_preprocess(planned, show_progress=False)
    folder = planned / "preprocessed" / "3d_fullres"
    entries = sorted(p.name for p in folder.iterdir())
    # the third case left nothing behind; preprocessing.json is written only once every case is stored
    assert entries == ["case_000", "case_001"]
    monkeypatch.undo()
    (folder / ".case_002.partial-x1y2").mkdir()  # what a kill -9 in the middle of a case leaves
    (folder / ".case_002.partial-x1y2" / "image.npy").write_bytes(b"half")
    run_preprocess(planned, show_progress=False)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [f"case_00{i}" for i in range(4)]


def test_bad_case_stops_with_its_name(
    planned: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tiny_dataset / "imagesTr" / "case_003_0000.nii.gz"
    image.write_bytes(image.read_bytes()[:90])
    assert main(["preprocess", "--workdir", str(planned), "-q"]) == 1
    err = capsys.readouterr().err
    assert "case 'case_003'" in err and "case_003_0000.nii.gz" in err and "nothing was written" in err
    assert not (planned / "preprocessed" / "3d_fullres" / "case_003").exists()


def test_plans_from_another_fingerprint_are_refused(planned: Path) -> None:
    plans = json.loads((planned / "plans.json").read_text())
    plans["fingerprint_sha256"] = "0" * 64
    (planned / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PreprocessError, match="made from another fingerprint"):
        run_preprocess(planned, show_progress=False)


def test_plan_and_preprocess_command(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "w"
    argv = plan_and_preprocess_argv(tiny_dataset, workdir, "3d_fullres", gflops="20")
    assert main(argv) == 0
    assert "3d_fullres:" in capsys.readouterr().out
    assert (workdir / "preprocessed" / "3d_fullres" / "case_000" / "properties.json").is_file()
    assert main(["preprocess", "--workdir", str(workdir), "-c", "3d_nope", "-q"]) == 2
    (tiny_dataset / "labelsTr" / "case_000.nii.gz").unlink()
    assert main(argv) == 1
    assert "verification found" in capsys.readouterr().err


def test_properties_round_trip_geometry() -> None:
    image, labels, geometry = synthesize_case(SynthConfig(cases=1, shape=(16, 24, 24)), 0)
    oblique = dataclasses.replace(geometry, direction=(1.0, 0.0, 0.0, 0.0, 0.8, -0.6, 0.0, 0.6, 0.8))
    result = preprocess_case(image, labels, oblique, _config(geometry.spacing_mm))
    from autoseg.preprocessing.case import CaseProperties

    again = CaseProperties.from_json(json.loads(json.dumps(result.properties.to_json())))
    assert again == result.properties


def test_properties_carry_the_annotated_structures_and_read_old_ones_as_all() -> None:
    """A partly contoured case records its contoured structures; properties written before the field
    existed (and every label-map case) have no ``annotated`` key and mean "all annotated"."""
    from autoseg.preprocessing.case import CaseProperties

    image, labels, geometry = synthesize_case(SynthConfig(cases=1, shape=(16, 24, 24)), 0)
    plain = preprocess_case(image, labels, geometry, _config(geometry.spacing_mm)).properties
    assert "annotated" not in plain.to_json() and plain.annotated is None and plain.is_annotated(2)
    config = _config(geometry.spacing_mm)
    partial = preprocess_case(image, labels, geometry, config, annotated=(1,)).properties
    data = json.loads(json.dumps(partial.to_json()))
    assert data["annotated"] == [1] and CaseProperties.from_json(data) == partial
    assert partial.is_annotated(1) and not partial.is_annotated(2)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_slab_wise_resampling_matches_whole_volume(
    order: int, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    from autoseg.preprocessing import resample

    volume = ndimage_smooth(rng.normal(size=(40, 24, 20)).astype(np.float32))
    shape = (57, 30, 17)
    whole = resample.resample_volume(volume, shape, order)
    monkeypatch.setattr(resample, "SLAB_VOXELS", 30 * 17 * 4)  # 4 output slices per slab
    slabs = resample.resample_volume(volume, shape, order)
    np.testing.assert_allclose(slabs, whole, atol=1e-4 * float(np.abs(volume).max()))
    labels = (volume > 0.2).astype(np.uint8) + (volume > 0.6).astype(np.uint8)
    plan = ResamplingPlan(3, 1, 0, 0, 0)
    by_slab = resample.resample_labels(labels, shape, plan)
    monkeypatch.setattr(resample, "SLAB_VOXELS", 10**9)
    np.testing.assert_array_equal(by_slab, resample.resample_labels(labels, shape, plan))


def ndimage_smooth(volume: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    smoothed: np.ndarray = ndimage.gaussian_filter(volume, 2.0)
    return smoothed / float(np.abs(smoothed).max())


def test_in_plane_spline_path_agrees_with_itk(rng: np.random.Generator) -> None:
    from autoseg.preprocessing import resample

    volume = ndimage_smooth(rng.normal(size=(12, 40, 36)).astype(np.float32))
    shape = (9, 52, 30)
    fast = resample.resample_image(volume[None], shape, ResamplingPlan(3, 1, 0, 0, 0))[0]
    taken = volume[resample.nearest_index(12, 9)]
    itk = resample.resample_volume(taken, shape, 3)
    np.testing.assert_allclose(fast[:, 3:-3, 3:-3], itk[:, 3:-3, 3:-3], atol=1e-3)
