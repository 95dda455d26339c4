"""``plans.json``: the versioned, human-readable plan of every configuration, and its validation.

Every decision carries a ``why`` entry naming its inputs. A user may edit ``plans.json``; :func:`load_plans`
validates it (patch divisible by the total stride, list lengths that agree, sane batch size, known schemes)
and reports every problem with the configuration and field it is about.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from autoseg.errors import ConfigurationNotPlannedError, ImageReadError, PlansError
from autoseg.io import read_json, write_json
from autoseg.regions import Region

PLANS_SCHEMA_VERSION = 4
CONFIGURATION_NAMES = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
MAX_BATCH_SIZE = 4096
# Limits of a plan read from disk (``plans.json`` may be edited by hand): beyond them a value is a typo, or
# fails later (out of memory, a wrong volume) where it is harder to trace back to the file.
MAX_SPACING_MM = 100.0
MAX_MEDIAN_SHAPE = 100_000.0
MAX_PATCH_SIDE = 768
MAX_PATCH_VOXELS = 256**3
MAX_KERNEL_SIZE = 7
MAX_STRIDE = 4
MAX_STAGES = 10
MAX_FEATURES = 4096
MAX_BLOCKS = 32
MAX_SCHEDULE = 1_000_000
MAX_LABEL_VALUE = 65535
INTERPOLATION_ORDERS = (0, 1, 3)
"""What :mod:`autoseg.preprocessing.resample` interpolates with (nearest, linear, B-spline)."""
NORMS = ("instance",)
NONLINEARITIES = ("leaky_relu",)
"""The normalisation and nonlinearity :func:`autoseg.network.build_network` builds (``NetworkPlan``)."""


@dataclass(frozen=True)
class ChannelNormalization:
    """How one channel is normalised.

    ``"ct"``: clip to ``[clip_low, clip_high]`` (dataset-wide foreground 0.5/99.5 percentiles), then subtract
    ``mean`` and divide by ``std`` (foreground statistics). ``"zscore"``: per image, subtract the mean and
    divide by the standard deviation, computed inside the nonzero mask when ``use_nonzero_mask``.
    """

    scheme: Literal["ct", "zscore"]
    use_nonzero_mask: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class ChannelRecord:
    """What one input channel was trained on, for predict's input check (``autoseg.inference.modality``).

    ``modality`` follows the channel name (:func:`channel_modality`); the foreground percentiles (raw units,
    HU for CT) are the fingerprint's; in a plan migrated from schema 1 they are a CT channel's clip bounds
    (``None`` otherwise).
    """

    name: str
    modality: Literal["CT", "MR", "other"]
    foreground_percentile_00_5: float | None = None
    foreground_median: float | None = None
    foreground_percentile_99_5: float | None = None


@dataclass(frozen=True)
class MirroringPlan:
    """Which spatial axes training augmentation and test-time augmentation mirror.

    ``left_right`` False: never the patient's left-right axis, i.e. per image the array axis whose direction
    is closest to patient x (LPS), whatever the file's axis order; the other axes still are. Chosen when a
    structure name has a side (``lateral_structures``), so that Lung_L and Lung_R stay apart.
    """

    left_right: bool = True
    lateral_structures: tuple[str, ...] = ()

    def axes(self, dims: int, direction: Sequence[float] | None) -> tuple[int, ...]:
        """The axes of a ``dims``-D patch that may be mirrored (2D patches are ``(y, x)`` slices of a
        ``(z, y, x)`` image); ``direction``: the image's 3x3 row-major direction (``io.Geometry``)."""
        every = tuple(range(dims))
        if self.left_right or direction is None:
            return every
        lateral = left_right_axis(direction) - (3 - dims)
        return tuple(axis for axis in every if axis != lateral)


def left_right_axis(direction: Sequence[float]) -> int:
    """The array axis (0 = z) closest to the patient's left-right direction (LPS x): the one whose direction
    column has the largest ``|x|`` component (rows physical ``z, y, x``, as ``io.Geometry``); oblique images
    included. Ties go to the later axis."""
    x_row = [abs(float(v)) for v in direction[6:9]]
    return max(range(3), key=lambda axis: (round(x_row[axis], 9), axis))


_MR_NAME = re.compile(r"^(MR|T1|T2|FLAIR|PD|DWI|ADC|SWI|DCE|DSC|BOLD|EPI|DIXON)")


def channel_modality(name: str) -> Literal["CT", "MR", "other"]:
    """The modality a channel name says: ``CT...`` -> CT (the normalisation rule's test); ``MR``, ``MRI``,
    ``T1``, ``T2``, ``FLAIR``, ``PD``, ``DWI``, ``ADC``... -> MR; anything else (PET, ``noNorm``) -> other."""
    upper = name.strip().upper()
    if upper.startswith("CT"):
        return "CT"
    return "MR" if _MR_NAME.match(upper) else "other"


