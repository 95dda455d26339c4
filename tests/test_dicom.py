"""DICOM series reading, RTSTRUCT and SEG writing/reading: synthetic series plus the real data sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import AXIAL, oblique_orientation, write_ct_series
from pydicom.uid import generate_uid

from autoseg.dicom.geometry import index_to_patient, patient_to_index
from autoseg.dicom.rtstruct import mask_outlines, read_rtstruct, write_rtstruct
from autoseg.dicom.seg import read_dicom_seg, read_dicom_seg_masks, write_dicom_seg
from autoseg.dicom.series import (
    DicomSeries,
    find_series,
    is_dicom_path,
    read_series,
    scan_folder,
    single_series,
)
from autoseg.errors import DicomError
from autoseg.io import Geometry, read_labels
from autoseg.types import LabelVolume

SPACING = (3.0, 0.8, 0.7)
ORIGIN_XYZ = (-10.0, 20.0, 30.0)


def l_shape_labels() -> LabelVolume:
    """5 slices of 24 rows x 40 columns: an asymmetric L (label 1), a ring with a hole (2), one voxel (3)."""
    labels = np.zeros((5, 24, 40), np.uint8)
    labels[1:4, 2:20, 3:8] = 1  # long vertical bar along rows...
    labels[1:4, 15:20, 8:30] = 1  # ...and a long foot along columns
    labels[2, 4:12, 20:28] = 2
    labels[2, 6:10, 22:26] = 0  # hole
    labels[3, 5, 33] = 3
    return labels


@pytest.fixture
def l_series(tmp_path: Path) -> Path:
    """An axial non-square series holding the L-shape labels as pixel values."""
    folder = tmp_path / "series"
    write_ct_series(
        folder, l_shape_labels().astype(np.int16) * 100, spacing_zyx=SPACING, origin_xyz=ORIGIN_XYZ
    )
    return folder


def sitk_geometry(image: sitk.Image) -> Geometry:
    """SimpleITK's reading of a series, converted to autoseg's (z, y, x) convention by hand."""
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)[::-1, ::-1]
    return Geometry(
        tuple(image.GetSpacing())[::-1], tuple(image.GetOrigin())[::-1], tuple(direction.ravel().tolist())
    )


def compare_with_simpleitk(folder: Path) -> None:
    image, geometry = read_series(single_series(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    np.testing.assert_array_equal(image[0], sitk.GetArrayFromImage(reference).astype(np.float32))
    assert geometry.differences(sitk_geometry(reference), tolerance=1e-5) == []


# ------------------------------------------------------------------------------------------------ series


def test_series_is_sorted_by_position_and_rescaled(tmp_path: Path) -> None:
    stored = np.arange(4, dtype=np.int16)[:, None, None] * np.ones((4, 6, 9), np.int16)
    write_ct_series(tmp_path, stored, spacing_zyx=SPACING, origin_xyz=ORIGIN_XYZ, rescale=(2.0, -1000.0))
    image, geometry = read_series(single_series(tmp_path))
    assert image.shape == (1, 4, 6, 9) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0, :, 0, 0], [-1000.0, -998.0, -996.0, -994.0])
    assert geometry.spacing_mm == pytest.approx(SPACING)
    assert geometry.origin_mm == pytest.approx(ORIGIN_XYZ[::-1])
    assert geometry.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.mark.parametrize("orientation", [AXIAL, oblique_orientation(11.0), (0, 1, 0, 0, 0, -1)])
def test_series_agrees_with_simpleitk(
    tmp_path: Path, rng: np.random.Generator, orientation: tuple[float]
) -> None:
    stored = rng.integers(-50, 2000, size=(5, 24, 40)).astype(np.int16)
    write_ct_series(tmp_path, stored, spacing_zyx=SPACING, origin_xyz=ORIGIN_XYZ, orientation=orientation)
    compare_with_simpleitk(tmp_path)


def test_dicom_path_detection(l_series: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not dicom")
    assert is_dicom_path(l_series) and is_dicom_path(next(l_series.iterdir()))
    assert not is_dicom_path(tmp_path / "notes.txt") and not is_dicom_path(tmp_path / "missing")
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 1 and scan.skipped == (tmp_path / "notes.txt",)


def _rewrite(path: Path, **changes: object) -> None:
    dataset = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)


def test_missing_slice_is_named(l_series: Path) -> None:
    files = single_series(l_series).files
    files[2].unlink()
    with pytest.raises(DicomError, match=r"1 slice\(s\) missing between slice004 and slice002"):
        read_series(single_series(l_series))


def test_uneven_duplicate_and_mixed_slices_are_refused(l_series: Path) -> None:
    files = single_series(l_series).files
    position = pydicom.dcmread(files[2]).ImagePositionPatient
    _rewrite(files[2], ImagePositionPatient=[position[0], position[1], float(position[2]) + 0.4])
    with pytest.raises(DicomError, match="uneven slice spacing"):
        read_series(single_series(l_series))
    _rewrite(files[2], ImagePositionPatient=pydicom.dcmread(files[1]).ImagePositionPatient)
    with pytest.raises(DicomError, match="duplicate slice"):
        read_series(single_series(l_series))
    _rewrite(files[2], ImagePositionPatient=position, ImageOrientationPatient=[1, 0, 0, 0, 0, 1])
    with pytest.raises(DicomError, match="mixes several stacks"):
        read_series(single_series(l_series))
    _rewrite(files[2], ImageOrientationPatient=list(AXIAL), NumberOfFrames=2)
    with pytest.raises(DicomError, match="multiframe"):
        read_series(single_series(l_series))


def test_folder_errors(tmp_path: Path, l_series: Path) -> None:
    write_ct_series(tmp_path / "other", np.zeros((2, 4, 4), np.int16))
    with pytest.raises(DicomError, match="holds 2 image series") as caught:
        single_series(tmp_path)
    assert len(caught.value.details) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomError, match="holds no DICOM files"):
        find_series(empty)
    write_rtstruct(l_shape_labels(), single_series(l_series), {1: "L"}, tmp_path / "only_rs" / "rs.dcm")
    with pytest.raises(DicomError, match="only non-image DICOM objects: RTSTRUCT"):
        find_series(tmp_path / "only_rs")
    with pytest.raises(DicomError, match="not an RTSTRUCT"):
        read_rtstruct(single_series(l_series).files[0], single_series(l_series))


def test_geometry_round_trip_on_oblique_grid() -> None:
    geometry = Geometry((3.0, 0.8, 0.7), (5.0, -2.0, 1.0), (0.98, 0.2, 0.0, -0.2, 0.98, 0.0, 0.0, 0.0, 1.0))
    index = np.array([[0.0, 0.0, 0.0], [1.5, 2.0, -3.0], [4.0, 23.0, 39.0]])
    points = index_to_patient(geometry, index)
    np.testing.assert_allclose(points[1], geometry.index_to_physical(index[1])[::-1])
    np.testing.assert_allclose(patient_to_index(geometry, points), index, atol=1e-9)


# ------------------------------------------------------------------------------------------------ RTSTRUCT


def test_rtstruct_round_trip_is_exact_on_non_square_series(l_series: Path, tmp_path: Path) -> None:
    labels, series = l_shape_labels(), single_series(l_series)
    write_rtstruct(labels, series, {1: "L", 2: "ring", 4: "empty"}, tmp_path / "rs.dcm")
    masks = read_rtstruct(tmp_path / "rs.dcm", series)
    assert set(masks) == {"L", "ring", "empty", "label_3"}
    for name, value in (("L", 1), ("ring", 2), ("label_3", 3)):
        np.testing.assert_array_equal(masks[name], labels == value)
    assert not masks["empty"].any()


def test_rtstruct_points_land_where_the_dicom_tags_say(l_series: Path, tmp_path: Path) -> None:
    """Voxel (z=3, row=5, column=33) is at IPP_3 + 33 * 0.7 mm along x + 5 * 0.8 mm along y (axial LPS)."""
    labels = l_shape_labels()
    write_rtstruct(labels, single_series(l_series), {3: "dot"}, tmp_path / "rs.dcm")
    dataset = pydicom.dcmread(tmp_path / "rs.dcm")
    (dot,) = [c for c in dataset.ROIContourSequence if c.ReferencedROINumber == 3]
    (contour,) = dot.ContourSequence
    points = np.asarray(contour.ContourData, float).reshape(-1, 3)
    expected = np.array([ORIGIN_XYZ[0] + 33 * 0.7, ORIGIN_XYZ[1] + 5 * 0.8, ORIGIN_XYZ[2] + 3 * 3.0])
    np.testing.assert_allclose(points.mean(axis=0), expected, atol=1e-6)
    assert np.all(np.abs(points[:, 0] - expected[0]) <= 0.35 + 1e-6)  # half a column (0.7 mm)
    assert np.all(np.abs(points[:, 1] - expected[1]) <= 0.40 + 1e-6)  # half a row (0.8 mm)
    slice_uid = pydicom.dcmread(single_series(l_series).files[3]).SOPInstanceUID
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == slice_uid
    referenced = dataset.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    listed = [
        i.ReferencedSOPInstanceUID for i in referenced.RTReferencedSeriesSequence[0].ContourImageSequence
    ]
    assert listed == list(single_series(l_series).sop_instance_uids)


def test_rtstruct_round_trip_on_oblique_series(tmp_path: Path) -> None:
    labels = l_shape_labels()
    orientation = oblique_orientation(11.0)
    write_ct_series(tmp_path / "s", labels.astype(np.int16), spacing_zyx=SPACING, orientation=orientation)
    series = single_series(tmp_path / "s")
    write_rtstruct(labels, series, {1: "L", 2: "ring", 3: "dot"}, tmp_path / "rs.dcm")
    masks = read_rtstruct(tmp_path / "rs.dcm", series)
    for name, value in (("L", 1), ("ring", 2), ("dot", 3)):
        np.testing.assert_array_equal(masks[name], labels == value)
    dataset = pydicom.dcmread(tmp_path / "rs.dcm")
    (contour,) = next(c for c in dataset.ROIContourSequence if c.ReferencedROINumber == 3).ContourSequence
    centre = np.asarray(contour.ContourData, float).reshape(-1, 3).mean(axis=0)
    first = np.asarray(pydicom.dcmread(series.files[3]).ImagePositionPatient, float)
    row_direction, column_direction = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    np.testing.assert_allclose(
        centre, first + 33 * 0.7 * row_direction + 5 * 0.8 * column_direction, atol=1e-5
    )


def test_rtstruct_round_trip_of_random_noise_is_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    """Holes, islands, diagonal-only neighbours and one-pixel structures, on an oblique series."""
    labels = (rng.random((3, 30, 17)) < 0.45).astype(np.uint8) + (rng.random((3, 30, 17)) < 0.2)
    write_ct_series(tmp_path / "s", labels.astype(np.int16), orientation=oblique_orientation(-23.0))
    series = single_series(tmp_path / "s")
    write_rtstruct(labels, series, {1: "a", 2: "b"}, tmp_path / "rs.dcm")
    masks = read_rtstruct(tmp_path / "rs.dcm", series)
    np.testing.assert_array_equal(masks["a"], labels == 1)
    np.testing.assert_array_equal(masks["b"], labels == 2)


def test_mask_outlines_give_inner_contour_for_a_hole() -> None:
    ring = np.zeros((7, 9), bool)
    ring[1:6, 1:8] = True
    ring[3, 4] = False
    assert len(mask_outlines(ring)) == 2


def test_rtstruct_reader_refuses_other_frame_and_off_series_contours(l_series: Path, tmp_path: Path) -> None:
    series = single_series(l_series)
    write_rtstruct(l_shape_labels(), series, {1: "L"}, tmp_path / "rs.dcm")
    dataset = pydicom.dcmread(tmp_path / "rs.dcm")
    dataset.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = generate_uid()
    dataset.save_as(tmp_path / "other_frame.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match="frame of reference"):
        read_rtstruct(tmp_path / "other_frame.dcm", series)
    dataset = pydicom.dcmread(tmp_path / "rs.dcm")
    contour = dataset.ROIContourSequence[0].ContourSequence[0]
    points = np.asarray(contour.ContourData, float).reshape(-1, 3)
    points[:, 2] += 30.0  # ten slices above the series
    contour.ContourData = [f"{v:.6f}" for v in points.ravel()]
    dataset.save_as(tmp_path / "off.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match="lies off the series' slices"):
        read_rtstruct(tmp_path / "off.dcm", series)


def test_labels_off_the_series_grid_are_refused(l_series: Path, tmp_path: Path) -> None:
    with pytest.raises(DicomError, match="does not match the series grid"):
        write_rtstruct(l_shape_labels()[:, :, :24], single_series(l_series), {}, tmp_path / "rs.dcm")
    with pytest.raises(DicomError, match="does not match the series grid"):
        write_dicom_seg(l_shape_labels().transpose(0, 2, 1), single_series(l_series), {}, tmp_path / "s.dcm")


# ------------------------------------------------------------------------------------------------ SEG


def test_seg_round_trip_is_exact_with_an_empty_label(l_series: Path, tmp_path: Path) -> None:
    labels, series = l_shape_labels(), single_series(l_series)
    names = {1: "L", 2: "ring", 3: "dot", 7: "never present"}
    write_dicom_seg(labels, series, names, tmp_path / "seg.dcm")
    masks = read_dicom_seg_masks(tmp_path / "seg.dcm", series)
    assert set(masks) == set(names.values()) and not masks["never present"].any()
    back = read_dicom_seg(tmp_path / "seg.dcm", series, {name: value for value, name in names.items()})
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint8


def test_seg_on_another_series_is_refused(l_series: Path, tmp_path: Path) -> None:
    write_dicom_seg(l_shape_labels(), single_series(l_series), {1: "L"}, tmp_path / "seg.dcm")
    shifted = tmp_path / "shifted"
    frame = single_series(l_series).frame_of_reference_uid
    write_ct_series(
        shifted, np.zeros((5, 24, 40), np.int16), origin_xyz=(0, 0, 0), frame_of_reference_uid=frame
    )
    with pytest.raises(DicomError, match="does not lie on a slice"):
        read_dicom_seg_masks(tmp_path / "seg.dcm", single_series(shifted))
    write_ct_series(
        tmp_path / "f", np.zeros((5, 24, 40), np.int16), spacing_zyx=SPACING, origin_xyz=ORIGIN_XYZ
    )
    with pytest.raises(DicomError, match="frame of reference"):
        read_dicom_seg_masks(tmp_path / "seg.dcm", single_series(tmp_path / "f"))


# ------------------------------------------------------------------------------------------------ real data


def labels_on_series_grid(
    labels: LabelVolume, labels_geometry: Geometry, series_geometry: Geometry
) -> LabelVolume:
    """Reindex a label map that lies on the same physical grid as the series, up to axis flips/permutations.

    The index mapping comes from both geometries (no hard-coded flip); it must be a signed permutation with
    integer offsets, which is asserted.
    """
    corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    mapped = patient_to_index(labels_geometry, index_to_patient(series_geometry, corners))
    matrix, offset = (mapped[1:] - mapped[0]).T, mapped[0]
    np.testing.assert_allclose(matrix, np.rint(matrix), atol=1e-4)
    np.testing.assert_allclose(offset, np.rint(offset), atol=1e-3)
    assert np.allclose(np.abs(matrix), np.eye(3)), "only flips are supported by this helper"
    shape = labels.shape
    axes = [np.rint(offset[a] + matrix[a, a] * np.arange(shape[a])).astype(int) for a in range(3)]
    result: LabelVolume = labels[np.ix_(*axes)]
    return result


@pytest.fixture
def totalseg_case(data_root: Path) -> tuple[Path, LabelVolume]:
    folder = data_root / "totalsegmentator_examples" / "dicom_ct"
    series = single_series(folder / "series")
    _, geometry = read_series(series)
    reference, reference_geometry = read_labels(folder / "example_seg_dicom.nii.gz")
    return folder / "series", labels_on_series_grid(reference, reference_geometry, geometry)


@pytest.mark.realdata
def test_jpeg2000_ct_agrees_with_simpleitk(data_root: Path) -> None:
    compare_with_simpleitk(data_root / "totalsegmentator_examples" / "dicom_ct" / "series")


@pytest.mark.realdata
def test_totalsegmentator_mask_is_flipped_in_y(
    totalseg_case: tuple[Path, LabelVolume], data_root: Path
) -> None:
    """The mask file is LAS: on the series grid it is the file's array with y reversed (a sanity check)."""
    _, labels = totalseg_case
    raw, _ = read_labels(data_root / "totalsegmentator_examples" / "dicom_ct" / "example_seg_dicom.nii.gz")
    np.testing.assert_array_equal(labels, raw[:, ::-1, :])


