"""Tiny synthetic DICOM CT series for tests, written with pydicom (explicit VR little endian)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def oblique_orientation(degrees: float) -> tuple[float, ...]:
    """An ImageOrientationPatient tilted by ``degrees`` about the patient x axis."""
    angle = np.deg2rad(degrees)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)))


def write_ct_series(
    folder: Path,
    stored: np.ndarray,
    *,
    spacing_zyx: Sequence[float] = (3.0, 0.8, 0.7),
    origin_xyz: Sequence[float] = (-10.0, 20.0, 30.0),
    orientation: Sequence[float] = AXIAL,
    rescale: tuple[float, float] = (1.0, -1024.0),
    frame_of_reference_uid: str | None = None,
    name_prefix: str = "slice",
) -> list[Path]:
    """Write ``stored`` ``(Z, Y, X)`` int16 values, one CT file per slice, slice k k steps along the normal.

    File names count down while positions go up, so a reader must sort by position. Returns the paths in
    slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    study, series = generate_uid(), generate_uid()
    frame = frame_of_reference_uid or generate_uid()
    paths = []
    for k in range(stored.shape[0]):
        position = np.asarray(origin_xyz, float) + k * spacing_zyx[0] * normal
        dataset = _slice_dataset(stored[k], position, orientation, spacing_zyx, rescale)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = (
            study,
            series,
            frame,
        )
        dataset.InstanceNumber = k + 1
        path = folder / f"{name_prefix}{stored.shape[0] - k:03d}"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(
    pixels: np.ndarray,
    position: np.ndarray,
    orientation: Sequence[float],
    spacing_zyx: Sequence[float],
    rescale: tuple[float, float],
) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "CT"
    dataset.PatientName, dataset.PatientID = "Test^Patient", "TEST001"
    dataset.SeriesDescription = "synthetic"
    dataset.ImagePositionPatient = [f"{v:.6f}" for v in position]
    dataset.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    dataset.PixelSpacing = [f"{spacing_zyx[1]:g}", f"{spacing_zyx[2]:g}"]
    dataset.SliceThickness = f"{spacing_zyx[0]:g}"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
    dataset.RescaleSlope, dataset.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return dataset
