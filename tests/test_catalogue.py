"""The dataset catalogue: names resolve to folders, synthetic entries are generated once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.cli.main import main
from autoseg.dataset.catalogue import (
    default_catalogue_path,
    load_catalogue,
    resolve_dataset,
    synthetic_folder,
)
from autoseg.dataset.layout import load_dataset
from autoseg.errors import CatalogueError, UsageError

TINY_GENERATOR = {
    "cases": 2,
    "shape": [16, 24, 24],
    "spacing_mm": [2.0, 1.0, 1.0],
    "classes": 2,
    "channels": 1,
    "modality": "MR",
    "seed": 5,
    "file_ending": ".nii.gz",
}


def _catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "datasets.json"
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "datasets": {
                    "tiny-synth": {"kind": "synthetic", "description": "tiny", "generator": TINY_GENERATOR},
                    "realset": {"kind": "real", "layout": "nnunet-v2", "location": "realset"},
                    "dicoms": {"kind": "real", "layout": "dicom", "location": "dicoms"},
                },
            }
        )
    )
    return path


def test_project_catalogue_is_valid_and_names_the_shared_data() -> None:
    catalogue = load_catalogue(default_catalogue_path())
    assert {
        "synthetic-demo",
        "synthetic-ct",
        "synthetic-mr",
        "synthetic-ct-large",
        "hippocampus",
        "lung-ct-rtstruct",
    } <= set(catalogue.entries)
    for entry in catalogue.entries.values():
        assert entry.description
        assert "licence" in entry.details and "source" in entry.details
        if entry.kind == "real":
            assert entry.location and "modality" in entry.details and "labels" in entry.details
    large = catalogue.entry("synthetic-ct-large").generator
    assert large is not None and large.cases >= 20 and large.shape[1] >= 256


def test_synthetic_entry_is_generated_on_first_use(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path)
    folder = resolve_dataset(
        "tiny-synth",
        catalogue_path=catalogue,
        data_root=None,
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    assert folder == synthetic_folder(load_catalogue(catalogue).entry("tiny-synth"), tmp_path / "cache")
    assert len(load_dataset(folder).cases) == 2
    stamp = (folder / "dataset.json").stat().st_mtime_ns
    again = resolve_dataset(
        "tiny-synth",
        catalogue_path=catalogue,
        data_root=None,
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    assert again == folder and (folder / "dataset.json").stat().st_mtime_ns == stamp


def test_real_entry_resolves_under_the_data_root(tmp_path: Path, tiny_dataset: Path) -> None:
    catalogue = _catalogue(tmp_path)
    with pytest.raises(UsageError, match="does not exist; pass --data-root or set AUTOSEG_DATA"):
        resolve_dataset("realset", catalogue_path=catalogue, data_root=tmp_path / "data", cache_dir=tmp_path)
    (tmp_path / "data").mkdir()
    tiny_dataset.rename(tmp_path / "data" / "realset")
    assert (
        resolve_dataset("realset", catalogue_path=catalogue, data_root=tmp_path / "data", cache_dir=tmp_path)
        == (tmp_path / "data" / "realset").resolve()
    )
    (tmp_path / "data" / "dicoms").mkdir()
    with pytest.raises(UsageError, match="holds 'dicom' data, not a training dataset"):
        resolve_dataset("dicoms", catalogue_path=catalogue, data_root=tmp_path / "data", cache_dir=tmp_path)


def test_unknown_names_list_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = _catalogue(tmp_path)
    with pytest.raises(UsageError, match="known: dicoms, realset, tiny-synth"):
        resolve_dataset("nope", catalogue_path=catalogue, data_root=None, cache_dir=tmp_path)
    assert main(["verify", "nope", "--datasets-file", str(catalogue), "-q"]) == 2
    assert "neither a dataset folder nor a catalogue name" in capsys.readouterr().err


def test_malformed_catalogues_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "datasets.json"
    path.write_text(
        '{"schema_version": 1, "datasets": {"x": {"kind": "synthetic", "generator": {"classes": 99}}}}'
    )
    with pytest.raises(CatalogueError, match="entry 'x'"):
        load_catalogue(path)
    path.write_text("[]")
    with pytest.raises(CatalogueError, match="schema_version"):
        load_catalogue(path)
    with pytest.raises(CatalogueError, match="catalogue not found"):
        load_catalogue(tmp_path / "missing.json")


def test_cli_takes_catalogue_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = _catalogue(tmp_path)
    common = ["--datasets-file", str(catalogue), "--cache-dir", str(tmp_path / "cache"), "-q"]
    assert main(["verify", "tiny-synth", *common]) == 0
    assert main(["fingerprint", "tiny-synth", "--workdir", str(tmp_path / "w"), *common]) == 0
    assert (tmp_path / "w" / "fingerprint.json").is_file()


def test_real_hippocampus_by_name(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "hippocampus", "--data-root", str(data_root), "-q", "-np", "2"]) == 0
    out = capsys.readouterr().out
    assert "195 case(s) checked, 0 error(s)" in out
    assert "mixed image dtypes" in out
    assert "largest intensity ranges from" in out
    assert "hippocampus_243.nii.gz: label map is stored as float32" in out
