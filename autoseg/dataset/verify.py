"""``autoseg verify``: check every case of a raw dataset and report all problems, each naming its file.

Errors make the dataset unusable (missing or corrupt files, mismatched grids, undeclared or non-integer
labels, NaN/Inf, 4D where 3D is expected, a wrong ``numTraining``, duplicate identifiers, paths escaping the
folder).
Warnings do not (a class absent from most cases, extreme anisotropy, mixed dtypes, mixed orientations, float
label files with integer values). The input is only read, never modified.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.dataset.layout import Case, Dataset, Problem, scan_dataset
from autoseg.errors import ImageReadError
from autoseg.io import Geometry, grid_mismatch, read_array
from autoseg.parallel import map_cases
from autoseg.types import AnyArray

logger = logging.getLogger(__name__)

ANISOTROPY_WARNING_RATIO = 3.0
"""Median spacing ratio (coarsest / finest axis) above which verify warns."""

INTENSITY_SCALE_WARNING_RATIO = 100.0
"""Cases whose largest intensities differ by more than this factor get a warning (unnormalised MR)."""

RARE_CLASS_FRACTION = 0.5
"""A class present in fewer than this fraction of cases gets a warning."""


@dataclass(frozen=True)
class CaseSummary:
    """What verify learned about one readable case, for the dataset-wide checks."""

    identifier: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    image_dtypes: tuple[str, ...]
    label_values: tuple[int, ...]
    channel_max_abs: tuple[float, ...]


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_dataset`."""

    root: Path
    problems: tuple[Problem, ...]
    cases_checked: int

    @property
    def errors(self) -> list[Problem]:
        """Problems that make the dataset unusable."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Problems worth knowing that do not block training."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when no error was found."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """The report as JSON (``verify --json``): root, cases checked, ok, and every problem."""
        return {
            "root": str(self.root),
            "cases_checked": self.cases_checked,
            "ok": self.ok,
            "problems": [
                {
                    "severity": p.severity,
                    "path": str(p.path) if p.path else None,
                    "case": p.case,
                    "message": p.message,
                }
                for p in self.problems
            ],
        }

    def lines(self) -> list[str]:
        """The report as text lines: every problem, then a one-line verdict."""
        verdict = (
            f"{self.root}: {self.cases_checked} case(s) checked, {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )
        return [p.line() for p in (*self.errors, *self.warnings)] + [verdict]


def verify_dataset(root: Path, *, num_workers: int = 1, show_progress: bool = True) -> VerifyReport:
    """Check the layout, ``dataset.json`` and the content of every case.

    Args:
        root: the raw dataset folder.
        num_workers: processes reading cases in parallel.
        show_progress: draw a progress bar.
    """
    dataset, problems = scan_dataset(root)
    if dataset is None:
        return VerifyReport(root.resolve(), tuple(problems), 0)
    check = partial(check_case, labels=dataset.label_values, num_channels=dataset.num_channels)
    summaries: list[CaseSummary] = []
    for summary, case_problems in map_cases(
        check, dataset.cases, num_workers=num_workers, description="verify", show_progress=show_progress
    ):
        problems.extend(case_problems)
        if summary is not None:
            summaries.append(summary)
    problems.extend(dataset_warnings(dataset, summaries))
    logger.info("verified %d case(s) of %s", len(dataset.cases), dataset.root)
    return VerifyReport(dataset.root, tuple(problems), len(dataset.cases))


def check_case(
    case: Case, labels: Sequence[int], num_channels: int
) -> tuple[CaseSummary | None, list[Problem]]:
    """Read every file of one case and report what is wrong with it.

    Returns:
        A summary (``None`` when a file could not be read or the grids disagree) and the case's problems.
    """
    problems: list[Problem] = []
    images = _read_channels(case, num_channels, problems)
    label = _read_label(case, problems) if case.label_path is not None else None
    if images is None or (case.label_path is not None and label is None):
        return None, problems
    assert case.label_path is not None and label is not None
    (label_array, label_geometry) = label
    reference_path, (reference_array, reference_geometry) = images[0]
    shape = tuple(int(s) for s in reference_array.shape[-3:])
    for path, (array, geometry) in [*images[1:], (case.label_path, (label_array, label_geometry))]:
        spatial = array.shape[-3:] if path == case.label_path else array.shape
        mismatch = grid_mismatch(spatial, geometry, shape, reference_geometry, reference_path.name)
        if mismatch is not None:
            problems.append(Problem("error", mismatch, path, case.identifier))
    if any(p.severity == "error" for p in problems):
        return None, problems
    present = _check_label_values(case.label_path, label_array, labels, case.identifier, problems)
    if case.regions:
        present = _structures_present(case, label_array, present)
    summary = CaseSummary(
        case.identifier,
        (shape[0], shape[1], shape[2]),
        reference_geometry.spacing_mm,
        reference_geometry.orientation_code(),
        tuple(str(a.dtype) for _, (a, _g) in images),
        present,
        tuple(float(np.max(np.abs(a))) if a.size else 0.0 for _, (a, _g) in images),
    )
    return summary, problems


def dataset_warnings(dataset: Dataset, summaries: Sequence[CaseSummary]) -> list[Problem]:
    """Dataset-wide warnings: rare classes, extreme anisotropy, mixed dtypes and orientations."""
    if not summaries:
        return []
    found: list[Problem] = []
    json_path = dataset.root / "dataset.json"
    presence = Counter(v for s in summaries for v in s.label_values)
    for name, value in dataset.foreground_labels.items():
        fraction = presence[value] / len(summaries)
        if fraction < RARE_CLASS_FRACTION:
            found.append(
                Problem(
                    "warning",
                    f"class '{name}' ({value}) is present in only {presence[value]} of "
                    f"{len(summaries)} case(s)",
                    json_path,
                )
            )
    median = np.median(np.array([s.spacing_mm for s in summaries]), axis=0)
    if float(median.max() / median.min()) > ANISOTROPY_WARNING_RATIO:
        found.append(
            Problem(
                "warning",
                f"extreme anisotropy: median spacing (z, y, x) = "
                f"{tuple(round(float(m), 3) for m in median)} mm, ratio "
                f"{float(median.max() / median.min()):.1f}",
                json_path,
            )
        )
    dtypes = Counter(d for s in summaries for d in s.image_dtypes)
    if len(dtypes) > 1:
        listed = ", ".join(f"{n} {d}" for d, n in dtypes.most_common())
        found.append(
            Problem(
                "warning",
                f"mixed image dtypes across cases ({listed}); fine, all are read as float32",
                json_path,
            )
        )
    found.extend(_intensity_scale_warnings(dataset, summaries))
    orientations = Counter(s.orientation for s in summaries)
    if len(orientations) > 1:
        listed = ", ".join(f"{n} {o}" for o, n in orientations.most_common())
        found.append(Problem("warning", f"mixed orientations across cases ({listed})", json_path))
    return found


def _intensity_scale_warnings(dataset: Dataset, summaries: Sequence[CaseSummary]) -> list[Problem]:
    found = []
    for channel, name in enumerate(dataset.channel_names):
        maxima = [s.channel_max_abs[channel] for s in summaries if len(s.channel_max_abs) > channel]
        positive = [m for m in maxima if m > 0]
        if len(positive) > 1 and max(positive) / min(positive) > INTENSITY_SCALE_WARNING_RATIO:
            found.append(
                Problem(
                    "warning",
                    f"channel {channel} ({name}): the largest intensity ranges from "
                    f"{min(positive):.4g} to {max(positive):.4g} between cases; normalise "
                    "per image (z-score), not with one dataset-wide scale",
                    dataset.root / "dataset.json",
                )
            )
    return found


def _read_channels(
    case: Case, num_channels: int, problems: list[Problem]
) -> list[tuple[Path, tuple[AnyArray, Geometry]]] | None:
    read: list[tuple[Path, tuple[AnyArray, Geometry]]] = []
    for path in case.image_paths:
        content = _read(path, case.identifier, problems)
        if content is None:
            continue
        array, geometry = content
        expected_ndim = 4 if case.channels_in_one_file else 3
        if array.ndim != expected_ndim:
            kind = f"{array.ndim}D with shape {array.shape}"
            problems.append(
                Problem("error", f"is {kind}; expected a {expected_ndim}D volume", path, case.identifier)
            )
            continue
        if case.channels_in_one_file and array.shape[0] != num_channels:
            problems.append(
                Problem(
                    "error",
                    f"holds {array.shape[0]} channel(s); dataset.json declares {num_channels}",
                    path,
                    case.identifier,
                )
            )
            continue
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            problems.append(Problem("error", f"image contains {bad} NaN/Inf voxel(s)", path, case.identifier))
            continue
        read.append((path, (array, geometry)))
    return read if len(read) == len(case.image_paths) else None


def _structures_present(case: Case, labels: AnyArray, values: Sequence[int]) -> tuple[int, ...]:
    """Structure numbers (1-based) with voxels: nonempty channels of a multi-label file, regions of which a
    label value is present in an nnU-Net region label map."""
    if case.label_channels:
        return tuple(k + 1 for k in range(len(labels)) if labels[k].any())
    return tuple(k + 1 for k, r in enumerate(case.regions) if set(r.label_values) & set(values))


def _read_label(case: Case, problems: list[Problem]) -> tuple[AnyArray, Geometry] | None:
    assert case.label_path is not None
    content = _read(case.label_path, case.identifier, problems)
    if content is None:
        return None
    if case.label_channels:
        return _multi_label(case, content, problems)
    if content[0].ndim != 3:
        problems.append(
            Problem(
                "error",
                f"is {content[0].ndim}D with shape {content[0].shape}; expected a 3D label map",
                case.label_path,
                case.identifier,
            )
        )
        return None
    return content


def _multi_label(
    case: Case, content: tuple[AnyArray, Geometry], problems: list[Problem]
) -> tuple[AnyArray, Geometry] | None:
    """A multi-label file: 4D (3D for one structure) with one channel per declared structure."""
    assert case.label_path is not None
    array = content[0][None] if content[0].ndim == 3 else content[0]
    if array.ndim != 4 or len(array) != case.label_channels:
        problems.append(
            Problem(
                "error",
                f"has shape {content[0].shape}; expected 4D with one binary channel per structure "
                f"({case.label_channels}, the 'structures' of dataset.json)",
                case.label_path,
                case.identifier,
            )
        )
        return None
    return array, content[1]


def _read(path: Path, identifier: str, problems: list[Problem]) -> tuple[AnyArray, Geometry] | None:
    try:
        return read_array(path)
    except ImageReadError as error:
        message = error.message.removeprefix(f"{path}: ")
        problems.append(Problem("error", f"unreadable or corrupt: {message}", path, identifier))
        return None


def _check_label_values(
    path: Path, array: AnyArray, declared: Sequence[int], identifier: str, problems: list[Problem]
) -> tuple[int, ...]:
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64, copy=False)
        finite = np.isfinite(values)
        if not np.all(finite) or not np.array_equal(values[finite], np.round(values[finite])):
            sample = np.unique(values[finite][values[finite] != np.round(values[finite])])[:5]
            problems.append(
                Problem(
                    "error",
                    "label map has non-integer values "
                    f"(e.g. {', '.join(f'{v:g}' for v in sample) or 'NaN/Inf'})",
                    path,
                    identifier,
                )
            )
            return ()
        problems.append(
            Problem(
                "warning",
                f"label map is stored as {array.dtype}; its values are integers, so it is accepted",
                path,
                identifier,
            )
        )
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        problems.append(Problem("error", f"label map has dtype {array.dtype}", path, identifier))
        return ()
    present = tuple(int(v) for v in np.unique(array))
    undeclared = sorted(set(present) - set(declared))
    if undeclared:
        problems.append(
            Problem(
                "error",
                f"label value(s) {undeclared} not declared in dataset.json (declared: {list(declared)})",
                path,
                identifier,
            )
        )
    if present == (0,):
        problems.append(Problem("warning", "label map has no foreground", path, identifier))
    return present
