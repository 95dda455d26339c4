"""What DICOM writers share: source headers to reference, Patient/Study attributes to copy, atomic saves."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from autoseg.dicom.errors import DicomError
from autoseg.dicom.series import DicomSeries, read_header
from autoseg.io import atomic_target

logger = logging.getLogger(__name__)

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
        with atomic_target(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
    except OSError as error:
        raise DicomError(f"{path}: cannot write ({error})") from None
