"""convert-dicom: DICOM cases (series + RTSTRUCT or SEG) to an nnU-Net v2 dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import write_ct_series

from autoseg.dataset.layout import load_dataset
from autoseg.dicom.convert import ConvertRequest, convert_dicom
from autoseg.dicom.mapping import load_mapping, mapping_from_names, parse_mapping
from autoseg.dicom.rtstruct import write_rtstruct
from autoseg.dicom.seg import write_dicom_seg
from autoseg.dicom.series import read_series, single_series
from autoseg.errors import DicomError, StructureNameError
from autoseg.io import read_image, read_json, read_labels, read_target

MAPPING = {
    "labels": {
        "GTV": {"value": 1, "rois": ["gtv*"]},
        "Lung": {"value": 2, "rois": ["lung_?", "lungs"]},
        "Heart": {"value": 3},
    }
}


def write_case(folder: Path, names: tuple[str, str], *, seg: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 4 x 12 x 20 CT case with two structures, one RTSTRUCT (or SEG) file each, overlapping in 8 voxels.

    Returns both structures' masks (uint8 0/1).
    """
    first, second = np.zeros((4, 12, 20), np.uint8), np.zeros((4, 12, 20), np.uint8)
    first[1:3, 2:6, 3:8] = 1
    second[1:3, 4:10, 6:15] = 1  # overlaps the first at rows 4-5, columns 6-7 on two slices
    write_ct_series(folder / "ct", ((first + second) * 40).astype(np.int16))
    series = single_series(folder / "ct")
    for index, (name, mask) in enumerate(zip(names, (first, second), strict=True)):
        write = write_dicom_seg if seg else write_rtstruct
        write(mask, series, {1: name}, folder / f"structure{index}.dcm")
    return first, second


def test_unknown_missing_overlapping_and_skipped_cases(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    gtv, lung = write_case(cases / "a", ("GTV_primary", "Lung_L"))
    write_rtstruct(
        np.zeros((4, 12, 20), np.uint8),
        single_series(cases / "a" / "ct"),
        {1: "Couch"},
        cases / "a" / "c.dcm",
    )
    write_case(cases / "b", ("Couch", "Table"))  # nothing mappable
    write_ct_series(cases / "c" / "ct", np.zeros((2, 4, 4), np.int16))  # no RTSTRUCT
    (tmp_path / "mapping.json").write_text(json.dumps(MAPPING))
    stale = tmp_path / "out" / "labelsTr" / "b.nii.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left from an earlier run")
    report = convert_dicom(ConvertRequest(cases, tmp_path / "out", tmp_path / "mapping.json"))
    a, b, c = report.cases
    assert a.status == "written" and a.unknown_rois == ("Couch",) and a.missing_labels == ("Heart",)
    assert a.voxels == {"GTV": int(gtv.sum()), "Lung": int(lung.sum())}  # each structure whole
    assert a.overlap_voxels == 2 * 2 * 2  # rows 4-5, columns 6-7, two slices
    assert a.overlaps == {"GTV+Lung": 8}
    assert b.status == "skipped" and "no non-empty structure" in b.message and not stale.exists()
    assert c.status == "skipped" and "no RTSTRUCT or SEG" in c.message
    written, _ = read_target(tmp_path / "out" / "labelsTr" / "a.nii.gz")  # overlaps kept: multi-label
    np.testing.assert_array_equal(written, np.stack([gtv, lung, np.zeros_like(gtv)]).astype(np.uint8))
    meta = read_json(tmp_path / "out" / "dataset.json")
    assert meta == {
        "name": "out",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "GTV": 1, "Lung": 2, "Heart": 3},
        "structures": ["GTV", "Lung", "Heart"],
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "structure_types": {"GTV": "GTV", "Lung": "ORGAN", "Heart": "ORGAN"},
        "annotated": {"a": ["GTV", "Lung"]},  # no Heart ROI: unannotated, not background
    }
    assert load_mapping(tmp_path / "out" / "label_mapping.json") == load_mapping(tmp_path / "mapping.json")
    assert len(load_dataset(tmp_path / "out").cases) == 1


