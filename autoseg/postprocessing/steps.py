"""Post-processing as data: connected-component steps chosen on cross-validation, saved in
``postprocessing.json`` and applied to predicted label maps.

A :class:`Postprocessing` is a list of :class:`PostprocessingStep` (an operation name, the labels it acts on,
its parameters) plus the evidence it was chosen on. Operation names resolve through :data:`OPERATIONS`, a
small registry of functions from :mod:`autoseg.postprocessing.components`; no function is ever pickled into
the artifact. :mod:`autoseg.postprocessing.choice` decides which steps to keep; this module stores and
applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autoseg import __version__
from autoseg.errors import ImageReadError, PostprocessingError
from autoseg.io import read_json, write_json
from autoseg.postprocessing.components import keep_largest_component, remove_small_components
from autoseg.types import LabelVolume, TargetVolume, Triple

__all__ = [
    "OPERATIONS",
    "POSTPROCESSING_SCHEMA_VERSION",
    "Candidate",
    "Evidence",
    "Operation",
    "Postprocessing",
    "PostprocessingStep",
    "apply_postprocessing",
    "load_postprocessing",
    "save_postprocessing",
]

POSTPROCESSING_SCHEMA_VERSION = 1

Operation = Literal["keep_largest_component", "remove_small_components"]


@dataclass(frozen=True)
class PostprocessingStep:
    """One operation on a label map.

    Attributes:
        operation: a name in :data:`OPERATIONS`.
        labels: label values treated one by one, or ``"foreground"`` (all nonzero voxels as one object).
        min_volume_mm3: for ``remove_small_components`` only: components strictly smaller are removed.
    """

    operation: Operation
    labels: tuple[int, ...] | Literal["foreground"]
    min_volume_mm3: float | None = None

    def describe(self) -> str:
        """One line for logs, e.g. ``keep_largest_component(foreground)``."""
        labels = self.labels if self.labels == "foreground" else ",".join(str(k) for k in self.labels)
        extra = f", < {self.min_volume_mm3:g} mm3" if self.min_volume_mm3 is not None else ""
        return f"{self.operation}({labels}{extra})"

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict; ``min_volume_mm3`` only where the operation has it."""
        data: dict[str, Any] = {"operation": self.operation, "labels": _labels_json(self.labels)}
        if self.min_volume_mm3 is not None:
            data["min_volume_mm3"] = self.min_volume_mm3
        return data


@dataclass(frozen=True)
class Candidate:
    """A step tried on the cross-validation predictions: mean Dice per class before and after it."""

    step: PostprocessingStep
    dice_before: dict[int, float]
    dice_after: dict[int, float]
    accepted: bool


@dataclass(frozen=True)
class Evidence:
    """Why the steps were chosen.

    Attributes:
        num_cases: cross-validation cases scored.
        tolerance: Dice changes within this are float noise (neither a gain nor a loss).
        dice_before: per class, mean Dice over cases without post-processing (NaN: never defined).
        dice_after: per class, mean Dice with the chosen steps.
        candidates: every step tried, in order, with its effect.
    """

    num_cases: int
    tolerance: float
    dice_before: dict[int, float]
    dice_after: dict[int, float]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Postprocessing:
    """Steps applied in order to every prediction, and the evidence they were chosen on."""

    steps: tuple[PostprocessingStep, ...]
    evidence: Evidence | None = None


def _apply_keep_largest(labels: LabelVolume, step: PostprocessingStep, spacing_mm: Triple) -> LabelVolume:
    return keep_largest_component(labels, step.labels)


def _apply_remove_small(labels: LabelVolume, step: PostprocessingStep, spacing_mm: Triple) -> LabelVolume:
    assert step.min_volume_mm3 is not None, "validated on construction and load"
    return remove_small_components(labels, step.labels, step.min_volume_mm3, spacing_mm)


OPERATIONS: dict[str, Callable[[LabelVolume, PostprocessingStep, Triple], LabelVolume]] = {
    "keep_largest_component": _apply_keep_largest,
    "remove_small_components": _apply_remove_small,
}
"""Operation name -> function ``(labels, step, spacing_mm) -> labels``."""


def apply_postprocessing(
    labels: TargetVolume, postprocessing: Postprocessing, spacing_mm: Triple
) -> TargetVolume:
    """Apply every step in order.

    Args:
        labels: ``(Z, Y, X)`` uint8/uint16 predicted label map, or a ``(K, Z, Y, X)`` region target, where
            each step acts on each listed structure's own mask (the others, even where they overlap it,
            are untouched; ``"foreground"`` is the union of all structures) (not modified).
        postprocessing: the steps, e.g. from :func:`load_postprocessing`.
        spacing_mm: voxel size ``(z, y, x)`` in mm of ``labels``.

    Returns:
        A new label map (the input itself when there is no step).
    """
    for step in postprocessing.steps:
        labels = OPERATIONS[step.operation](labels, step, spacing_mm)
    return labels


