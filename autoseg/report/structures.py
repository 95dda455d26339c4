"""Per-case reviewer report (``autoseg predict --report``): structure table with plausibility flags and PNG.

For every structure (foreground label) of a predicted case the table gives its volume, the model's mean
confidence inside it and its number of connected parts, and raises a flag, with a one-line reason, when
something is unusual compared with the training data (:class:`TrainingReference`):

* ``volume``: below ``0.5 x`` the smallest or above ``2 x`` the largest training volume of that structure. A
  range rule rather than a z-score: training volumes are skewed and often few, a clinician can check the
  rule against the printed range, and a factor of 2 keeps false alarms rare while catching leaks into a
  neighbour and half-missed organs;
* ``missing``: absent although present in more than 90 % of the training cases;
* ``unexpected``: present although absent from every training case;
* ``confidence``: mean probability of the predicted class inside the structure below 0.8, or below the 5th
  percentile of the training (cross-validation) confidences of that structure when at least 20 are known;
* ``components``: more connected parts (face connectivity, as the fingerprint) than in any training case.

A region-based model's prediction (structures that may overlap, a ``(K, Z, Y, X)`` region target,
:mod:`autoseg.regions`) is measured the same way per structure: each structure's own mask gives its volume
and parts, and its confidence is the mean of its own sigmoid inside it (a GTV inside its CTV counts in both).

The thresholds live in :class:`FlagRules`. :func:`autoseg.report.figure.render_report` draws the PNG (see
:mod:`autoseg.report.figure`); :func:`write_structure_table` writes the table as JSON or CSV.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autoseg.errors import UsageError
from autoseg.fingerprint import CONNECTIVITY, Fingerprint
from autoseg.io import Geometry, write_json, write_text_atomically
from autoseg.regions import crop, is_region_target, probability_channel, structure_boxes, structure_mask
from autoseg.types import TargetVolume

__all__ = [
    "ClassReference",
    "Flag",
    "FlagRules",
    "StructureRow",
    "TrainingReference",
    "format_ml",
    "structure_confidences",
    "structure_table",
    "write_structure_table",
]

logger = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1
FlagKind = Literal["volume", "missing", "unexpected", "confidence", "components"]


@dataclass(frozen=True)
class ClassReference:
    """What is usual for one structure in the training data.

    Attributes:
        value: label value.
        name: structure name.
        volumes_ml: volume in each training case where the structure is present, ml.
        case_fraction: share of training cases where it is present, 0..1.
        max_components: most connected parts in one training case; None when the fingerprint lacks them.
        confidences: mean confidence per case (e.g. cross-validation probabilities), 0..1; None if unknown.
    """

    value: int
    name: str
    volumes_ml: tuple[float, ...]
    case_fraction: float
    max_components: int | None
    confidences: tuple[float, ...] | None = None


@dataclass(frozen=True)
class TrainingReference:
    """Per-structure reference values from the training cases."""

    num_cases: int
    classes: tuple[ClassReference, ...]

    @classmethod
    def from_fingerprint(cls, fingerprint: Fingerprint) -> TrainingReference:
        """Volumes (class voxels x voxel volume per case), presence and part counts from the fingerprint."""
        classes = []
        for name, value in sorted(fingerprint.labels.items(), key=lambda item: item[1]):
            if value == 0:
                continue
            key = str(value)
            present = [c for c in fingerprint.cases if c.class_voxels.get(key, 0) > 0]
            volumes = [c.class_voxels[key] * float(np.prod(c.spacing_mm)) / 1000.0 for c in present]
            parts = [len(c.component_sizes[key]) for c in present if key in c.component_sizes]
            known = bool(present) and len(parts) == len(present)
            classes.append(
                ClassReference(
                    value=value,
                    name=name,
                    volumes_ml=tuple(volumes),
                    case_fraction=len(present) / max(1, len(fingerprint.cases)),
                    max_components=max(parts) if known else None,
                )
            )
        return cls(num_cases=len(fingerprint.cases), classes=tuple(classes))

    def with_confidences(self, confidences: Mapping[int, Sequence[float]]) -> TrainingReference:
        """A copy with per-case mean confidences (label value -> values in 0..1) for the given structures."""
        return replace(
            self,
            classes=tuple(
                replace(c, confidences=tuple(float(v) for v in confidences[c.value]))
                if c.value in confidences
                else c
                for c in self.classes
            ),
        )

    def get(self, value: int) -> ClassReference | None:
        """The reference of label ``value``, or None when the training data does not know it."""
        return next((c for c in self.classes if c.value == value), None)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict (to keep the reference next to a trained model)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingReference:
        """Inverse of :meth:`to_json`."""
        classes = tuple(
            ClassReference(
                value=int(c["value"]),
                name=str(c["name"]),
                volumes_ml=tuple(float(v) for v in c["volumes_ml"]),
                case_fraction=float(c["case_fraction"]),
                max_components=None if c["max_components"] is None else int(c["max_components"]),
                confidences=None
                if c.get("confidences") is None
                else tuple(float(v) for v in c["confidences"]),
            )
            for c in data["classes"]
        )
        return cls(num_cases=int(data["num_cases"]), classes=classes)


@dataclass(frozen=True)
class FlagRules:
    """When a structure is flagged (see the module docstring)."""

    volume_low_factor: float = 0.5
    volume_high_factor: float = 2.0
    missing_case_fraction: float = 0.9
    confidence_floor: float = 0.8
    confidence_percentile: float = 5.0
    confidence_min_cases: int = 20
    """The percentile rule needs at least this many cross-validation confidences: a 5th percentile of fewer
    is the lowest one or two, and flagged every held-out case of the demo (one trained fold, 1-2 validation
    cases: "0.910 < 5th percentile of training (0.915)" at Dice 0.90)."""


@dataclass(frozen=True)
class Flag:
    """One reason to look at a structure: ``kind`` for machines, ``reason`` for people."""

    kind: FlagKind
    reason: str


@dataclass(frozen=True)
class StructureRow:
    """One structure of one case.

    Attributes:
        value: label value.
        name: structure name.
        voxels: voxel count (0 when missing).
        volume_ml: volume, ml.
        mean_confidence: mean probability of this class inside the structure (0..1); None without
            probabilities or when the structure is missing.
        components: connected parts (face connectivity).
        training_volume_ml: smallest and largest training volume, ml; None when never seen in training.
        flags: reasons to look, empty when nothing is unusual.
    """

    value: int
    name: str
    voxels: int
    volume_ml: float
    mean_confidence: float | None
    components: int
    training_volume_ml: tuple[float, float] | None
    flags: tuple[Flag, ...]


def structure_table(
    labels: TargetVolume,
    probabilities: npt.NDArray[np.float32] | None,
    geometry: Geometry,
    label_names: Mapping[str, int],
    reference: TrainingReference | None,
    *,
    rules: FlagRules = FlagRules(),
) -> list[StructureRow]:
    """Measure and flag every foreground structure of one predicted case.

    Args:
        labels: ``(Z, Y, X)`` uint8/uint16 predicted label map, or a ``(K, Z, Y, X)`` region target
            (structure ``k`` = channel ``k - 1``; structures may overlap).
        probabilities: ``(K, Z, Y, X)`` float32 probabilities (label map: softmax, channel k = label value
            k; region target: sigmoids, channel k - 1 = structure k), or None; without them no confidence
            is reported or flagged.
        geometry: the label map's geometry (voxel volume).
        label_names: name -> label value, as in ``dataset.json``; a row per foreground entry, in value order.
        reference: what is usual in training; None disables the volume, presence and part flags.
        rules: flag thresholds.

    Raises:
        UsageError: probabilities whose shape does not match ``labels`` or that lack a channel per class.
    """
    foreground = sorted((value, name) for name, value in label_names.items() if value != 0)
    values = [v for v, _ in foreground]
    _check_probabilities(labels, probabilities, max(values, default=0))
    voxel_ml = float(np.prod(geometry.spacing_mm)) / 1000.0
    counts = _voxel_counts(labels, values)
    confidences = {} if probabilities is None else structure_confidences(labels, probabilities, values)
    boxes = structure_boxes(labels, values)
    rows = []
    for value, name in foreground:
        region = boxes.get(value)
        known = reference.get(value) if reference is not None else None
        row = StructureRow(
            value=value,
            name=name,
            voxels=counts[value],
            volume_ml=counts[value] * voxel_ml,
            mean_confidence=confidences.get(value),
            components=0
            if region is None
            else _count_components(structure_mask(crop(labels, region), value)),
            training_volume_ml=_range(known.volumes_ml) if known else None,
            flags=(),
        )
        rows.append(replace(row, flags=structure_flags(row, known, reference, rules)))
    return rows


def _voxel_counts(labels: TargetVolume, values: Sequence[int]) -> dict[int, int]:
    """Voxels of each structure; a label value of a label map outside ``values`` is warned about."""
    if is_region_target(labels):
        return {v: int(np.count_nonzero(structure_mask(labels, v))) for v in values}
    counts = np.bincount(labels.ravel(), minlength=max(values, default=0) + 1)
    stray = sorted(set(np.flatnonzero(counts).tolist()) - {0, *values})
    if stray:
        logger.warning("label value(s) %s are not in the label names; left out of the report", stray)
    return {v: int(counts[v]) for v in values}


def structure_flags(
    row: StructureRow, known: ClassReference | None, reference: TrainingReference | None, rules: FlagRules
) -> tuple[Flag, ...]:
    """The flags of one measured structure (``row.flags`` is ignored)."""
    flags: list[Flag] = []
    if reference is not None and known is not None:
        flags += _presence_flags(row, known, reference.num_cases, rules)
        if row.voxels and known.volumes_ml:
            flags += _volume_flags(row.volume_ml, known.volumes_ml, rules)
        if known.max_components is not None and row.components > max(1, known.max_components):
            flags.append(
                Flag("components", f"{row.components} parts; at most {known.max_components} in training")
            )
    if row.mean_confidence is not None:
        flags += _confidence_flags(row.mean_confidence, known.confidences if known else None, rules)
    return tuple(flags)


def structure_confidences(
    labels: TargetVolume, probabilities: npt.NDArray[np.float32], values: Sequence[int]
) -> dict[int, float]:
    """Mean probability of each structure's own class (its own sigmoid, for a region target) inside it, as
    in the table, for structures present."""
    _check_probabilities(labels, probabilities, max(values, default=0))
    found = {}
    for value, region in structure_boxes(labels, values).items():
        inside = structure_mask(crop(labels, region), value)
        channel = probabilities[probability_channel(labels, value)]
        found[value] = float(channel[region][inside].mean(dtype=np.float64))
    return found


def format_ml(volume_ml: float) -> str:
    """A volume in ml with sensible digits: 1234, 56.7, 1.23, 0.012."""
    for limit, digits in ((100.0, 0), (10.0, 1), (1.0, 2)):
        if volume_ml >= limit:
            return f"{volume_ml:.{digits}f}"
    return f"{volume_ml:.3f}"


def write_structure_table(rows: Sequence[StructureRow], path: Path) -> None:
    """Write the table atomically: ``.json`` (rows with their flags) or ``.csv`` (flags joined by ``"; "``).

    Raises:
        UsageError: another file ending.
    """
    if path.suffix == ".json":
        write_json(
            {"schema_version": REPORT_SCHEMA_VERSION, "structures": [_row_json(r) for r in rows]}, path
        )
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            [
                "value",
                "name",
                "voxels",
                "volume_ml",
                "mean_confidence",
                "components",
                "training_min_ml",
                "training_max_ml",
                "flags",
            ]
        )
        for r in rows:
            low, high = r.training_volume_ml or ("", "")
            confidence = "" if r.mean_confidence is None else f"{r.mean_confidence:.4f}"
            flags = "; ".join(f.reason for f in r.flags)
            writer.writerow(
                [r.value, r.name, r.voxels, f"{r.volume_ml:.4f}", confidence, r.components, low, high, flags]
            )
        write_text_atomically(buffer.getvalue(), path)
    else:
        raise UsageError(f"{path}: the structure table is written as .json or .csv")


# ------------------------------------------------------------------------------------------- internals


def _check_probabilities(
    labels: TargetVolume, probabilities: npt.NDArray[np.float32] | None, top: int
) -> None:
    regions = is_region_target(labels)
    if labels.ndim != 3 and not regions:
        raise UsageError(f"report: expected a (Z, Y, X) label map or (K, Z, Y, X) masks, got {labels.shape}")
    if probabilities is None:
        return
    need = top if regions else top + 1  # sigmoids: one per structure; softmax: background too
    if (
        probabilities.ndim != 4
        or probabilities.shape[1:] != labels.shape[-3:]
        or probabilities.shape[0] < need
    ):
        raise UsageError(
            f"report: probabilities of shape {probabilities.shape} do not fit labels {labels.shape} with "
            f"label values up to {top}; expected (K, Z, Y, X) with K >= {need}"
        )


def _count_components(mask: npt.NDArray[np.bool_]) -> int:
    if not mask.any():
        return 0
    _, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, CONNECTIVITY))
    return int(count)


def _presence_flags(row: StructureRow, known: ClassReference, num_cases: int, rules: FlagRules) -> list[Flag]:
    if not row.voxels and known.case_fraction > rules.missing_case_fraction:
        return [Flag("missing", f"missing; present in {known.case_fraction:.0%} of training cases")]
    if row.voxels and known.case_fraction == 0 and num_cases:
        return [Flag("unexpected", f"present; absent from all {num_cases} training cases")]
    return []


def _volume_flags(volume_ml: float, training_ml: Sequence[float], rules: FlagRules) -> list[Flag]:
    low, high = min(training_ml), max(training_ml)
    if volume_ml < rules.volume_low_factor * low:
        return [Flag("volume", f"{_ml(volume_ml)} < {rules.volume_low_factor:g} x training min {_ml(low)}")]
    if volume_ml > rules.volume_high_factor * high:
        return [Flag("volume", f"{_ml(volume_ml)} > {rules.volume_high_factor:g} x training max {_ml(high)}")]
    return []


def _confidence_flags(confidence: float, training: Sequence[float] | None, rules: FlagRules) -> list[Flag]:
    if confidence < rules.confidence_floor:
        shown, floor_shown = _distinct(confidence, rules.confidence_floor)
        return [Flag("confidence", f"mean confidence {shown} < {floor_shown}")]
    if training and len(training) >= rules.confidence_min_cases:
        floor = float(np.percentile(np.asarray(training, np.float64), rules.confidence_percentile))
        if confidence < floor:
            where = f"{rules.confidence_percentile:g}th percentile of training"
            shown, floor_shown = _distinct(confidence, floor)
            return [Flag("confidence", f"mean confidence {shown} < {where} ({floor_shown})")]
    return []


def _distinct(low: float, high: float) -> tuple[str, str]:
    """``low < high`` printed with the fewest decimals (2 to 6) that keep the printed values apart, so a
    flag never reads "0.80 < 0.80"."""
    for digits in range(2, 7):
        shown = f"{low:.{digits}f}", f"{high:.{digits}f}"
        if float(shown[0]) < float(shown[1]):
            return shown
    return f"{low:.6g}", f"{high:.6g}"


def _range(values: Sequence[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if values else None


def _ml(volume_ml: float) -> str:
    return f"{format_ml(volume_ml)} ml"


def _row_json(row: StructureRow) -> dict[str, Any]:
    return {
        "value": row.value,
        "name": row.name,
        "voxels": row.voxels,
        "volume_ml": round(row.volume_ml, 6),
        "mean_confidence": None if row.mean_confidence is None else round(row.mean_confidence, 4),
        "components": row.components,
        "training_volume_ml": None
        if row.training_volume_ml is None
        else [round(v, 6) for v in row.training_volume_ml],
        "flags": [{"kind": f.kind, "reason": f.reason} for f in row.flags],
    }
