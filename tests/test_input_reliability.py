"""Bad inputs at the dataset, plans and command level (issue 16, point 3): each is refused with one line
naming the file and the problem, exit 1 for bad data and 2 for usage, never a hang or an internal error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoseg.cli.main import main
from autoseg.dataset.catalogue import resolve_dataset
from autoseg.dataset.layout import scan_dataset
from autoseg.dataset.verify import verify_dataset
from autoseg.errors import EvaluationError, FolderInUseError, PreprocessError, UsageError
from autoseg.evaluation.stage import MAX_CLASSES_WITHOUT_LABELS, EvaluateRequest, run_evaluate
from autoseg.inference.inputs import find_input_cases
from autoseg.io import Geometry, write_labels
from autoseg.preprocessing.stage import PreprocessOptions, require_current_store, run_preprocess
from autoseg.workdir import Workdir, folder_lock

TINY_TRAIN = ["--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", "--num-workers", "0", "-q"]


def _errors(root: Path) -> list[str]:
    _, problems = scan_dataset(root)
    return [p.line() for p in problems if p.severity == "error"]


def _edit_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _as_msd(root: Path) -> Path:
    """The tiny nnU-Net dataset rewritten as an MSD dataset.json over the same files."""
    meta = json.loads((root / "dataset.json").read_text())
    images = sorted((root / "imagesTr").iterdir())
    msd = {
        "name": meta["name"],
        "modality": {"0": "CT"},
        "labels": {str(v): k for k, v in meta["labels"].items()},
        "numTraining": len(images),
        "training": [
            {"image": f"./imagesTr/{p.name}", "label": f"./labelsTr/{p.name.replace('_0000', '')}"}
            for p in images
        ],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(msd))
    return root


# ------------------------------------------------------------------------------------------- dataset folders


def test_a_fifo_named_like_an_image_is_refused_not_read(tiny_dataset: Path) -> None:
    fifo = tiny_dataset / "imagesTr" / "case_009_0000.nii.gz"
    os.mkfifo(fifo)  # opening it for reading would block forever
    shutil.copy(tiny_dataset / "labelsTr" / "case_000.nii.gz", tiny_dataset / "labelsTr" / "case_009.nii.gz")
    errors = _errors(tiny_dataset)  # before the fix, fingerprint then blocked forever opening the FIFO
    assert (
        f"error: {fifo}: not a regular file (a FIFO, socket or device); autoseg reads only regular files"
        in errors
    )
    assert main(["fingerprint", str(tiny_dataset), "--workdir", str(tiny_dataset.parent / "w"), "-q"]) == 1


def test_a_fifo_listed_by_an_msd_dataset_json_is_refused(tiny_dataset: Path) -> None:
    _as_msd(tiny_dataset)
    label = tiny_dataset / "labelsTr" / "case_001.nii.gz"
    label.unlink()
    os.mkfifo(label)
    assert any(f"{label}: not a regular file" in line for line in _errors(tiny_dataset))


def test_symbolic_links_leaving_the_dataset_are_refused_in_both_layouts(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    image = tiny_dataset / "imagesTr" / "case_000_0000.nii.gz"
    outside = tmp_path / "outside.nii.gz"
    shutil.move(image, outside)
    image.symlink_to(outside)
    expected = f"error: {image}: a symbolic link to {outside}, outside the dataset folder {tiny_dataset}"
    assert any(line.startswith(expected) for line in _errors(tiny_dataset)), _errors(tiny_dataset)
    assert not verify_dataset(tiny_dataset, show_progress=False).ok
    _as_msd(tiny_dataset)
    assert any(
        f"'./imagesTr/case_000_0000.nii.gz' is a symbolic link to {outside}, outside the dataset" in line
        for line in _errors(tiny_dataset)
    ), _errors(tiny_dataset)


def test_a_linked_folder_leaving_the_dataset_is_refused_and_a_link_inside_is_accepted(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    inside = tiny_dataset / "imagesTr" / "case_001_0000.nii.gz"
    moved = tiny_dataset / "store" / inside.name
    moved.parent.mkdir()
    shutil.move(inside, moved)
    inside.symlink_to(moved)
    assert _errors(tiny_dataset) == []  # a link that stays inside the dataset folder is fine
    labels = tiny_dataset / "labelsTr"
    shutil.move(labels, tmp_path / "labels_elsewhere")
    labels.symlink_to(tmp_path / "labels_elsewhere")
    errors = _errors(tiny_dataset)
    assert any("reached through a linked folder" in line for line in errors), errors


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("test", 5, "'test' must be a list of image paths, got 5"),
        ("test", [5], "'test' must be a list of image paths (strings)"),
        ("name", 5, "'name' must be a string, got 5"),
        ("modality", {"0": 5}, "'modality' values must be channel names (non-empty strings)"),
    ],
)
def test_msd_dataset_json_types_are_checked_and_named(
    tiny_dataset: Path, key: str, value: Any, message: str
) -> None:
    _as_msd(tiny_dataset)
    _edit_json(tiny_dataset / "dataset.json", lambda d: d.update({key: value}))
    assert f"error: {tiny_dataset / 'dataset.json'}: {message}" in _errors(tiny_dataset)
    assert main(["verify", str(tiny_dataset), "-q"]) == 1


def test_an_nnunet_dataset_listing_of_the_wrong_type_is_named(tiny_dataset: Path) -> None:
    _edit_json(tiny_dataset / "dataset.json", lambda d: d.update(dataset=["case_000"]))
    assert any("'dataset' must be an object of case" in line for line in _errors(tiny_dataset))


def test_a_region_order_that_is_not_label_values_is_named(tiny_dataset: Path) -> None:
    def regions(data: dict[str, Any]) -> None:
        data.update(labels={"background": 0, "organ": [1, 2], "core": 2}, regions_class_order=["x", 2])

    _edit_json(tiny_dataset / "dataset.json", regions)  # was an internal ValueError (int('x'))
    assert any("'regions_class_order' must be a list of label values" in e for e in _errors(tiny_dataset))
    assert main(["verify", str(tiny_dataset), "-q"]) == 1


def test_verify_fails_on_a_dataset_without_cases(tiny_dataset: Path) -> None:
    for folder in ("imagesTr", "labelsTr"):
        for file in (tiny_dataset / folder).iterdir():
            file.unlink()
    _edit_json(tiny_dataset / "dataset.json", lambda d: d.update(numTraining=0))
    report = verify_dataset(tiny_dataset, show_progress=False)
    assert not report.ok
    assert [p.message for p in report.errors] == ["no complete training case found (an image with its label)"]
    assert main(["verify", str(tiny_dataset), "-q"]) == 1


# ------------------------------------------------------------------------------------------- configurations


def test_a_renamed_3d_fullres_is_not_replaced_by_2d(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plans = prepared / "plans.json"
    _edit_json(
        plans, lambda d: d["configurations"].update({"3d_full": d["configurations"].pop("3d_fullres")})
    )
    capsys.readouterr()
    assert main(["train", "0", "--workdir", str(prepared), *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert "the default '3d_fullres' is not planned; planned: 2d, 3d_full; choose one with -c" in err
    assert not (prepared / "trained").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "0", *TINY_TRAIN, "-c", "nope"],
        ["preprocess", "-q", "-c", "nope"],
        ["predict", "-q", "-c", "nope", "-i", "in", "-o", "out"],
        ["export-model", "-q", "-c", "nope", "out.zip"],
        ["find_best_configuration", "-q", "-c", "nope"],
    ],
    ids=["train", "preprocess", "predict", "export", "find_best_configuration"],
)
def test_an_unknown_configuration_is_a_usage_error_in_every_command(
    prepared: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main([*argv, "--workdir", str(prepared)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "planned: 2d, 3d_fullres" in err and "internal error" not in err


# ------------------------------------------------------------------------------------------- stale store


def test_train_refuses_data_preprocessed_for_another_plan_and_preprocess_redoes_it(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = Workdir(prepared)
    plans_path = prepared / "plans.json"
    _edit_json(plans_path, lambda d: d["configurations"]["3d_fullres"].update(spacing_mm=[3.0, 1.6, 1.6]))
    capsys.readouterr()
    assert main(["train", "0", "--workdir", str(prepared), "-c", "3d_fullres", *TINY_TRAIN]) == 1
    err = capsys.readouterr().err
    assert "preprocessed for another plan" in err and "re-run 'autoseg preprocess -c 3d_fullres'" in err
    assert not (prepared / "trained").exists()
    case = work.data_folder("3d_fullres") / "case_000" / "image.npy"
    before = np.load(case).shape
    run_preprocess(prepared, PreprocessOptions(("3d_fullres",)), show_progress=False)
    plan = work.read_plans().configuration("3d_fullres")
    assert require_current_store(work, "3d_fullres", plan) == work.data_folder("3d_fullres")
    assert np.load(case).shape[-1] < before[-1]  # redone at the new, coarser spacing


def test_a_configuration_sharing_a_redone_folder_is_dropped_until_preprocessed(prepared: Path) -> None:
    work = Workdir(prepared)
    run_preprocess(prepared, show_progress=False)  # 2d and 3d_fullres may share one folder
    shared = work.read_configurations()
    _edit_json(
        prepared / "plans.json", lambda d: d["configurations"]["3d_fullres"].update(spacing_mm=[3, 1.6, 1.6])
    )
    run_preprocess(prepared, PreprocessOptions(("3d_fullres",)), show_progress=False)
    after = work.read_configurations()
    for name, folder in shared.items():
        if name != "3d_fullres" and folder == shared["3d_fullres"]:
            assert name not in after
            with pytest.raises(Exception, match="not preprocessed"):
                work.data_dir(name)


def test_an_interrupted_redo_is_not_taken_for_a_finished_folder(prepared: Path) -> None:
    work = Workdir(prepared)
    _edit_json(
        prepared / "plans.json", lambda d: d["configurations"]["3d_fullres"].update(spacing_mm=[3, 1.6, 1.6])
    )
    plan = work.read_plans().configuration("3d_fullres")
    with pytest.raises(PreprocessError, match="preprocessed for another plan"):
        require_current_store(work, "3d_fullres", plan)


# ------------------------------------------------------------------------------------------- concurrency


def test_a_second_preprocess_on_one_work_directory_is_refused_clearly(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = Workdir(prepared)
    with folder_lock(work.preprocessed_dir, "preprocess"):
        with pytest.raises(FolderInUseError, match="preprocessed is in use by another autoseg process"):
            run_preprocess(prepared, show_progress=False)
        capsys.readouterr()
        assert main(["preprocess", "--workdir", str(prepared), "-q"]) == 1
        assert "in use by another autoseg process" in capsys.readouterr().err
    run_preprocess(prepared, show_progress=False)  # free again once the other run ends


# ------------------------------------------------------------------------------------------- messages


def test_evaluate_refuses_a_file_with_too_many_label_values_at_once(tmp_path: Path) -> None:
    values = np.arange(16**3, dtype=np.uint16).reshape(16, 16, 16) % (MAX_CLASSES_WITHOUT_LABELS + 45)
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_labels(values, geometry, tmp_path / "pred" / "a.nii.gz")
    write_labels(np.zeros_like(values), geometry, tmp_path / "ref" / "a.nii.gz")
    request = EvaluateRequest(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(
        EvaluationError, match=r"a\.nii\.gz: it and its reference hold 299 distinct label values"
    ):
        run_evaluate(request, show_progress=False)
    assert not (tmp_path / "pred" / "summary.json").exists()


def test_an_upper_case_nifti_ending_is_read_as_an_image_not_as_dicom(tmp_path: Path) -> None:
    written = tmp_path / "in" / "CASE_0000.nii.gz"
    write_labels(np.zeros((4, 4, 4), np.uint8), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), written)
    image = written.rename(written.with_name("CASE_0000.NII.GZ"))
    assert [(c.identifier, c.files) for c in find_input_cases(image.parent, 1)] == [("CASE", (image,))]
    assert [c.identifier for c in find_input_cases(image, 1)] == ["CASE"]


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "p", "r", "--tolerance", "nan"],
        ["evaluate", "p", "r", "--tolerance", "-1"],
        ["plan", "--planner", "cpu", "--cpu-gflops", "nan"],  # was an internal ValueError
        ["plan", "--planner", "cpu", "--cpu-gflops", "0"],  # was an internal ZeroDivisionError
        ["plan", "--planner", "default", "--gpu-memory", "-4"],
        ["plan", "--planner", "cpu", "--time-budget", "0"],
        ["train", "0", "--time-limit", "0"],  # was accepted, and trained anyway
    ],
)
def test_a_bad_number_on_the_command_line_is_a_usage_error(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main([*argv, "--workdir", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "must be positive" in err or "expected a positive number" in err


def test_a_file_given_as_the_dataset_folder_is_named_as_such(tiny_dataset: Path) -> None:
    with pytest.raises(UsageError, match=r"dataset\.json: not a folder; give the dataset folder"):
        resolve_dataset(
            str(tiny_dataset / "dataset.json"),
            catalogue_path=tiny_dataset / "none.json",
            data_root=None,
            cache_dir=tiny_dataset / "cache",
        )
