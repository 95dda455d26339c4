"""``autoseg predict``: inputs, outputs in the input's exact geometry, failures, presets, model files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import tiny_case

from autoseg.cli.main import main
from autoseg.errors import PredictInputError
from autoseg.inference.inputs import find_input_cases
from autoseg.inference.model_file import load_model
from autoseg.inference.stage import PredictRequest, inference_settings, load_ensemble
from autoseg.io import Geometry, read_header, read_labels, read_probabilities, write_image


def _rotation(degrees: float) -> tuple[float, ...]:
    """An oblique direction: rotated about the array's z axis, in (z, y, x) rows and columns."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)


GEOMETRIES = {
    "LPS": Geometry((3.0, 0.8, 0.8), (10.0, -20.0, 30.0)),
    "RAS": Geometry((3.0, 0.8, 0.8), (10.0, 20.0, -30.0), (1, 0, 0, 0, -1, 0, 0, 0, -1)),
    "flipped": Geometry((3.0, 0.8, 0.8), (10.0, -20.0, 30.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1)),
    "oblique": Geometry((3.0, 0.8, 0.8), (1.5, -2.5, 3.5), _rotation(17.0)),
}


def _affine(path: Path) -> np.ndarray:
    """The NIfTI header's affine, as nibabel reads it (independently of autoseg.io)."""
    loaded: Any = nib.load(path)
    return np.asarray(loaded.affine)


def _predict(inputs: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "-q", *extra])


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_output_has_the_input_geometry_exactly(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, name: str
) -> None:
    image, _, _ = tiny_case(rng, shape=(10, 18, 14))
    geometry = GEOMETRIES[name]
    write_image(image[0], geometry, tmp_path / "in" / "scan_0000.nii.gz")
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir, "--preset", "fast") == 0
    source, result = tmp_path / "in" / "scan_0000.nii.gz", tmp_path / "out" / "scan.nii.gz"
    header = read_header(result)
    assert header.shape == (10, 18, 14)
    assert not header.geometry.differences(read_header(source).geometry, tolerance=1e-6)
    np.testing.assert_allclose(_affine(result), _affine(source), atol=1e-5)
    assert read_labels(result)[0].dtype == np.uint8


def test_a_flipped_copy_predicts_the_flipped_segmentation(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Mirroring over every axis makes the ensemble equivariant to flips of the array (windows aside)."""
    image, _, geometry = tiny_case(rng, shape=(8, 16, 16))
    write_image(image[0], geometry, tmp_path / "in" / "a_0000.nii.gz")
    write_image(image[0, :, :, ::-1], geometry, tmp_path / "in" / "b_0000.nii.gz")
    # float32: bfloat16 rounding would differ between an array and its flipped copy
    options = ("--save-probabilities", "--precision", "float32")
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir, *options) == 0
    a = read_probabilities(tmp_path / "out" / "a_probabilities.npz")  # the validation .npz reader
    b = read_probabilities(tmp_path / "out" / "b_probabilities.npz")
    with np.load(tmp_path / "out" / "a_probabilities.npz") as stored:
        assert stored["probabilities"].dtype == np.float16 and len(stored["labels"]) == 3
    assert a.shape == (3, 8, 16, 16)
    np.testing.assert_allclose(a.sum(0), 1.0, atol=2e-3)  # stored as float16
    np.testing.assert_allclose(a, b[..., ::-1], atol=2e-3)


def test_exported_model_predicts_like_the_work_directory(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _, geometry = tiny_case(rng)
    write_image(image[0], geometry, tmp_path / "scan.nii.gz")  # a single file without a channel suffix
    assert main(["export-model", str(tmp_path / "m.zip"), "--workdir", str(trained_workdir), "-q"]) == 0
    assert _predict(tmp_path / "scan.nii.gz", tmp_path / "a", trained_workdir) == 0
    assert _predict(tmp_path / "scan.nii.gz", tmp_path / "b", tmp_path / "m.zip") == 0
    labels_a, labels_b = (
        read_labels(tmp_path / "a" / "scan.nii.gz")[0],
        read_labels(tmp_path / "b" / "scan.nii.gz")[0],
    )
    np.testing.assert_array_equal(labels_a, labels_b)
    assert "INFO" not in capsys.readouterr().err  # -q keeps the console to warnings and errors
    record = json.loads((tmp_path / "b" / "predict.json").read_text())
    assert record["folds"] == ["0", "1"] and record["settings"]["mirror_axes"] == [0, 1, 2]
    assert record["settings"]["precision"] in ("float32", "bfloat16")  # what ran, not "auto"


def test_a_large_network_grid_predicts_through_float16_like_float32(
    trained_workdir: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Above ``FLOAT16_ABOVE_BYTES`` (lowered here to 0) the network-grid probabilities are float16, which
    predict says, and the outputs agree with the float32 run's but for rounding."""
    from autoseg.inference import inputs

    image, _, geometry = tiny_case(rng, shape=(10, 18, 14))
    write_image(image[0], geometry, tmp_path / "in" / "scan_0000.nii.gz")
    options = ("--save-probabilities", "--preset", "fast", "--precision", "float32")
    assert _predict(tmp_path / "in", tmp_path / "full", trained_workdir, *options) == 0
    assert "kept in float16" not in capsys.readouterr().err
    monkeypatch.setattr(inputs, "FLOAT16_ABOVE_BYTES", 0)
    half_argv = [
        "predict",
        "-i",
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "half"),
        "-m",
        str(trained_workdir),
    ]
    assert main([*half_argv, *options]) == 0  # not -q: the INFO line is the point
    assert "probabilities on the network grid kept in float16" in capsys.readouterr().err
    full = read_probabilities(tmp_path / "full" / "scan_probabilities.npz")
    half = read_probabilities(tmp_path / "half" / "scan_probabilities.npz")
    np.testing.assert_allclose(half, full, atol=2e-3)
    labels = [read_labels(tmp_path / name / "scan.nii.gz")[0] for name in ("full", "half")]
    assert np.mean(labels[0] != labels[1]) < 0.01


