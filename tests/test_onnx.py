"""``export-model --format onnx``: each fold's network as an ONNX graph in the model file, run by onnxruntime
through the same sliding window, mirroring and fold ensemble as the PyTorch networks."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_case
from test_model_file_ensemble import cascade_workdir

from autoseg.cli.main import main
from autoseg.errors import ModelError, UsageError
from autoseg.evaluation.metrics import dice_per_label
from autoseg.inference.ensemble import InferenceSettings, predict_probabilities
from autoseg.inference.model_file import export_model, load_model
from autoseg.io import read_labels, read_probabilities, write_image

pytest.importorskip("onnxruntime", reason="pip install 'autoseg[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'autoseg[onnx]'")


@pytest.fixture(scope="module")
def models(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same two configurations (fold 0 each) exported as PyTorch weights and as ONNX graphs."""
    root = tmp_path_factory.mktemp("onnx")
    argv = [
        "export-model",
        "--workdir",
        str(trained_workdir),
        "-c",
        "3d_fullres",
        "-c",
        "2d",
        "-f",
        "0",
        "-q",
    ]
    assert main([*argv[:1], str(root / "torch.zip"), *argv[1:]]) == 0
    assert main([*argv[:1], str(root / "onnx.zip"), *argv[1:], "--format", "onnx"]) == 0
    return root / "torch.zip", root / "onnx.zip"


def test_the_file_holds_onnx_graphs_with_their_opset(models: tuple[Path, Path]) -> None:
    _, onnx_zip = models
    with zipfile.ZipFile(onnx_zip) as archive:
        manifest = json.loads(archive.read("autoseg_model.json"))
        names = set(archive.namelist())
    assert manifest["network_format"] == "onnx"
    assert {n for n in names if n.startswith("folds/")} == {
        "folds/3d_fullres/fold_0.onnx",
        "folds/2d/fold_0.onnx",
    }
    for name, patch in (("3d_fullres", 3), ("2d", 2)):
        entry = manifest["configurations"][name]
        assert entry["onnx_opset"] == 20 and entry["folds"] == ["0"]
        assert entry["input_shape"][0] is None and len(entry["input_shape"]) == 2 + patch  # batch dynamic
    assert {"plans.json", "dataset.json", "training_reference.json"} <= names
    model = load_model(onnx_zip, configuration="2d")
    assert model.network_format == "onnx" and model.folds == ("0",) and model.weights == {}


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_onnx_networks_match_pytorch_in_the_sliding_window(
    models: tuple[Path, Path], rng: np.random.Generator, configuration: str
) -> None:
    """Windows of any batch size, and the whole sliding window with mirroring, agree within float error."""
    reference, exported = (load_model(path, configuration=configuration) for path in models)
    plan = reference.plans.configuration(configuration)
    (network,), (graph,) = reference.networks("cpu"), exported.networks("cpu")
    for batch in (1, 3):
        windows = torch.from_numpy(rng.normal(size=(batch, 1, *plan.patch_size)).astype(np.float32))
        with torch.inference_mode():
            expected, got = network(windows), graph(windows)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-4
    image = rng.normal(size=(1, 10, 18, 16)).astype(np.float32)
    settings = InferenceSettings(step=0.5, mirror_axes=tuple(range(plan.dims)), precision="float32")
    classes = len(reference.plans.labels)
    first = predict_probabilities([network], image, plan.patch_size, classes, settings)
    second = predict_probabilities([graph], image, plan.patch_size, classes, settings)
    assert first.shape == (classes, *image.shape[1:])
    assert float(np.abs(first - second).max()) < 1e-4
    with pytest.raises(ValueError, match=f"give {classes} output channels, while {classes - 1} were asked"):
        predict_probabilities([graph], image, plan.patch_size, classes - 1, settings)


