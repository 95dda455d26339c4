"""Model files holding several configurations: find_best_configuration's ensemble (or the named one) with its
post-processing, reproduced exactly by ``predict -m model.zip``; a cascade packed with its previous stage;
format 1 files still load."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_case

from autoseg.cli.main import main
from autoseg.errors import ModelError
from autoseg.inference.model_file import ensemble_choice, ensemble_postprocessing, export_model, load_model
from autoseg.io import read_labels, read_probabilities, write_image
from autoseg.network import build_network
from autoseg.postprocessing.steps import Postprocessing, PostprocessingStep, save_postprocessing
from autoseg.training.checkpoint import save_checkpoint
from autoseg.workdir import Workdir

ENSEMBLE = ["2d", "3d_fullres"]


@pytest.fixture(scope="module")
def chosen_workdir(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained work directory with post-processing chosen for 2d and for the 2d+3d_fullres ensemble."""
    workdir = tmp_path_factory.mktemp("chosen") / "work"
    shutil.copytree(trained_workdir, workdir)
    work = Workdir(workdir)
    keep = Postprocessing((PostprocessingStep("keep_largest_component", "foreground"),))
    remove = Postprocessing((PostprocessingStep("remove_small_components", (1,), min_volume_mm3=5.0),))
    save_postprocessing(keep, work.postprocessing_path(ENSEMBLE))
    save_postprocessing(remove, work.postprocessing_path(["2d"]))
    return workdir


def _choose(workdir: Path, members: list[str]) -> None:
    data = {"configuration": members[0], "ensemble": None} if len(members) == 1 else {"ensemble": members}
    Workdir(workdir).write_best_configuration(data, "table")