@pytest.mark.realdata
def test_rtstruct_and_seg_round_trip_totalsegmentator(
    totalseg_case: tuple[Path, LabelVolume], tmp_path: Path
) -> None:
    """Every structure (31, from 123 voxels up): Dice >= 0.95 and centroid within one voxel; SEG exact."""
    folder, labels = totalseg_case
    series = single_series(folder)
    names = {int(v): f"structure_{int(v)}" for v in np.unique(labels) if v}
    write_rtstruct(labels, series, names, tmp_path / "rs.dcm")
    masks = read_rtstruct(tmp_path / "rs.dcm", series)
    for value, name in names.items():
        expected, found = labels == value, masks[name]
        dice = 2 * np.sum(expected & found) / (expected.sum() + found.sum())
        assert dice >= 0.95, (name, dice)
        centroid_shift = np.abs(np.argwhere(expected).mean(0) - np.argwhere(found).mean(0))
        assert np.all(centroid_shift <= 1.0), (name, centroid_shift)
    write_dicom_seg(labels, series, names, tmp_path / "seg.dcm")
    back = read_dicom_seg(tmp_path / "seg.dcm", series, {name: value for value, name in names.items()})
    np.testing.assert_array_equal(back, labels)


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["pat_1", "pat_2", "pat_3", "pat_4"])
def test_lung_gtv_rtstruct_is_read(data_root: Path, case: str) -> None:
    scan = scan_folder(data_root / "lung_ct_rtstruct" / case)
    (series,) = scan.series
    (rtstruct,) = [o for o in scan.others if o.modality == "RTSTRUCT"]
    image, geometry = read_series(series)
    gtv = read_rtstruct(rtstruct.path, series)["GTV-1"]
    assert gtv.shape == image.shape[1:]
    volume_ml = gtv.sum() * np.prod(geometry.spacing_mm) / 1000.0
    assert 1.0 < volume_ml < 1000.0
    assert not (gtv[0].any() or gtv[-1].any() or gtv[:, 0].any() or gtv[:, :, -1].any())  # inside the image
    assert np.median(image[0][gtv]) > -500  # a tumour is soft tissue, not lung air
    assert_contours_touch_mask(pydicom.dcmread(rtstruct.path), series, gtv)


