"""autoseg's RTSTRUCT and SEG checked by independent tools: dciodvfy (dicom3tools) finds no error,
plastimatch (``--xor-contours``) and dcmqi's ``segimage2itkimage`` read them back to the masks autoseg wrote
(Dice >= 0.999 per structure, overlapping ones included); character sets, approval, algorithm, patient.

Tools missing from the machine skip their checks with the reason (``.ci/run`` installs them); real data come
from ``AUTOSEG_DATA`` or ``../shared/data`` and skip cleanly without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from autoseg.dicom.export import write_image_series
from autoseg.dicom.geometry import index_to_patient, patient_to_index
from autoseg.dicom.rtstruct import read_rtstruct, write_rtstruct, write_rtstruct_structures
from autoseg.dicom.seg import read_dicom_seg_masks, write_dicom_seg, write_dicom_seg_structures
from autoseg.dicom.series import DicomSeries, read_series, scan_folder, series_geometry, single_series
from autoseg.dicom.structures import Structure, structures_from_labels
from autoseg.io import Geometry, read_labels
from autoseg.types import BoolVolume, LabelVolume

MIN_DICE = 0.999


# ------------------------------------------------------------------------------------------------ tools


def tool(name: str) -> str:
    """The tool's path, or skip the test saying which package provides it."""
    found = shutil.which(name)
    if found is None:
        source = "pip install dcmqi" if name == "segimage2itkimage" else f"apt-get install {_DEBIAN[name]}"
        pytest.skip(f"{name} not installed ({source}; .ci/run installs it)")
    return found


