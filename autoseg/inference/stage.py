"""``autoseg predict``: segment new scans with a trained model, in the input's exact geometry.

Per case: check that the input looks like the modality the model was trained on
(:mod:`autoseg.inference.modality`: a warning, or a refusal with ``strict``), preprocess as in training (crop,
normalise, resample), slide the folds' networks over the image (:mod:`autoseg.inference.ensemble`), bring the
probabilities back to the original grid, take the argmax, apply the post-processing chosen on
cross-validation, write the outputs. The next case is read and
preprocessed in a background thread while the current one is predicted, and the previous one is exported in
another.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autoseg import __version__
from autoseg.errors import AutosegError, FlaggedCasesError, MemoryLimitError, PredictInputError, UsageError
from autoseg.inference.cascade import cascade_input
from autoseg.inference.ensemble import Activation, InferenceSettings, predict_probabilities, resolve_precision
from autoseg.inference.export import MemberPredictions
from autoseg.inference.inputs import (
    InputCase,
    available_memory_bytes,
    check_case_memory,
    check_device_memory,
    device_free_bytes,
    estimate_device_bytes,
    find_input_cases,
    format_bytes,
    network_grid_dtype,
    read_case_header,
    read_input_case,
    replace_non_finite,
)
from autoseg.inference.modality import InputCheck, check_case, model_channels
from autoseg.inference.model_file import TrainedModel, ensemble_choice, ensemble_postprocessing, load_model
from autoseg.inference.outputs import CaseOutput, OutputContext, OutputOptions, write_case_outputs
from autoseg.inference.sharding import (
    Shard,
    output_settings,
    select_cases,
)
from autoseg.io import Geometry, prepare_output_folder, write_json
from autoseg.plans import ChannelRecord, ConfigurationPlan
from autoseg.postprocessing.instances import parse_class_selection
from autoseg.postprocessing.steps import Postprocessing
from autoseg.preprocessing.case import (
    CaseProperties,
    PreprocessedCase,
    preprocess_case,
    restore_probabilities,
)
from autoseg.preprocessing.orientation import oriented_direction
from autoseg.types import FloatVolume
from autoseg.workdir import folder_lock

logger = logging.getLogger(__name__)

OutputFormat = Literal["nifti", "dicom-seg", "rtstruct"]


@dataclass(frozen=True)
class Preset:
    """Speed/accuracy trade-off: which folds, whether to mirror, how far apart the windows are."""

    all_folds: bool
    mirror: bool
    step: float


PRESETS = {"fast": Preset(all_folds=False, mirror=False, step=0.75), "accurate": Preset(True, True, 0.5)}


@dataclass(frozen=True)
class PredictRequest:
    """What ``autoseg predict`` was asked; ``None`` fields come from the preset."""

    inputs: Path
    output: Path
    model: Path
    configurations: tuple[str, ...] | None = None
    folds: tuple[str, ...] | None = None
    preset: str = "accurate"
    step: float | None = None
    mirror: bool | None = None
    device: str = "auto"
    windows_per_batch: int = 1
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    channels_last: bool = False
    threads: int | None = None
    checkpoint: str = "final"
    outputs: OutputOptions = field(default_factory=OutputOptions)
    strict: bool = False
    shard: Shard | None = None
    """Predict only this shard's cases (:mod:`autoseg.inference.sharding`), recorded in its own
    ``predict.shard-I-of-N.json``, beside the other shards writing into the same folder."""
    existing: Literal["auto", "skip", "overwrite"] = "auto"
    """A case whose outputs are all there and whole: ``skip`` it, or ``overwrite`` it; ``auto``: skip with
    a shard (a re-run shard resumes), overwrite without."""

    @property
    def skips_existing(self) -> bool:
        """Whether cases already written are skipped."""
        return self.existing == "skip" or (self.existing == "auto" and self.shard is not None)

    @property
    def record_path(self) -> Path:
        """``predict.json``, or the shard's ``predict.shard-I-of-N.json``."""
        return self.output / (self.shard.record_name if self.shard else "predict.json")


