"""``convert-dicom``: DICOM image series + RTSTRUCT/SEG cases -> an nnU-Net v2 style training dataset.

Input layout: a folder with one sub-folder per case (each holding one image series and one or more RTSTRUCT
or SEG files, in any sub-folders), or one case folder: a folder that holds DICOM files directly, or whose
sub-folders together (not one by one) hold a series and its annotation, e.g. ``case/ct/`` + ``case/seg/``.
Such a folder is one case named after the folder. Output::

    OUTPUT/imagesTr/<case>_0000.nii.gz   the series (HU for CT), geometry exactly that of the DICOM series
    OUTPUT/labelsTr/<case>.nii.gz        uint8/uint16 label map on the same grid; when structures overlap
                                         in any case, every case's is 4D instead, one binary channel per
                                         structure (``"structures"`` in dataset.json, :mod:`autoseg.regions`)
    OUTPUT/dataset.json                  channel_names from the modality, labels, numTraining, file_ending,
                                         structure_types (label -> RTROIInterpretedType), and with
                                         ``names="tg263"`` source_names (case -> label -> the clinic names);
                                         in the multi-label layout ``annotated`` (case -> the structures
                                         its structure set has an ROI for, even an empty one)
    OUTPUT/label_mapping.json            the mapping used (the one given, or the one made from the names)

Structures map to labels through a :class:`~autoseg.dicom.mapping.LabelMapping`: the mapping file's, then
(``names="tg263"``) TG-263 standard names for the names it does not cover; without either, every name is its
own label. The label names are checked against DICOM's ROI name rules before any case is read. Where
structures overlap (a GTV inside its CTV, every organ inside BODY) nothing is flattened: the dataset is
written in the multi-label layout (``docs/dicom.md``, "Overlapping structures") and each case reports the
overlaps it kept; a dataset of disjoint structures keeps label maps. Each file is written atomically, the
label map last; re-running rewrites the same files. A case without any non-empty mapped structure is
reported, skipped, and files a previous run wrote for it are removed, so the dataset never holds half a case.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from autoseg.dicom.mapping import LabelMapping, load_mapping, mapping_from_names, save_mapping, tg263_mapping
from autoseg.dicom.names import Match, roi_interpreted_type
from autoseg.dicom.rtstruct import read_roi_types, read_rtstruct
from autoseg.dicom.seg import read_dicom_seg_masks
from autoseg.dicom.series import DicomObject, DicomSeries, read_header, read_series, scan_folder
from autoseg.errors import AutosegError, DicomError
from autoseg.io import read_labels, write_image, write_json, write_masks, write_target
from autoseg.regions import overlapping_pairs
from autoseg.types import BoolVolume, FloatVolume, TargetVolume
from autoseg.workdir import folder_lock

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
MAPPING_FILE = "label_mapping.json"
_CHANNEL_NAMES = {"CT": "CT", "MR": "MRI", "PT": "PET"}


@dataclass(frozen=True)
class ConvertRequest:
    """What to convert.

    Attributes:
        input_dir: folder of case sub-folders, or one case folder.
        output_dir: dataset folder to write (created; existing cases are overwritten).
        mapping_file: JSON label mapping (see :mod:`autoseg.dicom.mapping`); ``None`` maps every structure
            name found to its own label, in sorted order, and writes that mapping to the output.
        names: ``"as-is"`` keeps the structure names (or the mapping file's labels); ``"tg263"`` maps every
            name the mapping file does not cover to its TG-263 standard name
            (:func:`autoseg.dicom.mapping.tg263_mapping`) and reports the unmatched ones.
    """

    input_dir: Path
    output_dir: Path
    mapping_file: Path | None = None
    names: Literal["as-is", "tg263"] = "as-is"


@dataclass(frozen=True)
class CaseReport:
    """What happened to one case.

    Attributes:
        case: case identifier (file stem in the dataset).
        source: the case folder.
        status: ``"written"`` or ``"skipped"``.
        voxels: label name -> voxel count written (each structure whole: overlaps are kept).
        unknown_rois: structure names in the case's files that the mapping does not cover.
        missing_labels: mapping labels with no (non-empty) structure in this case.
        overlap_voxels: voxels claimed by more than one label (kept in every structure that claims them).
        overlaps: ``"A+B"`` -> voxels in both, for each overlapping pair of labels.
        message: why the case was skipped, if it was.
        suggestions: with ``names="tg263"``, each unknown structure name -> the nearest standard names.
        source_names: label name -> the case's structure names written as that label.
        annotated: the labels the case's structure sets have an ROI for (empty ones included): contoured;
            the others are unannotated there, not background (``docs/dicom.md``, "Partly contoured cases").
        source_types: label name -> the RTROIInterpretedTypes its source RTSTRUCT ROIs declare.
    """

    case: str
    source: Path
    status: Literal["written", "skipped"]
    voxels: dict[str, int] = field(default_factory=dict)
    unknown_rois: tuple[str, ...] = ()
    missing_labels: tuple[str, ...] = ()
    overlap_voxels: int = 0
    message: str = ""
    suggestions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    overlaps: dict[str, int] = field(default_factory=dict)
    annotated: tuple[str, ...] = ()
    source_types: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvertReport:
    """The result: one report per case, the labels of ``dataset.json`` and the mapping used, the TG-263
    matches (``names="tg263"``: of every structure name the mapping file does not cover) and the name
    warnings."""

    output_dir: Path
    cases: tuple[CaseReport, ...]
    labels: dict[str, int]
    mapping: LabelMapping
    matches: tuple[Match, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def written(self) -> tuple[CaseReport, ...]:
        """Cases in the dataset."""
        return tuple(c for c in self.cases if c.status == "written")

    @property
    def skipped(self) -> tuple[CaseReport, ...]:
        """Cases left out, each with its reason."""
        return tuple(c for c in self.cases if c.status == "skipped")


@dataclass(frozen=True)
class _Case:
    name: str
    folder: Path
    series: DicomSeries
    annotations: tuple[DicomObject, ...]


def convert_dicom(request: ConvertRequest) -> ConvertReport:
    """Convert DICOM cases into an nnU-Net v2 style dataset (see the module docstring for the layouts).

    The output folder's lock is held while the dataset is written (:func:`autoseg.workdir.folder_lock`): a
    second conversion into it is refused, and the temporaries a killed one left there are removed first.

    Raises:
        DicomError: no case found, an invalid mapping file, cases of different modalities, or every case
            skipped. A problem in one case (unreadable series, no annotation...) skips that case instead.
        StructureNameError: a label name DICOM cannot hold (empty, over 64 characters, a backslash or a
            control character), before any case is read.
        FolderInUseError: another autoseg process writes into the output folder.
    """
    cases, reports = _discover(request.input_dir)
    if not cases:
        raise DicomError(
            f"{request.input_dir}: no case with an image series and an RTSTRUCT/SEG found",
            details=[f"{r.case}: {r.message}" for r in reports],
        )
    mapping, matches = _make_mapping(request, cases)
    warnings = mapping.check_names()
    for warning in warnings:
        logger.warning("%s", warning)
    with folder_lock(request.output_dir, "convert-dicom", remove_temporaries=True):
        return _write_dataset(request, cases, reports, mapping, matches, warnings)


def _write_dataset(
    request: ConvertRequest,
    cases: list[_Case],
    reports: list[CaseReport],
    mapping: LabelMapping,
    matches: dict[str, Match],
    warnings: list[str],
) -> ConvertReport:
    """The writing part of :func:`convert_dicom`, with the output folder's lock held."""
    save_mapping(mapping, request.output_dir / MAPPING_FILE)
    modality = _common_modality(cases)
    suggestions = {name: match.suggestions for name, match in matches.items()}
    for case in cases:
        reports.append(_convert_case(case, mapping, request.output_dir, suggestions))
    written = [r for r in reports if r.status == "written"]
    if not written:
        raise DicomError(
            f"{request.input_dir}: no case could be converted",
            details=[f"{r.case}: {r.message}" for r in reports],
        )
    overlapping = any(r.overlap_voxels for r in written)
    if overlapping:
        _as_multi_label(written, mapping, request.output_dir)
    meta = _dataset_json(request, mapping, modality, written, multi_label=overlapping)
    write_json(meta, request.output_dir / "dataset.json")
    ordered = tuple(sorted(reports, key=lambda r: r.case))
    return ConvertReport(
        request.output_dir, ordered, mapping.values(), mapping, tuple(matches.values()), tuple(warnings)
    )


def _as_multi_label(written: list[CaseReport], mapping: LabelMapping, output_dir: Path) -> None:
    """Some case's structures overlap: rewrite the label maps of the cases whose do not as multi-label files
    (exact: a disjoint label map loses nothing), and log the overlaps kept."""
    for report in written:
        path = output_dir / "labelsTr" / f"{report.case}{FILE_ENDING}"
        if report.overlap_voxels:
            logger.info("%s: overlapping structures kept: %s", report.case, report.overlaps)
            continue
        labels, geometry = read_labels(path)
        write_masks(np.stack([labels == mapping.labels[n].value for n in _ordered(mapping)]), geometry, path)


def _ordered(mapping: LabelMapping) -> list[str]:
    """The mapping's labels by value: the structure order of a multi-label dataset."""
    return sorted(mapping.labels, key=lambda n: mapping.labels[n].value)


def _dataset_json(
    request: ConvertRequest,
    mapping: LabelMapping,
    modality: str,
    written: list[CaseReport],
    *,
    multi_label: bool = False,
) -> dict[str, object]:
    names = _ordered(mapping)
    meta: dict[str, object] = {
        "name": request.output_dir.name,
        "channel_names": {"0": _CHANNEL_NAMES.get(modality, modality or "image")},
        "labels": {"background": 0, **{n: k + 1 for k, n in enumerate(names)}}
        if multi_label
        else mapping.values(),
        **({"structures": names} if multi_label else {}),
        "numTraining": len(written),
        "file_ending": FILE_ENDING,
        "structure_types": _structure_types(mapping, written),
    }
    if multi_label:
        meta["annotated"] = {r.case: [n for n in names if n in r.annotated] for r in written}
    if request.names == "tg263":
        meta["source_names"] = {r.case: {k: list(v) for k, v in r.source_names.items()} for r in written}
    return meta


def _make_mapping(request: ConvertRequest, cases: list[_Case]) -> tuple[LabelMapping, dict[str, Match]]:
    given = load_mapping(request.mapping_file) if request.mapping_file is not None else None
    names = [name for case in cases for name in _structure_names(case)]
    if request.names == "tg263":
        return tg263_mapping(names, given)
    if given is None:
        logger.info("no mapping given: every structure name gets its own label (see %s)", MAPPING_FILE)
        return mapping_from_names(names), {}
    return given, {}


def read_structures(annotation: DicomObject, series: DicomSeries) -> dict[str, BoolVolume]:
    """Structure name -> ``(Z, Y, X)`` bool mask on the series grid, from an RTSTRUCT or a SEG file."""
    if annotation.modality == "RTSTRUCT":
        return read_rtstruct(annotation.path, series)
    return read_dicom_seg_masks(annotation.path, series)


# ------------------------------------------------------------------------------------------------ discovery


def _case_folders(input_dir: Path) -> list[Path]:
    if not input_dir.is_dir():
        raise DicomError(f"{input_dir}: is not a folder")
    if any(p.is_file() and read_header(p) is not None for p in input_dir.iterdir()):
        return [input_dir]
    return sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _discover(input_dir: Path) -> tuple[list[_Case], list[CaseReport]]:
    cases: list[_Case] = []
    skipped: list[CaseReport] = []
    names: set[str] = set()
    folders = _case_folders(input_dir)
    for folder in folders:
        name = _unique(_case_name(folder), names)
        try:
            cases.append(_pair(name, folder))
        except AutosegError as error:
            logger.warning("%s: skipped: %s", folder, error.message)
            skipped.append(CaseReport(name, folder, "skipped", message=" ".join(error.lines())))
    if not cases and folders != [input_dir]:
        try:  # e.g. case/ct + case/seg: the sub-folders are parts of one case
            return [_pair(_case_name(input_dir), input_dir)], []
        except AutosegError:
            pass
    return cases, skipped


def _case_name(folder: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", folder.name).strip("_") or "case"


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _pair(name: str, folder: Path) -> _Case:
    scan = scan_folder(folder)
    annotations = tuple(o for o in scan.others if o.modality in ("RTSTRUCT", "SEG"))
    if not annotations:
        raise DicomError(f"{folder}: holds no RTSTRUCT or SEG file")
    if not scan.series:
        raise DicomError(f"{folder}: holds no image series for its {annotations[0].modality}")
    frames = {a.frame_of_reference_uid for a in annotations} - {""}
    series = [
        s for s in scan.series if not frames or s.frame_of_reference_uid in frames or len(scan.series) == 1
    ]
    if len(series) != 1:
        raise DicomError(
            f"{folder}: cannot tell which of {len(scan.series)} image series the annotations belong to; "
            "keep one series per case folder",
            details=[s.summary() for s in scan.series],
        )
    return _Case(name, folder, series[0], annotations)


def _structure_names(case: _Case) -> list[str]:
    names: list[str] = []
    for annotation in case.annotations:
        header = read_header(annotation.path)
        if header is None:
            continue
        if annotation.modality == "RTSTRUCT":
            names += [str(r.get("ROIName", "")) for r in header.get("StructureSetROISequence", [])]
        else:
            names += [str(s.get("SegmentLabel", "")) for s in header.get("SegmentSequence", [])]
    return [n for n in names if n.strip()]


def _common_modality(cases: list[_Case]) -> str:
    modalities = sorted({case.series.modality for case in cases})
    if len(modalities) > 1:
        raise DicomError(
            f"cases mix modalities {modalities}; one dataset holds one channel of one modality",
            details=[f"{c.name}: {c.series.modality}" for c in cases],
        )
    return modalities[0]


# ------------------------------------------------------------------------------------------------ one case


def _convert_case(
    case: _Case, mapping: LabelMapping, output_dir: Path, suggestions: dict[str, tuple[str, ...]]
) -> CaseReport:
    image_path = output_dir / "imagesTr" / f"{case.name}_0000{FILE_ENDING}"
    label_path = output_dir / "labelsTr" / f"{case.name}{FILE_ENDING}"
    try:
        image, geometry = read_series(case.series)
        structures = _all_structures(case)
    except AutosegError as error:
        _remove_stale(image_path, label_path)
        return CaseReport(case.name, case.folder, "skipped", message=" ".join(error.lines()))
    labels, report = _label_map(case, structures, mapping, suggestions)
    if report.status == "skipped":
        logger.warning("%s: skipped: %s", case.folder, report.message)
        _remove_stale(image_path, label_path)
        return report
    write_image(_compact(image), geometry, image_path)
    write_target(labels, geometry, label_path)
    logger.info("%s: written as %s (%s)", case.folder, case.name, report.voxels)
    return replace(report, source_types=_source_types(case, mapping))


def _source_types(case: _Case, mapping: LabelMapping) -> dict[str, tuple[str, ...]]:
    """Label -> the RTROIInterpretedTypes the case's RTSTRUCT ROIs mapped to it declare."""
    found: dict[str, tuple[str, ...]] = {}
    for annotation in case.annotations:
        if annotation.modality != "RTSTRUCT":
            continue
        for name, kind in read_roi_types(annotation.path).items():
            label = mapping.label_for(name)
            if label is not None:
                found[label] = (*found.get(label, ()), kind)
    return found


def _structure_types(mapping: LabelMapping, written: Sequence[CaseReport]) -> dict[str, str]:
    """Label -> RTROIInterpretedType for ``dataset.json``: the mapping rule's ``type``, else the type the
    source RTSTRUCTs declare most often for it (ties: the first seen), else the one its name implies."""
    types = {}
    for name, rule in sorted(mapping.labels.items(), key=lambda item: item[1].value):
        seen = Counter(kind for report in written for kind in report.source_types.get(name, ()))
        types[name] = rule.type or (seen.most_common(1)[0][0] if seen else roi_interpreted_type(name))
    return types


def _all_structures(case: _Case) -> dict[str, BoolVolume]:
    structures: dict[str, BoolVolume] = {}
    for annotation in case.annotations:
        for name, mask in read_structures(annotation, case.series).items():
            structures[name] = structures[name] | mask if name in structures else mask
    return structures


def _label_map(
    case: _Case,
    structures: dict[str, BoolVolume],
    mapping: LabelMapping,
    suggestions: dict[str, tuple[str, ...]],
) -> tuple[TargetVolume, CaseReport]:
    shape = (len(case.series.instances), case.series.instances[0].rows, case.series.instances[0].columns)
    by_label: dict[str, BoolVolume] = {}
    sources: dict[str, tuple[str, ...]] = {}
    unknown: list[str] = []
    for name, mask in structures.items():
        label = mapping.label_for(name)
        if label is None:
            unknown.append(name)
        elif mask.any():
            by_label[label] = by_label[label] | mask if label in by_label else mask
            sources[label] = (*sources.get(label, ()), name)
    missing = tuple(name for name in mapping.labels if name not in by_label)
    labels, overlaps = _target(shape, by_label, mapping)
    voxels = {name: int(np.count_nonzero(mask)) for name, mask in by_label.items()}
    status: Literal["written", "skipped"] = "written" if by_label else "skipped"
    message = (
        "" if by_label else f"no non-empty structure matches the mapping (structures: {sorted(structures)})"
    )
    overlap = int(np.count_nonzero(labels.sum(0, dtype=np.uint16) > 1)) if labels.ndim == 4 else 0
    nearest = {name: suggestions[name.strip()] for name in sorted(unknown) if name.strip() in suggestions}
    report = CaseReport(
        case.name, case.folder, status, voxels, tuple(sorted(unknown)), missing, overlap, message, nearest,
        {label: tuple(sorted(names)) for label, names in sorted(sources.items())}, overlaps,
        _annotated(structures, mapping),
    )  # fmt: skip
    return labels, report


def _annotated(structures: dict[str, BoolVolume], mapping: LabelMapping) -> tuple[str, ...]:
    """The labels some structure of the case maps to, empty ones included (an ROI without contours is
    contoured as empty: the structure is absent there, not unannotated)."""
    found = {mapping.label_for(name) for name in structures}
    return tuple(sorted(label for label in found if label is not None))


def _target(
    shape: tuple[int, int, int], by_label: dict[str, BoolVolume], mapping: LabelMapping
) -> tuple[TargetVolume, dict[str, int]]:
    """The case's label map, or where structures overlap its ``(K, Z, Y, X)`` multi-label target (one
    channel per mapping label, by value), with the overlapping pairs."""
    names = _ordered(mapping)
    stack = np.zeros((len(names), *shape), np.uint8)
    for index, name in enumerate(names):
        if name in by_label:
            stack[index] = by_label[name]
    overlaps = overlapping_pairs(stack, names)
    if overlaps:
        return stack, overlaps
    dtype = np.uint16 if max(r.value for r in mapping.labels.values()) > 255 else np.uint8
    labels = np.zeros(shape, dtype)
    for name in names:
        if name in by_label:
            labels[by_label[name]] = mapping.labels[name].value
    return labels, {}


def _compact(image: FloatVolume) -> np.ndarray:
    """int16 when every value is an integer in range (CT in HU, most MR), else float32: a smaller file."""
    info = np.iinfo(np.int16)
    if image.size and np.all(np.mod(image, 1) == 0) and info.min <= image.min() and image.max() <= info.max:
        return image.astype(np.int16)
    return image


def _remove_stale(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            logger.info("%s: removed (left from an earlier conversion of a case skipped now)", path)
            path.unlink()
