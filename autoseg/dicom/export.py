"""Write an image volume as a DICOM image series (one file per slice), e.g. to try predict's DICOM SEG and
RTSTRUCT outputs on data that only exists as NIfTI (the demo does this with its synthetic cases), and a
structure set as a clinic's planning system would have saved it (``autoseg synth --preset rt``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from autoseg import __version__
from autoseg.dicom.geometry import index_to_patient
from autoseg.dicom.rtstruct import write_rtstruct_structures
from autoseg.dicom.series import single_series
from autoseg.dicom.structures import Structure
from autoseg.dicom.writing import save_atomically
from autoseg.errors import DicomError
from autoseg.io import Geometry
from autoseg.types import FloatVolume

_STORAGE = {"CT": CTImageStorage, "MR": MRImageStorage}


def write_image_series(
    image: FloatVolume,
    geometry: Geometry,
    folder: Path,
    *,
    modality: str = "CT",
    patient_id: str = "ANON",
    uid_seed: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``image`` ``(Z, Y, X)`` as a DICOM series in ``folder`` (``slice_0001.dcm``... in slice order).

    Stored as int16 with a rescale slope/intercept chosen to keep the value range (HU stay HU for CT, with
    slope 1 when the values are integers that fit); positions and orientation come from ``geometry``, so
    reading the series back gives the same grid.

    Args:
        image: ``(Z, Y, X)`` values (HU for CT).
        geometry: the grid; its direction must stack the slices along their normal.
        folder: where the slices go (created by the writes).
        modality: ``"CT"`` or ``"MR"``.
        patient_id: PatientID and PatientName.
        uid_seed: ``None``: new random UIDs; otherwise every UID is derived from this text (the same series
            every time, e.g. for a synthetic dataset made from a seed).
        attributes: extra DICOM keywords set on every slice (``StudyDate``, ``StudyID``, ...).

    Raises:
        DicomError: not 3D, a modality other than CT/MR, or a geometry whose slices are not stacked along
            their normal (DICOM image series cannot hold a sheared grid).
    """
    if image.ndim != 3:
        raise DicomError(f"{folder}: expected a (Z, Y, X) image, got shape {image.shape}")
    if modality not in _STORAGE:
        raise DicomError(f"{folder}: modality {modality} not supported; use CT or MR")
    direction = geometry.direction_matrix()[::-1, ::-1]  # rows x, y, z; columns i (x), j (y), k (z)
    row, column, stack = direction[:, 0], direction[:, 1], direction[:, 2]
    if not np.allclose(np.cross(row, column), stack, atol=1e-4):
        raise DicomError(f"{folder}: the slice axis is not the normal of the slices; cannot write DICOM")
    slope, intercept = _rescale(image)
    stored = np.round((image - intercept) / slope).clip(-32768, 32767).astype("<i2")
    uids = {key: _uid(uid_seed, key) for key in ("study", "series", "frame")}
    orientation = [f"{v:.8f}" for v in (*row, *column)]
    paths: list[Path] = []
    for k in range(image.shape[0]):
        dataset = _slice(stored[k], modality, uids, patient_id)
        dataset.SOPInstanceUID = _uid(uid_seed, f"slice {k}")
        for keyword, value in (attributes or {}).items():
            setattr(dataset, keyword, value)
        dataset.InstanceNumber = k + 1
        dataset.ImagePositionPatient = [f"{v:.6f}" for v in index_to_patient(geometry, (k, 0, 0))[0]]
        dataset.ImageOrientationPatient = orientation
        dataset.PixelSpacing = [f"{geometry.spacing_mm[1]:.6g}", f"{geometry.spacing_mm[2]:.6g}"]
        dataset.SliceThickness = f"{geometry.spacing_mm[0]:.6g}"
        dataset.RescaleSlope, dataset.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        paths.append(folder / f"slice_{k + 1:04d}.dcm")
        save_atomically(dataset, paths[-1])
    return paths