def assert_contours_touch_mask(dataset: pydicom.Dataset, series: DicomSeries, mask: np.ndarray) -> None:
    """Contour points, projected with the raw DICOM tags (not autoseg's geometry), lie within one pixel of the
    mask: catches swapped rows/columns or flips on non-square images."""
    first = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    orientation = np.asarray(first.ImageOrientationPatient, float)
    origin = np.asarray(first.ImagePositionPatient, float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    normal = np.cross(orientation[:3], orientation[3:])
    slice_positions = [float(np.dot(pydicom.dcmread(f).ImagePositionPatient, normal)) for f in series.files]
    for contour in dataset.ROIContourSequence[0].ContourSequence:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        z = int(np.argmin(np.abs(np.asarray(slice_positions) - float(np.dot(points[0], normal)))))
        columns = np.rint((points - origin) @ orientation[:3] / column_spacing).astype(int)
        rows = np.rint((points - origin) @ orientation[3:] / row_spacing).astype(int)
        near = np.zeros(len(points), bool)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r = np.clip(rows + dr, 0, mask.shape[1] - 1)
                c = np.clip(columns + dc, 0, mask.shape[2] - 1)
                near |= mask[z, r, c]
        # CERR's contours have thin spikes that miss every pixel centre (5 of 60 points on one pat_4 slice).
        assert near.mean() >= 0.9, f"{np.sum(~near)} of {len(points)} contour points are not next to the mask"


@pytest.mark.realdata
def test_real_dicom_seg_liver(data_root: Path, tmp_path: Path) -> None:
    folder = data_root / "dicom_seg_ct3slice"
    series = single_series(folder / "ct")
    masks = read_dicom_seg_masks(folder / "seg" / "liver_seg.dcm", series)
    assert list(masks) == ["Liver"] and masks["Liver"].shape == (3, 512, 512)
    assert 10_000 < masks["Liver"].sum() < 3 * 512 * 512 // 2
    shutil.copytree(folder / "ct", tmp_path / "ct")
    labels = masks["Liver"].astype(np.uint8)
    write_dicom_seg(labels, series, {1: "Liver"}, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "seg.dcm", series, {"Liver": 1}), labels)


