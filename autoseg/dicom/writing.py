"""Atomic DICOM writes, and the Patient/Study attributes a derived object copies from its source."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

from autoseg.dicom.errors import DicomError

PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
"""Patient and General Study module attributes copied from the source image into a derived object."""


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and General Study attributes of ``source`` into ``target`` (empty when absent)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(target, keyword, source.get(keyword, "") or "")


def save_atomically(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` as a DICOM file (with preamble and file meta) through a temporary file and a rename.

    Raises:
        DicomError: the file system refused the write.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
    except OSError as error:
        raise DicomError(f"{path}: cannot write ({error})") from None
    try:
        dataset.save_as(temporary, enforce_file_format=True)
        Path(temporary).replace(path)
    except OSError as error:
        raise DicomError(f"{path}: cannot write ({error})") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
