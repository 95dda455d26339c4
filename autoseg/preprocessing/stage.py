"""``autoseg preprocess``: every case of every planned configuration, stored for fast random patch reads.

Reads ``plans.json``, ``fingerprint.json`` and the raw dataset; writes (paths in :mod:`autoseg.workdir`)::

    WORKDIR/preprocessed/configurations.json      configuration name -> data folder
    WORKDIR/preprocessed/<folder>/preprocessing.json   spacing, normalisation, resampling of that folder
    WORKDIR/preprocessed/<folder>/<case>/         one stored case (:mod:`autoseg.preprocessing.store`)
    WORKDIR/reference_labels/<case>.nii.gz        the label map in its original geometry, for validation
    WORKDIR/reference_labels/annotated.json       partly contoured regions: case -> structures contoured

Configurations that preprocess identically (``2d`` and ``3d_fullres`` usually do; ``3d_cascade_fullres``
always shares ``3d_fullres``) share one folder. A re-run skips every case whose sources and parameters are
unchanged (``properties.json`` records their signature). After this stage the work directory is
self-contained: training, validation and ``find_best_configuration`` never read the raw dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from autoseg.dataset.layout import Case, load_dataset, read_case
from autoseg.errors import AutosegError, PreprocessError, UsageError
from autoseg.io import write_json, write_target
from autoseg.parallel import map_cases
from autoseg.plans import ConfigurationPlan
from autoseg.preprocessing.case import preprocess_case
from autoseg.preprocessing.store import is_up_to_date, remove_leftovers, save_case
from autoseg.workdir import Workdir

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
"""Bump when the stored format or the algorithm changes: every case is then recomputed."""


@dataclass(frozen=True)
class PreprocessOptions:
    """What ``autoseg preprocess`` runs: which configurations (default: every planned one), in how many worker
    processes, with which seed for the stored foreground samples."""

    configurations: tuple[str, ...] | None = None
    num_workers: int = 1
    seed: int = 0


def run_preprocess(
    workdir: Path, options: PreprocessOptions = PreprocessOptions(), *, show_progress: bool = True
) -> dict[str, Path]:
    """Preprocess the dataset of ``workdir`` for the planned configurations, and copy its reference label
    maps into the work directory (``reference_labels/``), so later stages never read the raw dataset.

    Returns:
        configuration name -> data folder.

    Raises:
        PreprocessError: no plans, or plans made from another fingerprint.
        UsageError: a configuration that was not planned.
    """
    work = Workdir(workdir)
    plans, fingerprint = work.read_plans(), work.read_fingerprint()
    if plans.fingerprint_sha256 != fingerprint.sha256():
        raise PreprocessError(f"{work.plans_path} was made from another fingerprint; re-run 'autoseg plan'")
    dataset = load_dataset(Path(fingerprint.dataset_root))
    names = list(options.configurations or plans.configurations)
    unknown = [n for n in names if n not in plans.configurations]
    if unknown:
        raise UsageError(
            f"configuration(s) {', '.join(unknown)} not planned; planned: {', '.join(plans.configurations)}"
        )
    folders = assign_folders({n: plans.configurations[n] for n in names})
    for index, folder in enumerate(sorted(set(folders.values()))):
        job = partial(
            _preprocess_job,
            config=plans.configurations[folder],
            out=work.data_folder(folder),
            references=work if index == 0 else None,
            dataset_root=dataset.root,
            seed=options.seed,
        )
        _preprocess_folder(
            work, folder, plans.configurations[folder], dataset.cases, job, options, show_progress
        )
    work.write_configurations({**work.read_configurations(), **folders})
    work.write_reference_annotated(
        {c.identifier: c.annotated for c in dataset.cases if c.annotated is not None}
    )
    return {name: work.data_folder(folder) for name, folder in folders.items()}


def _preprocess_folder(
    work: Workdir,
    folder: str,
    config: ConfigurationPlan,
    cases: Sequence[Case],
    job: Callable[[Case], str],
    options: PreprocessOptions,
    show_progress: bool,
) -> None:
    out = work.data_folder(folder)
    remove_leftovers(out)
    write_json(preprocessing_parameters(config), work.preprocessing_json(folder))
    description = f"preprocess {folder}"
    outcomes = list(
        map_cases(
            job, cases, num_workers=options.num_workers, description=description, show_progress=show_progress
        )
    )
    logger.info(
        "%s: %d case(s) preprocessed, %d up to date -> %s",
        folder,
        outcomes.count("done"),
        outcomes.count("skipped"),
        out,
    )


def assign_folders(configurations: dict[str, ConfigurationPlan]) -> dict[str, str]:
    """Configuration -> data folder; configurations with identical preprocessing share the first one's folder
    (in the order 3d_fullres, 3d_lowres, 2d, others)."""
    order = ["3d_fullres", "3d_lowres", "2d"]
    ranked = sorted(configurations, key=lambda n: (order.index(n) if n in order else len(order), n))
    folders: dict[str, str] = {}
    by_parameters: dict[str, str] = {}
    for name in ranked:
        key = json.dumps(preprocessing_parameters(configurations[name]), sort_keys=True)
        folders[name] = by_parameters.setdefault(key, name)
    return folders


def preprocessing_parameters(config: ConfigurationPlan) -> dict[str, Any]:
    """What determines the stored data of a configuration."""
    return {
        "version": PREPROCESS_VERSION,
        "spacing_mm": list(config.spacing_mm),
        "normalization": [asdict(n) for n in config.normalization],
        "resampling": asdict(config.resampling),
    }


# ------------------------------------------------------------------------------------------- internals


def _preprocess_job(
    case: Case,
    *,
    config: ConfigurationPlan,
    out: Path,
    references: Workdir | None,
    dataset_root: Path,
    seed: int,
) -> str:
    """Preprocess one case into ``out/<case>`` unless it is up to date, and (when ``references`` is given)
    copy its label map to the work directory's reference labels; module level for worker processes."""
    signature = _case_signature(case, dataset_root, config, seed)
    target = out / case.identifier
    labelled = references is not None and case.label_path is not None
    reference = references.reference_labels_path(case.identifier) if references and labelled else None
    if is_up_to_date(target, signature) and (reference is None or reference.is_file()):
        return "skipped"
    try:
        image, labels, geometry = read_case(case)
    except AutosegError as error:
        raise PreprocessError(
            f"case '{case.identifier}': {error.message}; nothing was written for it"
        ) from None
    if reference is not None and labels is not None:
        write_target(labels, geometry, reference)
    if is_up_to_date(target, signature):
        return "skipped"
    result = preprocess_case(
        image, labels, geometry, config, identifier=case.identifier, seed=seed, in_place=True,
        annotated=case.annotated,
    )  # fmt: skip
    del image, labels
    save_case(result, target, signature)
    return "done"


def _case_signature(case: Case, dataset_root: Path, config: ConfigurationPlan, seed: int) -> str:
    digest = hashlib.sha256(json.dumps(preprocessing_parameters(config), sort_keys=True).encode())
    digest.update(f"seed={seed};".encode())
    if case.annotated is not None:
        digest.update(f"annotated={list(case.annotated)};".encode())
    for path in case.files():
        stat = path.stat()
        digest.update(f"{path.relative_to(dataset_root)}|{stat.st_size}|{stat.st_mtime_ns};".encode())
    return digest.hexdigest()