CANONICAL_AXIS_CODE = "LPS"
"""The canonical orientation, as ``Geometry.orientation_code``: the identity DICOM/ITK direction, array axes
``(z, y, x)`` increasing towards patient superior, posterior and left (what most axial CT already is)."""

OBLIQUE_THRESHOLD_DEG = 3.0
"""An image whose array axes are further than this from the nearest patient axes is oblique (resampled)."""


@dataclass(frozen=True)
class OrientationPlan:
    """How images are oriented before the network sees them (``docs/design.md``, "Canonical orientation").

    ``"canonical"``: every image, in training and inference, is brought to :data:`CANONICAL_AXIS_CODE`:
    an axis-aligned one by an exact permutation and flip of its array, an oblique one (an axis more than
    ``oblique_threshold_deg`` from the nearest patient axis) by resampling onto an axis-aligned grid in world
    space; outputs go back to the input's own grid. ``"as-stored"``: the array order of the file, as plans
    before schema 4 were trained.
    """

    mode: Literal["canonical", "as-stored"] = "canonical"
    axis_code: str = CANONICAL_AXIS_CODE
    oblique_threshold_deg: float = OBLIQUE_THRESHOLD_DEG


@dataclass(frozen=True)
class ResamplingPlan:
    """Interpolation orders. Labels are resampled per class (one-hot) with ``label_order`` (1: linear), or
    nearest neighbour (0). For anisotropic data, ``separate_axis`` (array axis, 0 = z) is resampled on its own
    with the ``*_separate`` orders."""

    image_order: int = 3
    label_order: int = 1
    separate_axis: int | None = None
    image_order_separate: int = 0
    label_order_separate: int = 0


@dataclass(frozen=True)
class NetworkPlan:
    """U-Net topology. Per-stage tuples have one entry per resolution stage; kernels and strides per axis."""

    architecture: Literal["plain", "residual"]
    dims: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    blocks_per_stage: tuple[int, ...]
    decoder_blocks_per_stage: tuple[int, ...]
    norm: Literal["instance"] = "instance"
    nonlinearity: Literal["leaky_relu"] = "leaky_relu"
    deep_supervision: bool = True

    @property
    def num_stages(self) -> int:
        """Resolution stages (poolings + 1)."""
        return len(self.features_per_stage)

    def total_stride(self) -> tuple[int, ...]:
        """Product of the strides per axis: what a patch must be divisible by."""
        return tuple(math.prod(s[axis] for s in self.strides) for axis in range(self.dims))


@dataclass(frozen=True)
class TrainingSchedule:
    """Default training length; ``estimated_seconds_per_iteration`` where the planner measured the device."""

    epochs: int = 1000
    iterations_per_epoch: int = 250
    estimated_seconds_per_iteration: float | None = None
    validation_iterations: int = 50
    """Validation batches per epoch (the pseudo-Dice and its curve; nnU-Net's 50)."""


@dataclass(frozen=True)
class TargetPlan:
    """What the network predicts (``docs/design.md``, "Region-based training").

    ``"labels"``: one softmax over the classes of a label map (Dice + cross-entropy). ``"regions"``: one
    sigmoid per structure of ``regions`` (Dice + binary cross-entropy), chosen when structures may overlap;
    a voxel belongs to every structure whose probability is at least 0.5. ``regions_class_order`` is
    nnU-Net's, kept from its ``dataset.json``.
    """

    kind: Literal["labels", "regions"] = "labels"
    regions: tuple[Region, ...] = ()
    regions_class_order: tuple[int, ...] = ()
    structure_types: dict[str, str] = field(default_factory=dict)
    """Structure name -> DICOM RTROIInterpretedType the dataset declared (``structure_types`` in its
    ``dataset.json``: a mapping file's ``type`` or the source RTSTRUCTs'); predicted RTSTRUCTs use it, and a
    structure not listed is typed from its name."""
    ignore_label: int | None = None
    """nnU-Net's ignore label (``"ignore"`` in the dataset's labels; not in ``Plans.labels``): voxels of this
    value are left out of the loss, foreground sampling and validation, and never predicted. With kind
    ``"regions"`` the preprocessed targets already mark those voxels :data:`autoseg.regions.UNKNOWN` in every
    structure (:func:`autoseg.regions.regions_from_labels`)."""

    @property
    def label_map_ignore(self) -> int | None:
        """The ignore value in the network's label-map target (``ignore_label`` for kind ``"labels"``);
        ``None`` for regions, whose targets carry :data:`autoseg.regions.UNKNOWN` instead (a value such as
        3 would otherwise be taken for structure 3)."""
        return self.ignore_label if self.kind == "labels" else None


