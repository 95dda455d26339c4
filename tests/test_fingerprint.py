"""Fingerprint: exact per-case facts, deterministic aggregation, recomputed only when the data change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_case, write_nnunet_dataset

from autoseg.cli.main import main
from autoseg.dataset.layout import load_dataset
from autoseg.errors import FingerprintError
from autoseg.fingerprint import (
    FINGERPRINT_SCHEMA_VERSION,
    FingerprintOptions,
    crop_box_of_nonzero,
    extract_fingerprint,
    fingerprint_case,
    load_fingerprint,
    run_fingerprint,
)
from autoseg.io import Geometry


def test_crop_box_covers_nonzero_voxels_of_any_channel() -> None:
    image = np.zeros((2, 10, 12, 14), np.float32)
    image[0, 2:5, 3:4, 4:9] = 1.0
    image[1, 6, 8, 1] = -3.0
    assert crop_box_of_nonzero(image) == ((2, 7), (3, 9), (1, 9))
    assert crop_box_of_nonzero(np.zeros((1, 3, 4, 5), np.float32)) == ((0, 3), (0, 4), (0, 5))


def test_case_fingerprint_is_exact() -> None:
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # 8 voxels
    labels[6:9, 6:9, 6:9] = 1  # 27 voxels, a second component
    labels[6:8, 1:2, 10:12] = 2  # 4 voxels
    image = np.zeros((1, 10, 12, 14), np.float32)
    image[0, 1:9, 1:10, 1:13] = 5.0
    image[0][labels == 1] = np.arange(35, dtype=np.float32)
    case, samples = fingerprint_case(image, labels, (2.0, 1.0, 1.0), "LPS", "c", samples=1000, seed=0)
    assert case.crop_box == ((1, 9), (1, 10), (1, 13))
    assert case.cropped_shape == (8, 9, 12)
    assert case.class_voxels == {"1": 35, "2": 4}
    assert case.component_sizes == {"1": [27, 8], "2": [4]}
    foreground = image[0][labels > 0]
    assert case.intensity[0].count == 39
    assert case.intensity[0].mean == pytest.approx(float(foreground.mean()))
    assert case.intensity[0].percentile_99_5 == pytest.approx(float(np.percentile(foreground, 99.5)))
    assert case.intensity[0].max == 34.0
    assert samples[0].size == 39


def test_sampling_is_seeded_per_case() -> None:
    labels = np.ones((8, 8, 8), np.uint8)
    image = np.arange(512, dtype=np.float32).reshape(1, 8, 8, 8)
    _, first = fingerprint_case(image, labels, (1.0, 1.0, 1.0), "LPS", "a", samples=50, seed=0)
    _, again = fingerprint_case(image, labels, (1.0, 1.0, 1.0), "LPS", "a", samples=50, seed=0)
    _, other = fingerprint_case(image, labels, (1.0, 1.0, 1.0), "LPS", "b", samples=50, seed=0)
    assert first[0].size == 50
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_dataset_fingerprint_aggregates(tmp_path: Path, rng: np.random.Generator) -> None:
    cases = {}
    for i in range(3):
        image, labels, _ = tiny_case(rng)
        if i == 2:
            labels[labels == 2] = 1
        cases[f"c{i}"] = (image, labels, Geometry((3.0, 0.8 + 0.1 * i, 0.8), (0.0, 0.0, 0.0)))
    dataset = load_dataset(write_nnunet_dataset(tmp_path / "d", cases))
    fingerprint = extract_fingerprint(dataset, show_progress=False)
    assert fingerprint.num_cases == 3
    assert fingerprint.median_spacing_mm == pytest.approx((3.0, 0.9, 0.8))
    assert fingerprint.median_shape == (12, 16, 16)
    assert fingerprint.orientation_consistent and fingerprint.orientations == {"LPS": 3}
    organ, core = fingerprint.classes
    assert (organ.name, core.name) == ("organ", "core")
    assert core.case_fraction == pytest.approx(2 / 3)
    assert organ.voxel_fraction == pytest.approx((3 * 144 - 2 * 8) / (3 * 12 * 16 * 16))
    assert core.component_size_voxels.max == 8
    all_foreground = np.concatenate([c[0][0][c[1] > 0] for c in cases.values()])
    assert fingerprint.intensity[0].mean == pytest.approx(float(all_foreground.mean()), rel=1e-5)
    assert fingerprint.intensity[0].count == all_foreground.size


def test_parallel_equals_serial_and_json_round_trips(tiny_dataset: Path, tmp_path: Path) -> None:
    dataset = load_dataset(tiny_dataset)
    serial = extract_fingerprint(dataset, num_workers=1, show_progress=False)
    parallel = extract_fingerprint(dataset, num_workers=2, show_progress=False)
    assert serial.to_json() == parallel.to_json()
    path = run_fingerprint(tmp_path / "work", dataset, show_progress=False)
    loaded = load_fingerprint(path)
    assert loaded == serial
    assert loaded.sha256() == serial.sha256()
    assert json.loads(path.read_text())["schema_version"] == FINGERPRINT_SCHEMA_VERSION


def test_recomputed_only_when_files_change(tiny_dataset: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    path = run_fingerprint(workdir, load_dataset(tiny_dataset), show_progress=False)
    first = path.stat().st_mtime_ns
    run_fingerprint(workdir, load_dataset(tiny_dataset), show_progress=False)
    assert path.stat().st_mtime_ns == first, "an unchanged dataset must not be re-fingerprinted"
    label = tiny_dataset / "labelsTr" / "case_000.nii.gz"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    run_fingerprint(workdir, load_dataset(tiny_dataset), show_progress=False)
    assert path.stat().st_mtime_ns != first


def test_workdir_belongs_to_one_dataset(tiny_dataset: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    workdir = tmp_path / "work"
    run_fingerprint(workdir, load_dataset(tiny_dataset), show_progress=False)
    other = write_nnunet_dataset(tmp_path / "other", {"x": tiny_case(rng)})
    with pytest.raises(FingerprintError, match="belongs to dataset"):
        run_fingerprint(workdir, load_dataset(other), show_progress=False)
    run_fingerprint(workdir, load_dataset(other), FingerprintOptions(force=True), show_progress=False)
    assert load_fingerprint(workdir / "fingerprint.json").num_cases == 1


def test_bad_fingerprint_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError, match="run 'autoseg fingerprint"):
        load_fingerprint(tmp_path / "fingerprint.json")
    (tmp_path / "fingerprint.json").write_text('{"schema_version": 99}')
    with pytest.raises(FingerprintError, match="schema_version 99"):
        load_fingerprint(tmp_path / "fingerprint.json")
    (tmp_path / "fingerprint.json").write_text(f'{{"schema_version": {FINGERPRINT_SCHEMA_VERSION}}}')
    with pytest.raises(FingerprintError, match="malformed"):
        load_fingerprint(tmp_path / "fingerprint.json")
    (tmp_path / "fingerprint.json").write_text("{not json")
    with pytest.raises(FingerprintError, match="malformed"):
        load_fingerprint(tmp_path / "fingerprint.json")


def test_cli_writes_fingerprint_into_workdir(tiny_dataset: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    assert main(["fingerprint", str(tiny_dataset), "--workdir", str(workdir), "-np", "2", "-q"]) == 0
    assert load_fingerprint(workdir / "fingerprint.json").num_cases == 4


def test_cli_fingerprint_stops_on_a_corrupt_case(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tiny_dataset / "imagesTr" / "case_002_0000.nii.gz"
    image.write_bytes(image.read_bytes()[:80])
    assert main(["fingerprint", str(tiny_dataset), "--workdir", str(tmp_path / "w"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "case_002_0000.nii.gz: cannot read" in err
    assert "Traceback" not in err
    assert not (tmp_path / "w" / "fingerprint.json").exists()


@pytest.mark.slow
def test_real_hippocampus_fingerprint(data_root: Path, tmp_path: Path) -> None:
    options = FingerprintOptions(num_workers=2)
    path = run_fingerprint(tmp_path, load_dataset(data_root / "hippocampus"), options, show_progress=False)
    fingerprint = load_fingerprint(path)
    assert fingerprint.num_cases == 195
    assert fingerprint.median_spacing_mm == (1.0, 1.0, 1.0)
    assert fingerprint.orientation_consistent
    assert [c.case_fraction for c in fingerprint.classes] == [1.0, 1.0]
    assert fingerprint.intensity[0].max > 1e5  # the real quirk: some cases are scaled up to ~1.7e6
