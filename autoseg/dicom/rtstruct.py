"""DICOM RT Structure Set (RTSTRUCT) writing and reading, on pydicom, on the grid of a DICOM image series.

Writing: one ROI per structure (:class:`autoseg.dicom.structures.Structure`; structures may overlap, a
label map is one way to get them); on every slice, the outlines of the label's pixels are traced with
``skimage.measure.find_contours`` at level 0.5 on the zero-padded binary slice, so each outline runs along
pixel edges (through the midpoints between inside and outside pixel centres). Holes become inner contours.
Contour points go to LPS patient millimetres through :mod:`autoseg.dicom.geometry` (oblique series included).

Reading: each CLOSED_PLANAR contour is matched to the slice nearest to it along the slice normal (all its
points within half a slice spacing of that slice), projected to fractional ``(row, column)`` indices and
filled with ``skimage.draw.polygon`` (pixel centres inside the polygon). Contours of one ROI on one slice are
combined by XOR (even-odd), so inner contours cut holes.
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ImplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from skimage import draw, measure

from autoseg import __version__
from autoseg.dicom.geometry import index_to_patient, patient_to_index
from autoseg.dicom.names import ROI_TYPES
from autoseg.dicom.series import DicomSeries, read_header, series_geometry
from autoseg.dicom.structures import Structure, check_structures, roi_numbers, structures_from_labels
from autoseg.dicom.writing import (
    apply_character_set,
    check_label_grid,
    copy_patient_and_study,
    read_source_headers,
    save_atomically,
    series_shape,
)
from autoseg.errors import DicomError
from autoseg.io import Geometry
from autoseg.types import BoolVolume, LabelVolume

logger = logging.getLogger(__name__)

_AI_FAMILY = codes.cid7162.ArtificialIntelligence

_STUDY_SOP_CLASS = (
    "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, what RTReferencedStudy conventionally cites
)


def write_rtstruct(
    labels: LabelVolume,
    series: DicomSeries,
    label_names: Mapping[int, str],
    path: Path,
    *,
    skip_empty: bool = False,
    algorithm_name: str = "autoseg",
    algorithm_version: str = __version__,
    uid_seed: str | None = None,
    types: Mapping[str, str] | None = None,
) -> None:
    """Write a label map as an RTSTRUCT that references ``series``, atomically.

    One ROI per label in ``label_names`` (ROI number = label value; labels without voxels become ROIs with no
    contours unless ``skip_empty``) plus one ROI named ``label_<v>`` per label present but not named; types
    and colours as :func:`autoseg.dicom.structures.structures_from_labels` gives them.

    Args:
        labels: ``(Z, Y, X)`` unsigned label map on the series grid (Z in slice order, Y = rows, X = columns).
        series: the image series the labels were computed on.
        label_names: label value -> ROI name (background 0 is ignored).
        path: output file.
        skip_empty: leave out the ROIs of labels without voxels.
        algorithm_name: Manufacturer, ROIGenerationDescription and the ROI derivation algorithm's name.
        algorithm_version: SoftwareVersions and the algorithm's version.
        uid_seed: ``None``: new random SOP Instance and Series Instance UIDs; otherwise both are derived from
            this text (the same seed gives the same UIDs, so a re-sent result is recognisable).
        types: ROI name -> RTROIInterpretedType where the dataset said (else from the name).

    Raises:
        DicomError: labels not on the series grid, or the series geometry is invalid.
    """
    check_label_grid(labels, series)
    structures = structures_from_labels(labels, label_names, types)
    write_rtstruct_structures(
        structures,
        series,
        path,
        skip_empty=skip_empty,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        uid_seed=uid_seed,
    )


def write_rtstruct_structures(
    structures: Sequence[Structure],
    series: DicomSeries,
    path: Path,
    *,
    skip_empty: bool = False,
    algorithm_name: str = "autoseg",
    algorithm_version: str = __version__,
    uid_seed: str | None = None,
) -> None:
    """Write structures (they may overlap) as an RTSTRUCT referencing ``series``, one ROI each, atomically.

    The structure set is UNAPPROVED (Approval module), every ROI AUTOMATIC with its algorithm identified;
    Patient and Study attributes come from the source; the character set is the source's unless a name needs
    UTF-8 (:func:`autoseg.dicom.writing.apply_character_set`).

    Args:
        structures: masks on the series grid with name, RTROIInterpretedType, colour, ROI number.
        series: the image series the masks were computed on.
        path: output file.
        skip_empty: leave out structures without voxels (otherwise: ROIs without contours).
        algorithm_name: as :func:`write_rtstruct`.
        algorithm_version: as :func:`write_rtstruct`.
        uid_seed: as :func:`write_rtstruct`.

    Raises:
        DicomError: a mask off the series grid, repeated names or ROI numbers, no structure to write, or an
            invalid series geometry.
        StructureNameError: an invalid ROI name (:func:`autoseg.dicom.names.check_roi_name`).
    """
    geometry = series_geometry(series)
    check_structures(structures, series_shape(series), str(path))
    numbered = list(zip(roi_numbers(structures), structures, strict=True))
    if skip_empty:
        numbered = [(number, s) for number, s in numbered if not s.is_empty]
    if not numbered:
        raise DicomError(f"{path}: no structure to write; an RTSTRUCT needs at least one ROI")
    headers = read_source_headers(series)
    dataset = _structure_set(headers, algorithm_name, algorithm_version, uid_seed)
    algorithm = _algorithm_identification(algorithm_name, algorithm_version)
    for number, structure in numbered:
        contours = _label_contours(structure.mask, geometry, headers)
        if not contours:
            logger.info("%s: structure %s has no voxels; its ROI has no contours", path, structure.name)
        _add_roi(dataset, number, structure, contours, algorithm)
    apply_character_set(dataset, headers[0])
    save_atomically(dataset, path)


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask's pixels, as ``(N, 2)`` float ``(row, column)`` index vertices.

    Outer boundaries and hole boundaries both come out; the first vertex is not repeated at the end.
    Vertices in the middle of a straight run are dropped (the polygon is the same, the file smaller).
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    found = measure.find_contours(padded, 0.5)  # type: ignore[no-untyped-call]  # skimage ships no hints
    return [_corners(contour[:-1] - 1.0) for contour in found if len(contour) >= 4]


def _corners(outline: np.ndarray) -> np.ndarray:
    """The vertices of a closed polygon where it turns (collinear ones dropped)."""
    before, after = outline - np.roll(outline, 1, axis=0), np.roll(outline, -1, axis=0) - outline
    turns = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return outline[turns] if turns.sum() >= 3 else outline


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


def _structure_set(
    headers: Sequence[Dataset], algorithm_name: str, algorithm_version: str, uid_seed: str | None = None
) -> Dataset:
    source = headers[0]
    now = datetime.datetime.now()
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    # Implicit VR: ContourData of a long outline can pass the 64 KB that explicit VR's DS length allows.
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    dataset.SOPClassUID = RTStructureSetStorage
    dataset.SOPInstanceUID = _new_uid(uid_seed, "rtstruct")
    copy_patient_and_study(source, dataset)
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = _new_uid(uid_seed, "rtstruct series")
    dataset.SeriesNumber = 901
    dataset.SeriesDescription = f"{algorithm_name} structures"
    dataset.OperatorsName = ""
    dataset.FrameOfReferenceUID = source.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "") or ""
    dataset.InstanceNumber = 1
    dataset.Manufacturer = dataset.ManufacturerModelName = algorithm_name
    dataset.SoftwareVersions = algorithm_version
    dataset.StructureSetLabel = algorithm_name[:16]
    dataset.StructureSetDescription = f"automatic contours by {algorithm_name} {algorithm_version}"[:1024]
    dataset.StructureSetDate = dataset.InstanceCreationDate = now.strftime("%Y%m%d")
    dataset.StructureSetTime = dataset.InstanceCreationTime = now.strftime("%H%M%S")
    dataset.ReferencedFrameOfReferenceSequence = [_referenced_frame(headers)]
    dataset.StructureSetROISequence = []
    dataset.ROIContourSequence = []
    dataset.RTROIObservationsSequence = []
    dataset.ApprovalStatus = "UNAPPROVED"
    return dataset


def _new_uid(seed: str | None, what: str) -> str:
    """A random UID, or one derived from ``seed`` and ``what``."""
    return str(generate_uid() if seed is None else generate_uid(entropy_srcs=[seed, what]))


def _algorithm_identification(name: str, version: str) -> Dataset:
    """An ROIDerivationAlgorithmIdentificationSequence item: family Artificial Intelligence, name, version."""
    family = Dataset()
    family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning = (
        _AI_FAMILY.value,
        _AI_FAMILY.scheme_designator,
        _AI_FAMILY.meaning,
    )
    item = Dataset()
    item.AlgorithmFamilyCodeSequence = [family]
    item.AlgorithmName = name
    item.AlgorithmVersion = version
    return item


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
    dataset: Dataset, number: int, structure: Structure, contours: list[Dataset], algorithm: Dataset
) -> None:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = dataset.FrameOfReferenceUID
    roi.ROIName = structure.name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{algorithm.AlgorithmName} {algorithm.AlgorithmVersion}"
    roi.ROIDerivationAlgorithmIdentificationSequence = [copy.deepcopy(algorithm)]
    dataset.StructureSetROISequence.append(roi)
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = list(structure.colour)
    roi_contour.ReferencedROINumber = number
    if contours:
        roi_contour.ContourSequence = contours
    dataset.ROIContourSequence.append(roi_contour)
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = structure.interpreted_type
    observation.ROIInterpreter = ""
    dataset.RTROIObservationsSequence.append(observation)


# ------------------------------------------------------------------------------------------------ reading


def read_roi_types(path: Path) -> dict[str, str]:
    """ROI name -> RTROIInterpretedType of an RTSTRUCT, where its observations give one of DICOM's defined
    terms (ROIs without one are left out).

    Raises:
        DicomError: not an RTSTRUCT.
    """
    dataset = _read_structure_set(path)
    names = {int(r.ROINumber): str(r.get("ROIName", "") or f"ROI {r.ROINumber}") for r in
             dataset.StructureSetROISequence}  # fmt: skip
    types: dict[str, str] = {}
    for observation in dataset.get("RTROIObservationsSequence", []):
        kind = str(observation.get("RTROIInterpretedType", "") or "").strip().upper()
        name = names.get(int(observation.get("ReferencedROINumber", -1)))
        if name is not None and kind in ROI_TYPES:
            types.setdefault(name, kind)
    return types


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
