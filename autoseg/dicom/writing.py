"""What DICOM writers share: source headers to reference, Patient/Study attributes to copy, atomic saves."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from autoseg.dicom.series import DicomSeries, read_header
from autoseg.errors import DicomError
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


def read_source_headers(series: DicomSeries) -> list[Dataset]:
    """Headers (no pixels) of the series' files in slice order, for writers that reference the source.

    Missing Patient/Study attributes are added empty. Empty SOPInstanceUID/SOPClassUID (anonymised data)
    are filled from the file meta information. Empty StudyInstanceUID, SeriesInstanceUID or
    FrameOfReferenceUID are replaced by UIDs derived from the instance UIDs (the same on every call) and a
    warning is logged: the output then references UIDs that the source files do not carry.
    """
    filled = _filled_uids(series)
    headers: list[Dataset] = []
    for instance in series.instances:
        header = read_header(instance.path)
        if header is None:
            raise DicomError(f"{instance.path}: is no longer a readable DICOM file")
        header.SOPInstanceUID = instance.sop_instance_uid
        header.SOPClassUID = series.sop_class_uid
        for keyword, value in filled.items():
            setattr(header, keyword, value)
        for keyword in PATIENT_STUDY_KEYWORDS:  # type 2 in derived objects: present, possibly empty
            if keyword not in header:
                setattr(header, keyword, "")
        if "SpecificCharacterSet" in header and not header.SpecificCharacterSet:
            del header.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses ''
        headers.append(header)
    return headers


def _filled_uids(series: DicomSeries) -> dict[str, str]:
    present = {
        "StudyInstanceUID": series.study_instance_uid,
        "SeriesInstanceUID": series.series_instance_uid,
        "FrameOfReferenceUID": series.frame_of_reference_uid,
    }
    filled: dict[str, str] = {}
    for keyword, value in present.items():
        if not value:
            filled[keyword] = str(generate_uid(entropy_srcs=[keyword, *series.sop_instance_uids]))
            logger.warning("%s: empty %s, referenced as %s", series.summary(), keyword, filled[keyword])
    return filled
