"""Reviewer report: training reference, structure table and flags, table files, and the PNG."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fingerprint
from matplotlib.figure import Figure

from autoseg.errors import ImageWriteError, UsageError
from autoseg.io import Geometry
from autoseg.report.figure import render_report
from autoseg.report.structures import (
    ClassReference,
    StructureRow,
    TrainingReference,
    structure_confidences,
    structure_table,
    write_structure_table,
)
from autoseg.report.views import intensity_window, slice_views

NAMES = {"background": 0, "liver": 1, "tumour": 2}
GEOMETRY = Geometry((2.0, 1.0, 0.5), (0.0, 0.0, 0.0))  # voxel = 1 mm³ = 0.001 ml
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def reference(liver_ml: tuple[float, ...] = (0.9, 1.0, 1.1)) -> TrainingReference:
    """Liver 0.9-1.1 ml in every case (1 part); tumour 0.01-0.05 ml in half of them (up to 3 parts)."""
    classes = (
        ClassReference(1, "liver", liver_ml, 1.0, 1),
        ClassReference(2, "tumour", (0.01, 0.05), 0.5, 3),
    )
    return TrainingReference(4, classes)


def usual_case() -> tuple[np.ndarray, np.ndarray]:
    """Labels (10, 20, 20) uint8: a 1000-voxel liver (1.0 ml), a 20-voxel tumour; confident probabilities."""
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[0:10, 0:10, 0:10] = 1
    labels[5:6, 15:19, 15:20] = 2
    probabilities = np.full((3, *labels.shape), 0.025, np.float32)
    for value in range(3):
        probabilities[value][labels == value] = 0.95
    return labels, probabilities


def flag_kinds(rows: Sequence[StructureRow]) -> dict[str, list[str]]:
    return {r.name: [f.kind for f in r.flags] for r in rows}


def test_reference_from_fingerprint_uses_each_case_spacing() -> None:
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)], [(10, 10, 10)] * 2, labels=NAMES)
    cases = list(fingerprint.cases)
    cases[1] = dataclasses.replace(cases[1], class_voxels={"1": 100}, component_sizes={"1": [60, 40]})
    cases[0] = dataclasses.replace(cases[0], component_sizes={"1": [100], "2": [100]})
    made = TrainingReference.from_fingerprint(dataclasses.replace(fingerprint, cases=tuple(cases)))
    liver, tumour = made.classes
    assert liver.volumes_ml == pytest.approx((0.1, 0.2))  # 100 voxels of 1 and of 2 mm³
    assert (liver.case_fraction, liver.max_components) == (1.0, 2)
    assert (tumour.volumes_ml, tumour.case_fraction, tumour.max_components) == ((0.1,), 0.5, 1)
    assert TrainingReference.from_json(json.loads(json.dumps(made.to_json()))) == made


def test_reference_without_component_sizes_does_not_guess_part_counts() -> None:
    made = TrainingReference.from_fingerprint(make_fingerprint([(1.0, 1.0, 1.0)], [(4, 4, 4)], labels=NAMES))
    assert [c.max_components for c in made.classes] == [None, None]


def test_usual_case_is_measured_and_not_flagged() -> None:
    labels, probabilities = usual_case()
    rows = structure_table(labels, probabilities, GEOMETRY, NAMES, reference())
    liver, tumour = rows
    assert (liver.voxels, liver.components) == (1000, 1)
    assert liver.volume_ml == pytest.approx(1.0)
    assert liver.mean_confidence == pytest.approx(0.95)
    assert liver.training_volume_ml == (0.9, 1.1)
    assert tumour.volume_ml == pytest.approx(0.02)
    assert flag_kinds(rows) == {"liver": [], "tumour": []}


def test_implausible_volume_and_low_confidence_are_flagged_with_reasons() -> None:
    labels, probabilities = usual_case()
    labels[:, 10:20, 0:10] = 1  # liver doubled to 2.0 ml, within 2 x training max 1.1 ml = 2.2 ml
    labels[:, 10:20, 10:14] = 1  # 2.4 ml: beyond it
    probabilities[1][labels == 1] = 0.95
    probabilities[2][labels == 2] = 0.6
    rows = structure_table(labels, probabilities, GEOMETRY, NAMES, reference())
    assert flag_kinds(rows) == {"liver": ["volume"], "tumour": ["confidence"]}
    assert rows[0].flags[0].reason == "2.40 ml > 2 x training max 1.10 ml"
    assert rows[1].flags[0].reason == "mean confidence 0.60 < 0.80"


def test_small_volume_missing_structure_and_extra_parts_are_flagged() -> None:
    labels, probabilities = usual_case()
    labels[labels == 1] = 0
    labels[0, 0:2, 0:2] = 1  # liver of 0.004 ml, far below 0.5 x 0.9 ml
    rows = structure_table(labels, probabilities, GEOMETRY, NAMES, reference())
    assert flag_kinds(rows)["liver"] == ["volume"]
    labels[labels == 1] = 0
    labels[7, 0:18:2, 0:2] = 2  # 9 separate tumour parts; training has at most 3
    kinds = flag_kinds(structure_table(labels, None, GEOMETRY, NAMES, reference()))
    assert kinds == {"liver": ["missing"], "tumour": ["components"]}


def test_confidence_below_the_training_distribution_is_flagged_when_known() -> None:
    labels, probabilities = usual_case()
    probabilities[1][labels == 1] = 0.9
    known = reference().with_confidences({1: [0.95 + 0.001 * i for i in range(20)]})
    rows = structure_table(labels, probabilities, GEOMETRY, NAMES, known)
    assert rows[0].flags[0].reason.startswith("mean confidence 0.90 < 5th percentile of training (0.95")
    few = reference().with_confidences({1: [0.95, 0.96, 0.97, 0.98]})  # too few for a 5th percentile
    assert flag_kinds(structure_table(labels, probabilities, GEOMETRY, NAMES, few))["liver"] == []
    assert flag_kinds(structure_table(labels, probabilities, GEOMETRY, NAMES, reference()))["liver"] == []


def test_structure_confidences_match_the_table_and_feed_the_reference() -> None:
    labels, probabilities = usual_case()
    probabilities[1][labels == 1] = 0.7
    rows = structure_table(labels, probabilities, GEOMETRY, NAMES, None)
    found = structure_confidences(labels, probabilities, [1, 2])
    assert found == pytest.approx({1: 0.7, 2: 0.95}) == {r.value: r.mean_confidence for r in rows}
    labels[labels == 2] = 0
    assert structure_confidences(labels, probabilities, [1, 2]) == pytest.approx({1: 0.7})  # absent: no entry
    known = reference().with_confidences({v: [c] for v, c in found.items()})
    assert TrainingReference.from_json(json.loads(json.dumps(known.to_json()))) == known


def test_structure_never_seen_in_training_is_flagged_and_no_reference_flags_nothing() -> None:
    labels, probabilities = usual_case()
    never = TrainingReference(4, (reference().classes[0], ClassReference(2, "tumour", (), 0.0, None)))
    assert flag_kinds(structure_table(labels, probabilities, GEOMETRY, NAMES, never))["tumour"] == [
        "unexpected"
    ]
    assert flag_kinds(structure_table(labels, None, GEOMETRY, NAMES, None)) == {"liver": [], "tumour": []}


def test_probabilities_that_do_not_fit_are_refused() -> None:
    labels, probabilities = usual_case()
    with pytest.raises(UsageError, match="do not fit"):
        structure_table(labels, probabilities[:2], GEOMETRY, NAMES, reference())
    with pytest.raises(UsageError, match="do not fit"):
        structure_table(labels, probabilities[:, :5], GEOMETRY, NAMES, reference())


def test_table_files_json_and_csv(tmp_path: Path) -> None:
    labels, probabilities = usual_case()
    probabilities[2][labels == 2] = 0.5
    rows = structure_table(labels, probabilities, GEOMETRY, NAMES, reference())
    write_structure_table(rows, tmp_path / "case_structures.json")
    data = json.loads((tmp_path / "case_structures.json").read_text())
    assert [s["name"] for s in data["structures"]] == ["liver", "tumour"]
    assert data["structures"][1]["flags"] == [{"kind": "confidence", "reason": "mean confidence 0.50 < 0.80"}]
    write_structure_table(rows, tmp_path / "case_structures.csv")
    with (tmp_path / "case_structures.csv").open(newline="") as stream:
        table = list(csv.DictReader(stream))
    assert (table[0]["volume_ml"], table[1]["flags"]) == ("1.0000", "mean confidence 0.50 < 0.80")
    with pytest.raises(UsageError, match=r"\.json or \.csv"):
        write_structure_table(rows, tmp_path / "case.txt")


def test_report_png_is_written_atomically_and_small(tmp_path: Path, rng: np.random.Generator) -> None:
    labels, probabilities = usual_case()
    image = rng.normal(100.0, 20.0, size=labels.shape).astype(np.float32)
    rows = structure_table(labels, probabilities, GEOMETRY, NAMES, reference(liver_ml=(5.0,)))
    path = tmp_path / "out" / "case_report.png"
    render_report(image, labels, GEOMETRY, rows, path, title="case_001")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and 10_000 < len(data) < 300_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 800 <= width <= 1200 and 400 <= height <= 1200
    assert [p.name for p in path.parent.iterdir()] == ["case_report.png"]
    (tmp_path / "plain.txt").write_text("")
    assert path.stat().st_mode == (tmp_path / "plain.txt").stat().st_mode  # not mkstemp's 0600


def test_report_on_a_two_slice_anisotropic_volume_without_probabilities(tmp_path: Path) -> None:
    labels = np.zeros((2, 30, 40), np.uint8)
    labels[:, 5:20, 8:30] = 1
    image = np.linspace(-1000, 1000, labels.size, dtype=np.float32).reshape(labels.shape)
    geometry = Geometry((5.0, 0.7, 0.7), (0.0, 0.0, 0.0))
    rows = structure_table(labels, None, geometry, NAMES, None)
    render_report(image, labels, geometry, rows, tmp_path / "thin.png", title="two slices")
    assert (tmp_path / "thin.png").read_bytes().startswith(PNG_SIGNATURE)
    coronal = slice_views(image, labels, geometry)[1]
    assert coronal.image.shape == (2, 40) and coronal.pixel_aspect == pytest.approx(5.0 / 0.7)


def test_failed_rendering_leaves_the_previous_report_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels, _ = usual_case()
    path = tmp_path / "case_report.png"
    path.write_bytes(b"previous report")

    def broken_savefig(self: Figure, *args: object, **kwargs: object) -> None:
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    rows = structure_table(labels, None, GEOMETRY, NAMES, None)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        render_report(labels.astype(np.float32), labels, GEOMETRY, rows, path, title="case")
    assert path.read_bytes() == b"previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["case_report.png"]


def test_unwritable_report_folder_is_an_image_write_error(tmp_path: Path) -> None:
    labels, _ = usual_case()
    (tmp_path / "taken").write_text("a file where the folder should be")
    rows = structure_table(labels, None, GEOMETRY, NAMES, None)
    with pytest.raises(ImageWriteError, match="cannot write the report"):
        render_report(
            labels.astype(np.float32), labels, GEOMETRY, rows, tmp_path / "taken" / "r.png", title="x"
        )


@pytest.mark.parametrize(
    ("direction", "left_voxel_x"),
    [
        ((1, 0, 0, 0, 1, 0, 0, 0, 1), 19),  # LPS file: array x grows towards the patient's left
        ((1, 0, 0, 0, -1, 0, 0, 0, -1), 0),  # RAS file (NIfTI identity): array x grows towards the right
    ],
)
def test_axial_view_is_radiological_whatever_the_file_axes(
    direction: tuple[float, ...], left_voxel_x: int
) -> None:
    labels = np.zeros((4, 20, 20), np.uint8)
    labels[2, 10, left_voxel_x] = 1  # a voxel on the patient's left
    geometry = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(float(v) for v in direction))
    axial = slice_views(np.zeros(labels.shape, np.float32), labels, geometry)[0]
    assert axial.edges == ("R", "L", "A", "P")
    assert (
        np.argwhere(axial.outlines[1])[0][1] == axial.image.shape[1] - 1
    )  # patient's left on the image right


def test_sagittally_acquired_volume_still_shows_an_axial_view() -> None:
    permuted = (0, 0, 1, 0, 1, 0, 1, 0, 0)  # array axis 0 runs along physical x, axis 2 along z
    geometry = Geometry((0.5, 1.0, 3.0), (0.0, 0.0, 0.0), tuple(float(v) for v in permuted))
    labels = np.ones((6, 8, 10), np.uint8)
    views = slice_views(np.zeros(labels.shape, np.float32), labels, geometry)
    axial, coronal, sagittal, _ = (v.caption for v in views)
    assert "array axis 2" in axial and "array axis 1" in coronal and "array axis 0" in sagittal
    assert views[0].image.shape == (8, 6) and views[0].pixel_aspect == pytest.approx(1.0 / 0.5)
    assert views[1].edges == ("R", "L", "S", "I")


def test_projection_view_shows_a_stray_island_that_no_slice_crosses() -> None:
    labels = np.zeros((12, 20, 20), np.uint8)
    labels[2:10, 2:12, 2:12] = 1
    labels[11, 17, 17] = 1  # one-voxel island on another slice, far from the main body
    views = slice_views(np.zeros(labels.shape, np.float32), labels, GEOMETRY)
    assert [v.name for v in views] == ["axial", "coronal", "sagittal", "axial projection"]
    assert np.count_nonzero(views[0].outlines[1]) == 100  # the busiest axial slice misses the island
    assert np.count_nonzero(views[3].outlines[1]) == 101


def test_intensity_window_recognises_hounsfield_units(rng: np.random.Generator) -> None:
    ct = rng.choice([-1000.0, 40.0, 700.0], size=(4, 30, 30)).astype(np.float32)
    assert intensity_window(ct)[:2] == (-160.0, 240.0)
    mr = rng.gamma(2.0, 100.0, size=(4, 30, 30)).astype(np.float32)
    low, high, text = intensity_window(mr)
    assert 0 <= low < high and "percentiles" in text


def test_region_target_report_measures_and_draws_each_structure(tmp_path: Path) -> None:
    """Nested structures (GTV inside CTV): each row measures its own mask and its own sigmoid; every view
    has one outline per structure, overlapping; the PNG is drawn."""
    z, y, x = np.meshgrid(np.arange(10), np.arange(20), np.arange(20), indexing="ij")
    distance = np.sqrt(((z - 5) * 2.0) ** 2 + (y - 10.0) ** 2 + ((x - 10) * 0.5) ** 2)  # mm
    target = np.stack([distance <= 4.0, distance <= 8.0]).astype(np.uint8)  # GTV inside CTV, concentric
    gtv, ctv = int(target[0].sum()), int(target[1].sum())
    sigmoids = np.where(target > 0, 0.9, 0.05).astype(np.float32)
    sigmoids[0][target[0] > 0] = 0.7  # GTV less sure
    names = {"background": 0, "GTV": 1, "CTV": 2}
    rows = structure_table(target, sigmoids, GEOMETRY, names, None)
    assert [(r.name, r.voxels, r.components) for r in rows] == [("GTV", gtv, 1), ("CTV", ctv, 1)]
    assert rows[0].volume_ml == pytest.approx(gtv * 0.001) and gtv < ctv
    assert rows[0].mean_confidence == pytest.approx(0.7) and rows[1].mean_confidence == pytest.approx(0.9)
    assert [f.kind for f in rows[0].flags] == ["confidence"] and not rows[1].flags
    assert structure_confidences(target, sigmoids, [1, 2]) == {
        1: pytest.approx(0.7),
        2: pytest.approx(0.9),
    }
    image = np.zeros((10, 20, 20), np.float32)
    for view in slice_views(image, target, GEOMETRY):
        assert sorted(view.outlines) == [1, 2]
        assert (view.outlines[1] & view.outlines[2]).sum() == view.outlines[1].sum() > 0  # GTV within CTV
    render_report(image, target, GEOMETRY, rows, tmp_path / "r.png", title="nested")
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(UsageError, match="K >= 2"):
        structure_table(target, sigmoids[:1], GEOMETRY, names, None)
