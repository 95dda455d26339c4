"""``autoseg verify``: one test per problem, each on a tiny broken dataset built here."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from helpers import tiny_case, tree_digest, write_nnunet_dataset

from autoseg.cli.main import main
from autoseg.dataset.verify import verify_dataset
from autoseg.io import Geometry, read_array, write_image, write_labels

Breaker = Callable[[Path], object]


def _image(root: Path, case: str = "case_001", channel: int = 0) -> Path:
    return root / "imagesTr" / f"{case}_{channel:04d}.nii.gz"


def _label(root: Path, case: str = "case_001") -> Path:
    return root / "labelsTr" / f"{case}.nii.gz"


def _edit_json(root: Path, **changes: object) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def _rewrite_label(root: Path, function: Callable[[np.ndarray], np.ndarray]) -> None:
    array, geometry = read_array(_label(root))
    write_image(function(array), geometry, _label(root))


def _rewrite_label_geometry(root: Path, **changes: Any) -> None:
    array, geometry = read_array(_label(root))
    write_image(array, dataclasses.replace(geometry, **changes), _label(root))


def _nan_image(root: Path) -> None:
    array, geometry = read_array(_image(root))
    array = array.astype(np.float32)
    array[2, 3, 4] = np.nan
    array[1, 1, 1] = np.inf
    write_image(array, geometry, _image(root))


def _four_d_image(root: Path) -> None:
    nib.save(
        nib.Nifti1Image(np.zeros((16, 16, 12, 2), np.float32), np.diag([0.8, 0.8, 3.0, 1.0])), _image(root)
    )


def _extra_channel(root: Path) -> None:
    write_image(
        np.zeros((12, 16, 16), np.int16), Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0)), _image(root, channel=1)
    )


def _msd_escape(root: Path) -> None:
    _edit_json(root, channel_names=None)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["channel_names"]
    meta["modality"] = {"0": "CT"}
    meta["labels"] = {"0": "background", "1": "organ", "2": "core"}
    meta["training"] = [
        {"image": f"./imagesTr/case_00{i}_0000.nii.gz", "label": f"./labelsTr/case_00{i}.nii.gz"}
        for i in range(4)
    ]
    meta["training"][3] = {"image": "../outside.nii.gz", "label": "/etc/passwd"}
    (root / "dataset.json").write_text(json.dumps(meta))


def _duplicate_identifier(root: Path) -> None:
    listing = {
        f"case_00{i}": {
            "images": [f"imagesTr/case_00{i}_0000.nii.gz"],
            "label": f"labelsTr/case_00{i}.nii.gz",
        }
        for i in range(4)
    }
    text = json.dumps(
        {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "organ": 1, "core": 2},
            "numTraining": 4,
            "file_ending": ".nii.gz",
            "dataset": listing,
        }
    )
    entry = '"case_001": {"images": ["imagesTr/case_002_0000.nii.gz"], "label": "labelsTr/case_002.nii.gz"}'
    (root / "dataset.json").write_text(text.replace('"case_003":', entry + ', "case_003":'))


# (what breaks the dataset, a regex the error line must match, the file the error must name)
ERRORS: dict[str, tuple[Breaker, str, Callable[[Path], Path]]] = {
    "missing label": (lambda r: _label(r).unlink(), "missing label file of case 'case_001'", _label),
    "missing channel": (
        lambda r: _edit_json(r, channel_names={"0": "CT", "1": "PET"}),
        "missing channel 1 file of case 'case_001'",
        lambda r: _image(r, channel=1),
    ),
    "corrupt file": (
        lambda r: _image(r).write_bytes(_image(r).read_bytes()[:100]),
        "unreadable or corrupt",
        _image,
    ),
    "shape mismatch": (
        lambda r: _rewrite_label(r, lambda a: a[:-1]),
        r"shape \(11, 16, 16\) differs",
        _label,
    ),
    "spacing mismatch": (
        lambda r: _rewrite_label_geometry(r, spacing_mm=(2.0, 0.8, 0.8)),
        "geometry differs .*spacing",
        _label,
    ),
    "origin mismatch": (
        lambda r: _rewrite_label_geometry(r, origin_mm=(0.0, 5.0, 0.0)),
        "geometry differs .*origin",
        _label,
    ),
    "direction mismatch": (
        lambda r: _rewrite_label_geometry(r, direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)),
        "geometry differs .*direction",
        _label,
    ),
    "undeclared label": (
        lambda r: _rewrite_label(r, lambda a: np.where(a == 2, 7, a).astype(np.uint8)),
        r"label value\(s\) \[7\] not declared",
        _label,
    ),
    "non-integer label": (
        lambda r: _rewrite_label(r, lambda a: a.astype(np.float32) * 0.5),
        r"non-integer values \(e\.g\. 0\.5\)",
        _label,
    ),
    "NaN image": (_nan_image, r"2 NaN/Inf voxel\(s\)", _image),
    "4D image": (_four_d_image, "is 4D .*expected a 3D volume", _image),
    "numTraining": (
        lambda r: _edit_json(r, numTraining=5),
        "numTraining is 5 but 4 training case",
        lambda r: r / "dataset.json",
    ),
    "duplicate identifier": (
        _duplicate_identifier,
        "key 'case_001' appears more than once",
        lambda r: r / "dataset.json",
    ),
    "escaping path": (
        _msd_escape,
        r"path '\.\./outside\.nii\.gz' escapes the dataset folder",
        lambda r: r / "dataset.json",
    ),
    "undeclared channel": (_extra_channel, "channel 1 is not declared", lambda r: _image(r, channel=1)),
}


@pytest.mark.parametrize("problem", sorted(ERRORS))
def test_each_problem_is_an_error_naming_its_file(
    tiny_dataset: Path, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    breaker, pattern, culprit = ERRORS[problem]
    breaker(tiny_dataset)
    before = tree_digest(tiny_dataset)
    report = verify_dataset(tiny_dataset, show_progress=False)
    matching = [p for p in report.errors if p.path == culprit(tiny_dataset).resolve()]
    assert matching, f"no error names {culprit(tiny_dataset)}: {report.lines()}"
    assert any(re.search(pattern, p.message) for p in matching), report.lines()
    assert main(["verify", str(tiny_dataset), "-q"]) == 1
    out = capsys.readouterr().out
    assert str(culprit(tiny_dataset).resolve()) in out
    assert tree_digest(tiny_dataset) == before, "verify must never modify the input"


def test_escaping_absolute_path_is_reported_too(tiny_dataset: Path) -> None:
    _msd_escape(tiny_dataset)
    messages = [p.message for p in verify_dataset(tiny_dataset, show_progress=False).errors]
    assert any("'/etc/passwd' escapes" in m for m in messages)


def test_clean_dataset_passes_and_is_untouched(
    tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(tiny_dataset)
    report = verify_dataset(tiny_dataset, show_progress=False)
    assert report.ok, report.lines()
    assert report.cases_checked == 4
    assert main(["verify", str(tiny_dataset), "-q"]) == 0
    assert "4 case(s) checked, 0 error(s)" in capsys.readouterr().out
    assert tree_digest(tiny_dataset) == before


def test_all_problems_are_reported_at_once(tiny_dataset: Path) -> None:
    _label(tiny_dataset, "case_000").unlink()
    _nan_image(tiny_dataset)
    _edit_json(tiny_dataset, numTraining=9)
    report = verify_dataset(tiny_dataset, num_workers=2, show_progress=False)
    text = "\n".join(report.lines())
    assert "missing label file of case 'case_000'" in text
    assert "NaN/Inf" in text
    assert "numTraining is 9 but 4" in text
    assert len(report.errors) == 3


def test_warnings_do_not_fail(tmp_path: Path, rng: np.random.Generator) -> None:
    cases = {}
    for i in range(4):
        image, labels, _ = tiny_case(rng)
        if i > 0:
            labels[labels == 2] = 1  # class 2 only in one case
        dtype = np.int16 if i % 2 else np.float32
        image = image * 1000.0 if i == 2 else image  # one case on another intensity scale
        cases[f"c{i}"] = (image.round().astype(dtype), labels, Geometry((5.0, 0.7, 0.7), (0.0, 0.0, 0.0)))
    root = write_nnunet_dataset(tmp_path / "warn", cases)
    float_label = root / "labelsTr" / "c0.nii.gz"
    array, geometry = read_array(float_label)
    write_image(array.astype(np.float32), geometry, float_label)
    report = verify_dataset(root, show_progress=False)
    assert report.ok, report.lines()
    text = "\n".join(p.message for p in report.warnings)
    assert "class 'core' (2) is present in only 1 of 4" in text
    assert "extreme anisotropy" in text
    assert "mixed image dtypes" in text
    assert "stored as float32; its values are integers" in text
    assert "channel 0 (CT): the largest intensity ranges from" in text
    assert main(["verify", str(root), "-q"]) == 0


def test_mixed_orientation_is_a_warning(tiny_dataset: Path) -> None:
    for name in ("case_000",):
        flipped = Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0), (1, 0, 0, 0, -1, 0, 0, 0, -1))
        for path, is_label in ((_image(tiny_dataset, name), False), (_label(tiny_dataset, name), True)):
            array, _ = read_array(path)
            if is_label:
                write_labels(array.astype(np.uint8), flipped, path)
            else:
                write_image(array, flipped, path)
    report = verify_dataset(tiny_dataset, show_progress=False)
    assert report.ok
    assert any("mixed orientations" in p.message for p in report.warnings)


def test_missing_dataset_json_and_bad_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty"), "-q"]) == 1
    assert "missing dataset.json" in capsys.readouterr().out
    root = tmp_path / "bad"
    root.mkdir()
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"organ": 1, "x": [1, "a"]}, '
        '"numTraining": 0, "file_ending": ".nii.gz"}'
    )
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    lines = verify_dataset(root, show_progress=False).lines()  # nnU-Net regions (list values) are read
    assert any("region 'x' is [1, 'a']; expected label values" in line for line in lines)
    assert any("background as value 0" in line for line in lines)


def test_unknown_dataset_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "nowhere"), "-q"]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
