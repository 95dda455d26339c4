"""``autoseg evaluate``: score predicted label files against reference label files.

:func:`run_evaluate` pairs prediction and reference files by case name, checks that each pair shares one grid,
computes the metrics of :mod:`autoseg.evaluation.metrics` per case and class (optionally in worker processes)
and writes ``summary.json``, ``metrics.csv`` and ``metrics.png`` (:mod:`autoseg.evaluation.summary`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from autoseg.dataset.layout import (
    Problem,
    parse_annotated,
    parse_ignore_label,
    parse_labels,
    parse_regions,
    structure_labels,
)
from autoseg.errors import EvaluationError, ImageReadError
from autoseg.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    ClassMetrics,
    OverlapCounts,
    class_metrics,
    evaluate_case,
    without_ignored,
)
from autoseg.evaluation.summary import EvaluationSummary, summarize, write_report
from autoseg.io import Geometry, read_json, read_target, require_same_grid, split_ending
from autoseg.parallel import map_cases
from autoseg.regions import Region, is_region_target, regions_from_labels
from autoseg.types import LabelVolume

__all__ = [
    "CasePair",
    "EvaluateRequest",
    "contoured_only",
    "evaluate_pair",
    "evaluate_pairs",
    "match_cases",
    "output_folder",
    "read_contoured",
    "read_ignore_label",
    "read_label_names",
    "read_label_regions",
    "read_pair",
    "run_evaluate",
]

logger = logging.getLogger(__name__)

MAX_CLASSES_WITHOUT_LABELS = 255
"""Without a labels file every nonzero value is a class; a file with more distinct values than this (a
probability map or an instance map given by mistake) is refused at once instead of scored for minutes."""


@dataclass(frozen=True)
class EvaluateRequest:
    """What ``autoseg evaluate`` was asked to do.

    Attributes:
        prediction: folder of predicted label files, or one file.
        reference: folder of reference label files, or one file.
        output: folder for ``summary.json``, ``metrics.csv`` and ``metrics.png`` (default: the prediction
            folder, or the prediction file's folder).
        labels_file: a ``dataset.json`` naming the labels; without it, every nonzero value found is a class.
            Its ignore label (``"ignore"``, nnU-Net's) is not a class: reference voxels of that value are not
            scored. Its ``"annotated"`` (case -> structures contoured, ``docs/dicom.md``) is read as
            ``contoured_file`` is, unless that is given.
        contoured_file: which structures each reference case contoured (partly contoured data): a JSON
            object ``{"CASE": ["GTV", "CTV"], ...}`` (structure names of ``labels_file``, or label values), or
            a ``dataset.json`` with such an ``"annotated"``. A structure a case did not contour is not scored
            there (undefined, as both empty: left out of the means); a case not listed contoured every one.
        tolerance_mm: tolerance of the normalised surface Dice, mm.
        num_workers: worker processes (1: in this process).
        missing_predictions: ``"error"`` (default) refuses references without a prediction; ``"ignore"``
            evaluates the predicted cases only (e.g. one fold's validation cases against all of ``labelsTr``).
    """

    prediction: Path
    reference: Path
    output: Path | None = None
    labels_file: Path | None = None
    contoured_file: Path | None = None
    tolerance_mm: float = DEFAULT_TOLERANCE_MM
    num_workers: int = 1
    missing_predictions: Literal["error", "ignore"] = "error"


@dataclass(frozen=True)
class CasePair:
    """A prediction file and its reference file, for one case."""

    case: str
    prediction: Path
    reference: Path


def match_cases(
    prediction: Path, reference: Path, *, missing_predictions: Literal["error", "ignore"] = "error"
) -> list[CasePair]:
    """Pair prediction and reference label files by case name (file name without its image ending).

    Both may be single files (one pair) or folders; endings may differ (``.nii.gz`` vs ``.nrrd``).

    Raises:
        EvaluationError: a folder is missing or holds no label file, a prediction has no reference, or
            (with ``missing_predictions="error"``) a reference has no prediction; the message lists the cases.
    """
    if prediction.is_file() and reference.is_file():
        return [CasePair(split_ending(prediction)[0], prediction, reference)]
    predicted, actual = _label_files(prediction), _label_files(reference)
    orphans = sorted(set(predicted) - set(actual))
    if orphans:
        raise EvaluationError(
            f"{len(orphans)} prediction(s) in {prediction} have no reference in {reference}: "
            + _list_cases(orphans)
        )
    missing = sorted(set(actual) - set(predicted))
    if missing and missing_predictions == "error":
        raise EvaluationError(
            f"{len(missing)} reference case(s) in {reference} have no prediction in {prediction}: "
            + _list_cases(missing)
            + " (evaluate a subset on purpose with missing_predictions='ignore')"
        )
    if missing:
        logger.debug(
            "evaluating %d predicted case(s); %d reference(s) without prediction",
            len(predicted),
            len(missing),
        )
    return [CasePair(case, predicted[case], actual[case]) for case in sorted(predicted)]


def read_pair(pair: CasePair) -> tuple[LabelVolume, LabelVolume, Geometry]:
    """Read a prediction and its reference (label maps, or 4D region targets of overlapping structures,
    scored per structure) and check that they share one grid.

    Raises:
        EvaluationError: shape, spacing, origin or direction differ (naming both files).
        ImageReadError: a file is unreadable or not a label map.
    """
    prediction, predicted_geometry = read_target(pair.prediction)
    reference, geometry = read_target(pair.reference)
    require_same_grid(
        pair.prediction,
        prediction.shape,
        predicted_geometry,
        reference.shape,
        geometry,
        reference_name=f"reference {pair.reference}",
        error=EvaluationError,
    )
    return prediction, reference, geometry


def _label_files(folder: Path) -> dict[str, Path]:
    if folder.is_file():
        return {split_ending(folder)[0]: folder}
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: does not exist (expected a folder of label files or one file)")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem, ending = split_ending(path)
        if not ending or path.name.startswith("."):
            continue
        if stem in files:
            raise EvaluationError(f"{folder}: case {stem} appears twice ({files[stem].name}, {path.name})")
        files[stem] = path
    if not files:
        raise EvaluationError(f"{folder}: holds no label file (.nii.gz, .nii, .nrrd, .mha, ...)")
    return files


def _list_cases(cases: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(cases[:limit])
    return shown + (f" and {len(cases) - limit} more" if len(cases) > limit else "")


def evaluate_pair(
    pair: CasePair,
    label_ids: Sequence[int] | None,
    tolerance_mm: float,
    ignore_label: int | None = None,
    regions: Sequence[Region] = (),
) -> tuple[str, dict[int, ClassMetrics]]:
    """Read and evaluate one case (module level, so that worker processes can run it).

    Args:
        label_ids: classes to evaluate; ``None``: every nonzero value in prediction or reference.
        ignore_label: nnU-Net's ignore label: reference voxels of this value are scored by no metric
            (:func:`autoseg.evaluation.metrics.without_ignored`).
        regions: nnU-Net regions of the labels file: a label map (prediction or reference) is scored as
            its regions (:func:`autoseg.regions.regions_from_labels`, region ``k`` is label id ``k + 1``),
            as nnU-Net evaluates a region-based dataset.
    """
    prediction, reference, geometry = read_pair(pair)
    prediction, reference = without_ignored(prediction, reference, ignore_label)
    if regions:
        prediction, reference = (
            regions_from_labels(t, regions) if not is_region_target(t) else t for t in (prediction, reference)
        )
    found = sorted((set(np.unique(prediction).tolist()) | set(np.unique(reference).tolist())) - {0})
    if label_ids is None:
        if len(found) > MAX_CLASSES_WITHOUT_LABELS:
            raise EvaluationError(
                f"{pair.prediction}: it and its reference hold {len(found)} distinct label values; without "
                f"--labels evaluate scores at most {MAX_CLASSES_WITHOUT_LABELS} classes (every nonzero "
                "value found). Give the dataset.json with --labels: values it does not declare are ignored"
            )
        label_ids = found
    elif set(found) - set(label_ids):
        undeclared = sorted(set(found) - set(label_ids))
        logger.warning(
            "%s: %d label value(s) not declared in the labels file, ignored: %s",
            pair.case,
            len(undeclared),
            _list_cases([str(v) for v in undeclared]),
        )
    return pair.case, evaluate_case(
        prediction, reference, geometry.spacing_mm, label_ids, tolerance_mm=tolerance_mm
    )


def evaluate_pairs(
    pairs: Sequence[CasePair],
    label_ids: Sequence[int] | None,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    num_workers: int = 1,
    show_progress: bool = True,
    ignore_label: int | None = None,
    regions: Sequence[Region] = (),
) -> dict[str, dict[int, ClassMetrics]]:
    """Evaluate many cases (in ``num_workers`` processes); classes absent from a case count as both empty;
    reference voxels of ``ignore_label`` are not scored; label maps are scored as ``regions`` if given."""
    work = partial(
        evaluate_pair,
        label_ids=label_ids,
        tolerance_mm=tolerance_mm,
        ignore_label=ignore_label,
        regions=tuple(regions),
    )
    results = dict(
        map_cases(work, pairs, num_workers=num_workers, description="evaluate", show_progress=show_progress)
    )
    classes = sorted({k for metrics in results.values() for k in metrics}) if label_ids is None else label_ids
    both_empty = class_metrics(OverlapCounts(0, 0, 0), (math.nan, math.nan, math.nan), 0.0)
    return {case: {k: metrics.get(k, both_empty) for k in classes} for case, metrics in results.items()}


def read_label_names(path: Path) -> dict[int, str]:
    """Foreground label value (structure number) -> name from a ``dataset.json``: nnU-Net v2 or MSD labels,
    nnU-Net regions (list values) or the multi-label ``"structures"``; the ignore label is not a class.

    Raises:
        EvaluationError: unreadable file or malformed ``labels``.
    """
    meta = _read_labels_json(path)
    problems: list[Problem] = []
    regions, _ = parse_regions(meta, path, problems)
    if regions:
        labels = structure_labels(regions)
    else:
        raw = meta.get("labels")
        if not isinstance(raw, dict):
            raise EvaluationError(f"{path}: has no 'labels' object (expected a dataset.json)")
        msd = all(str(key).strip().isdigit() for key in raw)
        labels = parse_labels(meta, path, problems, msd=msd)  # the one parser of dataset.json labels
    if problems:
        raise EvaluationError(f"{path}: invalid labels", details=[p.message for p in problems])
    return {value: name for name, value in sorted(labels.items(), key=lambda item: item[1]) if value != 0}


def read_label_regions(path: Path) -> tuple[Region, ...]:
    """The nnU-Net regions (label values that are lists) a ``dataset.json`` declares, else ``()``: label maps
    are then scored per region (the multi-label ``"structures"`` layout has no label values: ``()``)."""
    problems: list[Problem] = []
    regions, _ = parse_regions(_read_labels_json(path), path, problems)
    return regions if regions and regions[0].label_values and not problems else ()


def read_ignore_label(path: Path) -> int | None:
    """The ignore label a ``dataset.json`` declares (nnU-Net's rules, :func:`parse_ignore_label`), else
    ``None``.

    Raises:
        EvaluationError: unreadable file, or an ignore label that breaks the rules.
    """
    meta = _read_labels_json(path)
    problems: list[Problem] = []
    value = parse_ignore_label(meta, path, problems)
    if problems:
        raise EvaluationError(f"{path}: invalid ignore label", details=[p.message for p in problems])
    return value


def read_contoured(path: Path, names: Mapping[int, str] | None) -> dict[str, tuple[int, ...]]:
    """Case -> the structure numbers (label values) its reference contoured, from ``{"CASE": ["GTV", ...]}``
    (names of ``names``, or label values) or a ``dataset.json``'s ``"annotated"`` (``{}`` when it has none).

    Raises:
        EvaluationError: unreadable file, or an entry that is not a list of known structures.
    """
    meta = _read_labels_json(path, key=None)
    if "labels" in meta or "structures" in meta:  # a dataset.json: its own structures name the entries
        if "annotated" not in meta:
            return {}
        problems: list[Problem] = []
        regions, _ = parse_regions(meta, path, problems)
        found = parse_annotated(meta, regions, path, problems) if regions else _contoured_entries(
            meta["annotated"], read_label_names(path), path
        )  # fmt: skip
        if problems:
            raise EvaluationError(f"{path}: invalid 'annotated'", details=[p.message for p in problems])
        return found
    return _contoured_entries(meta, names or {}, path)


def _contoured_entries(raw: object, names: Mapping[int, str], path: Path) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, dict):
        raise EvaluationError(f"{path}: expected an object of case -> contoured structures")
    numbers = {name: value for value, name in names.items()}
    found: dict[str, tuple[int, ...]] = {}
    for case, entries in raw.items():
        if not isinstance(entries, list):
            raise EvaluationError(f"{path}: '{case}' must list the structures contoured, got {entries!r}")
        values = set()
        for entry in entries:
            value = numbers.get(entry) if isinstance(entry, str) else entry
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                known = ", ".join(numbers) or "label values (give --labels to use names)"
                raise EvaluationError(f"{path}: '{case}' lists {entry!r}, not a structure ({known})")
            values.add(value)
        found[str(case)] = tuple(sorted(values))
    return found


def _read_labels_json(path: Path, key: str | None = "labels") -> dict[str, object]:
    try:
        meta = read_json(path)
    except ImageReadError as error:
        raise EvaluationError(error.message) from None
    if not isinstance(meta, dict) or (key is not None and key not in meta and "structures" not in meta):
        raise EvaluationError(f"{path}: has no 'labels' object (expected a dataset.json)")
    return meta


def contoured_only(
    metrics: dict[int, ClassMetrics], contoured: Sequence[int] | None
) -> dict[int, ClassMetrics]:
    """A case's metrics with every structure its reference never contoured made undefined (as both empty:
    left out of the means); ``contoured`` ``None``: every structure was contoured."""
    if contoured is None:
        return metrics
    undefined = class_metrics(OverlapCounts(0, 0, 0), (math.nan, math.nan, math.nan), 0.0)
    return {k: m if k in contoured else undefined for k, m in metrics.items()}


def label_names_for(label_ids: Sequence[int], names: Mapping[int, str] | None) -> dict[int, str]:
    """Names of ``label_ids`` (``label_<value>`` when no name is known)."""
    return {k: (names or {}).get(k, f"label_{k}") for k in label_ids}


def output_folder(request: EvaluateRequest) -> Path:
    """Where the report goes: ``request.output``, else the prediction folder (a file's folder)."""
    if request.output is not None:
        return request.output
    return request.prediction if request.prediction.is_dir() else request.prediction.parent


def run_evaluate(request: EvaluateRequest, *, show_progress: bool = True) -> EvaluationSummary:
    """Evaluate every prediction against its reference and write the report into ``request.output``.

    Raises:
        EvaluationError: unmatched cases, different grids, or a malformed labels file.
        ImageReadError: an unreadable label file.
    """
    if not request.tolerance_mm > 0:
        raise EvaluationError(f"tolerance must be positive, got {request.tolerance_mm} mm")
    pairs = match_cases(
        request.prediction, request.reference, missing_predictions=request.missing_predictions
    )
    names = read_label_names(request.labels_file) if request.labels_file is not None else None
    ignore = read_ignore_label(request.labels_file) if request.labels_file is not None else None
    contoured_file = request.contoured_file or request.labels_file
    contoured = read_contoured(contoured_file, names) if contoured_file is not None else {}
    label_ids = sorted(names) if names is not None else None
    cases = evaluate_pairs(
        pairs,
        label_ids,
        tolerance_mm=request.tolerance_mm,
        num_workers=request.num_workers,
        show_progress=show_progress,
        ignore_label=ignore,
        regions=read_label_regions(request.labels_file) if request.labels_file is not None else (),
    )
    cases = {case: contoured_only(metrics, contoured.get(case)) for case, metrics in cases.items()}
    found = sorted({k for metrics in cases.values() for k in metrics})
    summary = summarize(cases, label_names_for(found, names), request.tolerance_mm)
    output = output_folder(request)
    write_report(summary, output)
    logger.info(
        "evaluated %d case(s): mean Dice %.4f over %d class(es); wrote %s",
        len(cases),
        summary.mean_dice,
        len(found),
        output,
    )
    return summary
