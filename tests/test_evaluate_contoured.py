"""``autoseg evaluate`` on partly contoured references: a structure a case never contoured is not scored there
(``--contoured FILE``, or the ``"annotated"`` of the dataset.json given with ``--labels``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli.main import main
from autoseg.errors import EvaluationError
from autoseg.evaluation.stage import EvaluateRequest, read_contoured, run_evaluate
from autoseg.io import Geometry, write_labels, write_masks

GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
LABELS = {"background": 0, "GTV": 1, "Parotid_L": 2}


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """Cases a and b: both predicted exactly, except that a's reference has no Parotid_L (never drawn) while
    its prediction has one."""
    for case in ("a", "b"):
        reference = np.zeros((8, 8, 8), np.uint8)
        reference[1:4, 1:4, 1:4] = 1
        reference[5:7, 5:7, 5:7] = 2
        prediction = reference.copy()
        if case == "a":
            reference[reference == 2] = 0
        write_labels(prediction, GEOMETRY, tmp_path / "pred" / f"{case}.nii.gz")
        write_labels(reference, GEOMETRY, tmp_path / "ref" / f"{case}.nii.gz")
    return tmp_path / "pred", tmp_path / "ref"


def test_a_structure_a_case_never_contoured_is_not_scored(tmp_path: Path) -> None:
    prediction, reference = _folders(tmp_path)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": LABELS}))
    drawn = run_evaluate(EvaluateRequest(prediction, reference, tmp_path / "o1", labels), show_progress=False)
    assert drawn.per_class[2]["dice"].mean == 0.5  # as drawn, a's parotid is a false positive
    contoured = tmp_path / "contoured.json"
    contoured.write_text(json.dumps({"a": ["GTV"]}))
    request = EvaluateRequest(prediction, reference, tmp_path / "o2", labels, contoured_file=contoured)
    summary = run_evaluate(request, show_progress=False)
    assert math.isnan(summary.cases["a"][2].dice) and summary.cases["a"][1].dice == 1.0
    assert summary.per_class[2]["dice"].mean == 1.0
    by_value = tmp_path / "values.json"  # label values work without names
    by_value.write_text(json.dumps({"a": [1]}))
    assert read_contoured(by_value, None) == {"a": (1,)}
    argv = ["evaluate", str(prediction), str(reference), "--labels", str(labels)]
    argv += ["--contoured", str(contoured)]
    assert main([*argv, "-o", str(tmp_path / "o3"), "-q"]) == 0
    saved = json.loads((tmp_path / "o3" / "summary.json").read_text())
    assert "a" in saved["cases"]


def test_the_labels_dataset_json_annotated_is_read(tmp_path: Path) -> None:
    """A multi-label dataset.json (convert-dicom's layout) with "annotated": 4D references scored per
    structure, the unannotated one left out."""
    for case in ("a", "b"):
        masks = np.zeros((2, 8, 8, 8), np.uint8)
        masks[0, 1:4, 1:4, 1:4] = 1
        masks[1, 5:7, 5:7, 5:7] = 1
        write_masks(masks, GEOMETRY, tmp_path / "pred" / f"{case}.nii.gz")
        if case == "a":
            masks[1] = 0
        write_masks(masks, GEOMETRY, tmp_path / "ref" / f"{case}.nii.gz")
    meta = tmp_path / "dataset.json"
    meta.write_text(json.dumps({"structures": ["GTV", "Parotid_L"], "annotated": {"a": ["GTV"]}}))
    request = EvaluateRequest(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", meta)
    summary = run_evaluate(request, show_progress=False)
    assert summary.labels == {1: "GTV", 2: "Parotid_L"}
    assert math.isnan(summary.cases["a"][2].dice) and summary.per_class[2]["dice"].mean == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [({"a": ["Lung_L"]}, "lists 'Lung_L', not a structure (GTV, Parotid_L)"), ({"a": "GTV"}, "must list")],
)
def test_a_bad_contoured_file_is_one_clear_error(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "contoured.json"
    path.write_text(json.dumps(content))
    with pytest.raises(EvaluationError, match=re.escape(message)) as caught:
        read_contoured(path, {1: "GTV", 2: "Parotid_L"})
    assert str(path) in str(caught.value)