_DEBIAN = {"dciodvfy": "dicom3tools", "plastimatch": "plastimatch", "dcmdump": "dcmtk"}


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines of dciodvfy on ``path`` (warnings are not counted)."""
    result = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def on_series_grid(mask: np.ndarray, geometry: Geometry, series: DicomSeries) -> BoolVolume:
    """Place the non-zero voxels of a mask read by another tool on the series grid, through patient space."""
    target = series_geometry(series)
    first = series.instances[0]
    result = np.zeros((len(series.instances), first.rows, first.columns), bool)
    index = np.argwhere(mask)
    if len(index) == 0:
        return result
    mapped = patient_to_index(target, index_to_patient(geometry, index.astype(float)))
    rounded = np.rint(mapped).astype(int)
    np.testing.assert_allclose(mapped, rounded, atol=0.02, err_msg="the tool's grid is not the series grid")
    inside = np.all((rounded >= 0) & (rounded < result.shape), axis=1)
    assert inside.all(), "the tool put voxels outside the series"
    result[tuple(rounded.T)] = True
    return result


def plastimatch_masks(rtstruct: Path, series: DicomSeries, folder: Path) -> dict[str, BoolVolume]:
    """The RTSTRUCT rasterised by plastimatch (XOR of contours, so holes stay holes) on the series grid.

    The grid is the series as SimpleITK reads it, given as ``--fixed``: plastimatch's own ``--referenced-ct``
    reading groups files by SeriesInstanceUID and falls back to the contours' bounding box when it is empty
    (the anonymised JPEG 2000 CT).
    """
    folder.mkdir(parents=True)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    sitk.WriteImage(reader.Execute(), str(folder / "grid.nii.gz"))
    command = [
        tool("plastimatch"),
        "convert",
        "--input",
        str(rtstruct),
        "--fixed",
        str(folder / "grid.nii.gz"),
    ]
    command += ["--output-prefix", str(folder / "masks"), "--prefix-format", "nii.gz", "--xor-contours"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    masks = {}
    for path in sorted((folder / "masks").glob("*.nii.gz")):
        mask, geometry = read_labels(path)
        masks[path.name.removesuffix(".nii.gz")] = on_series_grid(mask > 0, geometry, series)
    return masks


def dcmqi_masks(seg: Path, series: DicomSeries, folder: Path) -> dict[str, BoolVolume]:
    """The SEG decoded by dcmqi's segimage2itkimage (one file per group of non-overlapping segments)."""
    folder.mkdir(parents=True)
    command = [tool("segimage2itkimage"), "--inputDICOM", str(seg), "--outputDirectory", str(folder)]
    result = subprocess.run([*command, "-t", "nii"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((folder / "meta.json").read_text())
    masks = {}
    for group_index, group in enumerate(meta["segmentAttributes"], start=1):
        values, geometry = read_labels(folder / f"{group_index}.nii.gz")
        for segment in group:
            mask = on_series_grid(values == segment["labelID"], geometry, series)
            masks[segment["SegmentLabel"]] = mask
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.sum(a & b)) / total


def check_independent_read_back(
    structures: Sequence[Structure], series: DicomSeries, folder: Path
) -> dict[str, tuple[float, float]]:
    """Write both objects, verify them, read them back with plastimatch and dcmqi; Dice per structure."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rtstruct_structures(structures, series, folder / "rs.dcm")
    write_dicom_seg_structures(structures, series, folder / "seg.dcm")
    assert dciodvfy_errors(folder / "rs.dcm") == []
    assert dciodvfy_errors(folder / "seg.dcm") == []
    by_plastimatch = plastimatch_masks(folder / "rs.dcm", series, folder / "plastimatch")
    by_dcmqi = dcmqi_masks(folder / "seg.dcm", series, folder / "dcmqi")
    scores = {}
    for structure in structures:
        empty = np.zeros_like(structure.mask)
        scores[structure.name] = (
            dice(structure.mask, by_plastimatch.get(structure.name, empty)),
            dice(structure.mask, by_dcmqi.get(structure.name, empty)),
        )
    low = {name: score for name, score in scores.items() if min(score) < MIN_DICE}
    assert not low, f"Dice (plastimatch, dcmqi) below {MIN_DICE}: {low}"
    return scores


# ------------------------------------------------------------------------------------------------ cases

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def synthetic_series(folder: Path, shape: tuple[int, int, int] = (6, 28, 40)) -> DicomSeries:
    """A non-square CT series written by autoseg's own exporter."""
    geometry = Geometry((2.5, 0.8, 0.7), (30.0, 20.0, -10.0), AXIAL)
    image = np.full(shape, -1000.0, np.float32)
    image[:, 3:-3, 3:-3] = 40.0
    write_image_series(image, geometry, folder)
    return single_series(folder)


def nested_structures(shape: tuple[int, int, int]) -> list[Structure]:
    """What a clinic has: GTV in CTV in PTV, an organ crossing the PTV, BODY around all, a ring (a hole), a
    structure contoured on two slices only and one not contoured at all."""
    z, y, x = np.indices(shape)
    centre = np.array(shape) / 2.0
    distance = np.sqrt(
        ((z - centre[0]) * 2.5) ** 2 + ((y - centre[1]) * 0.8) ** 2 + ((x - centre[2]) * 0.7) ** 2
    )
    body = np.zeros(shape, bool)
    body[:, 2:-2, 2:-2] = True
    cord = np.zeros(shape, bool)
    cord[1:-1, 13:17, 22:30] = True
    ring = (distance <= 9.0) & (distance > 6.0)
    partial = np.zeros(shape, bool)
    partial[2:4, 4:9, 5:12] = True
    return [
        Structure("BODY", body, "EXTERNAL", (0, 255, 0)),
        Structure("PTV", distance <= 7.0, "PTV", (255, 0, 255)),
        Structure("CTV", distance <= 5.0, "CTV", (0, 255, 255)),
        Structure("GTV", distance <= 3.0, "GTV", (255, 0, 0)),
        Structure("SpinalCord", cord, "ORGAN", (255, 255, 0)),
        Structure("z_Ring", ring, "CONTROL", (128, 128, 128)),
        Structure("Parotid_L", partial, "ORGAN", (0, 0, 255)),
        Structure("Parotid_R", np.zeros(shape, bool), "ORGAN", (0, 128, 255)),
    ]


def test_nested_overlapping_partly_contoured_structures_read_back(tmp_path: Path) -> None:
    series = synthetic_series(tmp_path / "ct")
    structures = nested_structures((6, 28, 40))
    assert np.all(structures[1].mask >= structures[2].mask) and np.all(
        structures[2].mask >= structures[3].mask
    )
    assert np.any(structures[1].mask & structures[4].mask)  # the cord crosses the PTV
    check_independent_read_back(structures, series, tmp_path / "out")
    masks = read_rtstruct(tmp_path / "out" / "rs.dcm", series)
    segments = read_dicom_seg_masks(tmp_path / "out" / "seg.dcm", series)
    for structure in structures:  # autoseg's own readers agree voxel for voxel
        np.testing.assert_array_equal(masks[structure.name], structure.mask)
        np.testing.assert_array_equal(segments[structure.name], structure.mask)


def test_label_map_path_reads_back_and_types_come_from_the_names(tmp_path: Path) -> None:
    series = synthetic_series(tmp_path / "ct")
    labels = np.zeros((6, 28, 40), np.uint8)
    labels[1:5, 4:20, 5:10] = 1
    labels[1:5, 16:20, 10:30] = 1
    labels[2, 6:14, 20:30] = 2
    labels[2, 8:12, 23:27] = 0  # a hole
    labels[3, 5, 33] = 3  # one voxel
    names = {1: "Liver", 2: "GTV_primary", 3: "Lesion", 4: "Spleen"}
    structures = structures_from_labels(labels, names)
    check_independent_read_back(structures, series, tmp_path / "out")
    dataset = pydicom.dcmread(tmp_path / "out" / "rs.dcm")
    types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in dataset.RTROIObservationsSequence}
    assert types[2] == "GTV" and types[1] == "ORGAN"
    colours = [tuple(c.ROIDisplayColor) for c in dataset.ROIContourSequence]
    assert len(set(colours)) == len(colours) == 4
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    for segment, colour in zip(seg.SegmentSequence, colours, strict=True):
        lab = hd.color.CIELabColor.from_dicom_value(tuple(segment.RecommendedDisplayCIELabValue))
        assert np.allclose(lab.to_rgb(), colour, atol=1)


