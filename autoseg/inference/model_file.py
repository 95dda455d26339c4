"""Trained models: load one from a work directory or an exported model file, and export one.

An exported model is a zip file holding plain data only:

```
autoseg_model.json      manifest: format and autoseg versions, configuration, folds, SHA-256 of each entry
plans.json              the plan the networks were trained with (with each channel's modality and foreground
                        intensity range, and the mirroring it was trained with)
dataset.json            labels and channel names
postprocessing.json     the post-processing chosen on cross-validation (when one was chosen)
training_reference.json structure volumes in the training data (for the reviewer report's flags)
folds/fold_<k>.pt       the network weights of each fold, a tensor dictionary (loaded with weights_only)
```

Loading verifies every checksum, refuses entries that would escape a folder (absolute paths, ``..``, links)
and entries the manifest does not list, and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import stat
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from autoseg import __version__
from autoseg.errors import ModelError, PlansError
from autoseg.inference.inputs import available_memory_bytes, format_bytes
from autoseg.io import atomic_target
from autoseg.network import build_network
from autoseg.plans import Plans, plans_from_dict
from autoseg.postprocessing.steps import Postprocessing, postprocessing_from_json
from autoseg.report.structures import TrainingReference
from autoseg.training.checkpoint import load_checkpoint
from autoseg.workdir import CHECKPOINTS, Workdir

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 1
MANIFEST = "autoseg_model.json"
PLANS_ENTRY = "plans.json"
DATASET_ENTRY = "dataset.json"
POSTPROCESSING_ENTRY = "postprocessing.json"
REFERENCE_ENTRY = "training_reference.json"
"""Entry names inside a model file: the zip format's own names (see the module docstring), not paths of a work
directory."""


@dataclass(frozen=True)
class TrainedModel:
    """The weights of one configuration's folds, with the plan they need.

    Attributes:
        plans: the plans the folds were trained with.
        configuration: e.g. ``3d_fullres``.
        weights: fold name (``"0"``... or ``"all"``) -> network state dict, on the CPU.
        postprocessing: the post-processing chosen on cross-validation (``None``: none chosen).
        source: where the model came from, for messages.
        reference: what is usual for the training data (volumes per structure), for the reviewer report.
    """

    plans: Plans
    configuration: str
    weights: dict[str, dict[str, torch.Tensor]]
    postprocessing: Postprocessing | None = None
    source: str = ""
    reference: TrainingReference | None = None
    folds: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folds", tuple(sorted(self.weights)))

    def networks(self, device: str | torch.device, folds: Sequence[str] | None = None) -> list[nn.Module]:
        """The folds' networks (all, or ``folds``) in eval mode on ``device``."""
        chosen = list(folds) if folds else list(self.folds)
        missing = [f for f in chosen if f not in self.weights]
        if missing:
            raise ModelError(
                f"{self.source}: fold(s) {', '.join(missing)} not in the model; "
                f"it has {', '.join(self.folds)}"
            )
        plan = self.plans.configuration(self.configuration)
        networks: list[nn.Module] = []
        for fold in chosen:
            network = build_network(
                plan.network, self.plans.input_channels(self.configuration), self.plans.num_outputs
            )
            try:
                network.load_state_dict(self.weights[fold])
            except RuntimeError as error:
                raise ModelError(
                    f"{self.source}: fold {fold}'s weights do not fit the plan's network "
                    f"({str(error).splitlines()[0][:200]})"
                ) from None
            networks.append(network.to(device).eval())
        return networks


def load_model(
    source: Path,
    *,
    configuration: str | None = None,
    folds: Sequence[str] | None = None,
    checkpoint: str = "final",
    fold_limit: int | None = None,
) -> TrainedModel:
    """A model from a work directory (the ``checkpoint`` checkpoints of the run folders of ``configuration``,
    by default :meth:`autoseg.workdir.Workdir.default_configuration`) or from a file written by
    :func:`export_model`.

    Only the weights of ``folds`` are read (default: every fold the model has, or the first ``fold_limit``
    of them).
    """
    if source.is_file():
        return _load_exported(source, configuration, folds, fold_limit)
    if not source.is_dir():
        raise ModelError(f"{source}: no such model (a work directory or an exported .zip model file)")
    return _load_workdir(source, configuration, folds, checkpoint, fold_limit)


