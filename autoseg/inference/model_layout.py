"""What a model file holds (:mod:`autoseg.inference.model_file`), read from its manifest: the format's entry
names, the configurations packed with their folds, the default ensemble, the post-processing entries.

Format 2 packs several configurations (``folds/<configuration>/fold_<k>.pt`` or ``.onnx``,
``postprocessing/<name>.json``); format 1 held one (``folds/fold_<k>.pt``, ``postprocessing.json``) and is
read as a format 2 file whose ensemble is that configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autoseg.errors import ModelError
from autoseg.inference.model_archive import MANIFEST, NETWORK_PREFIX, as_dict, as_list

MODEL_FORMAT_VERSION = 2
LEGACY_POSTPROCESSING_ENTRY = "postprocessing.json"
"""Format 1's only post-processing entry (a name of the model file format, not of a work directory)."""

NetworkFormat = Literal["torch", "onnx"]
NETWORK_FORMATS: tuple[NetworkFormat, ...] = ("torch", "onnx")
_SUFFIX: dict[NetworkFormat, str] = {"torch": ".pt", "onnx": ".onnx"}


def ensemble_key(members: Sequence[str]) -> str:
    """The name under which the post-processing of a configuration or an ensemble is packed: the members
    sorted, joined by ``+`` (as ``Workdir.ensemble_dir``)."""
    return "+".join(sorted(members))


def postprocessing_entry(members: Sequence[str]) -> str:
    """The entry of the post-processing chosen for ``members`` (format 2)."""
    return f"postprocessing/{ensemble_key(members)}.json"


def network_entry(configuration: str, fold: str, network_format: NetworkFormat) -> str:
    """The entry of one fold's network (format 2)."""
    return f"{NETWORK_PREFIX}{configuration}/fold_{fold}{_SUFFIX[network_format]}"


@dataclass(frozen=True)
class ModelLayout:
    """What a model file holds, from its manifest (format 1 or 2).

    Attributes:
        ensemble: the configurations ``predict`` uses by default.
        folds: packed configuration -> its folds.
        network_format: ``torch`` or ``onnx``.
        postprocessing: configuration or ensemble key (members sorted, joined by ``+``) -> its entry.
        legacy: a format 1 file (``folds/fold_<k>.pt``).
    """

    ensemble: tuple[str, ...]
    folds: dict[str, tuple[str, ...]]
    network_format: NetworkFormat = "torch"
    postprocessing: dict[str, str] = field(default_factory=dict)
    legacy: bool = False

    def network_entry(self, configuration: str, fold: str) -> str:
        """The entry of one fold's network."""
        if self.legacy:
            return f"{NETWORK_PREFIX}fold_{fold}.pt"
        return network_entry(configuration, fold, self.network_format)

    def resolve(self, configuration: str | None, path: Path) -> str:
        """``configuration`` if packed, else the default (see :func:`load_model`)."""
        packed = list(self.folds)
        if configuration is not None:
            if configuration not in self.folds:
                raise ModelError(
                    f"{path}: the model holds configuration(s) {', '.join(packed)}, not {configuration}"
                )
            return configuration
        if len(self.ensemble) == 1:
            return self.ensemble[0]
        if "3d_fullres" in self.folds:
            return "3d_fullres"
        if len(packed) == 1:
            return packed[0]
        raise ModelError(f"{path}: the model holds several configurations ({', '.join(packed)}); choose one")


def parse_layout(manifest: Mapping[str, Any], path: Path) -> ModelLayout:
    """The layout a manifest (format 1 or 2) describes; a malformed one names the file."""
    where = f"{path}:{MANIFEST}"
    if manifest.get("format_version") == 1:
        name = str(manifest.get("configuration"))
        files = as_dict(manifest.get("files", {}), f"{where} files")
        legacy_folds = tuple(str(f) for f in as_list(manifest.get("folds", []), f"{where} folds"))
        postprocessing = {name: LEGACY_POSTPROCESSING_ENTRY} if LEGACY_POSTPROCESSING_ENTRY in files else {}
        return ModelLayout((name,), {name: legacy_folds}, "torch", postprocessing, legacy=True)
    network_format = manifest.get("network_format", "torch")
    if network_format not in NETWORK_FORMATS:
        raise ModelError(
            f"{where}: network_format {network_format!r} is not one of {', '.join(NETWORK_FORMATS)}"
        )
    configurations = as_dict(manifest.get("configurations"), f"{where} configurations")
    folds = {
        str(name): tuple(
            str(f) for f in as_list(as_dict(value, f"{where} {name}").get("folds"), f"{where} {name} folds")
        )
        for name, value in configurations.items()
    }
    ensemble = tuple(str(n) for n in as_list(manifest.get("ensemble"), f"{where} ensemble"))
    unknown = [n for n in ensemble if n not in folds]
    if not ensemble or unknown:
        raise ModelError(
            f"{where}: the ensemble {list(ensemble)} names configurations not packed in the file"
        )
    postprocessing = {str(k): str(v) for k, v in as_dict(manifest.get("postprocessing", {}), where).items()}
    return ModelLayout(ensemble, folds, network_format, postprocessing)