@dataclass(frozen=True)
class PreparedCase:
    """A case read and preprocessed for each configuration, waiting for the networks."""

    case: InputCase
    geometry: Geometry
    images: list[FloatVolume]
    properties: list[CaseProperties]
    report_image: FloatVolume | None = None
    check: InputCheck | None = None
    notes: tuple[str, ...] = ()
    """What was repaired in the input (``"input: ..."``), for the case's review list."""
    previous: tuple[tuple[FloatVolume, CaseProperties] | None, ...] = ()
    """Per configuration, the case preprocessed for its previous stage (a cascade stage's), or ``None``."""


def predict_case(
    image: FloatVolume,
    geometry: Geometry,
    networks: Sequence[nn.Module],
    plan: ConfigurationPlan,
    num_classes: int,
    settings: InferenceSettings,
    *,
    regions: bool = False,
) -> FloatVolume:
    """Class probabilities ``(K, Z, Y, X)`` float32 on the image's own grid (with ``regions``, sigmoid
    probabilities of ``num_classes`` structures).

    Args:
        image: ``(C, Z, Y, X)`` float32 raw intensities (HU for CT); normalised in place.
        geometry: the image's geometry (any orientation: brought to the plan's canonical one and back).
        networks: the folds' networks, in eval mode on ``settings.device``.
        plan: the configuration they were trained with.

    Raises:
        UsageError: ``plan`` is a cascade stage (it needs its previous stage's prediction: :func:`run_predict`
            runs both).
    """
    if plan.previous_stage is not None:
        raise UsageError(
            f"a cascade stage (after {plan.previous_stage}) needs its previous stage's prediction as input; "
            "predict it with run_predict / 'autoseg predict', which runs both stages"
        )
    prepared = preprocess_case(image, None, geometry, plan, in_place=True)
    settings = case_settings(settings, plan, geometry)
    activation: Activation = "sigmoid" if regions else "softmax"
    probabilities = predict_probabilities(
        networks, prepared.image, plan.patch_size, num_classes, settings, activation=activation
    )
    return restore_probabilities(probabilities, prepared.properties, regions=regions)


def case_settings(
    settings: InferenceSettings, plan: ConfigurationPlan, geometry: Geometry
) -> InferenceSettings:
    """``settings`` for one image: its mirror axes less those the plan forbids for the image's direction (the
    patient's left-right axis, when the plan keeps laterality: ``MirroringPlan``), the direction being the
    one of the array the network sees (canonical orientation: ``plan.orientation``)."""
    allowed = plan.mirroring.axes(plan.dims, oriented_direction(geometry, plan.orientation))
    axes = tuple(axis for axis in settings.mirror_axes if axis in allowed)
    return settings if axes == settings.mirror_axes else replace(settings, mirror_axes=axes)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; other names are checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: PyTorch sees no CUDA GPU on this machine")
    return name


def inference_settings(request: PredictRequest, plan: ConfigurationPlan, device: str) -> InferenceSettings:
    """The preset's settings with the request's explicit choices on top; mirroring over every spatial axis
    (:func:`case_settings` leaves out, per image, the left-right one when the plan keeps laterality)."""
    if request.preset not in PRESETS:
        raise UsageError(f"unknown preset '{request.preset}'; choose {', '.join(PRESETS)}")
    preset = PRESETS[request.preset]
    mirror = preset.mirror if request.mirror is None else request.mirror
    step = preset.step if request.step is None else request.step
    if not 0.0 < step <= 1.0:
        raise UsageError(f"--step must be in (0, 1], got {step}")
    return InferenceSettings(
        step=step,
        mirror_axes=tuple(range(plan.dims)) if mirror else (),
        windows_per_batch=request.windows_per_batch,
        device=device,
        precision=resolve_precision(request.precision, torch.device(device)),
        channels_last=request.channels_last,
    )


def fold_selection(request: PredictRequest) -> tuple[tuple[str, ...] | None, int | None]:
    """``(folds, fold_limit)`` for :func:`load_model`: ``-f`` if given; else all the model's folds
    (``accurate``) or the first one (``fast``). Only the selected folds' weights are read."""
    if request.folds:
        return tuple(request.folds), None
    preset = PRESETS.get(request.preset, PRESETS["accurate"])
    return None, None if preset.all_folds else 1