def labels_on_series_grid(labels: LabelVolume, geometry: Geometry, series: DicomSeries) -> LabelVolume:
    """A label map on the same physical grid as the series, up to axis flips, reindexed onto the series."""
    result = np.zeros(on_series_grid(np.zeros((1, 1, 1), bool), geometry, series).shape, labels.dtype)
    for value in np.unique(labels[labels > 0]):
        result[on_series_grid(labels == value, geometry, series)] = value
    return result


@pytest.mark.realdata
def test_jpeg2000_ct_31_structures_read_back(data_root: Path, tmp_path: Path) -> None:
    folder = data_root / "totalsegmentator_examples" / "dicom_ct"
    series = single_series(folder / "series")
    reference, geometry = read_labels(folder / "example_seg_dicom.nii.gz")
    labels = labels_on_series_grid(reference, geometry, series)
    names = {int(v): f"structure_{int(v)}" for v in np.unique(labels) if v}
    assert len(names) == 31
    check_independent_read_back(structures_from_labels(labels, names), series, tmp_path / "out")


@pytest.mark.realdata
def test_lung_ct_gtv_inside_lung_read_back(data_root: Path, tmp_path: Path) -> None:
    """The clinic's GTV plus a thresholded lung that overlaps it and a BODY around both."""
    scan = scan_folder(data_root / "lung_ct_rtstruct" / "pat_1")
    (series,) = scan.series
    (source,) = [o for o in scan.others if o.modality == "RTSTRUCT"]
    image, _ = read_series(series)
    gtv = read_rtstruct(source.path, series)["GTV-1"]
    body = image[0] > -400
    lung = image[0] < -400
    lung[:, :40] = lung[:, -40:] = lung[:, :, :40] = lung[:, :, -40:] = False  # not the air around the body
    lung |= gtv
    structures = [
        Structure("BODY", body | lung, "EXTERNAL", (0, 255, 0)),
        Structure("Lungs", lung, "ORGAN", (0, 128, 255)),
        Structure("GTV-1", gtv, "GTV", (255, 0, 0)),
    ]
    check_independent_read_back(structures, series, tmp_path / "out")


