"""Model files: export, load, checksums, and refusal of anything that could run code or escape a folder."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from autoseg.cli.main import main
from autoseg.errors import ImageWriteError, ModelError
from autoseg.inference.model_archive import MANIFEST
from autoseg.inference.model_file import export_model, load_model
from autoseg.workdir import Workdir


def _rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """Copy a zip, replacing (or with ``None`` dropping) some entries; others keep their bytes."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name in change:
                data = change[name]
                if data is not None:
                    new.writestr(name, data)
            else:
                new.writestr(name, old.read(name))
        for name, data in change.items():
            if name not in old.namelist() and data is not None:
                new.writestr(name, data)


def test_export_then_load_gives_the_same_weights(trained_workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.zip"
    assert main(["export-model", str(out), "--workdir", str(trained_workdir), "-q"]) == 0
    exported = load_model(out)
    local = load_model(trained_workdir)
    assert exported.folds == local.folds == ("0", "1")
    assert exported.configuration == local.configuration == "3d_fullres"
    for fold in local.folds:
        for key, tensor in local.weights[fold].items():
            assert torch.equal(tensor, exported.weights[fold][key])
    assert exported.plans == local.plans
    manifest = json.loads(zipfile.ZipFile(out).read(MANIFEST))
    assert set(manifest["files"]) == {
        "plans.json",
        "dataset.json",
        "training_reference.json",
        "folds/3d_fullres/fold_0.pt",
        "folds/3d_fullres/fold_1.pt",
    }
    assert Workdir(trained_workdir).trained_configurations() == ["2d", "3d_fullres"]


def test_chosen_folds_only(trained_workdir: Path, tmp_path: Path) -> None:
    out = export_model(trained_workdir, tmp_path / "one.zip", folds=["1"])
    assert load_model(out).folds == ("1",)
    with pytest.raises(ModelError, match="fold 3"):
        load_model(out, folds=["3"])
    with pytest.raises(ModelError, match="fold_7"):
        export_model(trained_workdir, tmp_path / "bad.zip", folds=["7"])
    assert not (tmp_path / "bad.zip").exists()


def test_a_failed_export_leaves_no_file(
    trained_workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = zipfile.ZipFile.writestr

    def fail_on_weights(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
        real(archive, name, data)
        if name.startswith("folds/"):
            raise OSError("No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_on_weights)
    with pytest.raises(ImageWriteError, match="No space left on device"):
        export_model(trained_workdir, tmp_path / "out" / "model.zip")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_modified_entry_fails_its_checksum(trained_workdir: Path, tmp_path: Path) -> None:
    good = export_model(trained_workdir, tmp_path / "good.zip")
    plans = json.loads(zipfile.ZipFile(good).read("plans.json"))
    plans["dataset_name"] = "tampered"
    _rewrite(good, tmp_path / "bad.zip", {"plans.json": json.dumps(plans).encode()})
    with pytest.raises(ModelError, match=r"checksum mismatch for plans\.json"):
        load_model(tmp_path / "bad.zip")


def test_only_the_chosen_folds_are_read_and_verified(trained_workdir: Path, tmp_path: Path) -> None:
    good = export_model(trained_workdir, tmp_path / "good.zip")
    _rewrite(good, tmp_path / "bad.zip", {"folds/3d_fullres/fold_1.pt": b"corrupted"})
    model = load_model(tmp_path / "bad.zip", folds=["0"])  # fold 1 is not read
    assert model.folds == ("0",) and set(model.weights) == {"0"}
    for folds in (None, ["1"], ["0", "1"]):
        with pytest.raises(ModelError, match=r"checksum mismatch for folds/3d_fullres/fold_1\.pt"):
            load_model(tmp_path / "bad.zip", folds=folds)
    assert load_model(tmp_path / "bad.zip", fold_limit=1).folds == ("0",)


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil", "folds/../../evil", "C:/evil"])
def test_entries_escaping_the_folder_are_refused(trained_workdir: Path, tmp_path: Path, name: str) -> None:
    good = export_model(trained_workdir, tmp_path / "good.zip")
    _rewrite(good, tmp_path / "bad.zip", {name: b"print('owned')"})
    with pytest.raises(ModelError, match="escape"):
        load_model(tmp_path / "bad.zip")


def test_links_and_unlisted_entries_are_refused(trained_workdir: Path, tmp_path: Path) -> None:
    good = export_model(trained_workdir, tmp_path / "good.zip")
    _rewrite(good, tmp_path / "extra.zip", {"notes.txt": b"hello"})
    with pytest.raises(ModelError, match=r"not in the manifest: notes\.txt"):
        load_model(tmp_path / "extra.zip")
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(tmp_path / "link.zip", "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info.filename))
        link = zipfile.ZipInfo("plans_link.json")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        new.writestr(link, "plans.json")
    with pytest.raises(ModelError, match="symbolic link"):
        load_model(tmp_path / "link.zip")


def test_pickled_weights_are_never_loaded(trained_workdir: Path, tmp_path: Path) -> None:
    """A fold file holding an arbitrary object (what a pickle exploit needs) is refused, even with a correct
    checksum in the manifest."""
    import hashlib
    import io

    good = export_model(trained_workdir, tmp_path / "good.zip")
    buffer = io.BytesIO()
    torch.save({"network": {"w": torch.zeros(1)}, "payload": Path("x")}, buffer)
    data = buffer.getvalue()
    manifest = json.loads(zipfile.ZipFile(good).read(MANIFEST))
    manifest["files"]["folds/3d_fullres/fold_0.pt"] = hashlib.sha256(data).hexdigest()
    _rewrite(
        good,
        tmp_path / "bad.zip",
        {"folds/3d_fullres/fold_0.pt": data, MANIFEST: json.dumps(manifest).encode()},
    )
    with pytest.raises(ModelError, match="weights only"):
        load_model(tmp_path / "bad.zip")


def test_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable model file"):
        load_model(tmp_path / "x.zip")
    with zipfile.ZipFile(tmp_path / "y.zip", "w") as archive:
        archive.writestr("plans.json", "{}")
    with pytest.raises(ModelError, match=r"no autoseg_model\.json"):
        load_model(tmp_path / "y.zip")
    with pytest.raises(ModelError, match="no such model"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"no plans\.json"):
        load_model(tmp_path)


def test_a_model_exported_with_schema_1_plans_still_loads(trained_workdir: Path, tmp_path: Path) -> None:
    good = export_model(trained_workdir, tmp_path / "good.zip")
    with zipfile.ZipFile(good) as archive:
        plans, manifest = json.loads(archive.read("plans.json")), json.loads(archive.read(MANIFEST))
    plans["schema_version"] = 1  # as written before the mirroring and channel records existed
    del plans["channels"]
    for config in plans["configurations"].values():
        del config["mirroring"]
    old = json.dumps(plans).encode()
    manifest["files"]["plans.json"] = hashlib.sha256(old).hexdigest()
    _rewrite(good, tmp_path / "old.zip", {"plans.json": old, MANIFEST: json.dumps(manifest).encode()})
    model = load_model(tmp_path / "old.zip")
    assert model.plans.configuration(model.configuration).mirroring.left_right  # trained with every axis
    assert [(c.name, c.modality, c.foreground_median) for c in model.plans.channels] == [("CT", "CT", None)]