@dataclass(frozen=True)
class Member:
    """One configuration of the prediction (two for an ensemble): its plan, networks and settings."""

    model: TrainedModel
    plan: ConfigurationPlan
    networks: list[nn.Module]
    settings: InferenceSettings
    folds: list[str]
    previous: Member | None = None
    """A cascade stage's previous stage (``plan.previous_stage``): predicted first, its prediction joins the
    image as one-hot channels (:mod:`autoseg.inference.cascade`)."""


@dataclass(frozen=True)
class Ensemble:
    """What predicts every case: one member per configuration, the labels, and the post-processing."""

    members: list[Member]
    labels: dict[str, int]
    postprocessing: Postprocessing | None
    regions: bool = False
    """Region-based models: one sigmoid per structure (``labels`` numbers them 1..K)."""

    @property
    def num_outputs(self) -> int:
        """Network outputs: the classes, or the structures."""
        return len(self.labels) - 1 if self.regions else len(self.labels)


def load_ensemble(request: PredictRequest) -> Ensemble:
    """The configuration(s) of ``request`` (default: ``find_best_configuration``'s choice) with their networks
    on the device, or a model file's ensemble; an ensemble uses the post-processing chosen for it."""
    chosen = request.configurations or ensemble_choice(request.model)
    names: list[str | None] = list(chosen) if chosen else [None]
    device = resolve_device(request.device)
    members: list[Member] = []
    folds, fold_limit = fold_selection(request)
    for name in names:
        model = load_model(
            request.model,
            configuration=name,
            checkpoint=request.checkpoint,
            folds=folds,
            fold_limit=fold_limit,
        )
        plan = model.plans.configuration(model.configuration)
        previous = _previous_member(request, model, device) if plan.previous_stage is not None else None
        settings = inference_settings(request, plan, device)
        if model.network_format == "onnx":  # onnxruntime computes in float32, whatever the autocast
            settings = replace(settings, precision="float32", channels_last=False)
        members.append(Member(model, plan, model.networks(device), settings, list(model.folds), previous))
    first = members[0].model
    if any(m.model.plans.labels != first.plans.labels for m in members) or any(
        m.model.plans.target != first.plans.target for m in members
    ):
        raise UsageError("the configurations of an ensemble must share their labels and target")
    postprocessing = first.postprocessing
    if len(members) > 1:
        names_in = [m.model.configuration for m in members]
        postprocessing = ensemble_postprocessing(request.model, names_in)
        if postprocessing is None:
            logger.warning(
                "%s: no post-processing was chosen for the ensemble %s; predicting without (run "
                "find_best_configuration, or export the ensemble it chose)",
                request.model,
                " + ".join(names_in),
            )
    return Ensemble(members, dict(first.plans.labels), postprocessing, first.plans.region_based)


def _previous_member(request: PredictRequest, model: TrainedModel, device: str) -> Member:
    """The previous stage of a cascade stage ``model``, from the same work directory or model file
    (``load_model(source, configuration=<previous stage>)``), with the same fold selection and settings.

    Raises:
        ModelError: the source does not hold the previous stage (or those folds of it).
        UsageError: the previous stage is itself a cascade stage, or its labels differ.
    """
    name = model.plans.configuration(model.configuration).previous_stage
    assert name is not None
    folds, fold_limit = fold_selection(request)
    previous = load_model(
        request.model, configuration=name, checkpoint=request.checkpoint, folds=folds, fold_limit=fold_limit
    )
    plan = previous.plans.configuration(name)
    if plan.previous_stage is not None:
        raise UsageError(f"{model.configuration} follows {name}, itself a cascade stage: not supported")
    if previous.plans.labels != model.plans.labels or previous.plans.target != model.plans.target:
        raise UsageError(f"{model.configuration} and its previous stage {name} do not share their labels")
    settings = inference_settings(request, plan, device)
    return Member(previous, plan, previous.networks(device), settings, list(previous.folds))