@pytest.mark.realdata
def test_oblique_mr_read_back(data_root: Path, tmp_path: Path) -> None:
    series = single_series(data_root / "brain_mr_dicom" / "oblique_t1post_PGBM-003")
    image, _ = read_series(series)
    bright = image[0] > np.percentile(image[0], 90)
    box = np.zeros_like(bright)
    shape = box.shape
    box[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = True
    structures = [
        Structure("Bright", bright, "ORGAN", (255, 255, 0)),
        Structure("GTV", box & bright, "GTV", (255, 0, 0)),
        Structure("PTV", box, "PTV", (255, 0, 255)),
    ]
    check_independent_read_back(structures, series, tmp_path / "out")


# ------------------------------------------------------------------------------------------------ attributes

PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "RT-0042",
    "IssuerOfPatientID": "HOSPITAL-A",
    "PatientBirthDate": "19600102",
    "PatientSex": "F",
    "StudyID": "S7",
    "AccessionNumber": "ACC123",
    "ReferringPhysicianName": "Smith^John",
    "StudyDate": "20240131",
    "StudyTime": "101500",
}


def clinical_series(folder: Path, **attributes: object) -> DicomSeries:
    """The synthetic series with a clinic's patient and study attributes (and any others given)."""
    synthetic_series(folder)
    other_id = Dataset()
    other_id.PatientID, other_id.IssuerOfPatientID, other_id.TypeOfPatientID = "99-1", "HOSPITAL-B", "TEXT"
    for path in sorted(folder.iterdir()):
        dataset = pydicom.dcmread(path)
        for keyword, value in {**PATIENT, **attributes}.items():
            setattr(dataset, keyword, value)
        dataset.OtherPatientIDsSequence = [other_id]
        dataset.save_as(path, enforce_file_format=True)
    return single_series(folder)


def write_both(series: DicomSeries, names: dict[int, str], folder: Path) -> tuple[Dataset, Dataset]:
    """RTSTRUCT and SEG of a two-label map; both must pass dciodvfy."""
    labels = np.zeros((6, 28, 40), np.uint8)
    labels[1:4, 5:15, 5:15] = 1
    labels[2:5, 10:20, 20:30] = 2
    write_rtstruct(labels, series, names, folder / "rs.dcm")
    write_dicom_seg(labels, series, names, folder / "seg.dcm")
    for path in (folder / "rs.dcm", folder / "seg.dcm"):
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(path) == [], path.name
    return pydicom.dcmread(folder / "rs.dcm"), pydicom.dcmread(folder / "seg.dcm")


def test_patient_study_approval_and_algorithm_are_carried(tmp_path: Path) -> None:
    rtstruct, seg = write_both(clinical_series(tmp_path / "ct"), {1: "Liver", 2: "GTV"}, tmp_path)
    for dataset in (rtstruct, seg):
        for keyword, value in PATIENT.items():
            assert str(dataset.get(keyword)) == value, (dataset.Modality, keyword)
        assert dataset.OtherPatientIDsSequence[0].IssuerOfPatientID == "HOSPITAL-B"
        assert dataset.Manufacturer == "autoseg" and dataset.SoftwareVersions
    assert rtstruct.ApprovalStatus == "UNAPPROVED"
    for roi in rtstruct.StructureSetROISequence:
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        (algorithm,) = roi.ROIDerivationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "autoseg" and algorithm.AlgorithmFamilyCodeSequence[0].CodeValue
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "autoseg"
    assert "unapproved" in seg.ContentDescription