def _select_folds(folds: Sequence[str] | None, available: Sequence[str], limit: int | None) -> list[str]:
    return list(folds) if folds else list(available)[:limit]


def _load_workdir(
    workdir: Path,
    configuration: str | None,
    folds: Sequence[str] | None,
    checkpoint: str,
    fold_limit: int | None = None,
) -> TrainedModel:
    if checkpoint not in CHECKPOINTS:
        raise ModelError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got '{checkpoint}'")
    work = Workdir(workdir)
    if not work.has_plans():
        raise ModelError(f"{workdir}: no {work.plans_path.name}; not an autoseg work directory")
    plans = work.read_plans()
    name = configuration or work.default_configuration(list(plans.configurations))
    plans.configuration(name)
    available = sorted(run.fold for run in work.runs(name) if run.checkpoint(checkpoint).is_file())
    chosen = _select_folds(folds, available, fold_limit)
    if not chosen:
        raise ModelError(
            f"{work.configuration_dir(name)}: no fold has a '{checkpoint}' checkpoint; "
            "train first ('autoseg train')"
        )
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for fold in chosen:
        path = work.run(name, fold).checkpoint(checkpoint)
        if not path.is_file():
            raise ModelError(f"{path}: missing; trained folds of {name}: {', '.join(available) or 'none'}")
        weights[fold] = load_checkpoint(path)["network"]
    logger.info("model: %s, configuration %s, folds %s", workdir, name, ", ".join(chosen))
    return TrainedModel(
        plans, name, weights, work.read_postprocessing([name]), str(workdir), work.read_training_reference()
    )


