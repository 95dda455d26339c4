"""``find_best_configuration``: configurations and ensembles scored on cross-validation, post-processing
chosen for the winner, and predict following the choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_case

from autoseg.cli.main import main
from autoseg.io import write_image
from autoseg.workdir import Workdir


def test_configurations_and_their_ensemble_are_compared(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(trained_workdir, workdir)
    raw = trained_workdir.parent / "Dataset001_Tiny"
    raw.rename(raw.with_name("moved"))  # scored against the work directory's reference labels only
    try:
        assert main(["find_best_configuration", "--workdir", str(workdir), "-q"]) == 0
    finally:
        raw.with_name("moved").rename(raw)
    printed = capsys.readouterr().out
    for name in ("| 2d", "| 3d_fullres", "| 2d+3d_fullres"):
        assert name in printed
    result = json.loads((workdir / "best_configuration.json").read_text())
    names = [c["name"] for c in result["candidates"]]
    assert sorted(names) == ["2d", "2d+3d_fullres", "3d_fullres"]
    assert all(c["cases"] == 2 for c in result["candidates"])  # folds 0 and 1 of 5 validate one case each
    best = max(result["candidates"], key=lambda c: c["mean_dice"] if c["mean_dice"] is not None else -1)
    chosen = Workdir(workdir).read_best_choice()
    assert chosen is not None and "+".join(chosen) == best["name"]
    assert Path(result["postprocessing"]).is_file()
    assert result["predict_command"].endswith(f"-c {' '.join(chosen)}")
    reference = json.loads((workdir / "training_reference.json").read_text())
    assert all(len(c["confidences"]) >= 1 for c in reference["classes"] if c["value"] in (1,))
    ensemble_cases = sorted((workdir / "ensembles" / "2d+3d_fullres" / "cross_validation").glob("*.nii.gz"))
    assert len(ensemble_cases) == 2
    # predict follows the choice when no -c is given
    image, _, geometry = tiny_case(rng)
    write_image(image[0], geometry, tmp_path / "in" / "x_0000.nii.gz")
    assert (
        main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(workdir), "-q"])
        == 0
    )
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert record["configurations"] == chosen


def test_nothing_trained_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["find_best_configuration", "--workdir", str(tmp_path), "-q"]) == 1
    assert "fingerprint.json" in capsys.readouterr().err