@pytest.mark.parametrize("source", [None, "ISO_IR 100"])
def test_cjk_labels_make_the_objects_utf8(tmp_path: Path, source: str | None) -> None:
    extra = {} if source is None else {"SpecificCharacterSet": source}
    series = clinical_series(tmp_path / "ct", **extra)
    rtstruct, seg = write_both(series, {1: "肝臓", 2: "Läsion"}, tmp_path)
    for dataset, path in ((rtstruct, tmp_path / "rs.dcm"), (seg, tmp_path / "seg.dcm")):
        assert dataset.SpecificCharacterSet == "ISO_IR 192"
        raw = path.read_bytes()
        assert "肝臓".encode() in raw and "Läsion".encode() in raw
        assert "Läsion".encode("latin-1") not in raw  # no Latin-1 bytes
    assert [r.ROIName for r in rtstruct.StructureSetROISequence] == ["肝臓", "Läsion"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["肝臓", "Läsion"]


def test_ascii_source_and_labels_keep_the_sources_character_set(tmp_path: Path) -> None:
    rtstruct, seg = write_both(clinical_series(tmp_path / "a"), {1: "Liver", 2: "GTV"}, tmp_path)
    assert "SpecificCharacterSet" not in rtstruct and "SpecificCharacterSet" not in seg
    latin = clinical_series(tmp_path / "b", SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen")
    rtstruct, seg = write_both(latin, {1: "Läsion", 2: "GTV"}, tmp_path)
    for dataset in (rtstruct, seg):
        assert dataset.SpecificCharacterSet == "ISO_IR 100" and str(dataset.PatientName) == "Müller^Jürgen"
    assert "Läsion".encode("latin-1") in (tmp_path / "seg.dcm").read_bytes()


def test_iso_2022_japanese_source_works_for_both_formats(tmp_path: Path) -> None:
    """A Japanese source (ISO 2022 IR 87, the Standard's example name): kept, and a kanji label survives."""
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    series = clinical_series(tmp_path / "ct", SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName=name)
    rtstruct, seg = write_both(series, {1: "肝臓", 2: "GTV"}, tmp_path)
    for dataset in (rtstruct, seg):
        assert list(dataset.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
        assert str(dataset.PatientName) == name
    assert rtstruct.StructureSetROISequence[0].ROIName == "肝臓"
    assert seg.SegmentSequence[0].SegmentLabel == "肝臓"
    np.testing.assert_array_equal(
        read_dicom_seg_masks(tmp_path / "seg.dcm", series)["肝臓"][1:4, 5:15, 5:15], True
    )


def test_empty_structures_are_kept_by_default_and_left_out_on_request(tmp_path: Path) -> None:
    series = synthetic_series(tmp_path / "ct")
    labels = np.zeros((6, 28, 40), np.uint8)
    labels[2, 5:9, 5:9] = 1
    names = {1: "Liver", 2: "Spleen"}
    write_rtstruct(labels, series, names, tmp_path / "rs.dcm")
    write_dicom_seg(labels, series, names, tmp_path / "seg.dcm")
    assert len(pydicom.dcmread(tmp_path / "rs.dcm").StructureSetROISequence) == 2
    assert len(pydicom.dcmread(tmp_path / "seg.dcm").SegmentSequence) == 2
    write_rtstruct(labels, series, names, tmp_path / "rs.dcm", skip_empty=True)
    write_dicom_seg(labels, series, names, tmp_path / "seg.dcm", skip_empty=True)
    assert [r.ROIName for r in pydicom.dcmread(tmp_path / "rs.dcm").StructureSetROISequence] == ["Liver"]
    assert [s.SegmentLabel for s in pydicom.dcmread(tmp_path / "seg.dcm").SegmentSequence] == ["Liver"]
    for path in (tmp_path / "rs.dcm", tmp_path / "seg.dcm"):
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(path) == []
