"""Tests of autoseg.workdir: the work directory's paths and artifacts, and that it is self-contained after
preprocessing (the raw dataset may go)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import plan_and_preprocess_argv

from autoseg.cli.main import main
from autoseg.errors import WorkdirError
from autoseg.io import read_labels
from autoseg.workdir import Workdir


def test_paths_follow_the_documented_layout(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    assert work.plans_path == tmp_path / "plans.json"
    assert (
        work.run("3d_fullres", 2).checkpoint("final")
        == tmp_path / "trained/3d_fullres/fold_2/checkpoint_final.pt"
    )
    assert (
        work.run("2d", "all").validation.labels_path("a")
        == tmp_path / "trained/2d/fold_all/validation/a.nii.gz"
    )
    assert work.postprocessing_path(["2d"]) == tmp_path / "trained/2d/postprocessing.json"
    assert (
        work.postprocessing_path(["3d_fullres", "2d"])
        == tmp_path / "ensembles/2d+3d_fullres/postprocessing.json"
    )
    with pytest.raises(WorkdirError, match="checkpoint must be one of"):
        work.run("2d", 0).checkpoint("newest")


def test_malformed_artifacts_are_clear_errors(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    assert work.read_splits() is None and work.read_best_choice() is None and work.read_configurations() == {}
    work.splits_path.write_text(json.dumps({"train": []}))
    with pytest.raises(WorkdirError, match=r"splits\.json: expected a list"):
        work.read_splits()
    with pytest.raises(WorkdirError, match="3d_fullres is not preprocessed"):
        work.data_dir("3d_fullres")
    work.best_configuration_path.write_text("[1, 2]")
    with pytest.raises(WorkdirError, match="expected a JSON object"):
        work.read_best_choice()


def test_default_configuration_rule(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    assert work.default_configuration(["2d", "3d_fullres"]) == "3d_fullres"
    assert work.default_configuration(["2d"]) == "2d"
    for configuration in ("2d", "3d_lowres"):
        final = work.run(configuration, 0).checkpoint("final")
        final.parent.mkdir(parents=True)
        final.write_bytes(b"")
    with pytest.raises(WorkdirError, match="several configurations are trained"):
        work.default_configuration(["2d", "3d_fullres", "3d_lowres"])
    work.write_best_configuration({"configuration": "3d_lowres", "ensemble": None}, "table")
    assert work.default_configuration(["2d", "3d_fullres", "3d_lowres"]) == "3d_lowres"


@pytest.mark.slow
def test_the_raw_dataset_may_go_after_preprocessing(tiny_dataset: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(tiny_dataset, workdir, "3d_fullres")) == 0
    work = Workdir(workdir)
    for case in ("case_000", "case_003"):
        reference, _ = read_labels(work.reference_labels_path(case))
        original, _ = read_labels(tiny_dataset / "labelsTr" / f"{case}.nii.gz")
        assert (reference == original).all()
    image = tmp_path / "new_0000.nii.gz"
    shutil.copy(tiny_dataset / "imagesTr" / "case_001_0000.nii.gz", image)
    shutil.rmtree(tiny_dataset)  # everything after preprocessing reads the work directory only
    train = [
        "--epochs",
        "1",
        "--iters-per-epoch",
        "2",
        "--val-iters",
        "1",
        "--num-workers",
        "0",
        "--device",
        "cpu",
    ]
    for fold in ("0", "1"):
        assert main(["train", fold, "--workdir", str(workdir), "-q", *train]) == 0
        assert work.run("3d_fullres", fold).read_validation_summary()["mean_dice_per_class"]
    assert main(["find_best_configuration", "--workdir", str(workdir), "-q"]) == 0
    assert work.read_best_choice() == ["3d_fullres"]
    out = tmp_path / "predicted"
    assert main(["predict", "-i", str(image), "-o", str(out), "--workdir", str(workdir), "-q"]) == 0
    assert (out / "new.nii.gz").is_file()
    assert main(["export-model", str(tmp_path / "model.zip"), "--workdir", str(workdir), "-q"]) == 0
