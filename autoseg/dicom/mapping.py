"""The label mapping of ``convert-dicom``: which ROI/segment names become which label value.

File format (JSON)::

    {"labels": {"GTV":  {"value": 1, "rois": ["GTV*", "gross tumour*"]},
                "Lung": {"value": 2, "rois": ["lung_l", "lung_r", "lungs"]}}}

Keys of ``labels`` are the dataset's label names (``dataset.json``); ``value`` is the label value (1..65535,
unique; 0 is background); ``rois`` lists glob patterns (``*``, ``?``, ``[...]``) matched case-insensitively
against ROI names (RTSTRUCT) and segment labels (SEG). A structure goes to the first label, in file order,
with a matching pattern. A label may omit ``rois``: its own name is then the only pattern.
"""

from __future__ import annotations

import fnmatch
import glob
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.errors import DicomError
from autoseg.io import read_json, write_json


@dataclass(frozen=True)
class LabelRule:
    """One dataset label: its value and the ROI-name patterns that map to it."""

    value: int
    rois: tuple[str, ...]


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

    def to_json(self) -> dict[str, Any]:
        """The mapping in its file format."""
        return {"labels": {n: {"value": r.value, "rois": list(r.rois)} for n, r in self.labels.items()}}


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
    unknown = sorted(set(entry) - {"value", "rois"})
    if unknown:
        problems.append(f"label '{name}': unknown keys {unknown} (allowed: value, rois)")
    return LabelRule(int(value), tuple(str(r).strip() for r in rois))
