"""DICOM RT Structure Set (RTSTRUCT) writing and reading, on pydicom, on the grid of a DICOM image series.

Writing: one ROI per label; on every slice, the outlines of the label's pixels are traced with
``skimage.measure.find_contours`` at level 0.5 on the zero-padded binary slice, so each outline runs along
pixel edges (through the midpoints between inside and outside pixel centres). Holes become inner contours.
Contour points go to LPS patient millimetres through :mod:`autoseg.dicom.geometry` (oblique series included).

Reading: each CLOSED_PLANAR contour is matched to the slice nearest to it along the slice normal (all its
points within half a slice spacing of that slice), projected to fractional ``(row, column)`` indices and
filled with ``skimage.draw.polygon`` (pixel centres inside the polygon). Contours of one ROI on one slice are
combined by XOR (even-odd), so inner contours cut holes.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from skimage import draw, measure

from autoseg import __version__
from autoseg.dicom.geometry import index_to_patient, patient_to_index
from autoseg.dicom.series import DicomSeries, read_header, series_geometry
from autoseg.dicom.writing import copy_patient_and_study, read_source_headers, save_atomically
from autoseg.errors import DicomError
from autoseg.io import Geometry
from autoseg.types import BoolVolume, LabelVolume

logger = logging.getLogger(__name__)

PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)  # fmt: skip
"""ROI display colours (RGB), used in turn by label value: label ``v`` gets ``PALETTE[(v - 1) % 20]``."""

_STUDY_SOP_CLASS = (
    "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, what RTReferencedStudy conventionally cites
)


def write_rtstruct(
    labels: LabelVolume,
    series: DicomSeries,
    label_names: Mapping[int, str],
    path: Path,
    *,
    algorithm_name: str = "autoseg",
    algorithm_version: str = __version__,
) -> None:
    """Write a label map as an RTSTRUCT that references ``series``, atomically.

    One ROI per label in ``label_names`` (ROI number = label value; labels without voxels become ROIs with no
    contours) plus one ROI named ``label_<v>`` per label present but not named.

    Args:
        labels: ``(Z, Y, X)`` unsigned label map on the series grid (Z in slice order, Y = rows, X = columns).
        series: the image series the labels were computed on.
        label_names: label value -> ROI name (background 0 is ignored).
        path: output file.
        algorithm_name: ROIGenerationDescription/Manufacturer name.
        algorithm_version: SoftwareVersions.

    Raises:
        DicomError: labels not on the series grid, or the series geometry is invalid.
    """
    geometry = series_geometry(series)
    _check_grid(labels, series)
    headers = read_source_headers(series)
    dataset = _structure_set(headers, algorithm_name, algorithm_version)
    frame_uid = str(headers[0].FrameOfReferenceUID)
    values = sorted({v for v in label_names if v > 0} | {int(v) for v in np.unique(labels) if v > 0})
    for value in values:
        name = label_names.get(value, f"label_{value}")
        contours = _label_contours(labels == value, geometry, headers)
        if not contours:
            logger.info("%s: label %d (%s) has no voxels; its ROI has no contours", path, value, name)
        _add_roi(dataset, value, name, frame_uid, contours, algorithm_name)
    save_atomically(dataset, path)


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask's pixels, as ``(N, 2)`` float ``(row, column)`` index vertices.

    Outer boundaries and hole boundaries both come out; the first vertex is not repeated at the end.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    found = measure.find_contours(padded, 0.5)  # type: ignore[no-untyped-call]  # skimage ships no hints
    return [contour[:-1] - 1.0 for contour in found if len(contour) >= 4]


def read_rtstruct(path: Path, series: DicomSeries) -> dict[str, BoolVolume]:
    """Rasterise every ROI of an RTSTRUCT on the grid of ``series``.

    Returns:
        ROI name -> ``(Z, Y, X)`` bool mask on the series grid (ROIs with no contours give empty masks; ROIs
        sharing a name are merged). Only CLOSED_PLANAR contours are filled; POINT/OPEN contours are skipped.

    Raises:
        DicomError: not an RTSTRUCT, frame of reference differs from the series, or a contour lies off the
            series' slices.
    """
    dataset = _read_structure_set(path)
    geometry = series_geometry(series)
    first = series.instances[0]
    shape = (len(series.instances), first.rows, first.columns)
    names = _roi_names(dataset, series, path)
    masks: dict[str, BoolVolume] = {name: np.zeros(shape, bool) for name in names.values()}
    for roi_contour in dataset.get("ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        name = names.get(number, f"ROI {number}")
        mask = masks.setdefault(name, np.zeros(shape, bool))
        for contour in roi_contour.get("ContourSequence", []):
            _fill_contour(mask, contour, geometry, f"{path}: ROI '{name}'")
    return masks


# ------------------------------------------------------------------------------------------------ writing


def _check_grid(labels: LabelVolume, series: DicomSeries) -> None:
    first = series.instances[0]
    expected = (len(series.instances), first.rows, first.columns)
    if labels.shape != expected:
        raise DicomError(
            f"label map shape {labels.shape} does not match the series grid (Z, Y, X) = {expected} of "
            f"{series.summary()}"
        )


def _structure_set(headers: Sequence[Dataset], algorithm_name: str, algorithm_version: str) -> Dataset:
    source = headers[0]
    now = datetime.datetime.now()
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.SOPClassUID = RTStructureSetStorage
    dataset.SOPInstanceUID = generate_uid()
    copy_patient_and_study(source, dataset)
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SeriesNumber = 901
    dataset.SeriesDescription = f"{algorithm_name} structures"
    dataset.InstanceNumber = 1
    dataset.Manufacturer = algorithm_name
    dataset.SoftwareVersions = algorithm_version
    dataset.StructureSetLabel = algorithm_name[:16]
    dataset.StructureSetDate = dataset.InstanceCreationDate = now.strftime("%Y%m%d")
    dataset.StructureSetTime = dataset.InstanceCreationTime = now.strftime("%H%M%S")
    dataset.ReferencedFrameOfReferenceSequence = [_referenced_frame(headers)]
    dataset.StructureSetROISequence = []
    dataset.ROIContourSequence = []
    dataset.RTROIObservationsSequence = []
    return dataset


def _image_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def _referenced_frame(headers: Sequence[Dataset]) -> Dataset:
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = headers[0].SeriesInstanceUID
    referenced_series.ContourImageSequence = [_image_reference(h) for h in headers]
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_SOP_CLASS
    study.ReferencedSOPInstanceUID = headers[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [referenced_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = headers[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _label_contours(mask: np.ndarray, geometry: Geometry, headers: Sequence[Dataset]) -> list[Dataset]:
    contours: list[Dataset] = []
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        for outline in mask_outlines(mask[z]):
            index = np.column_stack([np.full(len(outline), float(z)), outline])
            points = index_to_patient(geometry, index)
            contour = Dataset()
            contour.ContourImageSequence = [_image_reference(headers[int(z)])]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [_ds(v) for v in points.ravel()]
            contours.append(contour)
    return contours


def _ds(value: float) -> str:
    """A DS string of at most 16 characters (about 0.1 micrometre resolution for body coordinates)."""
    text = f"{value:.10g}"
    return "0" if text in ("-0", "0") or abs(value) < 1e-9 else text


def _add_roi(
    dataset: Dataset, value: int, name: str, frame_uid: str, contours: list[Dataset], algorithm_name: str
) -> None:
    roi = Dataset()
    roi.ROINumber = value
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = algorithm_name
    dataset.StructureSetROISequence.append(roi)
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = list(PALETTE[(value - 1) % len(PALETTE)])
    roi_contour.ReferencedROINumber = value
    if contours:
        roi_contour.ContourSequence = contours
    dataset.ROIContourSequence.append(roi_contour)
    observation = Dataset()
    observation.ObservationNumber = value
    observation.ReferencedROINumber = value
    observation.RTROIInterpretedType = "ORGAN"
    observation.ROIInterpreter = ""
    dataset.RTROIObservationsSequence.append(observation)


# ------------------------------------------------------------------------------------------------ reading


def _read_structure_set(path: Path) -> Dataset:
    if not path.is_file():
        raise DicomError(f"{path}: RTSTRUCT file does not exist")
    dataset = read_header(path)
    if dataset is None:
        raise DicomError(f"{path}: is not a DICOM file")
    modality = str(dataset.get("Modality", ""))
    if modality != "RTSTRUCT" or "StructureSetROISequence" not in dataset:
        raise DicomError(f"{path}: is a {modality or 'DICOM'} object, not an RTSTRUCT with structures")
    return dataset


def _roi_names(dataset: Dataset, series: DicomSeries, path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for roi in dataset.StructureSetROISequence:
        frame = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
        name = str(roi.get("ROIName", "") or f"ROI {roi.ROINumber}")
        if frame and series.frame_of_reference_uid and frame != series.frame_of_reference_uid:
            raise DicomError(
                f"{path}: ROI '{name}' is in frame of reference {frame}, but the image series is in "
                f"{series.frame_of_reference_uid}; pair the RTSTRUCT with the series it was drawn on",
                details=[series.summary()],
            )
        names[int(roi.ROINumber)] = name
    return names


def _fill_contour(mask: BoolVolume, contour: Dataset, geometry: Geometry, where: str) -> None:
    kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
    data = [float(v) for v in contour.get("ContourData", [])]
    if kind != "CLOSED_PLANAR" or len(data) < 9 or len(data) % 3:
        logger.debug("%s: skipped a %s contour with %d values", where, kind, len(data))
        return
    index = patient_to_index(geometry, np.asarray(data).reshape(-1, 3))
    z = int(np.rint(np.mean(index[:, 0])))
    if not 0 <= z < mask.shape[0] or np.max(np.abs(index[:, 0] - z)) > 0.5:
        span = (float(index[:, 0].min()), float(index[:, 0].max()))
        raise DicomError(
            f"{where}: a contour lies off the series' slices (slice index {span[0]:.2f}..{span[1]:.2f}, "
            f"series has 0..{mask.shape[0] - 1}); was it drawn on another series?"
        )
    rows, columns = draw.polygon(  # type: ignore[no-untyped-call]  # skimage ships no type hints
        index[:, 1], index[:, 2], shape=mask.shape[1:]
    )
    mask[z, rows, columns] ^= True