def test_threads_option_sets_torch_threads(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    image, _, geometry = tiny_case(rng)
    write_image(image[0], geometry, tmp_path / "scan.nii.gz")
    before = torch.get_num_threads()
    try:
        assert (
            _predict(
                tmp_path / "scan.nii.gz",
                tmp_path / "o",
                trained_workdir,
                "--preset",
                "fast",
                "--threads",
                "1",
            )
            == 0
        )
        assert json.loads((tmp_path / "o" / "predict.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_a_broken_case_is_reported_and_the_others_are_written(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _, geometry = tiny_case(rng)
    write_image(image[0], geometry, tmp_path / "in" / "good_0000.nii.gz")
    (tmp_path / "in" / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir, "--preset", "fast") == 1
    assert "broken" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "predict.json"]
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["failures"][0].startswith("broken")


def test_dicom_outputs_need_dicom_inputs(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _, geometry = tiny_case(rng)
    write_image(image[0], geometry, tmp_path / "in" / "scan_0000.nii.gz")
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir, "--format", "rtstruct") == 2
    assert "not DICOM series: scan" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inputs_are_grouped_by_case_and_channel(tmp_path: Path, rng: np.random.Generator) -> None:
    image, _, geometry = tiny_case(rng)
    for name in ("a_0000", "a_0001", "b_0000", "b_0001"):
        write_image(image[0], geometry, tmp_path / f"{name}.nii.gz")
    cases = find_input_cases(tmp_path, 2)
    assert [(c.identifier, [f.name for f in c.files]) for c in cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]),
        ("b", ["b_0000.nii.gz", "b_0001.nii.gz"]),
    ]
    assert [f.name for f in find_input_cases(tmp_path / "a_0001.nii.gz", 2)[0].files] == [
        "a_0000.nii.gz",
        "a_0001.nii.gz",
    ]
    (tmp_path / "b_0001.nii.gz").unlink()
    with pytest.raises(PredictInputError) as error:
        find_input_cases(tmp_path, 2)
    assert "b: missing channel(s) 0001" in error.value.lines()[1]
    with pytest.raises(PredictInputError, match="no such file"):
        find_input_cases(tmp_path / "nothing", 1)


def test_presets_choose_folds_mirroring_and_step(trained_workdir: Path) -> None:
    model = load_model(trained_workdir)
    plan = model.plans.configuration(model.configuration)
    fast = PredictRequest(Path("i"), Path("o"), trained_workdir, preset="fast")
    accurate = PredictRequest(Path("i"), Path("o"), trained_workdir)
    assert [m.folds for m in load_ensemble(fast).members] == [["0"]]
    assert [m.folds for m in load_ensemble(accurate).members] == [["0", "1"]]
    assert inference_settings(fast, plan, "cpu").mirror_axes == ()
    assert inference_settings(fast, plan, "cpu").step == 0.75
    assert inference_settings(accurate, plan, "cpu").mirror_axes == (0, 1, 2)
    overridden = PredictRequest(Path("i"), Path("o"), trained_workdir, step=0.6, mirror=False, folds=("1",))
    assert inference_settings(overridden, plan, "cpu").step == 0.6
    member = load_ensemble(overridden).members[0]
    assert member.folds == ["1"] and list(member.model.weights) == ["1"]