def run_predict(request: PredictRequest, *, show_progress: bool = True) -> list[CaseOutput]:
    """Predict every case of ``request.inputs`` into ``request.output``; writes ``predict.json`` too.

    The output folder is checked (created, written to) before the model loads. A case that fails
    (unreadable header or voxels, a voxel size that is not positive, more memory than available, an output
    the disk refuses) is reported and skipped; the others are written, then an :class:`AutosegError` lists
    the failures. Cases whose structure table has flags are listed at the end and in ``predict.json``
    (``flagged``); with ``request.strict`` they raise :class:`FlaggedCasesError` (exit 1, outputs written).
    An output folder this call created is removed again when it fails before writing anything.
    """
    created = prepare_output_folder(request.output)
    try:
        with _output_lock(request):
            return _predict_into(request, show_progress=show_progress)
    except BaseException:
        if created and request.output.is_dir() and not any(request.output.iterdir()):
            request.output.rmdir()
        raise


@contextlib.contextmanager
def _output_lock(request: PredictRequest) -> Iterator[None]:
    """A plain predict holds the output folder's lock alone (a second one is refused); the shards of
    ``--shard`` share it, each holding its own shard lock too (the same shard twice is refused)."""
    shard = request.shard
    if shard is None:
        with folder_lock(request.output, "predict", remove_temporaries=True):
            yield
        return
    activity = f"predict --shard {shard.index}/{shard.count}"
    with (
        folder_lock(request.output, activity, shared=True),
        folder_lock(request.output, activity, name=shard.lock_name),
    ):
        yield


def _select_cases(
    cases: list[InputCase], request: PredictRequest, ensemble: Ensemble
) -> tuple[list[InputCase], list[str]]:
    """``(cases to predict, cases skipped)``: the shard's cases, less (when skipping) those already written
    whole by a run with the same settings (:func:`autoseg.inference.sharding.select_cases`)."""
    settings = output_settings(predict_record(ensemble, [], [], []))
    return select_cases(
        cases, request.shard, request.outputs, request.output, settings if request.skips_existing else None
    )


def _predict_into(request: PredictRequest, *, show_progress: bool) -> list[CaseOutput]:
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    ensemble = load_ensemble(request)
    channels = len(ensemble.members[0].model.plans.channel_names)
    cases, skipped = _select_cases(find_input_cases(request.inputs, channels), request, ensemble)
    request.outputs.check_inputs(cases, [name for name, value in ensemble.labels.items() if value != 0])
    for member in ensemble.members:
        logger.info(
            "predicting %d case(s) with %s folds %s: step %.2f, mirroring %s%s, device %s, %s",
            len(cases),
            member.model.configuration,
            ", ".join(member.folds),
            member.settings.step,
            member.settings.mirror_axes or "off",
            "" if member.plan.mirroring.left_right else " less each image's left-right axis",
            member.settings.device,
            member.settings.precision,
        )
    outputs, failures, checks = predict_cases(cases, ensemble, request, show_progress=show_progress)
    record = predict_record(ensemble, outputs, failures, checks)
    if request.shard is not None or skipped:
        record |= {"shard": asdict(request.shard) if request.shard else None, "skipped": skipped}
    write_json(record, request.record_path)
    finish_run(outputs, failures, len(cases), strict=request.strict)
    return outputs


def predict_cases(
    cases: Sequence[InputCase], ensemble: Ensemble, request: PredictRequest, *, show_progress: bool
) -> tuple[list[CaseOutput], list[str], list[InputCheck]]:
    """Predict ``cases`` with ``ensemble`` into ``request.output`` (no record, no lock: the callers'), as
    ``predict`` does (a worker of ``predict-cluster`` too, one case at a time).

    Returns:
        ``(outputs, failures, input checks)``: a case that fails is one line of ``failures``.
    """
    context = OutputContext(
        ensemble.labels,
        ensemble.postprocessing,
        ensemble.members[0].model.reference,
        tuple(parse_class_selection(request.outputs.instances, ensemble.labels))
        if request.outputs.instances
        else (),
        regions=ensemble.regions,
        structure_types=dict(ensemble.members[0].model.plans.target.structure_types),
        regions_class_order=ensemble.members[0].model.plans.target.regions_class_order,
    )
    reading = CaseReading(
        tuple(m.plan for m in ensemble.members),
        request.outputs.report,
        model_channels(ensemble.members[0].model.plans),
        request.strict,
        num_outputs=ensemble.num_outputs,
        regions=ensemble.regions,
        previous_plans=tuple(m.previous.plan if m.previous else None for m in ensemble.members),
    )
    outputs, failures = _predict_all(
        cases,
        ensemble,
        context,
        request.outputs,
        request.output,
        reading=reading,
        show_progress=show_progress,
    )
    checks = [reading.checks[c.identifier] for c in cases if c.identifier in reading.checks]
    return outputs, failures, checks