def test_seg_case_without_mapping_maps_every_name(tmp_path: Path) -> None:
    kidney, aorta = write_case(tmp_path / "one_case", ("kidney", "Aorta"), seg=True)
    report = convert_dicom(ConvertRequest(tmp_path / "one_case", tmp_path / "out"))
    assert [c.case for c in report.written] == ["one_case"]
    assert report.labels == {"background": 0, "Aorta": 1, "kidney": 2}  # sorted, case-insensitively
    written, _ = read_target(tmp_path / "out" / "labelsTr" / "one_case.nii.gz")  # they overlap: kept
    np.testing.assert_array_equal(written, np.stack([aorta, kidney]))
    assert "Aorta" in load_mapping(tmp_path / "out" / "label_mapping.json").labels


def test_mapping_validation_names_every_problem(tmp_path: Path) -> None:
    bad = {"labels": {"background": {"value": 0}, "A": {"value": 2, "rois": []}, "B": {"value": 2, "x": 1}}}
    with pytest.raises(DicomError, match="invalid label mapping") as caught:
        parse_mapping(bad, "mapping.json")
    text = "\n".join(caught.value.details)
    assert "1 to 65535" in text and "non-empty list" in text and "more than one label" in text
    assert "unknown keys ['x']" in text and "'background' is implicit" in text
    with pytest.raises(DicomError, match="expected"):
        parse_mapping({"GTV": 1}, "mapping.json")
    shorthand = parse_mapping({"labels": {"GTV": 1}}, "m")
    assert shorthand.label_for("gtv") == "GTV" and shorthand.label_for("GTV-2") is None
    escaped = mapping_from_names(["Lung [L]", "lung [l]", "CTV"])
    assert list(escaped.labels) == ["CTV", "Lung [L]"] and escaped.label_for("LUNG [L]") == "Lung [L]"


def test_no_case_at_all_is_an_error(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "only_ct" / "ct", np.zeros((2, 4, 4), np.int16))
    with pytest.raises(DicomError, match="no case with an image series and an RTSTRUCT/SEG") as caught:
        convert_dicom(ConvertRequest(tmp_path, tmp_path / "out"))
    assert caught.value.details == [f"only_ct: {tmp_path / 'only_ct'}: holds no RTSTRUCT or SEG file"]


@pytest.mark.realdata
def test_lung_rtstruct_dataset(data_root: Path, tmp_path: Path) -> None:
    source = data_root / "lung_ct_rtstruct"
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"labels": {"GTV": {"value": 1, "rois": ["GTV*"]}}}))
    report = convert_dicom(ConvertRequest(source, tmp_path / "out", mapping))
    assert [c.case for c in report.written] == ["pat_1", "pat_2", "pat_3", "pat_4"]
    dataset = load_dataset(tmp_path / "out")
    assert dataset.labels == {"background": 0, "GTV": 1} and dataset.channel_names == ("CT",)
    for case in dataset.cases:
        image, geometry = read_image(case.image_paths)
        dicom_image, dicom_geometry = read_series(single_series(source / case.identifier))
        assert geometry.differences(dicom_geometry, tolerance=1e-6) == []
        np.testing.assert_array_equal(image, dicom_image)
        assert case.label_path is not None
        labels, label_geometry = read_labels(case.label_path)
        assert label_geometry == geometry and labels.shape == image.shape[1:] and labels.any()
    first = (tmp_path / "out" / "labelsTr" / "pat_1.nii.gz").read_bytes()
    again = convert_dicom(ConvertRequest(source, tmp_path / "out", mapping))  # idempotent re-run
    assert again.cases == report.cases
    assert (tmp_path / "out" / "labelsTr" / "pat_1.nii.gz").read_bytes() == first


