"""Modality sense: a model knows what it was trained on; predict warns on another modality, --strict
refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli.main import main
from autoseg.inference.modality import check_input
from autoseg.inference.model_file import export_model, load_model
from autoseg.io import Geometry, write_image
from autoseg.plans import ChannelRecord

CT = ChannelRecord("CT", "CT", -980.0, 40.0, 900.0)
MR = ChannelRecord("T1", "MR", 12.0, 400.0, 1800.0)
GEOMETRY = Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0))


def ct_like(rng: np.random.Generator, shape: tuple[int, int, int] = (10, 18, 14)) -> np.ndarray:
    """Air (-1000 HU) around a soft-tissue body (40 HU) with a bone (700 HU): ``(1, Z, Y, X)`` float32."""
    image = np.full(shape, -1000.0, np.float32)
    image[:, 3:-3, 3:-3] = 40.0
    image[:, 7:10, 6:8] = 700.0
    return (image + rng.normal(0.0, 10.0, shape).astype(np.float32))[None]


def mr_like(rng: np.random.Generator, shape: tuple[int, int, int] = (10, 18, 14)) -> np.ndarray:
    """Non-negative arbitrary units: dark background, tissue in the thousands: ``(1, Z, Y, X)`` float32."""
    image = np.abs(rng.normal(5.0, 3.0, shape)).astype(np.float32)
    image[:, 3:-3, 3:-3] += 1500.0
    return image[None]


def test_a_ct_model_fed_mr_intensities_and_the_reverse(rng: np.random.Generator) -> None:
    assert check_input("a", ct_like(rng), [CT]).verdict == "ok"
    assert check_input("b", mr_like(rng), [MR]).verdict == "ok"
    mr_to_ct = check_input("c", mr_like(rng), [CT])
    assert mr_to_ct.verdict == "mismatch" and "no air, so not CT in HU" in mr_to_ct.reason
    assert "trained on CT (channel 'CT', foreground 0.5-99.5% [-980, 900])" in mr_to_ct.reason
    ct_to_mr = check_input("d", ct_like(rng), [MR])
    assert ct_to_mr.verdict == "mismatch" and "Hounsfield units (CT), not MR" in ct_to_mr.reason
    normalised = ((mr_like(rng) - 500.0) / 600.0).astype(np.float32)  # already z-scored: no air either
    assert check_input("e", normalised, [CT]).verdict == "mismatch"
    assert check_input("f", normalised, [MR]).verdict == "ok"


def test_a_ct_cropped_inside_the_body_keeps_its_fat_and_passes(rng: np.random.Generator) -> None:
    shape = (10, 20, 20)
    image = np.full(shape, 40.0, np.float32)  # soft tissue, no air anywhere
    image[:, :4, :] = -100.0  # a fifth of it fat
    image += rng.normal(0.0, 10.0, shape).astype(np.float32)
    assert check_input("cropped", image[None], [CT]).verdict == "ok"
    soft_tissue_only = np.full((1, *shape), 40.0, np.float32)  # windowed above fat: flagged (documented)
    assert check_input("windowed", soft_tissue_only, [CT]).verdict == "mismatch"


def test_the_rules_stay_out_of_the_way_where_they_cannot_tell(rng: np.random.Generator) -> None:
    other = ChannelRecord("PET", "other")
    assert check_input("a", mr_like(rng), [other]).verdict == "unchecked"
    air_in_training = ChannelRecord("MR", "MR", -1024.0, 10.0, 900.0)  # the training MR held such values too
    assert check_input("b", ct_like(rng), [air_in_training]).verdict == "ok"
    two = np.concatenate([ct_like(rng), mr_like(rng)])
    assert check_input("c", two, [CT, MR]).verdict == "ok"
    swapped = check_input("d", two[::-1].copy(), [CT, MR])
    assert swapped.verdict == "mismatch" and "channel 0" in swapped.reason and "channel 1" in swapped.reason


def test_a_dicom_modality_tag_decides(rng: np.random.Generator) -> None:
    mr_series = check_input("a", ct_like(rng), [CT], dicom_modality="MR")
    assert mr_series.verdict == "mismatch" and mr_series.found == "DICOM Modality MR"
    assert "the DICOM series is MR; the model was trained on CT" in mr_series.reason
    assert check_input("b", mr_like(rng), [MR], dicom_modality="MR").verdict == "ok"
    assert check_input("c", ct_like(rng), [MR], dicom_modality="CT").verdict == "mismatch"
    assert check_input("d", mr_like(rng), [CT], dicom_modality="OT").verdict == "mismatch"  # intensities


def _inputs(folder: Path, rng: np.random.Generator) -> Path:
    write_image(ct_like(rng)[0], GEOMETRY, folder / "ct_0000.nii.gz")
    write_image(mr_like(rng)[0], GEOMETRY, folder / "mr_0000.nii.gz")
    return folder


def _predict(inputs: Path, out: Path, model: Path, *extra: str) -> int:
    return main(
        ["predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "-q", "--preset", "fast", *extra]
    )


def test_predict_warns_names_the_case_and_records_the_check(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path / "in", rng)
    assert _predict(inputs, tmp_path / "out", trained_workdir) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "does not look like" in line]
    assert len(warnings) == 1
    assert "WARNING mr: the input does not look like the model's modality" in warnings[0]
    assert "no air, so not CT in HU" in warnings[0]
    assert (tmp_path / "out" / "mr.nii.gz").is_file() and (tmp_path / "out" / "ct.nii.gz").is_file()
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    checks = {c["case"]: c for c in record["input_checks"]}
    assert checks["ct"]["verdict"] == "ok" and checks["ct"]["expected"] == ["CT"]
    assert checks["mr"]["verdict"] == "mismatch" and not checks["mr"]["refused"]


def test_strict_refuses_the_case_and_predicts_the_others(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    inputs = _inputs(tmp_path / "in", rng)
    assert _predict(inputs, tmp_path / "out", trained_workdir, "--strict") == 1
    assert (tmp_path / "out" / "ct.nii.gz").is_file() and not (tmp_path / "out" / "mr.nii.gz").exists()
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert len(record["failures"]) == 1 and record["failures"][0].startswith("mr: not the model's modality")
    assert "(--strict)" in record["failures"][0]
    assert {c["case"]: c["refused"] for c in record["input_checks"]} == {"ct": False, "mr": True}


def test_an_exported_model_carries_its_channels_modality_and_range(
    trained_workdir: Path, tmp_path: Path
) -> None:
    exported = load_model(export_model(trained_workdir, tmp_path / "model.zip"))
    (channel,) = exported.plans.channels
    assert (channel.name, channel.modality) == ("CT", "CT")
    assert channel.foreground_percentile_00_5 is not None and channel.foreground_percentile_99_5 is not None
    assert exported.plans.channels == load_model(trained_workdir).plans.channels


def test_a_real_mr_series_against_a_ct_model(trained_workdir: Path, tmp_path: Path, data_root: Path) -> None:
    series = data_root / "brain_mr_dicom" / "hippocrop" / "study1"
    if not series.is_dir():
        pytest.skip(f"{series} not found")
    inputs = tmp_path / "study1"
    shutil.copytree(series, inputs)
    assert _predict(inputs, tmp_path / "out", trained_workdir, "--strict") == 1
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    (check,) = record["input_checks"]
    assert check["found"] == "DICOM Modality MR" and check["verdict"] == "mismatch" and check["refused"]
    assert "the DICOM series is MR; the model was trained on CT" in record["failures"][0]