def write_clinical_structure_set(
    structures: Sequence[Structure],
    series_folder: Path,
    path: Path,
    *,
    uid_seed: str,
    label: str = "RTPLAN1",
) -> Path:
    """Write structures as a clinic's planning system saves a manually drawn, approved structure set.

    The RTSTRUCT is :func:`autoseg.dicom.rtstruct.write_rtstruct_structures`'s (one ROI per structure, so
    overlapping structures stay whole; each structure's own RTROIInterpretedType and colour), then every ROI
    is marked ``MANUAL`` (no derivation algorithm), the set APPROVED by a reviewer, and its UIDs, dates and
    times derived from ``uid_seed``, so the same seed writes the same file.

    Args:
        structures: masks on the grid of the series in ``series_folder``, in ROI order.
        series_folder: a folder holding exactly one image series (e.g. from :func:`write_image_series`).
        path: the RTSTRUCT file to write.
        uid_seed: text every new UID is derived from.
        label: StructureSetLabel (at most 16 characters).

    Returns:
        ``path``.

    Raises:
        DicomError: no single series in ``series_folder``, or structures the writer refuses.
    """
    write_rtstruct_structures(structures, single_series(series_folder), path)
    dataset = pydicom.dcmread(path)
    dataset.SOPInstanceUID = _uid(uid_seed, "rtstruct")
    dataset.file_meta.MediaStorageSOPInstanceUID = UID(dataset.SOPInstanceUID)
    dataset.SeriesInstanceUID = _uid(uid_seed, "rtstruct series")
    dataset.StructureSetLabel = label[:16]
    dataset.StructureSetDescription = "structures drawn for treatment planning"
    dataset.Manufacturer, dataset.ManufacturerModelName = "autoseg synth", "synthetic planning system"
    dataset.OperatorsName = "Dosimetrist^Synthetic"
    for date_keyword in ("StructureSetDate", "InstanceCreationDate", "ReviewDate"):
        setattr(dataset, date_keyword, "20240102")
    for time_keyword in ("StructureSetTime", "InstanceCreationTime", "ReviewTime"):
        setattr(dataset, time_keyword, "103000")
    dataset.ApprovalStatus, dataset.ReviewerName = "APPROVED", "Oncologist^Synthetic"
    for roi in dataset.StructureSetROISequence:
        roi.ROIGenerationAlgorithm = "MANUAL"
        for keyword in ("ROIGenerationDescription", "ROIDerivationAlgorithmIdentificationSequence"):
            if keyword in roi:
                delattr(roi, keyword)
    for observation in dataset.RTROIObservationsSequence:
        observation.ROIInterpreter = "Oncologist^Synthetic"
    save_atomically(dataset, path)
    return path


def _uid(seed: str | None, what: str) -> str:
    """A new random UID, or (``seed`` given) one derived from ``seed`` and ``what``."""
    return str(generate_uid() if seed is None else generate_uid(entropy_srcs=[seed, what]))


def _rescale(image: FloatVolume) -> tuple[float, float]:
    """Slope and intercept mapping the image's range into int16."""
    low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if np.array_equal(image, np.round(image)) and low >= -32768 and high <= 32767:
        return 1.0, 0.0
    slope = max((high - low) / 65000.0, 1e-6)
    return slope, low + 32768 * slope


def _slice(pixels: np.ndarray, modality: str, uids: dict[str, str], patient_id: str) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = _STORAGE[modality]
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = uids["study"], uids["series"]
    dataset.FrameOfReferenceUID = uids["frame"]
    dataset.Modality = modality
    dataset.PatientName, dataset.PatientID = patient_id, patient_id
    dataset.SeriesDescription = "autoseg export"
    dataset.SeriesNumber = 1
    dataset.Manufacturer = "autoseg"
    dataset.SoftwareVersions = __version__
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    return dataset