def export_model(
    workdir: Path,
    out: Path,
    *,
    configuration: str | None = None,
    folds: Sequence[str] | None = None,
    checkpoint: str = "final",
) -> Path:
    """Write a self-contained model file (see the module docstring) atomically; returns ``out``."""
    model = _load_workdir(workdir, configuration, folds, checkpoint)
    entries: dict[str, bytes] = {
        PLANS_ENTRY: _json_bytes(model.plans.to_json()),
        DATASET_ENTRY: _json_bytes(
            {
                "name": model.plans.dataset_name,
                "labels": model.plans.labels,
                "channel_names": dict(enumerate(model.plans.channel_names)),
            }
        ),
    }
    if model.reference is not None:
        entries[REFERENCE_ENTRY] = _json_bytes(model.reference.to_json())
    postprocessing = Workdir(workdir).postprocessing_path([model.configuration])
    if postprocessing.is_file():
        entries[POSTPROCESSING_ENTRY] = postprocessing.read_bytes()
    for fold, state in model.weights.items():
        buffer = io.BytesIO()
        torch.save({"network": state}, buffer)
        entries[f"folds/fold_{fold}.pt"] = buffer.getvalue()
    manifest = {
        "format_version": MODEL_FORMAT_VERSION,
        "autoseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "configuration": model.configuration,
        "folds": list(model.folds),
        "checkpoint": checkpoint,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()},
    }
    with (
        atomic_target(out) as temporary,
        zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        archive.writestr(MANIFEST, _json_bytes(manifest))
        for name, data in entries.items():
            archive.writestr(name, data)
    logger.info("exported %s folds %s to %s", model.configuration, ", ".join(model.folds), out)
    return out


def _load_exported(
    path: Path, configuration: str | None, folds: Sequence[str] | None, fold_limit: int | None
) -> TrainedModel:
    entries = _read_verified_entries(path, folds, fold_limit)
    manifest = _json_entry(entries, MANIFEST, path)
    name = str(manifest.get("configuration"))
    if configuration is not None and configuration != name:
        raise ModelError(f"{path}: the model holds configuration {name}, not {configuration}")
    plans = _plans_entry(entries, path)
    if name not in plans.configurations:
        raise ModelError(f"{path}: the manifest's configuration {name!r} is not in its {PLANS_ENTRY}")
    available = [str(f) for f in _as_list(manifest.get("folds", []), f"{path}:{MANIFEST} folds")]
    chosen = _select_folds(folds, available, fold_limit)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for fold in chosen:
        key = f"folds/fold_{fold}.pt"
        if key not in entries:
            raise ModelError(f"{path}: fold {fold} is not in the model; it has {', '.join(available)}")
        weights[fold] = _read_weights(entries[key], f"{path}:{key}")
    postprocessing = (
        postprocessing_from_json(
            _json_entry(entries, POSTPROCESSING_ENTRY, path), f"{path}:{POSTPROCESSING_ENTRY}"
        )
        if POSTPROCESSING_ENTRY in entries
        else None
    )
    return TrainedModel(plans, name, weights, postprocessing, str(path), _reference_entry(entries, path))


def _plans_entry(entries: Mapping[str, bytes], path: Path) -> Plans:
    """The model's plans, upgraded and validated completely by the parser of a work directory's
    ``plans.json`` (:func:`autoseg.plans.plans_from_dict`); every problem names the model file."""
    try:
        return plans_from_dict(_json_entry(entries, PLANS_ENTRY, path), f"{path}:{PLANS_ENTRY}")
    except PlansError as error:
        raise ModelError(error.message, details=error.details) from None


def _reference_entry(entries: Mapping[str, bytes], path: Path) -> TrainingReference | None:
    """The training reference (structure volumes) of the model, or ``None`` when it has none."""
    if REFERENCE_ENTRY not in entries:
        return None
    try:
        return TrainingReference.from_json(_json_entry(entries, REFERENCE_ENTRY, path))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelError(
            f"{path}:{REFERENCE_ENTRY}: incomplete or malformed ({type(error).__name__}: {error})"
        ) from None


def _json_entry(entries: Mapping[str, bytes], name: str, path: Path) -> dict[str, Any]:
    """A JSON object entry of the model file; malformed JSON names the file and the entry."""
    try:
        data = json.loads(entries[name])
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}:{name}: not valid JSON ({error})") from None
    return _as_dict(data, f"{path}:{name}")


def _read_verified_entries(
    path: Path, folds: Sequence[str] | None = None, fold_limit: int | None = None
) -> dict[str, bytes]:
    """The entries of a model file, after checking names, the manifest, sizes and the checksums.

    The weights of folds not selected (``folds``, else the first ``fold_limit`` folds, else all) are neither
    read nor verified, only their names checked: a one-fold prediction from a five-fold file inflates and
    hashes one fifth of the weights. No entry is inflated past its limit (:func:`_read_entry`).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ModelError(f"{path}: not a readable model file ({error})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        for info in infos.values():
            _check_entry(info, path)
        if MANIFEST not in infos:
            raise ModelError(f"{path}: no {MANIFEST}; not an autoseg model file")
        entries = {MANIFEST: _read_entry(archive, infos[MANIFEST], path)}
        manifest = _json_entry(entries, MANIFEST, path)
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
            raise ModelError(
                f"{path}: model format {version}; this autoseg reads up to {MODEL_FORMAT_VERSION}. "
                "Upgrade autoseg."
            )
        listed = _as_dict(manifest.get("files", {}), f"{path}:{MANIFEST} files")
        unexpected = sorted(set(infos) - set(listed) - {MANIFEST})
        if unexpected:
            raise ModelError(f"{path}: entries not in the manifest: {', '.join(unexpected[:5])}")
        available = [str(f) for f in _as_list(manifest.get("folds", []), f"{path}:{MANIFEST} folds")]
        wanted = {f"folds/fold_{fold}.pt" for fold in _select_folds(folds, available, fold_limit)}
        chosen = [n for n in listed if not n.startswith("folds/") or n in wanted]
        missing = [n for n in chosen if n not in infos]
        if missing:
            raise ModelError(f"{path}: {missing[0]} is listed in the manifest but missing")
        _check_total_size([infos[n] for n in chosen], path)
        for name in chosen:
            entries[name] = _read_entry(archive, infos[name], path, digest=str(listed[name]))
    return entries


MAX_JSON_ENTRY_BYTES = 64 * 2**20
"""The most a JSON entry of a model file may inflate to (plans with a few hundred channels are ~100 KiB)."""
MAX_WEIGHTS_ENTRY_BYTES = 16 * 2**30
"""The most one fold's weights may inflate to (nnU-Net's largest residual encoders are ~1 GiB)."""
MAX_COMPRESSION_RATIO = 100
"""Network weights deflate to ~0.9 of their size and JSON to ~0.2; an entry over 1 MiB inflating more than
this many times its stored size is not a model file's (a zip bomb)."""