@dataclass(frozen=True)
class ConfigurationPlan:
    """One configuration (``2d``, ``3d_fullres``, ...). ``patch_size`` has ``dims`` entries, ``(z, y, x)`` or
    ``(y, x)``; ``spacing_mm`` and ``median_shape`` are always ``(z, y, x)``."""

    dims: int
    spacing_mm: tuple[float, float, float]
    median_shape: tuple[float, float, float]
    patch_size: tuple[int, ...]
    batch_size: int
    network: NetworkPlan
    normalization: tuple[ChannelNormalization, ...]
    resampling: ResamplingPlan
    batch_dice: bool
    schedule: TrainingSchedule
    estimated_memory_gb: float
    previous_stage: str | None = None
    mirroring: MirroringPlan = field(default_factory=MirroringPlan)
    why: dict[str, str] = field(default_factory=dict)
    orientation: OrientationPlan = field(default_factory=OrientationPlan)


@dataclass(frozen=True)
class Plans:
    """Everything ``plan`` decided for a dataset."""

    schema_version: int
    autoseg_version: str
    planner: str
    planner_options: dict[str, Any]
    fingerprint_sha256: str
    dataset_name: str
    labels: dict[str, int]
    channel_names: tuple[str, ...]
    device: Literal["cpu", "cuda"]
    configurations: dict[str, ConfigurationPlan]
    channels: tuple[ChannelRecord, ...] = ()
    why: dict[str, str] = field(default_factory=dict)
    target: TargetPlan = field(default_factory=TargetPlan)

    @property
    def region_based(self) -> bool:
        """Whether the network has one sigmoid output per structure (:class:`TargetPlan`)."""
        return self.target.kind == "regions"

    @property
    def num_outputs(self) -> int:
        """Network output channels: the classes (background included), or the structures."""
        return len(self.target.regions) if self.region_based else len(self.labels)

    @property
    def previous_stage_channels(self) -> int:
        """Input channels a cascade stage adds to the image's: the previous stage's prediction one-hot, one
        channel per foreground class (background left out, as nnU-Net), or per structure (regions)."""
        return self.num_outputs if self.region_based else self.num_outputs - 1

    def input_channels(self, configuration: str) -> int:
        """Network input channels of ``configuration``: the image's, plus
        :attr:`previous_stage_channels` for a cascade stage (``previous_stage`` set)."""
        cascade = self.configuration(configuration).previous_stage is not None
        return len(self.channel_names) + (self.previous_stage_channels if cascade else 0)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict with a stable key order."""
        return asdict(self)

    def configuration(self, name: str) -> ConfigurationPlan:
        """The named configuration; :class:`ConfigurationNotPlannedError` (exit 2) listing the planned ones
        otherwise."""
        if name not in self.configurations:
            raise ConfigurationNotPlannedError(
                f"configuration '{name}' is not in plans.json; planned: {', '.join(self.configurations)}"
            )
        return self.configurations[name]


def save_plans(plans: Plans, path: Path) -> None:
    """Write ``plans.json`` (indented, stable key order, atomic), refusing an invalid plan."""
    problems = validate_plans(plans)
    if problems:
        raise PlansError(f"{path}: refusing to write an invalid plan", details=problems)
    write_json(plans.to_json(), path)


def load_plans(path: Path) -> Plans:
    """Read, upgrade and validate ``plans.json`` completely (:func:`plans_from_dict`).

    Raises:
        PlansError: missing file, newer schema, malformed content, or inconsistent values (each with its
            key path).
    """
    if not path.is_file():
        raise PlansError(f"{path}: no plans; run 'autoseg plan' first")
    try:
        data = read_json(path)
    except ImageReadError as error:
        raise PlansError(error.message) from None
    return plans_from_dict(data, str(path))


def plans_from_dict(data: Any, source: str) -> Plans:
    """Upgrade, check and build a plans dict read from ``source`` (``plans.json``, or the plan inside a
    model file). Every field is checked: its type (``batch_size`` 2.7 is not an integer; ``network.norm``
    must be a name the network builder knows), finite numbers, ranges (:func:`validate_plans`); an unknown
    key is refused, because a misspelt field would otherwise be ignored.

    Raises:
        PlansError: ``source: <key path>: <problem>`` for the first problem, every problem in ``details``.
    """
    if not isinstance(data, dict):
        raise PlansError(f"{source}: must hold a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PlansError(
            f"{source}: schema_version: must be an integer from 1 to {PLANS_SCHEMA_VERSION}, got "
            f"{_shown(version)}; fix the file or re-run 'autoseg plan'"
        )
    if version > PLANS_SCHEMA_VERSION:
        raise PlansError(
            f"{source}: schema_version {version}; this autoseg reads up to {PLANS_SCHEMA_VERSION}. "
            "Upgrade autoseg or re-plan."
        )
    data = upgrade_plans_json(data)
    structural = json_problems(data)
    if structural:
        raise _plans_error(source, "malformed plans: ", structural)
    plans = plans_from_json(data)
    problems = validate_plans(plans)
    if problems:
        raise _plans_error(source, "", problems)
    return plans


def _plans_error(source: str, kind: str, problems: Sequence[str]) -> PlansError:
    more = f" (and {len(problems) - 1} more, listed below)" if len(problems) > 1 else ""
    return PlansError(
        f"{source}: {kind}{problems[0]}{more}; fix the file or re-run 'autoseg plan'",
        details=list(problems) if len(problems) > 1 else [],
    )


def migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: every configuration mirrors every axis, left-right included (as schema-1 models were
    trained), and the channel records come from the names; a CT channel's foreground 0.5/99.5 percentiles
    are its ``"ct"`` normalisation's clip bounds (schema 1 had them there, and no median). The input is not
    changed."""
    upgraded = copy.deepcopy(data)
    upgraded["schema_version"] = 2
    configurations = upgraded.get("configurations")
    configurations = configurations if isinstance(configurations, dict) else {}
    for config in configurations.values():
        if isinstance(config, dict):
            config.setdefault("mirroring", {"left_right": True, "lateral_structures": []})
    names = upgraded.get("channel_names")
    names = names if isinstance(names, list) else []
    upgraded["channels"] = [
        {"name": str(n), "modality": channel_modality(str(n)), **_clip_percentiles(configurations, index)}
        for index, n in enumerate(names)
    ]
    return upgraded


