"""``autoseg synth --preset rt``: synthetic CT structure sets as a clinic has them, read by convert-dicom."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from autoseg.cli.main import main
from autoseg.dataset.catalogue import default_catalogue_path, load_catalogue, resolve_dataset
from autoseg.dataset.rt_synthetic import (
    MANIFEST,
    STRUCTURES,
    RtSynthConfig,
    contoured_names,
    rt_case_identifier,
    synthesize_rt_case,
)
from autoseg.dicom.convert import ConvertRequest, convert_dicom
from autoseg.dicom.names import match_tg263
from autoseg.dicom.rtstruct import read_rtstruct
from autoseg.dicom.series import single_series
from autoseg.errors import UsageError
from autoseg.io import read_labels

TINY = ["--cases", "3", "--shape", "20", "40", "40", "-np", "2"]
OPTIONAL = ("Heart", "Esophagus", "PTV_Ring", "SpinalCord_PRV05")


def _centroid_x(mask: np.ndarray) -> float:
    return float(np.argwhere(mask)[:, 2].mean())


def test_targets_nest_organs_overlap_them_and_everything_lies_in_the_body() -> None:
    config = RtSynthConfig()
    crossing = ring_holes = 0
    for index in range(config.cases):
        thorax, _ = synthesize_rt_case(config, index)
        m = thorax.masks
        assert set(m) == {s.standard for s in STRUCTURES}
        assert all(mask.any() for mask in m.values()), index
        assert np.all(m["CTVp"] >= m["GTVp"]) and np.all(m["PTVp"] >= m["CTVp"])
        assert m["PTVp"].sum() > 1.5 * m["CTVp"].sum() > 2.2 * m["GTVp"].sum()  # margins of 4 mm each
        assert all(np.all(m["External"] >= mask) for mask in m.values())
        lungs = m["Lung_L"] | m["Lung_R"]
        assert np.all(lungs >= m["GTVp"]) and (m["PTVp"] & ~lungs).any()  # the PTV leaves the lung
        crossing += bool((m["PTVp"] & (m["Heart"] | m["Esophagus"] | m["SpinalCord_PRV05"])).any())
        assert not (m["PTV_Ring"] & m["PTVp"]).any()
        for z in range(m["Skin"].shape[0]):  # the skin has a hole on every slice
            assert (ndimage.binary_fill_holes(m["Skin"][z]) & ~m["Skin"][z]).any()
        ring_holes += any(
            (ndimage.binary_fill_holes(ring) & ~ring & ptv).any()
            for ring, ptv in zip(m["PTV_Ring"], m["PTVp"], strict=True)
        )
        assert (
            _centroid_x(m["Lung_L"]) > _centroid_x(m["External"]) > _centroid_x(m["Lung_R"])
        )  # LPS: +x left
        assert _centroid_x(m["Heart"]) > _centroid_x(m["External"])
        assert np.all(m["SpinalCord_PRV05"] >= m["SpinalCord"])
    assert crossing >= 2, "the PTV should cross an organ at risk in some cases"
    assert ring_holes >= 2, "the PTV ring should be closed around the PTV in some cases"


def test_intensities_are_ct_like_and_organs_stand_out() -> None:
    thorax, geometry = synthesize_rt_case(RtSynthConfig(cases=2, seed=3), 1)
    image, m = thorax.image, thorax.masks
    assert image.dtype == np.float32 and np.array_equal(image, np.rint(image))
    assert geometry.spacing_mm == (2.5, 1.0, 1.0) and image.shape == (40, 64, 64)
    lung = ndimage.binary_erosion(m["Lung_L"] | m["Lung_R"])
    lung_hu = float(np.median(image[lung]))
    assert float(np.median(image[~m["External"]])) < -950
    assert lung_hu < -750
    soft = m["External"] & ~np.logical_or.reduce([v for k, v in m.items() if k != "External"])
    soft = ndimage.binary_erosion(soft, iterations=1)
    assert (
        float(np.median(image[m["Heart"]])) - float(np.median(image[soft & (image > -50) & (image < 200)]))
        > 10
    )
    assert float(np.median(image[m["GTVp"]])) > lung_hu + 500  # a tumour in the lung
    assert -40 < float(np.median(image[m["SpinalCord"]])) < 120


def test_cases_are_deterministic_per_seed() -> None:
    first, geometry = synthesize_rt_case(RtSynthConfig(seed=4), 2)
    again, same = synthesize_rt_case(RtSynthConfig(seed=4), 2)
    other, _ = synthesize_rt_case(RtSynthConfig(seed=5), 2)
    assert geometry == same and np.array_equal(first.image, again.image)
    assert all(np.array_equal(first.masks[k], again.masks[k]) for k in first.masks)
    assert not np.array_equal(first.image, other.image)


def test_clinic_names_match_tg263_vary_between_cases_and_some_structures_are_not_contoured() -> None:
    for structure in STRUCTURES:
        for variant in structure.variants:
            expected = None if structure.standard == "SpinalCord_PRV05" else structure.standard
            assert match_tg263(variant).standard == expected, variant  # the PRV: not in autoseg's table
    config = RtSynthConfig()
    cases = [contoured_names(config, index) for index in range(config.cases)]
    for standard in OPTIONAL:
        present = [case[standard] is not None for case in cases]
        assert any(present) and not all(present), standard
    assert all(case["GTVp"] is not None and case["External"] is not None for case in cases)
    assert cases[0]["Lung_L"] != cases[1]["Lung_L"] and cases[0]["External"] != cases[1]["External"]
    types = {entry[1] for case in cases for entry in case.values() if entry is not None}
    assert types == {"EXTERNAL", "ORGAN", "GTV", "CTV", "PTV", "CONTROL", "AVOIDANCE"}


def _dciodvfy_errors(path: Path) -> list[str]:
    found = shutil.which("dciodvfy")
    if found is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools; .ci/run installs it)")
    result = subprocess.run([found, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "archive"
    assert main(["synth", str(out), "--preset", "rt", *TINY, "-q"]) == 0
    return out


def test_archive_layout_structure_sets_and_truth(archive: Path) -> None:
    manifest = json.loads((archive / MANIFEST).read_text())
    config = RtSynthConfig.from_json(manifest["autoseg_synth_rt"])
    assert config == RtSynthConfig(cases=3, shape=(20, 40, 40))
    for index in range(3):
        case = archive / rt_case_identifier(config, index)
        rs = pydicom.dcmread(case / f"RS.{case.name}.dcm")
        rois = {r.ROINumber: r for r in rs.StructureSetROISequence}
        types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in rs.RTROIObservationsSequence}
        written = {r.ROIName: types[n] for n, r in rois.items()}
        expected = manifest["cases"][case.name]
        assert written == {e["roi_name"]: e["type"] for e in expected.values() if e is not None}
        assert {r.ROIGenerationAlgorithm for r in rois.values()} == {
            "MANUAL"
        } and rs.ApprovalStatus == "APPROVED"
        series = single_series(case / "CT")
        assert series.modality == "CT" and len(series.instances) == 20
        masks = read_rtstruct(case / f"RS.{case.name}.dcm", series)
        for standard, entry in expected.items():
            truth, _ = read_labels(case / "truth" / f"{standard}.nii.gz")
            assert truth.any(), standard  # the truth exists whether or not the clinic contoured it
            if entry is not None:
                np.testing.assert_array_equal(masks[entry["roi_name"]], truth.astype(bool))
        assert _dciodvfy_errors(case / f"RS.{case.name}.dcm") == []


def test_convert_dicom_tg263_reports_matches_unmatched_and_missing_and_the_dataset_verifies(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((archive / MANIFEST).read_text())["cases"]
    dataset = tmp_path / "dataset"
    capsys.readouterr()
    assert main(["convert-dicom", str(archive), str(dataset), "--names", "tg263", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "TG-263: 'BODY' -> External (synonym)" in printed or "TG-263: 'EXTERNAL' -> External" in printed
    report = convert_dicom(ConvertRequest(archive, tmp_path / "again", names="tg263"))
    assert len(report.written) == 3
    standards = {s.standard for s in STRUCTURES} - {"SpinalCord_PRV05"}
    contoured = {s for case in manifest.values() for s, e in case.items() if e is not None}
    assert set(report.labels) - {"background"} == standards & contoured
    for case in report.cases:
        expected = manifest[case.case]
        prv = expected["SpinalCord_PRV05"]
        assert case.unknown_rois == (() if prv is None else (prv["roi_name"],))
        if prv is not None:
            assert "SpinalCord" in case.suggestions[prv["roi_name"]]
            assert f"{prv['roi_name']} (nearest: SpinalCord" in printed
        missing = {s for s, e in expected.items() if e is None} - {"SpinalCord_PRV05"}
        assert set(case.missing_labels) == missing & set(report.labels)
        for label, names in case.source_names.items():
            assert names == (expected[label]["roi_name"],)
    assert "missing: " in printed
    assert main(["verify", str(dataset), "-q"]) == 0


def test_same_seed_writes_the_same_files_and_the_archive_is_reused(archive: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    assert main(["synth", str(other), "--preset", "rt", *TINY, "-q"]) == 0
    for name in ("synthrt_001/RS.synthrt_001.dcm", "synthrt_001/CT/slice_0007.dcm", MANIFEST):
        assert (archive / name).read_bytes() == (other / name).read_bytes(), name
    stamp = (other / MANIFEST).stat().st_mtime_ns
    assert main(["synth", str(other), "--preset", "rt", *TINY, "-q"]) == 0  # up to date: nothing rewritten
    assert (other / MANIFEST).stat().st_mtime_ns == stamp
    assert main(["synth", str(other), "--preset", "rt", "--cases", "2", "-q"]) == 2  # other content


def test_preset_flags_and_catalogue_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path / "x"), "--preset", "rt", "--classes", "3", "-q"]) == 2
    assert "not --classes" in capsys.readouterr().err
    entry = load_catalogue(default_catalogue_path()).entry("synthetic-rt")
    assert entry.rt_generator == RtSynthConfig() and entry.layout == "dicom-rtstruct"
    with pytest.raises(UsageError, match="autoseg synth OUT --preset synthetic-rt"):
        resolve_dataset(
            "synthetic-rt", catalogue_path=default_catalogue_path(), data_root=None, cache_dir=tmp_path
        )
    with pytest.raises(UsageError, match="unknown key"):
        RtSynthConfig.from_json({"classes": 3})
    with pytest.raises(UsageError, match="shape"):
        RtSynthConfig.from_json({"shape": [8, 64, 64]})
    assert main(["synth", str(tmp_path / "two"), "--preset", "synthetic-rt", "--cases", "1", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [MANIFEST, "synthrt_000"]