def _read_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, *, digest: str | None = None
) -> bytes:
    """One entry, inflated as a bounded stream: refused before any inflation when its declared size is over
    its limit or its compression ratio is implausible, and while inflating when it yields more than it
    declared; the SHA-256 ``digest`` (the manifest's) is checked. Zip errors (bad CRC, deflate errors) name
    the file and the entry."""
    name = info.filename
    limit = MAX_WEIGHTS_ENTRY_BYTES if name.startswith("folds/") else MAX_JSON_ENTRY_BYTES
    if info.file_size > limit:
        raise ModelError(
            f"{path}: entry {name} declares {info.file_size / 2**20:.1f} MiB; at most "
            f"{limit / 2**20:.0f} MiB allowed for it; refusing the file"
        )
    if info.file_size > 2**20 and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
        raise ModelError(
            f"{path}: entry {name} would inflate {info.compress_size} bytes to "
            f"{info.file_size / 2**20:.1f} MiB (over {MAX_COMPRESSION_RATIO}x); refusing the file"
        )
    hasher = hashlib.sha256()
    chunks: list[bytes] = []
    total = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(min(2**20, info.file_size - total + 1)):
                total += len(chunk)
                if total > info.file_size:
                    raise ModelError(f"{path}: entry {name} inflates past its declared size; refusing it")
                hasher.update(chunk)
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as error:
        raise ModelError(f"{path}: entry {name} is corrupt ({type(error).__name__}: {error})") from None
    if digest is not None and hasher.hexdigest() != digest:
        raise ModelError(f"{path}: checksum mismatch for {name}; the file is corrupt or was modified")
    return b"".join(chunks)


def _check_total_size(infos: Sequence[zipfile.ZipInfo], path: Path) -> None:
    """Refuse a model whose entries to read would not fit in the memory available now."""
    total = sum(info.file_size for info in infos)
    available = available_memory_bytes()
    if available is not None and 2 * total > available:  # the entries, then the tensors built from them
        raise ModelError(
            f"{path}: reading it needs about {format_bytes(2 * total)}; {format_bytes(available)} of memory "
            "is available"
        )


def _check_entry(info: zipfile.ZipInfo, path: Path) -> None:
    """Refuse entries that would land outside a folder they are extracted to, and links."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ModelError(f"{path}: entry '{name}' would escape the model folder; refusing the file")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelError(f"{path}: entry '{name}' is a symbolic link; refusing the file")


def _read_weights(data: bytes, where: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise ModelError(f"{where}: not loadable as weights only ({type(error).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("network"), Mapping):
        raise ModelError(f"{where}: no network weights")
    return dict(state["network"])


def _as_dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _as_list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ModelError(f"{where}: expected a JSON list, got {type(value).__name__}")
    return value


def _json_bytes(data: object) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()