def _clip_percentiles(configurations: dict[str, Any], channel: int) -> dict[str, float]:
    """A schema-1 channel's foreground 0.5/99.5 percentiles, from the first configuration's ``"ct"``
    normalisation of that channel (clip bounds); nothing for a z-scored channel."""
    for config in configurations.values():
        normalization = config.get("normalization") if isinstance(config, dict) else None
        if isinstance(normalization, list) and channel < len(normalization):
            entry = normalization[channel]
            if isinstance(entry, dict) and entry.get("scheme") == "ct":
                low, high = entry.get("clip_low"), entry.get("clip_high")
                if isinstance(low, int | float) and isinstance(high, int | float):
                    return {
                        "foreground_percentile_00_5": float(low),
                        "foreground_percentile_99_5": float(high),
                    }
    return {}


def migrate_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 -> 3: the network predicts one softmax over the label map's classes (every schema-2 model
    was trained so)."""
    return dict(data, schema_version=3, target={"kind": "labels", "regions": [], "regions_class_order": []})


def migrate_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 -> 4: every configuration sees images in their stored array order (``"as-stored"``: schema-3
    models were trained so, without canonical orientation). The input is not changed."""
    upgraded = copy.deepcopy(data)
    upgraded["schema_version"] = 4
    configurations = upgraded.get("configurations")
    for config in configurations.values() if isinstance(configurations, dict) else ():
        if isinstance(config, dict):
            config.setdefault("orientation", asdict(OrientationPlan(mode="as-stored")))
    return upgraded


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: migrate_v1,
    2: migrate_v2,
    3: migrate_v3,
}
"""``MIGRATIONS[n]`` upgrades a schema-``n`` plans dict to schema ``n + 1``."""


def upgrade_plans_json(data: dict[str, Any]) -> dict[str, Any]:
    """A plans dict of any schema up to :data:`PLANS_SCHEMA_VERSION`, upgraded to it (``plans.json`` and
    the plan inside an exported model); a missing or unknown version is left for validation to report."""
    version = data.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= PLANS_SCHEMA_VERSION:
        return data
    for upgrade_from in range(version, PLANS_SCHEMA_VERSION):
        data = MIGRATIONS[upgrade_from](data)
    return data


def validate_plans(plans: Plans) -> list[str]:
    """Every inconsistency or out-of-range value, one line each starting with its key path in
    ``plans.json`` (``configurations.3d_fullres.patch_size[0]: ...``)."""
    problems = []
    if not plans.configurations:
        problems.append("configurations: no configuration planned")
    if not plans.channel_names:
        problems.append("channel_names: must name at least one input channel")
    if len(plans.channels) not in (0, len(plans.channel_names)):
        problems.append(
            f"channels: {len(plans.channels)} entries for {len(plans.channel_names)} channel_names"
        )
    if plans.device not in ("cpu", "cuda"):
        problems.append(f"device: '{plans.device}' is not 'cpu' or 'cuda'")
    problems.extend(_label_problems(plans.labels))
    for name, config in plans.configurations.items():
        problems.extend(f"configurations.{name}.{p}" for p in _configuration_problems(config, plans))
    return problems + _cascade_problems(plans) + _target_problems(plans)


