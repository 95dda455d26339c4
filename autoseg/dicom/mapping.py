"""The label mapping of ``convert-dicom``: which ROI/segment names become which label value.

File format (JSON)::

    {"labels": {"GTV":  {"value": 1, "rois": ["GTV*", "gross tumour*"], "type": "GTV"},
                "Lung": {"value": 2, "rois": ["lung_l", "lung_r", "lungs"]}}}

Keys of ``labels`` are the dataset's label names (``dataset.json``); ``value`` is the label value (1..65535,
unique; 0 is background); ``rois`` lists glob patterns (``*``, ``?``, ``[...]``) matched case-insensitively
against ROI names (RTSTRUCT) and segment labels (SEG). A structure goes to the first label, in file order,
with a matching pattern. A label may omit ``rois``: its own name is then the only pattern. ``type`` (optional)
is the label's DICOM ``RTROIInterpretedType`` (``ORGAN``, ``GTV``, ``CTV``, ``PTV``, ``EXTERNAL``,
``AVOIDANCE``, ...); without it the type comes from the TG-263 table (:func:`autoseg.dicom.names.
roi_interpreted_type`).

:func:`tg263_mapping` adds, to a mapping file's labels (or to none), one label per TG-263 standard name that
the remaining structure names match (:func:`autoseg.dicom.names.match_tg263`).
"""

from __future__ import annotations

import fnmatch
import glob
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoseg.dicom.names import ROI_TYPES, Match, check_roi_name, match_tg263, roi_interpreted_type
from autoseg.errors import DicomError, StructureNameError
from autoseg.io import read_json, write_json


@dataclass(frozen=True)
class LabelRule:
    """One dataset label: its value, the ROI-name patterns that map to it, and its RTROIInterpretedType
    (``None``: from the TG-263 table)."""

    value: int
    rois: tuple[str, ...]
    type: str | None = None


@dataclass(frozen=True)
class LabelMapping:
    """Dataset label name -> rule, in file order (the order decides which rule wins for a name)."""

    labels: dict[str, LabelRule]

    def label_for(self, roi_name: str) -> str | None:
        """The label name whose patterns match ``roi_name`` first (case-insensitive), or ``None``."""
        lowered = roi_name.strip().lower()
        for label, rule in self.labels.items():
            if any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in rule.rois):
                return label
        return None

    def values(self) -> dict[str, int]:
        """Label name -> value, including ``background: 0``, ordered by value (``dataset.json`` labels)."""
        ordered = sorted(self.labels.items(), key=lambda item: item[1].value)
        return {"background": 0, **{name: rule.value for name, rule in ordered}}

    def types(self) -> dict[str, str]:
        """Label name -> RTROIInterpretedType (the rule's, else the TG-263 table's), ordered by value."""
        ordered = sorted(self.labels.items(), key=lambda item: item[1].value)
        return {name: rule.type or roi_interpreted_type(name) for name, rule in ordered}

    def to_json(self) -> dict[str, Any]:
        """The mapping in its file format."""
        return {"labels": {name: _rule_json(rule) for name, rule in self.labels.items()}}

    def check_names(self) -> list[str]:
        """Check every label name against DICOM's ROI name rules (:func:`autoseg.dicom.names.check_roi_name`).

        Returns:
            The warnings (names over 16 characters, ...).

        Raises:
            StructureNameError: the first name DICOM cannot hold, saying how to rename it.
        """
        warnings: list[str] = []
        for name in self.labels:
            try:
                warnings += check_roi_name(name)
            except StructureNameError as error:
                pattern = json.dumps(glob.escape(name))
                example = f'{{"labels": {{"NewName": {{"value": 1, "rois": [{pattern}]}}}}}}'
                raise StructureNameError(
                    f"label {error.message}",
                    details=[f"rename it with a mapping file (--mapping): {example}"],
                ) from error
        return warnings


def load_mapping(path: Path) -> LabelMapping:
    """Read and validate a mapping file.

    Raises:
        DicomError: unreadable JSON or a malformed mapping (every problem named, with the file).
    """
    data = read_json(path)
    return parse_mapping(data, str(path))


def save_mapping(mapping: LabelMapping, path: Path) -> None:
    """Write a mapping file atomically (indented JSON)."""
    write_json(mapping.to_json(), path)


