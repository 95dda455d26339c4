"""Cross-validation splits: seeded 5-fold cross-validation, made once per work directory (``splits.json``,
read and written through :class:`~autoseg.workdir.Workdir`) and reused by every fold.

With a groups mapping (case -> patient), all cases of a patient land in the same fold, so no patient is ever
both trained on and validated on.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autoseg.errors import SplitsError, UsageError
from autoseg.io import read_json
from autoseg.workdir import Split, Workdir

logger = logging.getLogger(__name__)


def make_splits(
    identifiers: Sequence[str], *, folds: int = 5, seed: int = 12345, groups: Mapping[str, str] | None = None
) -> list[Split]:
    """Seeded k-fold splits; with ``groups``, whole groups go to one fold (largest groups placed first, each
    into the fold with the fewest cases so far, so folds stay balanced).

    Raises:
        UsageError: fewer groups than folds.
    """
    cases = sorted(identifiers)
    group_of = {case: (groups or {}).get(case, case) for case in cases}
    members: dict[str, list[str]] = {}
    for case in cases:
        members.setdefault(group_of[case], []).append(case)
    if len(members) < folds:
        raise UsageError(
            f"{len(members)} case group(s) cannot fill {folds} folds; use fewer folds or more data"
        )
    rng = np.random.default_rng(seed)
    names = sorted(members)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -len(members[g]))  # stable: the shuffled order breaks ties
    assigned: list[list[str]] = [[] for _ in range(folds)]
    for group in order:
        smallest = min(range(folds), key=lambda f: (len(assigned[f]), f))
        assigned[smallest].extend(members[group])
    return [
        {
            "train": sorted(c for f in range(folds) if f != fold for c in assigned[f]),
            "val": sorted(assigned[fold]),
        }
        for fold in range(folds)
    ]


def load_or_create_splits(
    workdir: Workdir,
    identifiers: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 12345,
    groups: Mapping[str, str] | None = None,
) -> list[Split]:
    """Read the work directory's ``splits.json``, or make and write it. An existing file must cover exactly
    these cases.

    Raises:
        SplitsError: the existing splits name other cases (the dataset changed): delete the file to re-split.
        WorkdirError: the existing file is malformed.
    """
    existing = workdir.read_splits()
    if existing is not None:
        covered = {c for split in existing for c in split["val"]}
        if covered != set(identifiers):
            extra, missing = sorted(covered - set(identifiers)), sorted(set(identifiers) - covered)
            raise SplitsError(
                f"{workdir.splits_path} does not match the dataset ({len(missing)} case(s) not in any fold, "
                f"{len(extra)} unknown); delete it to make new splits (trained folds then no "
                "longer compare)"
            )
        return existing
    available = len({(groups or {}).get(c, c) for c in identifiers})
    if 2 <= available < folds:
        logger.warning(
            "only %d case group(s): %d-fold cross-validation instead of %d", available, available, folds
        )
        folds = available
    splits = make_splits(identifiers, folds=folds, seed=seed, groups=groups)
    path = workdir.write_splits(splits)
    logger.info(
        "wrote %s: %d folds of %s validation cases", path, folds, "/".join(str(len(s["val"])) for s in splits)
    )
    return splits


def read_groups(path: Path, identifiers: Sequence[str]) -> dict[str, str]:
    """A case -> group (patient) mapping from JSON (``{"case": "patient"}``) or CSV (``case,patient`` rows).

    Raises:
        SplitsError: unreadable file, or cases of the dataset missing from it.
    """
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if not isinstance(data, dict):
            raise SplitsError(f"{path}: expected a JSON object mapping case -> group")
        groups = {str(k): str(v) for k, v in data.items()}
    else:
        try:
            with path.open(newline="", encoding="utf-8") as stream:
                rows = [r for r in csv.reader(stream) if r and not r[0].startswith("#")]
        except OSError as error:
            raise SplitsError(f"{path}: cannot read ({error})") from None
        if rows and len(rows[0]) >= 2 and rows[0][0].strip().lower() in ("case", "identifier"):
            rows = rows[1:]
        if any(len(r) < 2 for r in rows):
            raise SplitsError(f"{path}: every row needs 'case,group'")
        groups = {r[0].strip(): r[1].strip() for r in rows}
    missing = sorted(set(identifiers) - set(groups))
    if missing:
        raise SplitsError(f"{path}: no group for {len(missing)} case(s), e.g. {', '.join(missing[:5])}")
    return groups