def _cascade_problems(plans: Plans) -> list[str]:
    """A ``previous_stage`` chain that comes back to where it started (a cascade never ends)."""
    problems = []
    for name in plans.configurations:
        seen, current = [name], plans.configurations[name].previous_stage
        while current in plans.configurations and current not in seen:
            seen.append(current)
            current = plans.configurations[current].previous_stage
        if current in seen:
            chain = " -> ".join([*seen, current])
            problems.append(f"configurations.{name}.previous_stage: a cycle ({chain})")
    return problems


def _label_problems(labels: Mapping[str, int]) -> list[str]:
    if not labels:
        return ["labels: empty; a plan needs background 0 and at least one structure"]
    problems = [
        f"labels.{name}: {value} is outside 0..{MAX_LABEL_VALUE}"
        for name, value in labels.items()
        if not 0 <= value <= MAX_LABEL_VALUE
    ]
    if len(set(labels.values())) != len(labels):
        problems.append(f"labels: a value is given to two names ({dict(labels)})")
    if 0 not in labels.values():
        problems.append("labels: no background (value 0)")
    if len(labels) < 2:
        problems.append("labels: only background; a plan needs at least one structure")
    if any(not name.strip() for name in labels):
        problems.append("labels: a label name is empty")
    return problems


def _target_problems(plans: Plans) -> list[str]:
    target = plans.target
    if target.kind not in ("labels", "regions"):
        return [f"target.kind: '{target.kind}' is not 'labels' or 'regions'"]
    ignore = target.ignore_label
    if ignore is not None:
        values = (
            [v for region in target.regions for v in region.label_values]
            if target.kind == "regions"
            else list(plans.labels.values())
        )
        if ignore <= max(values, default=0):
            return [f"target.ignore_label: {ignore} must be above every label value the dataset uses"]
    if target.kind == "labels":
        return ["target.regions: must be empty for kind 'labels'"] if target.regions else []
    expected = {"background": 0, **{r.name: k + 1 for k, r in enumerate(target.regions)}}
    if not target.regions or plans.labels != expected:
        return [f"target: kind 'regions' needs labels {expected} (background 0, structure k -> k + 1)"]
    return []


def _configuration_problems(config: ConfigurationPlan, plans: Plans) -> list[str]:
    """Problems of one configuration, each starting with its key path below the configuration."""
    net = config.network
    if config.dims not in (2, 3) or net.dims != config.dims:
        return [f"dims: {config.dims} and network.dims {net.dims}; both must be 2 or 3 and agree"]
    problems = _patch_problems(config) + _network_problems(net)
    if not problems:
        problems.extend(_divisibility_problems(config.patch_size, net.total_stride()))
    if not 1 <= config.batch_size <= MAX_BATCH_SIZE:
        problems.append(f"batch_size: {config.batch_size} is outside 1..{MAX_BATCH_SIZE}")
    problems.extend(_spacing_problems("spacing_mm", config.spacing_mm, MAX_SPACING_MM))
    problems.extend(_spacing_problems("median_shape", config.median_shape, MAX_MEDIAN_SHAPE))
    if len(config.normalization) != len(plans.channel_names):
        problems.append(
            f"normalization: {len(config.normalization)} entries for {len(plans.channel_names)} channel(s)"
        )
    for index, norm in enumerate(config.normalization):
        problems.extend(f"normalization[{index}].{p}" for p in _normalization_problems(norm))
    problems.extend(f"resampling.{p}" for p in _resampling_problems(config.resampling))
    if config.previous_stage is not None and config.previous_stage not in plans.configurations:
        problems.append(f"previous_stage: '{config.previous_stage}' is not a planned configuration")
    problems.extend(f"schedule.{p}" for p in _schedule_problems(config.schedule))
    if not (math.isfinite(config.estimated_memory_gb) and config.estimated_memory_gb >= 0):
        problems.append(f"estimated_memory_gb: {config.estimated_memory_gb} must be a number >= 0")
    return problems + _orientation_problems(config.orientation)


def _patch_problems(config: ConfigurationPlan) -> list[str]:
    patch = config.patch_size
    if len(patch) != config.dims:
        return [f"patch_size: {list(patch)} needs {config.dims} entries (dims)"]
    problems = [
        f"patch_size[{axis}]: {size} must be a positive number of voxels"
        if size < 1
        else f"patch_size[{axis}]: {size} exceeds {MAX_PATCH_SIDE} voxels, the largest patch side"
        for axis, size in enumerate(patch)
        if not 1 <= size <= MAX_PATCH_SIDE
    ]
    if not problems and math.prod(patch) > MAX_PATCH_VOXELS:
        problems.append(
            f"patch_size: {list(patch)} holds {math.prod(patch)} voxels; at most {MAX_PATCH_VOXELS} "
            "(256^3) fit a training batch"
        )
    return problems