def finish_run(outputs: list[CaseOutput], failures: list[str], total: int, *, strict: bool) -> None:
    """List the flagged cases; raise for failed cases, and (``strict``) for flagged ones."""
    flagged = [f"{o.identifier}: {'; '.join(o.review)}" for o in outputs if o.review]
    if flagged:
        logger.warning(
            "%d of %d case(s) flagged for review (predict.json 'flagged'):\n  %s",
            len(flagged),
            total,
            "\n  ".join(flagged),
        )
    strict_lines = [f"{line} (flagged, --strict)" for line in flagged] if strict else []
    if failures:
        raise AutosegError(f"{len(failures)} of {total} case(s) failed", details=failures + strict_lines)
    if strict_lines:
        raise FlaggedCasesError(
            f"{len(flagged)} of {total} case(s) flagged for review (--strict); their outputs are written, "
            "check them before use",
            details=strict_lines,
        )


def predict_record(
    ensemble: Ensemble, outputs: list[CaseOutput], failures: list[str], checks: list[InputCheck]
) -> dict[str, object]:
    """``predict.json``: model, configurations, settings, post-processing, per case files, failures, and
    each case's input check."""
    return {
        "autoseg_version": __version__,
        "model": ensemble.members[0].model.source,
        "configurations": [m.model.configuration for m in ensemble.members],
        "folds": ensemble.members[0].folds,
        "settings": asdict(ensemble.members[0].settings),
        "mirroring": {m.model.configuration: asdict(m.plan.mirroring) for m in ensemble.members},
        "threads": torch.get_num_threads(),
        "postprocessing": [s.describe() for s in ensemble.postprocessing.steps]
        if ensemble.postprocessing
        else [],
        "cases": [asdict(o) | {"files": [str(f) for f in o.files]} for o in outputs],
        "failures": failures,
        "flagged": [{"case": o.identifier, "reasons": list(o.review)} for o in outputs if o.review],
        "input_checks": [asdict(check) for check in checks],
    }


@dataclass(frozen=True)
class CaseReading:
    """How each case is read before its networks run: the configurations to preprocess for, whether to keep
    the raw image (for the report), the model's channel records to check the input against, whether a
    mismatch refuses the case; ``checks`` collects each case's :class:`InputCheck`."""

    plans: tuple[ConfigurationPlan, ...]
    keep_image: bool
    channels: tuple[ChannelRecord, ...]
    strict: bool = False
    num_outputs: int = 2
    checks: dict[str, InputCheck] = field(default_factory=dict)
    regions: bool = False
    """A region-based model: its structures' masks count in the memory estimate."""
    previous_plans: tuple[ConfigurationPlan | None, ...] = ()
    """Per configuration, its previous stage's (a cascade stage's) plan, or ``None``."""