def save_postprocessing(postprocessing: Postprocessing, path: Path) -> None:
    """Write ``postprocessing.json`` atomically (versioned, indented; undefined Dice as ``null``)."""
    data: dict[str, Any] = {
        "schema_version": POSTPROCESSING_SCHEMA_VERSION,
        "autoseg_version": __version__,
        "steps": [step.to_json() for step in postprocessing.steps],
    }
    if postprocessing.evidence is not None:
        data["evidence"] = _evidence_json(postprocessing.evidence)
    write_json(data, path)


def load_postprocessing(path: Path) -> Postprocessing:
    """Read and validate ``postprocessing.json``.

    Raises:
        PostprocessingError: missing file, invalid JSON, unknown schema version or operation, or bad fields;
            the message names the file and the field.
    """
    if not path.is_file():
        raise PostprocessingError(f"{path}: no post-processing file; run find_best_configuration first")
    try:
        data = read_json(path)
    except ImageReadError as error:
        raise PostprocessingError(error.message) from None
    return postprocessing_from_json(data, str(path))


def postprocessing_from_json(data: object, where: str) -> Postprocessing:
    """A validated :class:`Postprocessing` from the content of ``postprocessing.json``; errors name
    ``where``."""
    if not isinstance(data, dict):
        raise PostprocessingError(f"{where}: must hold a JSON object")
    version = data.get("schema_version")
    if version != POSTPROCESSING_SCHEMA_VERSION:
        raise PostprocessingError(
            f"{where}: schema_version {version!r}; this autoseg reads {POSTPROCESSING_SCHEMA_VERSION}. "
            "Choose the post-processing again with this version."
        )
    try:
        steps = tuple(step_from_json(step) for step in _list(data.get("steps"), "steps"))
        evidence = _evidence_from_json(data["evidence"]) if "evidence" in data else None
    except (KeyError, TypeError, ValueError) as error:
        raise PostprocessingError(f"{where}: {_reason(error)}") from None
    return Postprocessing(steps, evidence)


def step_from_json(data: object) -> PostprocessingStep:
    """A validated step from its JSON form.

    Raises:
        ValueError: unknown operation, bad labels, or a missing / unexpected / negative ``min_volume_mm3``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a step must be an object, got {data!r}")
    operation = data.get("operation")
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; known: {', '.join(OPERATIONS)}")
    labels = _labels_from_json(data.get("labels"))
    volume = data.get("min_volume_mm3")
    if operation == "remove_small_components":
        if isinstance(volume, bool) or not isinstance(volume, int | float) or not 0 <= volume < math.inf:
            raise ValueError(f"{operation} needs min_volume_mm3 >= 0 (mm3), got {volume!r}")
        volume = float(volume)
    elif volume is not None:
        raise ValueError(f"{operation} takes no min_volume_mm3")
    unknown = set(data) - {"operation", "labels", "min_volume_mm3"}
    if unknown:
        raise ValueError(f"step {operation} has unknown field(s) {sorted(unknown)}")
    return PostprocessingStep(operation, labels, volume)


# ------------------------------------------------------------------------------------------- internals


def _labels_json(labels: tuple[int, ...] | Literal["foreground"]) -> str | list[int]:
    return labels if labels == "foreground" else list(labels)


def _labels_from_json(value: object) -> tuple[int, ...] | Literal["foreground"]:
    if value == "foreground":
        return "foreground"
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65535 for v in value)
    ):
        raise ValueError(
            f"labels must be 'foreground' or a non-empty list of label values 1..65535, got {value!r}"
        )
    return tuple(value)


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"'{name}' must be a list, got {value!r}")
    return value


def _dice_json(dice: Mapping[int, float]) -> dict[str, float | None]:
    return {str(k): (None if math.isnan(v) else v) for k, v in dice.items()}


def _dice_from_json(value: object) -> dict[int, float]:
    if not isinstance(value, dict):
        raise ValueError(f"Dice per class must be an object, got {value!r}")
    return {int(k): math.nan if v is None else float(v) for k, v in value.items()}


def _evidence_json(evidence: Evidence) -> dict[str, Any]:
    return {
        "metric": "per class, mean Dice over cross-validation cases (cases where both are empty left out)",
        "num_cases": evidence.num_cases,
        "tolerance": evidence.tolerance,
        "dice_before": _dice_json(evidence.dice_before),
        "dice_after": _dice_json(evidence.dice_after),
        "candidates": [
            {
                "step": c.step.to_json(),
                "dice_before": _dice_json(c.dice_before),
                "dice_after": _dice_json(c.dice_after),
                "accepted": c.accepted,
            }
            for c in evidence.candidates
        ],
    }


def _evidence_from_json(data: object) -> Evidence:
    if not isinstance(data, dict):
        raise ValueError("'evidence' must be an object")
    try:
        candidates = tuple(
            Candidate(
                step_from_json(c["step"]),
                _dice_from_json(c["dice_before"]),
                _dice_from_json(c["dice_after"]),
                bool(c["accepted"]),
            )
            for c in _list(data["candidates"], "evidence.candidates")
        )
        return Evidence(
            num_cases=int(data["num_cases"]),
            tolerance=float(data["tolerance"]),
            dice_before=_dice_from_json(data["dice_before"]),
            dice_after=_dice_from_json(data["dice_after"]),
            candidates=candidates,
        )
    except KeyError as error:
        raise ValueError(f"evidence: missing field {error}") from None


def _reason(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error)