def test_predict_through_onnxruntime_matches_pytorch(
    models: tuple[Path, Path], tmp_path: Path, rng: np.random.Generator
) -> None:
    torch_zip, onnx_zip = models
    for index in range(2):
        image, _, geometry = tiny_case(rng, shape=(10, 18, 14))
        write_image(image[0], geometry, tmp_path / "in" / f"case{index}_0000.nii.gz")
    records = {}
    for name, model in (("torch", torch_zip), ("onnx", onnx_zip)):
        argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / name), "-m", str(model), "-q"]
        # float32 on both sides: onnxruntime computes in float32, while PyTorch's `auto` is bfloat16 on a CPU
        # with native bfloat16 (differences of 2e-3 and more, seen on an AMX machine)
        assert main([*argv, "--save-probabilities", "--precision", "float32"]) == 0
        records[name] = json.loads((tmp_path / name / "predict.json").read_text())
    assert records["onnx"]["configurations"] == records["torch"]["configurations"] == ["3d_fullres", "2d"]
    assert records["onnx"]["settings"]["precision"] == "float32"
    for index in range(2):
        a, _ = read_labels(tmp_path / "torch" / f"case{index}.nii.gz")
        b, _ = read_labels(tmp_path / "onnx" / f"case{index}.nii.gz")
        dice = dice_per_label(b, a, [1])[1]
        assert np.isnan(dice) or dice >= 1 - 1e-3  # NaN: both empty
        assert np.mean(a == b) >= 1 - 1e-3
        difference = np.abs(
            read_probabilities(tmp_path / "torch" / f"case{index}_probabilities.npz").astype(np.float32)
            - read_probabilities(tmp_path / "onnx" / f"case{index}_probabilities.npz").astype(np.float32)
        )
        assert float(difference.max()) < 2e-3  # float16 files: one step near 1 is 1e-3


def test_missing_onnxruntime_is_a_clear_error(
    models: tuple[Path, Path],
    trained_workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, onnx_zip = models
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(
        ModelError, match=r"needs onnxruntime, which is not installed; pip install 'autoseg\[onnx\]'"
    ):
        load_model(onnx_zip, configuration="2d").networks("cpu")
    image, _, geometry = tiny_case(np.random.default_rng(0))
    write_image(image[0], geometry, tmp_path / "in" / "x_0000.nii.gz")
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(onnx_zip), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "onnx.zip (3d_fullres) fold 0: an ONNX model needs onnxruntime" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(UsageError, match="exporting to ONNX needs onnxscript"):
        export_model(trained_workdir, tmp_path / "x.zip", configuration="2d", network_format="onnx")
    assert not (tmp_path / "x.zip").exists()


def test_a_graph_that_is_not_onnx_is_refused(models: tuple[Path, Path], tmp_path: Path) -> None:
    _, onnx_zip = models
    with zipfile.ZipFile(onnx_zip) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(entries["autoseg_model.json"])
    entries["folds/2d/fold_0.onnx"] = b"\x08\x07garbage"
    manifest["files"]["folds/2d/fold_0.onnx"] = hashlib.sha256(entries["folds/2d/fold_0.onnx"]).hexdigest()
    entries["autoseg_model.json"] = json.dumps(manifest).encode()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(ModelError, match=r"bad\.zip \(2d\) fold 0: not a loadable ONNX graph"):
        load_model(bad, configuration="2d").networks("cpu")


def test_a_cascade_stage_is_exported_with_its_previous_stage(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """The cascade's networks take the image plus the previous stage's one-hot channels; both stages are
    packed as ONNX and agree with their PyTorch networks."""
    workdir, _ = cascade_workdir(trained_workdir, tmp_path)
    out = export_model(
        workdir, tmp_path / "cascade.zip", configuration="3d_cascade_fullres", network_format="onnx"
    )
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("autoseg_model.json"))
    plans = load_model(workdir, configuration="3d_lowres").plans
    for name in ("3d_cascade_fullres", "3d_lowres"):
        channels = plans.input_channels(name)
        assert manifest["configurations"][name]["input_shape"][1] == channels
        (network,), (graph,) = (load_model(s, configuration=name).networks("cpu") for s in (workdir, out))
        windows = torch.from_numpy(rng.normal(size=(2, channels, *plans.configuration(name).patch_size)))
        with torch.inference_mode():
            expected, got = network(windows.float()), graph(windows.float())
        scale = max(1.0, float(expected.abs().max()))  # random weights: logits in the hundreds
        assert float((got - expected).abs().max()) < 1e-5 * scale
    assert plans.input_channels("3d_cascade_fullres") > plans.input_channels("3d_lowres")