def _predict_all(
    cases: Sequence[InputCase],
    ensemble: Ensemble,
    context: OutputContext,
    options: OutputOptions,
    out: Path,
    *,
    reading: CaseReading,
    show_progress: bool,
) -> tuple[list[CaseOutput], list[str]]:
    """The pipeline: read ahead in one thread, predict here, export in another (one case in flight each)."""
    outputs: list[CaseOutput] = []
    failures: list[str] = []
    pending: tuple[str, Future[CaseOutput]] | None = None
    bar = tqdm(total=len(cases), desc="predict", unit="case", disable=not show_progress)
    with ThreadPoolExecutor(1, "autoseg-read") as reader, ThreadPoolExecutor(1, "autoseg-export") as exporter:
        for _, prepared in _read_ahead(cases, reader, reading):
            if isinstance(prepared, str):
                failures.append(prepared)
                bar.update()
                continue
            started = time.perf_counter()
            try:
                _check_device_memory(ensemble, prepared)
                predicted = _predict_members(ensemble, prepared)
            except MemoryLimitError as error:
                failures.append(f"{prepared.case.identifier}: {error.message}")
                bar.update()
                continue
            except (MemoryError, torch.OutOfMemoryError):
                failures.append(f"{prepared.case.identifier}: {_OUT_OF_MEMORY} while predicting")
                bar.update()
                continue
            seconds = time.perf_counter() - started
            if pending is not None:
                _collect(*pending, outputs, failures)
            device = ensemble.members[0].settings.device
            on_gpu = device if device.startswith("cuda") else None
            future = exporter.submit(_export, prepared, predicted, context, options, out, seconds, on_gpu)
            pending = (prepared.case.identifier, future)
            bar.update()
        if pending is not None:
            _collect(*pending, outputs, failures)
    bar.close()
    return outputs, failures


def _check_device_memory(ensemble: Ensemble, prepared: PreparedCase) -> None:
    """On a CUDA device, refuse the case before its windows run when its estimated device memory
    (:func:`~autoseg.inference.inputs.estimate_device_bytes`) exceeds what the device has free; checked here,
    in the predicting thread, once the previous case has left the device.

    Raises:
        MemoryLimitError: naming the case's file, the memory it needs and what is free.
    """
    settings = ensemble.members[0].settings
    free = device_free_bytes(settings.device)
    if free is None:
        return
    need = estimate_device_bytes(
        [image.shape for image in prepared.images],
        [member.plan for member in ensemble.members],
        ensemble.num_outputs,
        windows_per_batch=settings.windows_per_batch,
        accumulate_on_device=settings.accumulate != "cpu",  # the band is small: ``auto`` puts it there
    )
    logger.debug("%s: about %s of %s at peak", prepared.case.identifier, format_bytes(need), settings.device)
    check_device_memory(
        prepared.case, need, settings.device, free, windows_per_batch=settings.windows_per_batch
    )


_OUT_OF_MEMORY = "ran out of memory (the estimate before reading was too low: report it)"


def _predict_members(ensemble: Ensemble, prepared: PreparedCase) -> list[FloatVolume]:
    """Each member's probabilities for one preprocessed case, at its plan's spacing (a cascade stage's
    previous stage first, :func:`_member_input`)."""
    return [
        _predict_member(ensemble, m, _member_input(ensemble, prepared, index), prepared.geometry)
        for index, m in enumerate(ensemble.members)
    ]


def _predict_member(
    ensemble: Ensemble, member: Member, image: FloatVolume, geometry: Geometry
) -> FloatVolume:
    """One configuration's probabilities on its network grid, in float16 when float32 would be large
    (:func:`~autoseg.inference.inputs.network_grid_dtype`)."""
    dtype = network_grid_dtype(ensemble.num_outputs, image.shape[1:])
    if dtype is not np.float32:
        logger.info(
            "%d x %s probabilities on the network grid kept in float16 (%s in float32)",
            ensemble.num_outputs,
            "x".join(map(str, image.shape[1:])),
            format_bytes(4 * ensemble.num_outputs * math.prod(image.shape[1:])),
        )
    return predict_probabilities(
        member.networks,
        image,
        member.plan.patch_size,
        ensemble.num_outputs,
        case_settings(member.settings, member.plan, geometry),
        activation="sigmoid" if ensemble.regions else "softmax",
        dtype=dtype,
    )


def _member_input(ensemble: Ensemble, prepared: PreparedCase, index: int) -> FloatVolume:
    """Member ``index``'s network input: the preprocessed image, and for a cascade stage the previous
    stage's prediction of the case as one-hot channels (:func:`autoseg.inference.cascade.cascade_input`)."""
    member, image = ensemble.members[index], prepared.images[index]
    previous = member.previous
    if previous is None:
        return image
    stage = prepared.previous[index]
    assert stage is not None, "a cascade stage's case is preprocessed for its previous stage too"
    low_image, low_properties = stage
    probabilities = _predict_member(ensemble, previous, low_image, prepared.geometry)
    return cascade_input(
        image,
        prepared.properties[index],
        member.plan,
        probabilities,
        low_properties,
        channels=member.model.plans.previous_stage_channels,
        regions=ensemble.regions,
    )


