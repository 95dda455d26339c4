"""Stored preprocessed cases: one folder per case (:class:`autoseg.workdir.CaseFolder`), written whole or not
at all, opened by memory map for fast random patch reads.

A case is written in a hidden temporary folder beside its final place and renamed into place, so a kill never
leaves a half case under its final name; :func:`remove_leftovers` deletes what a killed run left.
``docs/design.md`` has the storage measurement behind the ``.npy`` + memory-map choice.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from autoseg.errors import AutosegError, PreprocessError
from autoseg.io import atomic_folder, read_json, write_json
from autoseg.preprocessing.case import CaseProperties, PreprocessedCase
from autoseg.workdir import CaseFolder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredCase:
    """A preprocessed case as stored: arrays memory-mapped (read-only) where possible."""

    image: np.ndarray
    labels: np.ndarray | None
    properties: CaseProperties
    foreground: dict[int, np.ndarray]


def load_case(folder: Path, identifier: str, *, memory_map: bool = True) -> StoredCase:
    """Open a stored case of data folder ``folder`` (arrays memory-mapped read-only unless ``memory_map`` is
    False).

    Raises:
        PreprocessError: the case is not preprocessed, or its ``properties.json`` is malformed.
    """
    case = CaseFolder(folder / identifier)
    if not case.properties_path.is_file():
        raise PreprocessError(f"{case.path}: not preprocessed; run 'autoseg preprocess'")
    data = read_json(case.properties_path)
    if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
        raise PreprocessError(f"{case.properties_path}: malformed; run 'autoseg preprocess' again")
    mode: Literal["r"] | None = "r" if memory_map else None
    image = np.load(case.image_path, mmap_mode=mode, allow_pickle=False)
    has_labels = case.labels_path.is_file()
    labels = np.load(case.labels_path, mmap_mode=mode, allow_pickle=False) if has_labels else None
    with np.load(case.foreground_path, allow_pickle=False) as stored:
        foreground = {int(k): stored[k] for k in stored.files}
    return StoredCase(image, labels, CaseProperties.from_json(data["properties"]), foreground)


def save_case(result: PreprocessedCase, target: Path, signature: str) -> None:
    """Write ``result`` as the case folder ``target`` (replacing an outdated one), whole or not at all."""
    with atomic_folder(target) as scratch:
        case = CaseFolder(scratch)
        np.save(case.image_path, result.image, allow_pickle=False)
        if result.labels is not None:
            np.save(case.labels_path, result.labels, allow_pickle=False)
        foreground: dict[str, Any] = {str(k): v for k, v in result.foreground.items()}
        np.savez(case.foreground_path, allow_pickle=False, **foreground)
        write_json({"signature": signature, "properties": result.properties.to_json()}, case.properties_path)


def is_up_to_date(target: Path, signature: str) -> bool:
    """Whether the case folder ``target`` is complete and was made from sources with ``signature``."""
    case = CaseFolder(target)
    try:
        data = read_json(case.properties_path)
    except AutosegError:
        return False
    return isinstance(data, dict) and data.get("signature") == signature and case.image_path.is_file()


def remove_leftovers(folder: Path) -> None:
    """Delete hidden half-written case folders that a killed run left behind in data folder ``folder``."""
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
