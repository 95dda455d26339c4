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


def test_region_model_best_configuration_postprocessing_report_and_instances(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Nested GTV in CTV in PTV, two configurations: find_best_configuration averages the sigmoids and
    thresholds each structure for the ensemble, scores per structure against the 4D references, writes the
    training reference and post-processing per structure; predict then writes the report and a 4D instance
    map for the region model."""
    from helpers import plan_and_preprocess_argv, tiny_train_config
    from test_regions import GEOMETRY, STRUCTURES, nested_case, write_multi_label_dataset

    from autoseg.io import read_array, read_probabilities, read_target
    from autoseg.training import train_fold
    from autoseg.workdir import PredictionFolder

    dataset = write_multi_label_dataset(tmp_path / "Dataset005_Nested", rng)
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "2d", "3d_fullres")) == 0
    for configuration in ("2d", "3d_fullres"):
        train_fold(workdir, tiny_train_config(configuration=configuration), show_progress=False)
    assert main(["find_best_configuration", "--workdir", str(workdir), "-q"]) == 0
    work = Workdir(workdir)
    result = json.loads((workdir / "best_configuration.json").read_text())
    assert sorted(c["name"] for c in result["candidates"]) == ["2d", "2d+3d_fullres", "3d_fullres"]
    assert all(set(c["dice_per_class"]) == set(STRUCTURES) for c in result["candidates"])
    members = [PredictionFolder(work.run(c, "all").validation_dir) for c in ("2d", "3d_fullres")]
    first, second = (read_probabilities(m.probabilities_path("case_000")) for m in members)
    mean = (first + second) / 2
    ensemble, _ = read_target(work.ensemble_cross_validation(("2d", "3d_fullres")).labels_path("case_000"))
    np.testing.assert_array_equal(ensemble, (mean >= 0.5).astype(np.uint8))  # per structure, not argmax
    postprocessing = json.loads(Path(result["postprocessing"]).read_text())
    tried = [c["step"]["labels"] for c in postprocessing["evidence"]["candidates"]]
    assert [1] in tried and [2] in tried and [3] in tried  # a candidate per structure
    assert set(postprocessing["evidence"]["dice_before"]) == {"1", "2", "3"}
    reference = json.loads((workdir / "training_reference.json").read_text())
    assert [c["name"] for c in reference["classes"]] == STRUCTURES
    image, _ = nested_case(rng)
    write_image(image[0], GEOMETRY, tmp_path / "in" / "x_0000.nii.gz")
    out = tmp_path / "out"
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(workdir), "-q"]
    assert main([*argv, "--report", "--instances", "all"]) == 0
    assert (out / "x_report.png").stat().st_size > 1000
    table = json.loads((out / "x_structures.json").read_text())["structures"]
    assert [row["name"] for row in table] == STRUCTURES
    instances = json.loads((out / "x_instances.json").read_text())
    assert instances["channels"] == STRUCTURES and set(instances["counts"]) == set(STRUCTURES)
    instance_map, _ = read_array(out / "x_instances.nii.gz")
    assert instance_map.shape == (3, 12, 16, 16)
    assert sorted({o["channel"] for o in instances["objects"]}) == sorted(
        {c for c in range(3) if instance_map[c].any()}
    )
