"""The DICOM layer: read image series, write/read DICOM SEG and RTSTRUCT, convert cases to a dataset.

Only this package imports pydicom and highdicom. See ``docs/dicom.md``.
"""

from __future__ import annotations

from autoseg.dicom.convert import CaseReport, ConvertReport, ConvertRequest, convert_dicom
from autoseg.dicom.rtstruct import read_rtstruct, write_rtstruct
from autoseg.dicom.seg import read_dicom_seg, read_dicom_seg_masks, write_dicom_seg
from autoseg.dicom.series import (
    DicomSeries,
    find_series,
    is_dicom_path,
    read_series,
    scan_folder,
    series_geometry,
    single_series,
)
from autoseg.errors import DicomError

__all__ = [
    "CaseReport",
    "ConvertReport",
    "ConvertRequest",
    "DicomError",
    "DicomSeries",
    "convert_dicom",
    "find_series",
    "is_dicom_path",
    "read_dicom_seg",
    "read_dicom_seg_masks",
    "read_rtstruct",
    "read_series",
    "scan_folder",
    "series_geometry",
    "single_series",
    "write_dicom_seg",
    "write_rtstruct",
]