def _read_ahead(
    cases: Sequence[InputCase], reader: ThreadPoolExecutor, reading: CaseReading
) -> Iterator[tuple[InputCase, PreparedCase | str]]:
    """Yield each case preprocessed (or an error line), reading the next one while the caller works."""
    futures: list[Future[PreparedCase]] = []
    for index, case in enumerate(cases):
        if not futures:
            futures.append(reader.submit(_prepare, case, reading))
        if index + 1 < len(cases):
            futures.append(reader.submit(_prepare, cases[index + 1], reading))
        future = futures.pop(0)
        try:
            result: PreparedCase | str = future.result()
        except AutosegError as error:
            result = f"{case.identifier}: {error.message}"
        except MemoryError:
            result = f"{case.identifier}: {_OUT_OF_MEMORY} while reading and preprocessing"
        yield case, result


def _prepare(case: InputCase, reading: CaseReading) -> PreparedCase:
    header = read_case_header(case)
    spacings = [plan.spacing_mm for plan in (*reading.plans, *filter(None, reading.previous_plans))]
    available = available_memory_bytes()
    need = check_case_memory(case, header, spacings, reading.num_outputs, available, regions=reading.regions)
    logger.debug("%s: %s voxels, about %s at peak", case.identifier, header.shape, format_bytes(need))
    image, geometry = read_input_case(case)
    repaired = replace_non_finite(image, case.identifier, strict=reading.strict)
    if repaired:
        logger.warning("%s: %s", case.identifier, repaired)
    modality = str(getattr(case.series, "modality", "")) if case.is_dicom else None
    check = check_case(case.identifier, image, reading.channels, modality, strict=reading.strict)
    reading.checks[case.identifier] = check
    if check.refused:
        raise PredictInputError(f"not the model's modality: {check.reason}; refused (--strict)")
    report_image = image[0].copy() if reading.keep_image else None
    plans = reading.plans
    previous = tuple(
        None
        if low is None
        else _preprocessed(preprocess_case(image, None, geometry, low, identifier=case.identifier))
        for low in reading.previous_plans
    )
    images: list[FloatVolume] = []
    properties: list[CaseProperties] = []
    for index, plan in enumerate(plans):
        last = index == len(plans) - 1  # the last configuration may normalise the image in place
        prepared = preprocess_case(image, None, geometry, plan, identifier=case.identifier, in_place=last)
        images.append(prepared.image)
        properties.append(prepared.properties)
    notes = (f"input: {repaired}",) if repaired else ()
    return PreparedCase(case, geometry, images, properties, report_image, check, notes, previous)


def _preprocessed(prepared: PreprocessedCase) -> tuple[FloatVolume, CaseProperties]:
    return prepared.image, prepared.properties


def _export(
    prepared: PreparedCase,
    predicted: list[FloatVolume],
    context: OutputContext,
    options: OutputOptions,
    out: Path,
    seconds: float,
    resample_device: str | None = None,
) -> CaseOutput:
    """Each configuration's probabilities back on the input's grid, averaged, then the outputs: class by
    class (:mod:`autoseg.inference.export`, resampled on ``resample_device``, the GPU predict ran on, when
    given), never ``(K, Z, Y, X)`` float32 on the input's grid."""
    members = MemberPredictions(
        predicted, prepared.properties, regions=context.regions, resample_device=resample_device
    )
    written = write_case_outputs(
        prepared.case, members, prepared.geometry, prepared.report_image, context, options, out
    )
    review = prepared.notes + written.review
    for line in written.review:
        logger.warning("%s: review %s", prepared.case.identifier, line)
    return replace(written, predict_seconds=round(seconds, 3), review=review)


def _collect(
    identifier: str, future: Future[CaseOutput], outputs: list[CaseOutput], failures: list[str]
) -> None:
    try:
        outputs.append(future.result())
    except AutosegError as error:
        failures.append(error.message)
    except MemoryError:
        failures.append(f"{identifier}: {_OUT_OF_MEMORY} while writing its outputs")
