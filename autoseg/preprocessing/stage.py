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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from autoseg.dataset.layout import Case, load_dataset, read_case
from autoseg.errors import AutosegError, ConfigurationNotPlannedError, PreprocessError
from autoseg.io import read_json, write_json, write_target
from autoseg.parallel import map_cases
from autoseg.plans import ConfigurationPlan
from autoseg.preprocessing.case import preprocess_case
from autoseg.preprocessing.store import is_up_to_date, remove_leftovers, save_case
from autoseg.workdir import Workdir, folder_lock

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

    One run at a time per work directory (the lock of ``preprocessed/``). A data folder made for another
    plan (an edited spacing, normalisation, resampling or orientation) is redone, and a configuration not
    preprocessed in this run whose folder now holds another plan's data is dropped from
    ``configurations.json`` (training then asks for ``autoseg preprocess``).

    Returns:
        configuration name -> data folder.

    Raises:
        PreprocessError: no plans, or plans made from another fingerprint.
        ConfigurationNotPlannedError: a configuration that was not planned (exit 2).
        FolderInUseError: another preprocess runs on this work directory.
    """
    work = Workdir(workdir)
    plans, fingerprint = work.read_plans(), work.read_fingerprint()
    if plans.fingerprint_sha256 != fingerprint.sha256():
        raise PreprocessError(f"{work.plans_path} was made from another fingerprint; re-run 'autoseg plan'")
    names = list(options.configurations or plans.configurations)
    unknown = [n for n in names if n not in plans.configurations]
    if unknown:
        raise ConfigurationNotPlannedError(
            f"{work.plans_path}: configuration(s) {', '.join(unknown)} not planned; "
            f"planned: {', '.join(plans.configurations)}"
        )
    dataset = load_dataset(Path(fingerprint.dataset_root))
    folders = assign_folders({n: plans.configurations[n] for n in names})
    with folder_lock(work.preprocessed_dir, "preprocess", remove_temporaries=True):
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
        work.write_configurations(_current_mapping(work, plans.configurations, folders))
        work.write_reference_annotated(
            {c.identifier: c.annotated for c in dataset.cases if c.annotated is not None}
        )
    return {name: work.data_folder(folder) for name, folder in folders.items()}


def _current_mapping(
    work: Workdir, planned: Mapping[str, ConfigurationPlan], done: Mapping[str, str]
) -> dict[str, str]:
    """``configurations.json`` after this run: the configurations just preprocessed, and the earlier ones
    whose folder still holds data made for their current plan."""
    mapping = dict(done)
    for name, folder in work.read_configurations().items():
        if name in done:
            continue
        if name in planned and stored_signature(work.preprocessing_json(folder)) == plan_signature(
            planned[name]
        ):
            mapping[name] = folder
        else:
            logger.warning(
                "%s: preprocessed/%s no longer holds data for its plan; run 'autoseg preprocess -c %s'",
                name,
                folder,
                name,
            )
    return mapping


def _preprocess_folder(
    work: Workdir,
    folder: str,
    config: ConfigurationPlan,
    cases: Sequence[Case],
    job: Callable[[Case], str],
    options: PreprocessOptions,
    show_progress: bool,
) -> None:
    """Preprocess every case of one data folder; its ``preprocessing.json`` (parameters and plan signature)
    is written once every case is stored, and removed first when it records another plan, so a folder
    interrupted half-way through a new plan is never taken for a finished one."""
    out = work.data_folder(folder)
    remove_leftovers(out)
    parameters_path = work.preprocessing_json(folder)
    if stored_signature(parameters_path) != plan_signature(config):
        parameters_path.unlink(missing_ok=True)
    description = f"preprocess {folder}"
    outcomes = list(
        map_cases(
            job, cases, num_workers=options.num_workers, description=description, show_progress=show_progress
        )
    )
    write_json(
        {**preprocessing_parameters(config), "plan_signature": plan_signature(config)}, parameters_path
    )
    logger.info(
        "%s: %d case(s) preprocessed, %d up to date -> %s",
        folder,
        outcomes.count("done"),
        outcomes.count("skipped"),
        out,
    )


def plan_signature(config: ConfigurationPlan) -> str:
    """SHA-256 of the configuration's preprocessing-relevant fields (:func:`preprocessing_parameters`):
    recorded in ``preprocessing.json``, compared by training to detect a stale store."""
    return hashlib.sha256(json.dumps(preprocessing_parameters(config), sort_keys=True).encode()).hexdigest()


def stored_signature(parameters_path: Path) -> str | None:
    """The plan signature a data folder's ``preprocessing.json`` records; for a folder written before
    signatures, the signature of the parameters it records; ``None`` when there is no readable file."""
    try:
        data = read_json(parameters_path)
    except AutosegError:
        return None
    if not isinstance(data, dict):
        return None
    recorded = data.pop("plan_signature", None)
    if isinstance(recorded, str):
        return recorded
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def require_current_store(work: Workdir, configuration: str, config: ConfigurationPlan) -> Path:
    """The data folder of ``configuration``, checked to hold data made for ``config`` (its plan now).

    Raises:
        WorkdirError: not preprocessed.
        PreprocessError: preprocessed for another plan (``plans.json`` was edited since).
    """
    folder = work.data_dir(configuration)
    if stored_signature(work.preprocessing_json(folder.name)) != plan_signature(config):
        raise PreprocessError(
            f"{work.preprocessing_json(folder.name)}: the data of {configuration} was preprocessed for "
            f"another plan (spacing, normalisation, resampling or orientation changed in "
            f"{work.plans_path.name} since); re-run 'autoseg preprocess -c {configuration}'"
        )
    return folder


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
        "orientation": asdict(config.orientation),
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
