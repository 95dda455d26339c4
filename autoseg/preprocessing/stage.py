"""``autoseg preprocess``: every case of every planned configuration, stored for fast random patch reads.

Layout (``docs/design.md`` has the storage measurement behind it)::

    WORKDIR/preprocessed/configurations.json      configuration name -> data folder
    WORKDIR/preprocessed/<folder>/preprocessing.json   spacing, normalisation, resampling of that folder
    WORKDIR/preprocessed/<folder>/<case>/image.npy       (C, Z, Y, X) float32, opened by memory map
                                        labels.npy      (Z, Y, X) uint8/uint16
                                        foreground.npz  class -> (N, 3) int32 voxel locations
                                        properties.json what it takes to invert the preprocessing

Configurations that preprocess identically (``2d`` and ``3d_fullres`` usually do; ``3d_cascade_fullres``
always shares ``3d_fullres``) share one folder. A case is written in a hidden temporary folder and renamed
into place, so a kill never leaves a half case under its final name; a re-run skips every case whose sources
and parameters are unchanged (``properties.json`` records their signature).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from autoseg.dataset.layout import Case, load_dataset, read_case
from autoseg.errors import AutosegError, UsageError
from autoseg.fingerprint import load_fingerprint
from autoseg.io import read_json, write_json
from autoseg.parallel import map_cases
from autoseg.plans import ConfigurationPlan, load_plans
from autoseg.preprocessing.case import CaseProperties, preprocess_case

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
"""Bump when the stored format or the algorithm changes: every case is then recomputed."""


class PreprocessError(AutosegError):
    """Preprocessing cannot run (no plan, a plan made for another fingerprint, ...)."""


@dataclass(frozen=True)
class StoredCase:
    """A preprocessed case as stored: arrays memory-mapped (read-only) where possible."""

    image: np.ndarray
    labels: np.ndarray | None
    properties: CaseProperties
    foreground: dict[int, np.ndarray]


def run_preprocess(
    workdir: Path,
    configurations: Sequence[str] | None = None,
    *,
    num_workers: int = 1,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Path]:
    """Preprocess the dataset of ``workdir`` for the planned configurations (default: all).

    Returns:
        configuration name -> data folder.
    """
    plans = load_plans(workdir / "plans.json")
    fingerprint = load_fingerprint(workdir / "fingerprint.json")
    if plans.fingerprint_sha256 != fingerprint.sha256():
        raise PreprocessError(
            f"{workdir / 'plans.json'} was made from another fingerprint; re-run 'autoseg plan'"
        )
    dataset = load_dataset(Path(fingerprint.dataset_root))
    names = list(configurations or plans.configurations)
    unknown = [n for n in names if n not in plans.configurations]
    if unknown:
        raise UsageError(
            f"configuration(s) {', '.join(unknown)} not planned; planned: {', '.join(plans.configurations)}"
        )
    folders = assign_folders({n: plans.configurations[n] for n in names})
    root = workdir / "preprocessed"
    for folder in sorted(set(folders.values())):
        config = plans.configurations[folder]
        out = root / folder
        _remove_leftovers(out)
        write_json(preprocessing_parameters(config), out / "preprocessing.json")
        job = partial(_preprocess_job, config=config, out=out, dataset_root=dataset.root, seed=seed)
        outcomes = list(
            map_cases(
                job,
                dataset.cases,
                num_workers=num_workers,
                description=f"preprocess {folder}",
                show_progress=show_progress,
            )
        )
        logger.info(
            "%s: %d case(s) preprocessed, %d up to date -> %s",
            folder,
            outcomes.count("done"),
            outcomes.count("skipped"),
            out,
        )
    mapping_path = root / "configurations.json"
    mapping = _read_mapping(mapping_path)
    mapping.update(folders)
    write_json(dict(sorted(mapping.items())), mapping_path)
    return {name: root / folder for name, folder in folders.items()}


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


def load_case(folder: Path, identifier: str, *, memory_map: bool = True) -> StoredCase:
    """Open a stored case (arrays memory-mapped read-only unless ``memory_map`` is False)."""
    case_dir = folder / identifier
    properties_path = case_dir / "properties.json"
    if not properties_path.is_file():
        raise PreprocessError(f"{case_dir}: not preprocessed; run 'autoseg preprocess'")
    data = read_json(properties_path)
    assert isinstance(data, dict)
    mode: Literal["r"] | None = "r" if memory_map else None
    image = np.load(case_dir / "image.npy", mmap_mode=mode, allow_pickle=False)
    labels_path = case_dir / "labels.npy"
    labels = np.load(labels_path, mmap_mode=mode, allow_pickle=False) if labels_path.is_file() else None
    with np.load(case_dir / "foreground.npz", allow_pickle=False) as stored:
        foreground = {int(k): stored[k] for k in stored.files}
    return StoredCase(image, labels, CaseProperties.from_json(data["properties"]), foreground)


def read_folder_mapping(workdir: Path) -> dict[str, str]:
    """``preprocessed/configurations.json`` of a work directory."""
    return _read_mapping(workdir / "preprocessed" / "configurations.json")


# ------------------------------------------------------------------------------------------- internals


def _preprocess_job(
    case: Case, *, config: ConfigurationPlan, out: Path, dataset_root: Path, seed: int
) -> str:
    """Preprocess one case into ``out/<case>`` unless it is up to date; module level for worker processes."""
    signature = _case_signature(case, dataset_root, config, seed)
    target = out / case.identifier
    if _is_up_to_date(target, signature):
        return "skipped"
    try:
        image, labels, geometry = read_case(case)
    except AutosegError as error:
        raise PreprocessError(
            f"case '{case.identifier}': {error.message}; nothing was written for it"
        ) from None
    result = preprocess_case(
        image, labels, geometry, config, identifier=case.identifier, seed=seed, in_place=True
    )
    del image, labels
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{case.identifier}.partial-", dir=out))
    try:
        np.save(scratch / "image.npy", result.image, allow_pickle=False)
        if result.labels is not None:
            np.save(scratch / "labels.npy", result.labels, allow_pickle=False)
        foreground: dict[str, Any] = {str(k): v for k, v in result.foreground.items()}
        np.savez(scratch / "foreground.npz", allow_pickle=False, **foreground)
        write_json(
            {"signature": signature, "properties": result.properties.to_json()}, scratch / "properties.json"
        )
        _swap_into_place(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return "done"


def _remove_leftovers(folder: Path) -> None:
    """Delete hidden half-written case folders that a killed run left behind."""
    if not folder.is_dir():
        return
    for leftover in folder.iterdir():
        if (
            leftover.is_dir()
            and leftover.name.startswith(".")
            and (".partial-" in leftover.name or ".stale-" in leftover.name)
        ):
            logger.info("removing %s, left by an interrupted run", leftover)
            shutil.rmtree(leftover)


def _swap_into_place(scratch: Path, target: Path) -> None:
    """Rename the finished case folder to its final name, replacing an outdated one."""
    if target.exists():
        stale = target.with_name(f".{target.name}.stale-{scratch.name.rsplit('-', 1)[-1]}")
        target.rename(stale)
        scratch.rename(target)
        shutil.rmtree(stale)
    else:
        scratch.rename(target)


def _case_signature(case: Case, dataset_root: Path, config: ConfigurationPlan, seed: int) -> str:
    digest = hashlib.sha256(json.dumps(preprocessing_parameters(config), sort_keys=True).encode())
    digest.update(f"seed={seed};".encode())
    for path in case.files():
        stat = path.stat()
        digest.update(f"{path.relative_to(dataset_root)}|{stat.st_size}|{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _is_up_to_date(target: Path, signature: str) -> bool:
    try:
        data = read_json(target / "properties.json")
    except AutosegError:
        return False
    return isinstance(data, dict) and data.get("signature") == signature and (target / "image.npy").is_file()


def _read_mapping(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    data = read_json(path)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