def _divisibility_problems(patch: Sequence[int], total_stride: Sequence[int]) -> list[str]:
    problems = []
    for axis, (size, stride) in enumerate(zip(patch, total_stride, strict=True)):
        if size % stride:
            lower, upper = max(stride, size // stride * stride), (size // stride + 1) * stride
            name = "zyx"[axis + 3 - len(patch)]
            problems.append(
                f"patch_size[{axis}]: {size} is not divisible by the total stride {stride} "
                f"along {name}; use a multiple of {stride} (e.g. {lower} or {upper})"
            )
    return problems


def _spacing_problems(key: str, values: Sequence[float], largest: float) -> list[str]:
    if len(values) != 3:
        return [f"{key}: {list(values)} needs three entries (z, y, x)"]
    return [
        f"{key}[{axis}]: {value} must be a finite number in (0, {largest:g}]"
        for axis, value in enumerate(values)
        if not 0 < value <= largest  # NaN fails too
    ]


def _resampling_problems(resampling: ResamplingPlan) -> list[str]:
    orders = {
        "image_order": resampling.image_order,
        "label_order": resampling.label_order,
        "image_order_separate": resampling.image_order_separate,
        "label_order_separate": resampling.label_order_separate,
    }
    problems = [
        f"{key}: {order} is not an interpolation order autoseg resamples with "
        f"({', '.join(map(str, INTERPOLATION_ORDERS))})"
        for key, order in orders.items()
        if order not in INTERPOLATION_ORDERS
    ]
    if resampling.separate_axis not in (None, 0, 1, 2):
        problems.append(f"separate_axis: {resampling.separate_axis} must be null or an axis 0, 1, 2")
    return problems


def _schedule_problems(schedule: TrainingSchedule) -> list[str]:
    problems = [
        f"{key}: {value} is outside 1..{MAX_SCHEDULE}"
        for key, value in (
            ("epochs", schedule.epochs),
            ("iterations_per_epoch", schedule.iterations_per_epoch),
            ("validation_iterations", schedule.validation_iterations),
        )
        if not 1 <= value <= MAX_SCHEDULE
    ]
    seconds = schedule.estimated_seconds_per_iteration
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        problems.append(f"estimated_seconds_per_iteration: {seconds} must be null or a number >= 0")
    return problems


def _orientation_problems(orientation: OrientationPlan) -> list[str]:
    problems = []
    if orientation.mode not in ("canonical", "as-stored"):
        problems.append(f"orientation.mode '{orientation.mode}' is not 'canonical' or 'as-stored'")
    if orientation.axis_code != CANONICAL_AXIS_CODE:
        problems.append(f"orientation.axis_code '{orientation.axis_code}' is not '{CANONICAL_AXIS_CODE}'")
    if not 0.0 < orientation.oblique_threshold_deg < 45.0:  # NaN fails too
        problems.append(
            f"orientation.oblique_threshold_deg {orientation.oblique_threshold_deg} must be in (0, 45) deg"
        )
    return problems


def _network_problems(net: NetworkPlan) -> list[str]:
    stages = net.num_stages
    problems = (
        [] if 1 <= stages <= MAX_STAGES else [f"network.features_per_stage: {stages} stages; 1..{MAX_STAGES}"]
    )
    lengths = {
        "kernel_sizes": len(net.kernel_sizes),
        "strides": len(net.strides),
        "blocks_per_stage": len(net.blocks_per_stage),
    }
    for name, length in lengths.items():
        if length != stages:
            problems.append(f"network.{name}: {length} entries for {stages} stage(s) (features_per_stage)")
    if len(net.decoder_blocks_per_stage) != stages - 1:
        problems.append(
            f"network.decoder_blocks_per_stage: {len(net.decoder_blocks_per_stage)} entries; "
            f"expected {stages - 1} (stages - 1)"
        )
    for name, per_stage, largest in (
        ("kernel_sizes", net.kernel_sizes, MAX_KERNEL_SIZE),
        ("strides", net.strides, MAX_STRIDE),
    ):
        for stage, values in enumerate(per_stage):
            if len(values) != net.dims or not all(1 <= v <= largest for v in values):
                problems.append(
                    f"network.{name}[{stage}]: {list(values)} needs {net.dims} entries in 1..{largest}"
                )
    if any(k % 2 == 0 for kernel in net.kernel_sizes for k in kernel):
        problems.append("network.kernel_sizes: must be odd (1, 3, 5, 7)")
    problems.extend(_widths_problems(net))
    for key, value, known in (
        ("architecture", net.architecture, ("plain", "residual")),
        ("norm", net.norm, NORMS),
        ("nonlinearity", net.nonlinearity, NONLINEARITIES),
    ):
        if value not in known:
            names = ", ".join(f"'{k}'" for k in known)
            problems.append(f"network.{key}: '{value}' is not one the network builder knows ({names})")
    return problems


def _widths_problems(net: NetworkPlan) -> list[str]:
    checks = (
        ("features_per_stage", net.features_per_stage, MAX_FEATURES),
        ("blocks_per_stage", net.blocks_per_stage, MAX_BLOCKS),
        ("decoder_blocks_per_stage", net.decoder_blocks_per_stage, MAX_BLOCKS),
    )
    return [
        f"network.{key}: {list(values)} must hold integers in 1..{largest}"
        for key, values, largest in checks
        if not all(1 <= v <= largest for v in values)
    ]


def _normalization_problems(norm: ChannelNormalization) -> list[str]:
    """Problems of one channel's normalisation, each starting with its key below the entry."""
    if norm.scheme not in ("ct", "zscore"):
        return [f"scheme: '{norm.scheme}' is not 'ct' or 'zscore'"]
    values = {"clip_low": norm.clip_low, "clip_high": norm.clip_high, "mean": norm.mean, "std": norm.std}
    problems = [
        f"{key}: {value} is not a finite number"
        for key, value in values.items()
        if value is not None and not math.isfinite(value)
    ]
    if norm.scheme == "zscore" or problems:
        return problems
    missing = [key for key, value in values.items() if value is None]
    if missing:
        return [f"{missing[0]}: 'ct' needs clip_low, clip_high, mean and std"]
    assert norm.clip_low is not None and norm.clip_high is not None and norm.std is not None
    if norm.clip_low > norm.clip_high:
        problems.append(f"clip_low: {norm.clip_low} is above clip_high {norm.clip_high}")
    if norm.std <= 0:
        problems.append(f"std: {norm.std}; 'ct' needs std > 0")
    return problems


# ------------------------------------------------------------------------------------------- JSON


def plans_from_json(data: Mapping[str, Any]) -> Plans:
    """Build :class:`Plans` from its JSON dict (no validation; see :func:`validate_plans`)."""
    return Plans(
        schema_version=int(data["schema_version"]),
        autoseg_version=str(data["autoseg_version"]),
        planner=str(data["planner"]),
        planner_options=dict(data["planner_options"]),
        fingerprint_sha256=str(data["fingerprint_sha256"]),
        dataset_name=str(data["dataset_name"]),
        labels={str(k): int(v) for k, v in data["labels"].items()},
        channel_names=tuple(str(c) for c in data["channel_names"]),
        device=cast(Literal["cpu", "cuda"], str(data["device"])),
        configurations={str(k): _configuration_from_json(v) for k, v in data["configurations"].items()},
        channels=tuple(ChannelRecord(**c) for c in data["channels"]),
        why={str(k): str(v) for k, v in data.get("why", {}).items()},
        target=_target_from_json(data["target"]),
    )


def _target_from_json(data: Mapping[str, Any]) -> TargetPlan:
    return TargetPlan(
        kind=data["kind"],
        regions=tuple(
            Region(str(r["name"]), tuple(int(v) for v in r["label_values"])) for r in data["regions"]
        ),
        regions_class_order=tuple(int(v) for v in data["regions_class_order"]),
        structure_types={str(k): str(v) for k, v in data.get("structure_types", {}).items()},
        ignore_label=None if data.get("ignore_label") is None else int(data["ignore_label"]),
    )


def _configuration_from_json(data: Mapping[str, Any]) -> ConfigurationPlan:
    return ConfigurationPlan(
        dims=int(data["dims"]),
        spacing_mm=_triple(data["spacing_mm"]),
        median_shape=_triple(data["median_shape"]),
        patch_size=tuple(int(v) for v in data["patch_size"]),
        batch_size=int(data["batch_size"]),
        network=_network_from_json(data["network"]),
        normalization=tuple(ChannelNormalization(**n) for n in data["normalization"]),
        resampling=ResamplingPlan(**data["resampling"]),
        batch_dice=bool(data["batch_dice"]),
        schedule=TrainingSchedule(**data["schedule"]),
        estimated_memory_gb=float(data["estimated_memory_gb"]),
        previous_stage=None if data.get("previous_stage") is None else str(data["previous_stage"]),
        mirroring=MirroringPlan(
            bool(data["mirroring"]["left_right"]),
            tuple(str(s) for s in data["mirroring"]["lateral_structures"]),
        ),
        why={str(k): str(v) for k, v in data.get("why", {}).items()},
        orientation=_orientation_from_json(data["orientation"]),
    )


def _orientation_from_json(data: Mapping[str, Any]) -> OrientationPlan:
    return OrientationPlan(
        mode=data["mode"],
        axis_code=str(data["axis_code"]),
        oblique_threshold_deg=float(data["oblique_threshold_deg"]),
    )


def _network_from_json(data: Mapping[str, Any]) -> NetworkPlan:
    return NetworkPlan(
        architecture=data["architecture"],
        dims=int(data["dims"]),
        features_per_stage=tuple(int(v) for v in data["features_per_stage"]),
        kernel_sizes=tuple(tuple(int(v) for v in k) for k in data["kernel_sizes"]),
        strides=tuple(tuple(int(v) for v in s) for s in data["strides"]),
        blocks_per_stage=tuple(int(v) for v in data["blocks_per_stage"]),
        decoder_blocks_per_stage=tuple(int(v) for v in data["decoder_blocks_per_stage"]),
        norm=data.get("norm", "instance"),
        nonlinearity=data.get("nonlinearity", "leaky_relu"),
        deep_supervision=bool(data.get("deep_supervision", True)),
    )


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


# ------------------------------------------------------------------------------------------- JSON checks

OPTIONAL_KEYS = frozenset(
    {"why", "previous_stage", "norm", "nonlinearity", "deep_supervision", "structure_types", "ignore_label"}
)
"""Keys a hand-edited ``plans.json`` may leave out (their defaults apply); every other field is required."""

_BUILT_FROM_KEYWORDS = (ChannelNormalization, ChannelRecord, ResamplingPlan, TrainingSchedule)
"""Classes :func:`plans_from_json` builds as ``Class(**entry)``: their fields with a default are optional."""


def json_problems(data: Mapping[str, Any]) -> list[str]:
    """Structural problems of an upgraded plans dict, one line each starting with its key path: a missing or
    unknown key, a value of the wrong type (an integer field holding ``2.7``, a name that is not one of the
    known ones), a number that is not finite. Driven by the dataclasses' type hints, so a new field is
    checked as soon as it is declared. Empty: :func:`plans_from_json` can build the plan."""
    return _object_problems(data, Plans, "")


def _object_problems(data: Mapping[str, Any], cls: type, where: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    problems = [
        f"{prefix}{key}: unknown key (autoseg does not read it; remove it or correct its spelling)"
        for key in data
        if key not in fields
    ]
    for name, spec in fields.items():
        if name in data:
            problems.extend(_value_problems(data[name], hints[name], f"{prefix}{name}"))
        elif name not in OPTIONAL_KEYS and not (cls in _BUILT_FROM_KEYWORDS and _has_default(spec)):
            problems.append(f"{prefix}{name}: missing")
    return problems


def _has_default(spec: dataclasses.Field[Any]) -> bool:
    return spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING


def _value_problems(value: Any, hint: Any, where: str) -> list[str]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return []
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            return [f"{where}: must be an object, got {_shown(value)}"]
        return _object_problems(value, cast(type, hint), where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return []
        return _value_problems(value, next(a for a in args if a is not type(None)), where)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return []
        return [f"{where}: {_shown(value)} is not one of {', '.join(repr(a) for a in args)}"]
    if origin is tuple or origin is dict:
        return _container_problems(value, origin, args, where)
    return _scalar_problems(value, hint, where)


def _container_problems(value: Any, origin: Any, args: tuple[Any, ...], where: str) -> list[str]:
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: must be an object, got {_shown(value)}"]
        return [p for key, item in value.items() for p in _value_problems(item, args[1], f"{where}.{key}")]
    if not isinstance(value, list):
        return [f"{where}: must be a list, got {_shown(value)}"]
    if len(args) == 2 and args[1] is Ellipsis:
        hints = [args[0]] * len(value)
    elif len(value) != len(args):
        return [f"{where}: needs {len(args)} entries, got {len(value)}"]
    else:
        hints = list(args)
    return [
        p
        for i, (v, h) in enumerate(zip(value, hints, strict=True))
        for p in _value_problems(v, h, f"{where}[{i}]")
    ]


def _scalar_problems(value: Any, hint: Any, where: str) -> list[str]:
    if hint is bool:
        ok = isinstance(value, bool)
        wanted = "true or false"
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        wanted = "an integer"
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        wanted = "a finite number"
    elif hint is str:
        ok = isinstance(value, str)
        wanted = "a string"
    else:  # a type the checker does not know: a new field's type needs a rule here
        return [f"{where}: cannot be checked (type {hint}); this is an autoseg bug"]
    return [] if ok else [f"{where}: must be {wanted}, got {_shown(value)}"]


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