def parse_mapping(data: object, where: str) -> LabelMapping:
    """Validate a mapping already parsed from JSON.

    Raises:
        DicomError: listing every problem found.
    """
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise DicomError(f'{where}: expected {{"labels": {{"NAME": {{"value": 1, "rois": ["PATTERN*"]}}}}}}')
    problems: list[str] = []
    rules = {str(name): _rule(str(name), entry, problems) for name, entry in labels.items()}
    values = [rule.value for rule in rules.values()]
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        problems.append(f"label values {duplicates} are used by more than one label")
    if any(name.lower() == "background" for name in rules):
        problems.append("'background' is implicit (value 0); do not list it")
    if problems:
        raise DicomError(f"{where}: invalid label mapping", details=problems)
    return LabelMapping(rules)


def mapping_from_names(roi_names: Iterable[str]) -> LabelMapping:
    """Every distinct ROI name (case-insensitive) gets its own value 1, 2, 3..., in sorted order."""
    distinct: dict[str, str] = {}
    for name in sorted(roi_names, key=lambda n: (n.strip().lower(), n)):
        distinct.setdefault(name.strip().lower(), name.strip())
    return LabelMapping(
        {
            name: LabelRule(value, (glob.escape(name),))
            for value, name in enumerate(distinct.values(), start=1)
        }
    )


def tg263_mapping(
    roi_names: Iterable[str], base: LabelMapping | None = None
) -> tuple[LabelMapping, dict[str, Match]]:
    """Map the structure names that ``base`` (a mapping file) does not cover to TG-263 standard names.

    Every standard name matched becomes a label (or, when ``base`` has a label of that name, adds to its
    patterns) whose patterns are the clinic names that matched it and whose type is the table's. New labels
    take the values after ``base``'s highest, in sorted (case-insensitive) order of the standard names, so the
    same structure names always give the same values. Unmatched names get no label.

    Returns:
        The mapping, and the match of every distinct name ``base`` does not cover (sorted by name).
    """
    base = base or LabelMapping({})
    distinct = sorted({n.strip() for n in roi_names if n.strip()}, key=lambda n: (n.lower(), n))
    matches = {name: match_tg263(name) for name in distinct if base.label_for(name) is None}
    by_standard: dict[str, list[str]] = {}
    for name, match in matches.items():
        if match.standard is not None:
            by_standard.setdefault(match.standard, []).append(name)
    rules = dict(base.labels)
    existing = {label.lower(): label for label in rules}
    value = max((rule.value for rule in rules.values()), default=0) + 1
    for standard in sorted(by_standard, key=lambda n: (n.lower(), n)):
        patterns = tuple(glob.escape(n) for n in by_standard[standard])
        if standard.lower() in existing:
            label = existing[standard.lower()]
            rules[label] = replace(rules[label], rois=rules[label].rois + patterns)
        else:
            rules[standard] = LabelRule(value, patterns, roi_interpreted_type(standard))
            value += 1
    return LabelMapping(rules), matches


def _rule_json(rule: LabelRule) -> dict[str, Any]:
    entry: dict[str, Any] = {"value": rule.value, "rois": list(rule.rois)}
    return {**entry, "type": rule.type} if rule.type else entry


def _rule(name: str, entry: object, problems: list[str]) -> LabelRule:
    if isinstance(entry, int) and not isinstance(entry, bool):
        entry = {"value": entry}
    if not isinstance(entry, Mapping):
        problems.append(f"label '{name}': expected an object with 'value' and 'rois'")
        return LabelRule(0, ())
    value = entry.get("value")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        problems.append(f"label '{name}': 'value' must be an integer from 1 to 65535, got {value!r}")
        value = 0
    rois = entry.get("rois", [name])
    if isinstance(rois, str):
        rois = [rois]
    if not isinstance(rois, list) or not rois or not all(isinstance(r, str) and r.strip() for r in rois):
        problems.append(f"label '{name}': 'rois' must be a non-empty list of name patterns")
        rois = []
    kind = entry.get("type")
    if kind is not None and kind not in ROI_TYPES:
        problems.append(f"label '{name}': 'type' must be one of {', '.join(ROI_TYPES)}; got {kind!r}")
        kind = None
    unknown = sorted(set(entry) - {"value", "rois", "type"})
    if unknown:
        problems.append(f"label '{name}': unknown keys {unknown} (allowed: value, rois, type)")
    return LabelRule(int(value), tuple(str(r).strip() for r in rois), kind)
