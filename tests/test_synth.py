"""Tests of autoseg.dataset.synthetic: anatomy invariants, intensity models, determinism and the nnU-Net v2
layout."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from autoseg.dataset.synthetic import (
    SynthConfig,
    case_identifier,
    channel_names,
    class_names,
    synthesize_case,
    write_synthetic_dataset,
)
from autoseg.errors import UsageError
from autoseg.io import Geometry, read_array, read_header

CT = SynthConfig(
    cases=4, shape=(20, 32, 32), spacing_mm=(2.0, 1.0, 1.0), classes=5, channels=2, modality="CT", seed=1
)
MR = SynthConfig(
    cases=3, shape=(20, 32, 32), spacing_mm=(2.0, 1.0, 1.0), classes=3, channels=2, modality="MR", seed=2
)

Case = tuple[np.ndarray, np.ndarray, Geometry]


def _all_cases(config: SynthConfig) -> list[Case]:
    return [synthesize_case(config, index) for index in range(config.cases)]


@pytest.fixture(scope="module")
def ct_cases() -> list[Case]:
    return _all_cases(CT)


@pytest.fixture(scope="module")
def mr_cases() -> list[Case]:
    return _all_cases(MR)


def _read_dataset(root: Path) -> dict[str, np.ndarray]:
    """Every image and label file under root, read back as stored, keyed by relative path."""
    return {str(p.relative_to(root)): read_array(p)[0] for p in sorted(root.rglob("*.nii.gz"))}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_cases_and_other_seeds_or_indices_differ() -> None:
    image, labels, geometry = synthesize_case(CT, 2)
    again_image, again_labels, again_geometry = synthesize_case(CT, 2)
    assert np.array_equal(image, again_image)
    assert np.array_equal(labels, again_labels)
    assert geometry == again_geometry
    other_image, other_labels, _ = synthesize_case(replace(CT, seed=7), 2)
    assert other_image.shape != image.shape or not np.array_equal(other_image, image)
    assert other_labels.shape != labels.shape or not np.array_equal(other_labels, labels)
    neighbour = synthesize_case(CT, 1)[1]
    assert neighbour.shape != labels.shape or not np.array_equal(neighbour, labels)


def test_case_made_alone_equals_the_same_case_of_a_full_run(tmp_path: Path) -> None:
    root = write_synthetic_dataset(CT, tmp_path / "ct", show_progress=False)
    image, labels, _ = synthesize_case(CT, 3)  # made alone, after the full run, in another order
    identifier = case_identifier(CT, 3)
    for channel in range(CT.channels):
        stored = read_array(root / "imagesTr" / f"{identifier}_{channel:04d}.nii.gz")[0]
        assert np.array_equal(stored, np.rint(image[channel]).astype(np.int16))
    assert np.array_equal(read_array(root / "labelsTr" / f"{identifier}.nii.gz")[0], labels)


def test_shapes_and_spacings_vary_around_the_config() -> None:
    config = SynthConfig(cases=6, shape=(16, 40, 40), spacing_mm=(3.0, 1.0, 1.0), classes=1)
    geometries = [synthesize_case(config, i)[1:] for i in range(config.cases)]
    shapes = {labels.shape for labels, _ in geometries}
    assert len(shapes) > 1
    for labels, geometry in geometries:
        assert min(labels.shape) >= 16
        assert all(0.89 * n <= m <= 1.11 * n for m, n in zip(labels.shape[1:], (40, 40), strict=True))
        assert np.allclose(geometry.spacing_mm, config.spacing_mm, rtol=0.051)
        assert geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert len({geometry.origin_mm for _, geometry in geometries}) == config.cases


# ----------------------------------------------------------------------------------------- anatomy


def test_every_class_is_present_somewhere(ct_cases: list[Case]) -> None:
    present = set().union(*(np.unique(labels).tolist() for _, labels, _ in ct_cases))
    assert present == set(range(CT.classes + 1))
    for _, labels, _ in ct_cases:
        assert labels.dtype == np.uint8
        assert {1, 3, 4, 5} <= set(np.unique(labels).tolist())


def test_nested_class_lies_fully_inside_class_1(ct_cases: list[Case]) -> None:
    checked = 0
    for _, labels, _ in ct_cases:
        lesion = labels == 2
        if lesion.any():
            grown = ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3), bool))
            assert set(np.unique(labels[grown]).tolist()) <= {1, 2}
            checked += 1
    assert checked >= 1


def test_adjacent_class_touches_class_1(ct_cases: list[Case]) -> None:
    for _, labels, _ in ct_cases:
        assert (ndimage.binary_dilation(labels == 3) & (labels == 1)).any()


def test_small_structure_is_small_but_present(ct_cases: list[Case]) -> None:
    for _, labels, _ in ct_cases:
        count = int((labels == 4).sum())
        assert 0 < count < 0.02 * labels.size
        assert count < (labels == 1).sum() / 5


def test_lesion_is_absent_in_about_one_case_in_eight() -> None:
    config = SynthConfig(cases=8, shape=(20, 32, 32), spacing_mm=(2.0, 1.0, 1.0), classes=2, seed=0)
    with_lesion = [bool((synthesize_case(config, i)[1] == 2).any()) for i in range(config.cases)]
    assert with_lesion.count(False) == 1


def test_shapes_are_built_in_millimetres_under_anisotropic_spacing() -> None:
    config = SynthConfig(cases=3, shape=(24, 48, 48), spacing_mm=(2.5, 0.8, 0.8), classes=1)
    for index in range(config.cases):
        _, labels, geometry = synthesize_case(config, index)
        z, y, _ = np.nonzero(labels == 1)
        extent_z = (z.max() - z.min() + 1) * geometry.spacing_mm[0]
        extent_y = (y.max() - y.min() + 1) * geometry.spacing_mm[1]
        assert 0.4 <= extent_z / extent_y <= 2.5


# ----------------------------------------------------------------------------------------- intensities


def test_ct_intensities_look_like_hounsfield_units(ct_cases: list[Case]) -> None:
    for image, labels, _ in ct_cases:
        assert image.dtype == np.float32
        assert image.shape == (CT.channels, *labels.shape)
        assert image.min() >= -1024 and image.max() <= 3071
        assert image[:, :, :3, :3].mean() < -900  # air in the corners, outside the body
        assert image[0][labels > 0].mean() > -200  # every structure lies in the body
        organ = float(image[0][labels == 1].mean())
        assert 30 <= organ <= 130
        assert (image[0][labels == 0] > 300).any()  # the unlabelled bone
        if (labels == 2).any():
            assert abs(float(image[0][labels == 2].mean()) - organ) >= 10


def test_mr_is_zero_outside_the_body_with_a_smooth_gain(mr_cases: list[Case]) -> None:
    medians = []
    for image, labels, _ in mr_cases:
        assert image.dtype == np.float32
        corners = image[:, [0, -1]][:, :, [0, -1]][:, :, :, [0, -1]]
        assert np.all(corners == 0.0)
        assert (image == 0.0).mean() > 0.2
        assert np.all(image[:, labels > 0] > 0.0)
        organ = image[0][labels == 1]
        assert organ.std() > 0.02 * organ.mean()  # noise and bias field, not piecewise constant
        medians.append(float(np.median(organ)))
        t1, t2 = image[0], image[1]  # channels differ in contrast: the lesion is dark in T1, bright in T2
        assert t1[labels == 2].mean() < t1[labels == 1].mean()
        assert t2[labels == 2].mean() > t2[labels == 1].mean()
    assert max(medians) / min(medians) > 1.1  # MR is not quantitative: the global scale differs per case


# ----------------------------------------------------------------------------------------- on disk


def test_writes_the_nnunet_v2_layout(tmp_path: Path, ct_cases: list[Case]) -> None:
    root = write_synthetic_dataset(CT, tmp_path / "Dataset001_SynthCT", show_progress=False)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == CT.cases
    assert meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": "CT", "1": "CT_arterial"}
    assert meta["labels"] == class_names(CT)
    assert SynthConfig.from_json(meta["autoseg_synth"]) == CT
    images = sorted(p.name for p in (root / "imagesTr").iterdir())
    assert images == [f"synthct_{i:03d}_{c:04d}.nii.gz" for i in range(CT.cases) for c in range(CT.channels)]
    labels_files = sorted(p.name for p in (root / "labelsTr").iterdir())
    assert labels_files == [f"synthct_{i:03d}.nii.gz" for i in range(CT.cases)]
    for index, (_, labels, geometry) in enumerate(ct_cases):
        identifier = f"synthct_{index:03d}"
        for path in [
            root / "imagesTr" / f"{identifier}_0001.nii.gz",
            root / "labelsTr" / f"{identifier}.nii.gz",
        ]:
            header = read_header(path)
            assert header.shape == labels.shape
            assert np.allclose(header.geometry.spacing_mm, geometry.spacing_mm, rtol=1e-5)
            assert np.allclose(header.geometry.origin_mm, geometry.origin_mm, atol=1e-3)
        assert read_header(root / "imagesTr" / f"{identifier}_0000.nii.gz").dtype == "int16"
        assert read_header(root / "labelsTr" / f"{identifier}.nii.gz").dtype == "uint8"
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no partial folder left behind


def test_mr_is_stored_as_float32_with_another_ending(tmp_path: Path) -> None:
    config = replace(MR, cases=1, file_ending=".mha")
    root = write_synthetic_dataset(config, tmp_path / "mr", show_progress=False)
    stored, _ = read_array(root / "imagesTr" / "synthmr_000_0001.mha")
    assert stored.dtype == np.float32
    assert np.array_equal(stored, synthesize_case(config, 0)[0][1])
    assert (root / "labelsTr" / "synthmr_000.mha").is_file()


@pytest.mark.parametrize("config", [CT, MR], ids=["CT", "MR"])
def test_two_workers_write_what_one_writes(tmp_path: Path, config: SynthConfig) -> None:
    serial = _read_dataset(write_synthetic_dataset(config, tmp_path / "one", show_progress=False))
    parallel = _read_dataset(
        write_synthetic_dataset(config, tmp_path / "two", num_workers=2, show_progress=False)
    )
    assert serial.keys() == parallel.keys()
    assert len(serial) == config.cases * (config.channels + 1)
    for name, array in serial.items():
        assert array.dtype == parallel[name].dtype
        assert np.array_equal(array, parallel[name]), name


def test_rerun_with_the_same_config_rewrites_nothing(tmp_path: Path) -> None:
    config = replace(MR, cases=2)
    root = write_synthetic_dataset(config, tmp_path / "mr", show_progress=False)
    before = _mtimes(root)
    assert write_synthetic_dataset(config, tmp_path / "mr", show_progress=False) == root
    assert _mtimes(root) == before


def test_existing_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config = replace(MR, cases=1)
    root = write_synthetic_dataset(config, tmp_path / "empty", show_progress=False)
    assert (root / "dataset.json").is_file()


def test_foreign_or_different_folder_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    config = replace(MR, cases=1)
    with pytest.raises(UsageError, match="pick another folder or delete it"):
        write_synthetic_dataset(config, foreign, show_progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    write_synthetic_dataset(config, tmp_path / "synth", show_progress=False)
    with pytest.raises(UsageError, match="pick another folder"):
        write_synthetic_dataset(replace(config, seed=3), tmp_path / "synth", show_progress=False)


# ----------------------------------------------------------------------------------------- config


def test_config_json_round_trip_and_names() -> None:
    data = json.loads(json.dumps(CT.to_json()))
    assert data["shape"] == [20, 32, 32]
    assert SynthConfig.from_json(data) == CT
    assert SynthConfig.from_json({}) == SynthConfig()
    assert class_names(SynthConfig(classes=4)) == {
        "background": 0,
        "organ": 1,
        "lesion": 2,
        "adjacent_organ": 3,
        "nodule": 4,
    }
    assert len(class_names(SynthConfig(classes=8))) == 9
    assert channel_names(SynthConfig(channels=1)) == {"0": "CT"}
    assert channel_names(SynthConfig(modality="MR", channels=3)) == {"0": "T1", "1": "T2", "2": "PD"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"classes": 9}, "classes"),
        ({"classes": 0}, "classes"),
        ({"classes": "3"}, "classes"),
        ({"channels": 5}, "channels"),
        ({"cases": 0}, "cases"),
        ({"seed": -1}, "seed"),
        ({"shape": [8, 32, 32]}, "shape"),
        ({"shape": [20, 32]}, "shape"),
        ({"shape": "abc"}, "shape"),
        ({"spacing_mm": [0.0, 1.0, 1.0]}, "spacing_mm"),
        ({"spacing_mm": [1.0, -1.0, 1.0]}, "spacing_mm"),
        ({"modality": "PET"}, "modality"),
        ({"file_ending": ".png"}, "file_ending"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_config_is_a_usage_error_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(UsageError, match=field):
        SynthConfig.from_json({**SynthConfig().to_json(), **change})


def test_invalid_arguments_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="classes"):
        write_synthetic_dataset(SynthConfig(classes=0), tmp_path / "bad", show_progress=False)
    with pytest.raises(UsageError, match="num_workers"):
        write_synthetic_dataset(SynthConfig(), tmp_path / "bad", num_workers=0, show_progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(UsageError, match="case index"):
        synthesize_case(SynthConfig(cases=2), 2)