@pytest.mark.realdata
def test_dicom_series_in_nifti_seg_and_rtstruct_out(
    trained_workdir: Path, tmp_path: Path, data_root: Path
) -> None:
    from autoseg.dicom.rtstruct import read_rtstruct
    from autoseg.dicom.seg import read_dicom_seg
    from autoseg.dicom.series import read_series, single_series

    source = data_root / "brain_mr_dicom" / "hippocrop" / "study1"
    formats = ["--format", "nifti", "dicom-seg", "rtstruct", "--preset", "fast"]
    assert _predict(source, tmp_path / "out", trained_workdir, *formats) == 0
    series = single_series(source)
    _, geometry = read_series(series)
    labels, written = read_labels(tmp_path / "out" / "study1.nii.gz")
    assert not written.differences(geometry, tolerance=1e-6)
    seg = read_dicom_seg(tmp_path / "out" / "study1_seg.dcm", series, {"organ": 1, "core": 2})
    np.testing.assert_array_equal(seg, labels)
    masks = read_rtstruct(tmp_path / "out" / "study1_rtstruct.dcm", series)
    assert set(masks) == {"organ", "core"}
    for name, value in (("organ", 1), ("core", 2)):
        expected = labels == value
        overlap = 2 * np.logical_and(masks[name], expected).sum() / max(1, masks[name].sum() + expected.sum())
        assert overlap >= 0.9 or expected.sum() < 20


def test_instances_and_report_are_written_per_case(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _, geometry = tiny_case(rng)
    write_image(image[0], geometry, tmp_path / "in" / "scan_0000.nii.gz")
    extra = ["--preset", "fast", "--instances", "organ", "core", "--report"]
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir, *extra) == 0
    out = tmp_path / "out"
    instances = json.loads((out / "scan_instances.json").read_text())
    assert set(instances["counts"]) == {"organ", "core"}
    instance_map, instance_geometry = read_labels(out / "scan_instances.nii.gz")
    assert instance_map.shape == image.shape[1:] and not instance_geometry.differences(geometry)
    assert int(instance_map.max()) == len(instances["objects"])
    assert (out / "scan_report.png").stat().st_size > 1000
    rows = json.loads((out / "scan_structures.json").read_text())
    assert {row["name"] for row in (rows if isinstance(rows, list) else rows["structures"])} == {
        "organ",
        "core",
    }
    assert _predict(tmp_path / "in", tmp_path / "bad", trained_workdir, "--instances", "liver") == 2
    assert "liver" in capsys.readouterr().err


def test_skip_empty_structures_leaves_them_out_of_rtstruct_and_seg(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from autoseg.dicom.export import write_image_series
    from autoseg.dicom.rtstruct import read_rtstruct
    from autoseg.dicom.seg import read_dicom_seg_masks
    from autoseg.inference.inputs import read_input_case
    from autoseg.inference.outputs import OutputContext, OutputOptions, write_case_outputs

    image, labels, geometry = tiny_case(rng)
    write_image_series(image[0], geometry, tmp_path / "series" / "scan")
    (case,) = find_input_cases(tmp_path / "series" / "scan", 1)
    _, read_geometry = read_input_case(case)
    assert case.series is not None
    probabilities = np.stack([labels == 0, labels > 0, np.zeros_like(labels, bool)]).astype(np.float32)
    context = OutputContext({"background": 0, "organ": 1, "core": 2})  # "core" never wins: empty
    found = {}
    for skip in (False, True):
        options = OutputOptions(formats=("dicom-seg", "rtstruct"), skip_empty_structures=skip)
        out = tmp_path / f"skip_{skip}"
        write_case_outputs(case, probabilities, read_geometry, None, context, options, out)
        found[skip] = (
            set(read_rtstruct(out / "scan_rtstruct.dcm", case.series)),
            set(read_dicom_seg_masks(out / "scan_seg.dcm", case.series)),
        )
    assert found[False] == ({"organ", "core"}, {"organ", "core"})
    assert found[True] == ({"organ"}, {"organ"})


def test_dicom_outputs_refuse_invalid_structure_names_before_any_work() -> None:
    from autoseg.errors import StructureNameError
    from autoseg.inference.outputs import OutputOptions

    with pytest.raises(StructureNameError, match="backslash"):
        OutputOptions(formats=("rtstruct",)).check_inputs([], ["Lung\\L"])
    with pytest.raises(StructureNameError, match="64"):
        OutputOptions(formats=("dicom-seg",)).check_inputs([], ["x" * 65])
    OutputOptions(formats=("nifti",)).check_inputs([], ["Lung\\L"])  # a NIfTI label map has no ROI names
