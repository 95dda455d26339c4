"""The DICOM layer: read image series, write/read DICOM SEG and RTSTRUCT, convert cases to a dataset.

Only this package imports pydicom and highdicom (on first use of a name: ``import autoseg.dicom`` is cheap).
Structure names: :mod:`autoseg.dicom.names` (a built-in TG-263 table, ROI types, colours, name checks).
Reads DICOM files and folders; writes ``<case>_seg.dcm``, ``<case>_rtstruct.dcm``, DICOM image series
(:mod:`autoseg.dicom.export`) and, for ``convert-dicom``, a dataset folder. See ``docs/dicom.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.dicom.convert import CaseReport, ConvertReport, ConvertRequest, convert_dicom
    from autoseg.dicom.names import check_roi_name, match_tg263, roi_interpreted_type, structure_colours
    from autoseg.dicom.rtstruct import read_rtstruct, write_rtstruct, write_rtstruct_structures
    from autoseg.dicom.seg import (
        read_dicom_seg,
        read_dicom_seg_masks,
        write_dicom_seg,
        write_dicom_seg_structures,
    )
    from autoseg.dicom.series import (
        DicomSeries,
        find_series,
        is_dicom_path,
        read_series,
        scan_folder,
        series_geometry,
        single_series,
    )
    from autoseg.dicom.structures import Structure
    from autoseg.errors import DicomError

__all__ = [
    "CaseReport",
    "ConvertReport",
    "ConvertRequest",
    "DicomError",
    "DicomSeries",
    "Structure",
    "check_roi_name",
    "convert_dicom",
    "find_series",
    "is_dicom_path",
    "match_tg263",
    "read_dicom_seg",
    "read_dicom_seg_masks",
    "read_rtstruct",
    "read_series",
    "roi_interpreted_type",
    "scan_folder",
    "series_geometry",
    "single_series",
    "structure_colours",
    "write_dicom_seg",
    "write_dicom_seg_structures",
    "write_rtstruct",
    "write_rtstruct_structures",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "CaseReport": "convert",
        "ConvertReport": "convert",
        "ConvertRequest": "convert",
        "convert_dicom": "convert",
        "read_rtstruct": "rtstruct",
        "write_rtstruct": "rtstruct",
        "check_roi_name": "names",
        "Structure": "structures",
        "write_dicom_seg_structures": "seg",
        "write_rtstruct_structures": "rtstruct",
        "match_tg263": "names",
        "roi_interpreted_type": "names",
        "structure_colours": "names",
        "read_dicom_seg": "seg",
        "read_dicom_seg_masks": "seg",
        "write_dicom_seg": "seg",
        "DicomSeries": "series",
        "find_series": "series",
        "is_dicom_path": "series",
        "read_series": "series",
        "scan_folder": "series",
        "series_geometry": "series",
        "single_series": "series",
        "DicomError": "autoseg.errors",
    },
)