@pytest.mark.realdata
@pytest.mark.parametrize("folder", ["oblique_t1post_PGBM-003", "hippocrop/study1"])
def test_brain_mr_series_agree_with_simpleitk(data_root: Path, folder: str) -> None:
    compare_with_simpleitk(data_root / "brain_mr_dicom" / folder)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, -1, 0, 0, 0, -1)])
def test_an_exported_series_reads_back_on_the_same_grid(
    tmp_path: Path, rng: np.random.Generator, direction: tuple[float, ...]
) -> None:
    from autoseg.dicom.export import write_image_series

    geometry = Geometry((2.5, 0.8, 0.6), (10.0, -20.0, 30.0), tuple(float(v) for v in direction))
    image = rng.normal(0, 300, size=(4, 12, 20)).round().astype(np.float32)  # non-square, HU-like
    write_image_series(image, geometry, tmp_path / "series")
    read, read_geometry = read_series(single_series(tmp_path / "series"))
    np.testing.assert_array_equal(read[0], image)
    assert not read_geometry.differences(geometry, tolerance=1e-6)
    fractional = image / 7.0
    write_image_series(fractional, geometry, tmp_path / "mr", modality="MR")
    np.testing.assert_allclose(read_series(single_series(tmp_path / "mr"))[0][0], fractional, atol=0.01)


def test_declared_structure_types_reach_the_rtstruct(l_series: Path, tmp_path: Path) -> None:
    """A type the dataset declares (a mapping file's ``type``) wins over the one the name implies; an invalid
    one falls back to the name's."""
    import pydicom

    labels, series = l_shape_labels(), single_series(l_series)
    types = {"L": "AVOIDANCE", "ring": "NOT_A_TYPE"}  # 'ring' is a planning helper by its name: CONTROL
    write_rtstruct(labels, series, {1: "L", 2: "ring", 3: "GTV"}, tmp_path / "rs.dcm", types=types)
    dataset = pydicom.dcmread(tmp_path / "rs.dcm")
    names = {int(r.ROINumber): str(r.ROIName) for r in dataset.StructureSetROISequence}
    written = {
        names[int(o.ReferencedROINumber)]: o.RTROIInterpretedType for o in dataset.RTROIObservationsSequence
    }
    assert written == {"L": "AVOIDANCE", "ring": "CONTROL", "GTV": "GTV"}
