"""The dataset catalogue (``datasets.json`` at the top of the project) and DATASET argument resolution.

A DATASET argument is a folder path, or a catalogue name: a real dataset found under the data root, or a
synthetic one generated (once) into the cache folder from the generator parameters the catalogue records.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autoseg.dataset.rt_synthetic import RtSynthConfig
from autoseg.dataset.synthetic import SynthConfig, write_synthetic_dataset
from autoseg.errors import CatalogueError, ImageReadError, UsageError
from autoseg.io import read_json

logger = logging.getLogger(__name__)

CATALOGUE_SCHEMA_VERSION = 1
USABLE_LAYOUTS = ("nnunet-v2", "msd")


@dataclass(frozen=True)
class CatalogueEntry:
    """One named dataset.

    Attributes:
        name: catalogue key, e.g. ``"hippocampus"``.
        kind: ``"real"`` (lives under the data root) or ``"synthetic"`` (generated).
        description: one sentence.
        layout: ``"nnunet-v2"``/``"msd"`` (usable as DATASET), or ``"files"``, ``"dicom"``,
        ``"dicom-rtstruct"``,
            ``"dicom-seg"`` (raw material for other commands).
        location: folder relative to the data root (real datasets).
        generator: generator parameters (synthetic datasets in the nnU-Net v2 layout).
        details: the entry's other keys (licence, source, modality, ...).
        rt_generator: parameters of a synthetic DICOM structure-set archive (``"generator": {"preset": "rt",
            ...}``, layout ``"dicom-rtstruct"``): written by ``autoseg synth OUT --preset <name>``, then
            turned into a dataset by ``autoseg convert-dicom``.
    """

    name: str
    kind: Literal["real", "synthetic"]
    description: str
    layout: str
    location: str | None
    generator: SynthConfig | None
    details: dict[str, Any]
    rt_generator: RtSynthConfig | None = None


@dataclass(frozen=True)
class Catalogue:
    """The parsed ``datasets.json``."""

    path: Path
    entries: dict[str, CatalogueEntry]

    def entry(self, name: str) -> CatalogueEntry:
        """The entry called ``name``; :class:`CatalogueError` listing the known names otherwise."""
        if name not in self.entries:
            raise CatalogueError(
                f"'{name}' is not in the catalogue {self.path}; known: {', '.join(sorted(self.entries))}"
            )
        return self.entries[name]


def default_catalogue_path() -> Path:
    """The project's top-level ``datasets.json`` (next to the ``autoseg`` package in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "datasets.json"


def default_data_root(catalogue_path: Path) -> Path:
    """``../shared/data`` relative to the catalogue's folder: where the project keeps its real datasets."""
    return (catalogue_path.parent / ".." / "shared" / "data").resolve()


def load_catalogue(path: Path) -> Catalogue:
    """Parse and validate a catalogue file.

    Raises:
        CatalogueError: missing file, invalid JSON, or an entry without the fields it needs.
    """
    if not path.is_file():
        raise CatalogueError(f"{path}: catalogue not found; pass --datasets-file or give a dataset folder")
    try:
        data = read_json(path)
    except ImageReadError as error:
        raise CatalogueError(error.message) from None
    if (
        not isinstance(data, dict)
        or data.get("schema_version") != CATALOGUE_SCHEMA_VERSION
        or not isinstance(data.get("datasets"), dict)
    ):
        raise CatalogueError(
            f"{path}: expected schema_version {CATALOGUE_SCHEMA_VERSION} and a 'datasets' object"
        )
    entries = {name: _parse_entry(path, name, raw) for name, raw in data["datasets"].items()}
    return Catalogue(path, entries)


def synthetic_folder(entry: CatalogueEntry, cache_dir: Path) -> Path:
    """Where a synthetic entry is generated: named after the entry and a hash of its parameters."""
    assert entry.generator is not None
    text = json.dumps(entry.generator.to_json(), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return cache_dir / f"{entry.name}-{digest}"


def resolve_dataset(
    argument: str,
    *,
    catalogue_path: Path,
    data_root: Path | None,
    cache_dir: Path,
    num_workers: int = 1,
    show_progress: bool = True,
) -> Path:
    """Turn a DATASET argument into a dataset folder.

    An existing folder wins over a catalogue name. A synthetic entry is generated on first use.

    Raises:
        UsageError: neither a folder nor a catalogue name, a real dataset absent from the data root, or an
        entry
            whose layout is not a training dataset.
    """
    as_path = Path(argument).expanduser()
    if as_path.is_dir():
        return as_path.resolve()
    if as_path.exists():
        raise UsageError(f"{argument}: not a folder; give the dataset folder (the one holding dataset.json)")
    looks_like_path = "/" in argument or argument.startswith(".")
    if looks_like_path or not catalogue_path.is_file():
        raise UsageError(f"{argument}: no such dataset folder")
    catalogue = load_catalogue(catalogue_path)
    if argument not in catalogue.entries:
        raise UsageError(
            f"{argument}: neither a dataset folder nor a catalogue name (known: "
            f"{', '.join(sorted(catalogue.entries))})"
        )
    entry = catalogue.entries[argument]
    if entry.rt_generator is not None:
        raise UsageError(
            f"{argument}: a synthetic DICOM structure-set archive, not a training dataset; write it with "
            f"'autoseg synth OUT --preset {argument}', then 'autoseg convert-dicom OUT DATASET --names tg263'"
        )
    if entry.kind == "synthetic":
        assert entry.generator is not None
        folder = synthetic_folder(entry, cache_dir)
        return write_synthetic_dataset(
            entry.generator, folder, num_workers=num_workers, show_progress=show_progress
        )
    root = data_root if data_root is not None else default_data_root(catalogue.path)
    assert entry.location is not None
    folder = root / entry.location
    if not folder.is_dir():
        raise UsageError(
            f"{argument}: catalogue dataset expected at {folder}, which does not exist; pass "
            "--data-root or set AUTOSEG_DATA to the folder holding it"
        )
    if entry.layout not in USABLE_LAYOUTS:
        raise UsageError(
            f"{argument}: {folder} holds '{entry.layout}' data, not a training dataset in the "
            "nnU-Net v2 or MSD layout"
        )
    return folder.resolve()


def _parse_entry(path: Path, name: str, raw: Any) -> CatalogueEntry:
    if not isinstance(raw, dict) or raw.get("kind") not in ("real", "synthetic"):
        raise CatalogueError(f'{path}: entry \'{name}\' needs "kind": "real" or "synthetic"')
    details = {
        k: v for k, v in raw.items() if k not in ("kind", "description", "layout", "location", "generator")
    }
    description = str(raw.get("description", ""))
    if raw["kind"] == "synthetic":
        if not isinstance(raw.get("generator"), dict):
            raise CatalogueError(f"{path}: synthetic entry '{name}' needs a 'generator' object")
        try:
            if raw["generator"].get("preset") == "rt":
                rt = RtSynthConfig.from_json(raw["generator"])
                return CatalogueEntry(
                    name, "synthetic", description, "dicom-rtstruct", None, None, details, rt
                )
            generator = SynthConfig.from_json(raw["generator"])
        except UsageError as error:
            raise CatalogueError(f"{path}: entry '{name}': {error.message}") from None
        return CatalogueEntry(name, "synthetic", description, "nnunet-v2", None, generator, details)
    if not isinstance(raw.get("location"), str) or not isinstance(raw.get("layout"), str):
        raise CatalogueError(f"{path}: real entry '{name}' needs 'location' and 'layout'")
    return CatalogueEntry(name, "real", description, raw["layout"], raw["location"], None, details)