def _predict(inputs: Path, out: Path, model: Path, *extra: str) -> dict[str, object]:
    argv = ["predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "-q", "--precision", "float32"]
    assert main([*argv, "--save-probabilities", *extra]) == 0
    record: dict[str, object] = json.loads((out / "predict.json").read_text())
    return record


@pytest.mark.parametrize("members", [ENSEMBLE, ["2d"]], ids=["ensemble", "single"])
def test_the_file_reproduces_the_work_directory_exactly(
    chosen_workdir: Path, tmp_path: Path, rng: np.random.Generator, members: list[str]
) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(chosen_workdir, workdir)
    _choose(workdir, members)
    model = tmp_path / "model.zip"
    assert main(["export-model", str(model), "--workdir", str(workdir), "-q"]) == 0
    with zipfile.ZipFile(model) as archive:
        manifest = json.loads(archive.read("autoseg_model.json"))
    assert manifest["format_version"] == 2 and manifest["ensemble"] == members
    folds = {name: c["folds"] for name, c in manifest["configurations"].items()}
    assert folds == {name: ["0", "1"] for name in members}
    expected = ["2d", "2d+3d_fullres"] if len(members) > 1 else ["2d"]
    assert sorted(manifest["postprocessing"]) == expected
    for index in range(2):
        image, _, geometry = tiny_case(rng, shape=(10, 18, 14))
        write_image(image[0], geometry, tmp_path / "in" / f"case{index}_0000.nii.gz")
    from_workdir = _predict(tmp_path / "in", tmp_path / "a", workdir)
    from_file = _predict(tmp_path / "in", tmp_path / "b", model)
    assert from_workdir["configurations"] == from_file["configurations"] == members
    assert from_workdir["postprocessing"] == from_file["postprocessing"] != []
    for index in range(2):
        a, _ = read_labels(tmp_path / "a" / f"case{index}.nii.gz")
        b, _ = read_labels(tmp_path / "b" / f"case{index}.nii.gz")
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(
            read_probabilities(tmp_path / "a" / f"case{index}_probabilities.npz"),
            read_probabilities(tmp_path / "b" / f"case{index}_probabilities.npz"),
        )
    assert ensemble_choice(model) == ensemble_choice(workdir) == members
    assert ensemble_postprocessing(model, members) == ensemble_postprocessing(workdir, members)


def test_named_configurations_and_any_one_of_them(trained_workdir: Path, tmp_path: Path) -> None:
    """``-c A -c B`` packs that ensemble; ``load_model(file, configuration=...)`` returns either member."""
    out = tmp_path / "two.zip"
    argv = ["export-model", str(out), "--workdir", str(trained_workdir), "-c", "3d_fullres", "-c", "2d", "-q"]
    assert main([*argv, "-f", "1"]) == 0
    assert ensemble_choice(out) == ["3d_fullres", "2d"]
    for name in ("2d", "3d_fullres"):
        packed, local = load_model(out, configuration=name), load_model(trained_workdir, configuration=name)
        assert packed.configuration == name and packed.folds == ("1",)
        for key, tensor in local.weights["1"].items():
            assert torch.equal(packed.weights["1"][key], tensor)
    assert load_model(out).configuration == "3d_fullres"  # no single member: 3d_fullres, as a work directory
    assert ensemble_postprocessing(out, ["2d", "3d_fullres"]) is None
    with pytest.raises(ModelError, match=r"holds configuration\(s\) 3d_fullres, 2d, not 3d_lowres"):
        load_model(out, configuration="3d_lowres")
    with zipfile.ZipFile(out) as archive:
        assert sorted(n for n in archive.namelist() if n.startswith("folds/")) == [
            "folds/2d/fold_1.pt",
            "folds/3d_fullres/fold_1.pt",
        ]


def test_an_ensemble_without_chosen_post_processing_says_so(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Predicting with an ensemble nobody chose post-processing for (``-c A B`` on a work directory or a
    file exported with other members) warns, naming the ensemble, instead of silently skipping it."""
    image, _, geometry = tiny_case(rng, shape=(10, 18, 14))
    write_image(image[0], geometry, tmp_path / "in" / "case0_0000.nii.gz")
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(trained_workdir)]
    assert main([*argv, "-c", "3d_fullres", "2d", "-f", "1", "--precision", "float32", "-q"]) == 0
    assert "no post-processing was chosen for the ensemble 3d_fullres + 2d" in capsys.readouterr().err
    assert main([*argv, "-c", "2d", "-f", "1", "--precision", "float32", "-q"]) == 0
    assert "no post-processing was chosen" not in capsys.readouterr().err  # one configuration: nothing joint


def cascade_workdir(trained_workdir: Path, root: Path) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """A work directory planned with 3d_lowres -> 3d_cascade_fullres, each with fold 0 of random weights."""
    workdir = root / "cascade"
    work = Workdir(workdir)
    work.root.mkdir(parents=True)
    plans = Workdir(trained_workdir).read_plans()
    full = plans.configuration("3d_fullres")
    configurations = {"3d_lowres": full, "3d_cascade_fullres": replace(full, previous_stage="3d_lowres")}
    planned = replace(plans, configurations=configurations)
    work.write_plans(planned)
    generator = torch.Generator().manual_seed(0)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for name in configurations:
        network = build_network(full.network, planned.input_channels(name), plans.num_outputs)
        state = {k: torch.randn(v.shape, generator=generator) for k, v in network.state_dict().items()}
        save_checkpoint({"network": state}, work.run(name, "0").checkpoint("final"))
        weights[name] = state
    return workdir, weights


def test_a_cascade_stage_brings_its_previous_stage(trained_workdir: Path, tmp_path: Path) -> None:
    workdir, weights = cascade_workdir(trained_workdir, tmp_path)
    out = export_model(workdir, tmp_path / "cascade.zip", configuration="3d_cascade_fullres")
    assert ensemble_choice(out) == ["3d_cascade_fullres"]
    assert load_model(out).configuration == "3d_cascade_fullres"
    for name in ("3d_lowres", "3d_cascade_fullres"):
        for source in (workdir, out):  # the cascade's first stage, from a work directory or a model file
            model = load_model(source, configuration=name, folds=["0"])
            assert model.configuration == name and model.folds == ("0",)
            assert all(torch.equal(model.weights["0"][k], v) for k, v in weights[name].items())
    assert load_model(out).plans == Workdir(workdir).read_plans()


def _legacy_file(workdir: Path, path: Path) -> Path:
    """A model file in format 1's layout (one configuration, ``folds/fold_<k>.pt``, ``postprocessing.json``),
    built by hand as the exporter before format 2 wrote it."""
    work = Workdir(workdir)
    model = load_model(workdir, configuration="2d")
    entries = {
        "plans.json": json.dumps(model.plans.to_json()).encode(),
        "dataset.json": json.dumps({"name": "Tiny", "labels": model.plans.labels}).encode(),
        "postprocessing.json": work.postprocessing_path(["2d"]).read_bytes(),
    }
    for fold, state in model.weights.items():
        buffer = io.BytesIO()
        torch.save({"network": state}, buffer)
        entries[f"folds/fold_{fold}.pt"] = buffer.getvalue()
    manifest = {
        "format_version": 1,
        "configuration": "2d",
        "folds": ["0", "1"],
        "checkpoint": "final",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()},
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("autoseg_model.json", json.dumps(manifest))
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_format_1_files_still_load(chosen_workdir: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    old = _legacy_file(chosen_workdir, tmp_path / "old.zip")
    model, local = load_model(old), load_model(chosen_workdir, configuration="2d")
    assert model.configuration == "2d" and model.folds == ("0", "1")
    assert model.postprocessing == local.postprocessing is not None
    assert all(torch.equal(model.weights["1"][k], v) for k, v in local.weights["1"].items())
    assert load_model(old, folds=["1"]).folds == ("1",)
    assert ensemble_choice(old) == ["2d"]
    with pytest.raises(ModelError, match="not 3d_fullres"):
        load_model(old, configuration="3d_fullres")
    image, _, geometry = tiny_case(rng)
    write_image(image[0], geometry, tmp_path / "in" / "x_0000.nii.gz")
    old_record = _predict(tmp_path / "in", tmp_path / "old", old)
    new_record = _predict(tmp_path / "in", tmp_path / "new", chosen_workdir, "-c", "2d")
    assert old_record["postprocessing"] == new_record["postprocessing"]
    np.testing.assert_array_equal(
        read_probabilities(tmp_path / "old" / "x_probabilities.npz"),
        read_probabilities(tmp_path / "new" / "x_probabilities.npz"),
    )


def test_a_newer_format_and_a_bad_ensemble_are_refused(trained_workdir: Path, tmp_path: Path) -> None:
    good = export_model(trained_workdir, tmp_path / "good.zip", configuration="2d", folds=["0"])
    with zipfile.ZipFile(good) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    for change, message in (
        ({"format_version": 3}, "model format 3; this autoseg reads up to 2"),
        ({"ensemble": ["3d_fullres"]}, "names configurations not packed"),
        ({"network_format": "tflite"}, "network_format 'tflite'"),
    ):
        manifest = json.loads(entries["autoseg_model.json"]) | change
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(bad, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, json.dumps(manifest) if name == "autoseg_model.json" else data)
        with pytest.raises(ModelError, match=message) as caught:
            load_model(bad)
        assert str(bad) in caught.value.message
