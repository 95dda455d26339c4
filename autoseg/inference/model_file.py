"""Trained models: load one configuration from a work directory or an exported model file, and export a
work directory's ensemble into one file.

An exported model (format 2) is a zip file holding plain data only (:mod:`autoseg.inference.model_archive`
writes and verifies it):

```
autoseg_model.json          manifest: format and autoseg versions; ensemble: the configurations predict uses
                            by default (find_best_configuration's choice, or those exported); configurations:
                            each packed configuration's folds (a cascade stage's previous stage is packed
                            too); network_format: torch or onnx (with the opset); postprocessing: which entry
                            holds the post-processing of each configuration and of the ensemble; SHA-256 of
                            every entry
plans.json                  the plan the networks were trained with (with each channel's modality and
                            foreground intensity range, and the mirroring it was trained with)
dataset.json                labels and channel names
training_reference.json     structure volumes in the training data (for the reviewer report's flags)
postprocessing/<name>.json  the post-processing chosen on cross-validation for a configuration, or for an
                            ensemble (<name> = its members sorted, joined by '+'), when one was chosen
folds/<configuration>/fold_<k>.pt     a fold's network weights, a tensor dictionary (loaded with
                                      weights_only), or
folds/<configuration>/fold_<k>.onnx   its ONNX graph (``export-model --format onnx``)
```

Format 1 files (one configuration: ``folds/fold_<k>.pt``, ``postprocessing.json``) still load. Loading
verifies every checksum it reads, refuses entries that would escape a folder and entries the manifest does
not list, and never unpickles anything.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoseg import __version__
from autoseg.errors import ModelError, PlansError, UsageError
from autoseg.inference.model_archive import (
    MANIFEST,
    NETWORK_PREFIX,
    as_dict,
    json_bytes,
    json_entry,
    read_archive,
    write_archive,
)
from autoseg.inference.model_layout import (
    MODEL_FORMAT_VERSION,
    NETWORK_FORMATS,
    ModelLayout,
    NetworkFormat,
    ensemble_key,
    network_entry,
    parse_layout,
    postprocessing_entry,
)
from autoseg.network import build_network
from autoseg.plans import Plans, plans_from_dict
from autoseg.postprocessing.steps import Postprocessing, postprocessing_from_json
from autoseg.report.structures import TrainingReference
from autoseg.training.checkpoint import load_checkpoint
from autoseg.workdir import CHECKPOINTS, Workdir

logger = logging.getLogger(__name__)

PLANS_ENTRY = "plans.json"
DATASET_ENTRY = "dataset.json"
REFERENCE_ENTRY = "training_reference.json"
"""Entry names inside a model file: the zip format's own names (see the module docstring), not paths of a work
directory."""


@dataclass(frozen=True)
class TrainedModel:
    """The networks of one configuration's folds, with the plan they need.

    Attributes:
        plans: the plans the folds were trained with.
        configuration: e.g. ``3d_fullres``.
        weights: fold name (``"0"``... or ``"all"``) -> network state dict, on the CPU (PyTorch models).
        postprocessing: the post-processing chosen on cross-validation (``None``: none chosen).
        source: where the model came from, for messages.
        reference: what is usual for the training data (volumes per structure), for the reviewer report.
        onnx: fold name -> serialised ONNX graph (models exported with ``--format onnx``; ``weights`` is
            then empty).
    """

    plans: Plans
    configuration: str
    weights: dict[str, dict[str, torch.Tensor]]
    postprocessing: Postprocessing | None = None
    source: str = ""
    reference: TrainingReference | None = None
    onnx: dict[str, bytes] = field(default_factory=dict)
    folds: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folds", tuple(sorted(self.onnx or self.weights)))

    @property
    def network_format(self) -> NetworkFormat:
        """``onnx`` when the folds are ONNX graphs (run by onnxruntime), else ``torch``."""
        return "onnx" if self.onnx else "torch"

    def networks(self, device: str | torch.device, folds: Sequence[str] | None = None) -> list[nn.Module]:
        """The folds' networks (all, or ``folds``) in eval mode on ``device``: PyTorch U-Nets, or for an ONNX
        model :class:`autoseg.inference.onnx_runtime.OnnxNetwork` modules running onnxruntime."""
        chosen = list(folds) if folds else list(self.folds)
        missing = [f for f in chosen if f not in self.folds]
        if missing:
            raise ModelError(
                f"{self.source}: fold(s) {', '.join(missing)} not in the model; "
                f"it has {', '.join(self.folds)}"
            )
        if self.onnx:
            from autoseg.inference.onnx_runtime import OnnxNetwork

            where = f"{self.source} ({self.configuration})"
            return [OnnxNetwork(self.onnx[f], device, f"{where} fold {f}").eval() for f in chosen]
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
    """One configuration of a work directory (the ``checkpoint`` checkpoints of its run folders) or of a
    file written by :func:`export_model` (any configuration packed in it, a cascade's previous stage
    included).

    ``configuration`` defaults to :meth:`autoseg.workdir.Workdir.default_configuration` for a work directory,
    and for a file to its ensemble's only member, else ``3d_fullres`` when packed, else its only
    configuration. Only the weights of ``folds`` are read (default: every fold the model has, or the first
    ``fold_limit`` of them).
    """
    if source.is_file():
        return _load_exported(source, configuration, folds, fold_limit)
    if not source.is_dir():
        raise ModelError(f"{source}: no such model (a work directory or an exported .zip model file)")
    return _load_workdir(source, configuration, folds, checkpoint, fold_limit)


def ensemble_choice(source: Path) -> list[str] | None:
    """The configurations ``predict`` uses when none is named: ``find_best_configuration``'s choice in a work
    directory (``None`` when it has not run), or the ensemble a model file was exported with."""
    if source.is_file():
        return list(read_layout(source).ensemble)
    return Workdir(source).read_best_choice()


def ensemble_postprocessing(source: Path, members: Sequence[str]) -> Postprocessing | None:
    """The post-processing chosen for the ensemble of ``members`` (``None`` when none was chosen for it)."""
    if not source.is_file():
        return Workdir(source).read_postprocessing(members)
    entry = read_layout(source).postprocessing.get(ensemble_key(members))
    if entry is None:
        return None
    entries = read_archive(source, MODEL_FORMAT_VERSION, lambda _: (entry,))
    return postprocessing_from_json(json_entry(entries, entry, source), f"{source}:{entry}")


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


# ---------------------------------------------------------------------------------------------- export
def export_model(
    workdir: Path,
    out: Path,
    *,
    configuration: str | Sequence[str] | None = None,
    folds: Sequence[str] | None = None,
    checkpoint: str = "final",
    network_format: NetworkFormat = "torch",
) -> Path:
    """Write a self-contained model file (see the module docstring) atomically; returns ``out``.

    Args:
        workdir: the work directory.
        out: the ``.zip`` to write.
        configuration: the ensemble's member(s): one name or several (default: ``find_best_configuration``'s
            choice, else :meth:`~autoseg.workdir.Workdir.default_configuration`). A cascade stage brings its
            previous stage(s) along.
        folds: the folds of every packed configuration (default: all trained).
        checkpoint: ``final``, ``best`` or ``latest``.
        network_format: ``torch`` (weights) or ``onnx`` (each fold's network as an ONNX graph).
    """
    if network_format not in NETWORK_FORMATS:
        raise UsageError(
            f"network format must be one of {', '.join(NETWORK_FORMATS)}, got {network_format!r}"
        )
    work = Workdir(workdir)
    members = _export_members(work, configuration)
    models = [
        _load_workdir(workdir, name, folds, checkpoint) for name in _with_previous_stages(work, members)
    ]
    entries, postprocessing = _plain_entries(work, models, members)
    manifest: dict[str, Any] = {
        "format_version": MODEL_FORMAT_VERSION,
        "autoseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": checkpoint,
        "network_format": network_format,
        "ensemble": list(members),
        "configurations": {m.configuration: {"folds": list(m.folds)} for m in models},
        "postprocessing": postprocessing,
    }
    for model in models:
        networks, details = _serialised_networks(model, network_format)
        manifest["configurations"][model.configuration] |= details
        for fold, data in networks.items():
            entries[network_entry(model.configuration, fold, network_format)] = data
    write_archive(out, manifest, entries)
    logger.info("exported %s (%s) to %s", "+".join(members), network_format, out)
    return out


def _plain_entries(
    work: Workdir, models: Sequence[TrainedModel], members: Sequence[str]
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The JSON entries (plans, dataset, training reference, post-processing of each packed configuration
    and of the ensemble, when chosen), and the manifest's ``postprocessing`` map (key -> entry)."""
    first = models[0]
    entries: dict[str, bytes] = {
        PLANS_ENTRY: json_bytes(first.plans.to_json()),
        DATASET_ENTRY: json_bytes(
            {
                "name": first.plans.dataset_name,
                "labels": first.plans.labels,
                "channel_names": dict(enumerate(first.plans.channel_names)),
            }
        ),
    }
    if first.reference is not None:
        entries[REFERENCE_ENTRY] = json_bytes(first.reference.to_json())
    postprocessing: dict[str, str] = {}
    for group in [[m.configuration] for m in models] + ([list(members)] if len(members) > 1 else []):
        path = work.postprocessing_path(group)
        if path.is_file():
            postprocessing[ensemble_key(group)] = postprocessing_entry(group)
            entries[postprocessing_entry(group)] = path.read_bytes()
    return entries, postprocessing


def _export_members(work: Workdir, configuration: str | Sequence[str] | None) -> list[str]:
    if isinstance(configuration, str):
        return [configuration]
    if configuration:
        return list(dict.fromkeys(configuration))
    chosen = work.read_best_choice()
    if chosen:
        return chosen
    return [work.default_configuration(list(work.read_plans().configurations))]


def _with_previous_stages(work: Workdir, members: Sequence[str]) -> list[str]:
    """``members`` and, for a cascade stage, the stage(s) it needs first (``previous_stage``), each once."""
    plans = work.read_plans()
    packed: list[str] = []
    for name in members:
        current: str | None = name
        while current is not None and current not in packed:
            packed.append(current)
            current = plans.configuration(current).previous_stage
    return packed


def _serialised_networks(
    model: TrainedModel, network_format: NetworkFormat
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Each fold's network as entry bytes, and what the manifest records about them (the ONNX opset)."""
    if network_format == "torch":
        serialised: dict[str, bytes] = {}
        for fold, state in model.weights.items():
            buffer = io.BytesIO()
            torch.save({"network": state}, buffer)
            serialised[fold] = buffer.getvalue()
        return serialised, {}
    from autoseg.inference.onnx_runtime import EXPORTER, export_onnx

    plan = model.plans.configuration(model.configuration)
    channels = model.plans.input_channels(model.configuration)  # a cascade stage's: image + previous one-hot
    graphs: dict[str, bytes] = {}
    opset = 0
    for fold in model.folds:
        (network,) = model.networks("cpu", [fold])
        graphs[fold], opset = export_onnx(network, (channels, *plan.patch_size))
        logger.info("%s fold %s: ONNX opset %d", model.configuration, fold, opset)
    details = {"onnx_opset": opset, "onnx_exporter": EXPORTER, "torch_version": torch.__version__}
    return graphs, details | {"input_shape": [None, channels, *plan.patch_size]}


# ------------------------------------------------------------------------------------------- reading
def read_layout(path: Path) -> ModelLayout:
    """The layout of a model file, reading (and verifying) its manifest only."""
    entries = read_archive(path, MODEL_FORMAT_VERSION, lambda _: ())
    return parse_layout(json_entry(entries, MANIFEST, path), path)


def _load_exported(
    path: Path, configuration: str | None, folds: Sequence[str] | None, fold_limit: int | None
) -> TrainedModel:
    def wanted(manifest: dict[str, Any]) -> list[str]:
        """The plain-data entries, and the networks of the chosen configuration's chosen folds."""
        layout = parse_layout(manifest, path)
        name = layout.resolve(configuration, path)
        networks = {
            layout.network_entry(name, f) for f in _select_folds(folds, layout.folds[name], fold_limit)
        }
        listed = as_dict(manifest.get("files", {}), f"{path}:{MANIFEST} files")
        return [n for n in listed if not n.startswith(NETWORK_PREFIX) or n in networks]

    entries = read_archive(path, MODEL_FORMAT_VERSION, wanted)
    layout = parse_layout(json_entry(entries, MANIFEST, path), path)
    name = layout.resolve(configuration, path)
    plans = _plans_entry(entries, path)
    if name not in plans.configurations:
        raise ModelError(f"{path}: the manifest's configuration {name!r} is not in its {PLANS_ENTRY}")
    available = layout.folds[name]
    networks: dict[str, bytes] = {}
    for fold in _select_folds(folds, available, fold_limit):
        key = layout.network_entry(name, fold)
        if key not in entries:
            raise ModelError(f"{path}: fold {fold} is not in the model; it has {', '.join(available)}")
        networks[fold] = entries[key]
    post_entry = layout.postprocessing.get(name)
    postprocessing = (
        postprocessing_from_json(json_entry(entries, post_entry, path), f"{path}:{post_entry}")
        if post_entry is not None
        else None
    )
    reference = _reference_entry(entries, path)
    if layout.network_format == "onnx":
        return TrainedModel(plans, name, {}, postprocessing, str(path), reference, onnx=networks)
    weights = {
        fold: _read_weights(data, f"{path}:{layout.network_entry(name, fold)}")
        for fold, data in networks.items()
    }
    return TrainedModel(plans, name, weights, postprocessing, str(path), reference)


def _plans_entry(entries: Mapping[str, bytes], path: Path) -> Plans:
    """The model's plans, upgraded and validated completely by the parser of a work directory's
    ``plans.json`` (:func:`autoseg.plans.plans_from_dict`); every problem names the model file."""
    try:
        return plans_from_dict(json_entry(entries, PLANS_ENTRY, path), f"{path}:{PLANS_ENTRY}")
    except PlansError as error:
        raise ModelError(error.message, details=error.details) from None


def _reference_entry(entries: Mapping[str, bytes], path: Path) -> TrainingReference | None:
    """The training reference (structure volumes) of the model, or ``None`` when it has none."""
    if REFERENCE_ENTRY not in entries:
        return None
    try:
        return TrainingReference.from_json(json_entry(entries, REFERENCE_ENTRY, path))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelError(
            f"{path}:{REFERENCE_ENTRY}: incomplete or malformed ({type(error).__name__}: {error})"
        ) from None


def _read_weights(data: bytes, where: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise ModelError(f"{where}: not loadable as weights only ({type(error).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("network"), Mapping):
        raise ModelError(f"{where}: no network weights")
    return dict(state["network"])