@pytest.mark.realdata
def test_dicom_seg_ct3slice_as_one_case(data_root: Path, tmp_path: Path) -> None:
    shutil.copytree(data_root / "dicom_seg_ct3slice", tmp_path / "liver_case")
    report = convert_dicom(ConvertRequest(tmp_path / "liver_case", tmp_path / "out"))
    (case,) = report.written
    assert case.case == "liver_case" and report.labels == {"background": 0, "Liver": 1}
    labels, _ = read_labels(tmp_path / "out" / "labelsTr" / "liver_case.nii.gz")
    assert labels.shape == (3, 512, 512) and case.voxels["Liver"] == int(labels.sum()) > 10_000


@pytest.mark.realdata
def test_convert_dicom_command_then_verify(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoseg.cli.main import main

    mapping = tmp_path / "rois.json"
    mapping.write_text(json.dumps({"labels": {"GTV": {"value": 1, "rois": ["gtv*"]}, "Heart": 2}}))
    out = tmp_path / "Dataset010_Lung"
    argv = ["convert-dicom", str(data_root / "lung_ct_rtstruct"), str(out), "--mapping", str(mapping), "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pat_1: written; missing: Heart" in printed
    assert "4 case(s) written" in printed
    assert main(["verify", str(out), "-q"]) == 0
    assert main(["convert-dicom", str(tmp_path / "nothing"), str(tmp_path / "x"), "-q"]) == 1


# ------------------------------------------------------------------------------------------------ names

CLINIC_NAMES = ("BODY", "Areola", "Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar", "Tumor Bed")


def write_named_case(folder: Path, names: tuple[str, ...]) -> None:
    """A 2 x 8 x (4 * len(names)) CT case; one RTSTRUCT holds one 2 x 4 x 3 box per name, side by side."""
    labels = np.zeros((2, 8, 4 * len(names)), np.uint8)
    for index in range(len(names)):
        labels[:, 2:6, 4 * index : 4 * index + 3] = index + 1
    write_ct_series(folder / "ct", (labels * 10).astype(np.int16))
    series = single_series(folder / "ct")
    write_rtstruct(labels, series, dict(enumerate(names, start=1)), folder / "rtstruct.dcm")


def test_tg263_names_without_a_mapping(tmp_path: Path) -> None:
    write_named_case(tmp_path / "cases" / "a", CLINIC_NAMES)
    write_named_case(tmp_path / "cases" / "b", ("LUNG_LT", "External", "Cor"))
    request = ConvertRequest(tmp_path / "cases", tmp_path / "out", names="tg263")
    a, b = convert_dicom(request).cases
    expected = {"background": 0, "External": 1, "Heart": 2, "Lung_L": 3}  # sorted standard names
    assert load_dataset(tmp_path / "out").labels == expected  # the extra dataset.json keys are ignored
    assert a.unknown_rois == ("Areola", "Borders", "Breast", "Nodes", "Scar", "Tumor Bed")
    assert a.suggestions["Breast"][:2] == ("Breast_L", "Breast_R")
    assert set(a.suggestions) == set(a.unknown_rois)
    assert b.unknown_rois == () and b.voxels == {"External": 24, "Heart": 24, "Lung_L": 24}
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["structure_types"] == {"External": "EXTERNAL", "Heart": "ORGAN", "Lung_L": "ORGAN"}
    assert meta["source_names"] == {
        "a": {"External": ["BODY"], "Heart": ["Heart"], "Lung_L": ["Lt Lung"]},
        "b": {"External": ["External"], "Heart": ["Cor"], "Lung_L": ["LUNG_LT"]},
    }
    saved = load_mapping(tmp_path / "out" / "label_mapping.json")
    assert (
        saved.labels["Lung_L"].rois == ("Lt Lung", "LUNG_LT") and saved.labels["External"].type == "EXTERNAL"
    )


def test_a_mapping_file_overrides_tg263(tmp_path: Path) -> None:
    write_named_case(tmp_path / "cases" / "a", ("Lt Lung", "Heart", "Tumor Bed", "BODY"))
    mapping = {"labels": {"TumourBed": {"value": 5, "rois": ["tumor bed"], "type": "CTV"}, "Heart": 1}}
    (tmp_path / "mapping.json").write_text(json.dumps(mapping))
    request = ConvertRequest(tmp_path / "cases", tmp_path / "out", tmp_path / "mapping.json", "tg263")
    report = convert_dicom(request)
    assert report.labels == {"background": 0, "Heart": 1, "TumourBed": 5, "External": 6, "Lung_L": 7}
    assert report.cases[0].unknown_rois == ()
    types = json.loads((tmp_path / "out" / "dataset.json").read_text())["structure_types"]
    assert types == {"Heart": "ORGAN", "TumourBed": "CTV", "External": "EXTERNAL", "Lung_L": "ORGAN"}
    assert {m.name: m.standard for m in report.matches} == {"BODY": "External", "Lt Lung": "Lung_L"}


def test_a_mapping_type_must_be_a_dicom_roi_type() -> None:
    with pytest.raises(DicomError) as raised:
        parse_mapping({"labels": {"GTV": {"value": 1, "type": "TUMOUR"}}}, "m.json")
    assert "'type' must be one of" in raised.value.details[0]


@pytest.mark.parametrize("bad", ["Lung\tL", "x" * 70, "Lung\\L"])
def test_label_names_dicom_cannot_hold_are_refused_before_any_work(tmp_path: Path, bad: str) -> None:
    import pydicom

    write_named_case(tmp_path / "cases" / "a", ("Heart", "Lung"))
    source = pydicom.dcmread(tmp_path / "cases" / "a" / "rtstruct.dcm")
    source.StructureSetROISequence[1].ROIName = "placeholder"
    source.save_as(tmp_path / "cases" / "a" / "rtstruct.dcm")
    (tmp_path / "mapping.json").write_text(json.dumps({"labels": {bad: {"value": 1, "rois": ["heart"]}}}))
    with pytest.raises(StructureNameError) as raised:
        convert_dicom(ConvertRequest(tmp_path / "cases", tmp_path / "out", tmp_path / "mapping.json"))
    assert repr(bad) in raised.value.message and "--mapping" in raised.value.details[0]
    assert not (tmp_path / "out").exists()


def test_a_clinic_name_with_a_tab_is_refused_and_long_names_warn(tmp_path: Path) -> None:
    import pydicom

    write_named_case(tmp_path / "cases" / "a", ("Heart", "Lung"))
    path = tmp_path / "cases" / "a" / "rtstruct.dcm"
    source = pydicom.dcmread(path)
    source.StructureSetROISequence[1].ROIName = "Lung\tL"
    source.save_as(path)
    with pytest.raises(StructureNameError, match="control characters"):
        convert_dicom(ConvertRequest(tmp_path / "cases", tmp_path / "out"))
    source.StructureSetROISequence[1].ROIName = "Lung_L_for_planning"  # 19 characters
    source.save_as(path)
    report = convert_dicom(ConvertRequest(tmp_path / "cases", tmp_path / "out"))
    assert len(report.warnings) == 1 and "'Lung_L_for_planning' has 19 characters" in report.warnings[0]


def test_convert_dicom_command_with_tg263_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autoseg.cli.main import main

    write_named_case(tmp_path / "cases" / "a", ("Lt Lung", "Nodes"))
    assert main(["convert-dicom", str(tmp_path / "cases"), str(tmp_path / "out"), "--names", "tg263"]) == 0
    printed = capsys.readouterr().out
    assert "TG-263: 'Lt Lung' -> Lung_L (normalised)" in printed
    assert "a: written; structures not in the mapping: Nodes (nearest: " in printed


@pytest.mark.realdata
def test_tg263_names_of_a_real_clinic_structure_set(data_root: Path) -> None:
    import pydicom

    from autoseg.dicom.mapping import tg263_mapping

    source = pydicom.dcmread(data_root / "dicompyler_example_rt" / "rtss.dcm")
    names = [str(roi.ROIName) for roi in source.StructureSetROISequence]
    assert len(names) == 10
    mapping, matches = tg263_mapping(names)
    assert {m.name: m.standard for m in matches.values() if m.standard} == {
        "BODY": "External",
        "Heart": "Heart",
        "Lt Lung": "Lung_L",
    }
    assert mapping.values() == {"background": 0, "External": 1, "Heart": 2, "Lung_L": 3}
    assert mapping.types() == {"External": "EXTERNAL", "Heart": "ORGAN", "Lung_L": "ORGAN"}
    unmatched = {m.name: m.suggestions for m in matches.values() if m.standard is None}
    assert sorted(unmatched) == [
        "Areola",
        "Borders",
        "Breast",
        "Nodes",
        "Scar",
        "Tumor Bed",
        "Tumor Bed Block",
    ]
    assert unmatched["Breast"][:2] == ("Breast_L", "Breast_R")


def test_overlapping_rois_write_the_multi_label_layout_for_every_case(tmp_path: Path) -> None:
    """One case's GTV lies partly in its lung: every case becomes a 4D multi-label file (the disjoint one
    expanded exactly), dataset.json lists the structures, and the dataset reads back as region targets."""
    cases = tmp_path / "cases"
    gtv, lung = write_case(cases / "a", ("GTV_primary", "Lung_L"))
    apart = np.zeros((4, 12, 20), np.uint8)
    apart[1:3, 2:5, 2:5] = 1
    write_ct_series(cases / "b" / "ct", (apart * 40).astype(np.int16))
    write_rtstruct(apart, single_series(cases / "b" / "ct"), {1: "GTV_primary"}, cases / "b" / "rs.dcm")
    empty = np.zeros_like(apart)  # an ROI without contours: contoured, and empty
    write_rtstruct(empty, single_series(cases / "b" / "ct"), {1: "Heart"}, cases / "b" / "heart.dcm")
    (tmp_path / "mapping.json").write_text(json.dumps(MAPPING))
    report = convert_dicom(ConvertRequest(cases, tmp_path / "out", tmp_path / "mapping.json"))
    assert [c.overlaps for c in report.cases] == [{"GTV+Lung": 8}, {}]
    assert [c.annotated for c in report.cases] == [("GTV", "Lung"), ("GTV", "Heart")]
    meta = read_json(tmp_path / "out" / "dataset.json")
    assert isinstance(meta, dict) and meta["annotated"] == {"a": ["GTV", "Lung"], "b": ["GTV", "Heart"]}
    b_target, _ = read_target(tmp_path / "out" / "labelsTr" / "b.nii.gz")
    assert b_target.shape == (3, 4, 12, 20) and np.array_equal(b_target[0], apart) and not b_target[1:].any()
    dataset = load_dataset(tmp_path / "out")
    assert [r.name for r in dataset.regions] == ["GTV", "Lung", "Heart"]
    assert [c.annotated for c in dataset.cases] == [(1, 2), (1, 3)]  # structure numbers
    from autoseg.dataset.layout import read_case

    _, target, _ = read_case(dataset.cases[0])
    assert target is not None and target.shape == (3, 4, 12, 20)
    assert np.array_equal(target[0], gtv) and np.array_equal(target[1], lung)
    assert int((target[0] & target[1]).sum()) == 8  # the overlap is in both structures


def test_structure_types_come_from_the_mapping_else_the_source_rtstruct_else_the_name(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    for case in ("a", "b", "c"):
        write_case(cases / case, ("Lesion", "Spacer"))
    mask = np.zeros((4, 12, 20), np.uint8)
    mask[1:3, 2:6, 3:8] = 1
    # two of three structure sets type the Lesion a GTV (its name alone says ORGAN, as case c's file does)
    for case in ("a", "b"):
        path = cases / case / "structure0.dcm"
        write_rtstruct(mask, single_series(cases / case / "ct"), {1: "Lesion"}, path, types={"Lesion": "GTV"})
    mapping = {"labels": {"Lesion": {"value": 1}, "Spacer": {"value": 2, "type": "AVOIDANCE"}}}
    (tmp_path / "mapping.json").write_text(json.dumps(mapping))
    convert_dicom(ConvertRequest(cases, tmp_path / "out", tmp_path / "mapping.json"))
    meta = read_json(tmp_path / "out" / "dataset.json")
    assert isinstance(meta, dict) and meta["structure_types"] == {"Lesion": "GTV", "Spacer": "AVOIDANCE"}
