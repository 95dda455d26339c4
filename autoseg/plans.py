"""``plans.json``: the versioned, human-readable plan of every configuration, and its validation.

Every decision carries a ``why`` entry naming its inputs. A user may edit ``plans.json``; :func:`load_plans`
validates it (patch divisible by the total stride, list lengths that agree, sane batch size, known schemes)
and reports every problem with the configuration and field it is about.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from autoseg.errors import ImageReadError, PlansError
from autoseg.io import read_json, write_json
from autoseg.regions import Region

PLANS_SCHEMA_VERSION = 4
CONFIGURATION_NAMES = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
MAX_BATCH_SIZE = 4096


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

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict with a stable key order."""
        return asdict(self)

    def configuration(self, name: str) -> ConfigurationPlan:
        """The named configuration; :class:`PlansError` listing the planned ones otherwise."""
        if name not in self.configurations:
            raise PlansError(
                f"configuration '{name}' was not planned; planned: {', '.join(self.configurations)}"
            )
        return self.configurations[name]


def save_plans(plans: Plans, path: Path) -> None:
    """Write ``plans.json`` (indented, stable key order, atomic), refusing an invalid plan."""
    problems = validate_plans(plans)
    if problems:
        raise PlansError(f"{path}: refusing to write an invalid plan", details=problems)
    write_json(plans.to_json(), path)


def load_plans(path: Path) -> Plans:
    """Read, upgrade and validate ``plans.json``.

    Raises:
        PlansError: missing file, newer schema, malformed content, or inconsistent values (all listed).
    """
    if not path.is_file():
        raise PlansError(f"{path}: no plans; run 'autoseg plan' first")
    try:
        data = read_json(path)
    except ImageReadError as error:
        raise PlansError(error.message) from None
    if not isinstance(data, dict):
        raise PlansError(f"{path}: must hold a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > PLANS_SCHEMA_VERSION or version < 1:
        raise PlansError(
            f"{path}: schema_version {version!r}; this autoseg reads up to {PLANS_SCHEMA_VERSION}. "
            "Upgrade autoseg or re-plan."
        )
    data = upgrade_plans_json(data)
    try:
        plans = plans_from_json(data)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise PlansError(
            f"{path}: malformed plans ({type(error).__name__}: {error}); re-run 'autoseg plan' "
            "or fix the file"
        ) from None
    problems = validate_plans(plans)
    if problems:
        raise PlansError(f"{path}: {len(problems)} problem(s) in the plan", details=problems)
    return plans


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
    """Every inconsistency, one line each naming the configuration and field."""
    problems = []
    if not plans.configurations:
        problems.append("no configuration planned")
    if len(plans.channels) not in (0, len(plans.channel_names)):
        problems.append(f"channels has {len(plans.channels)} entries for {len(plans.channel_names)} channels")
    for name, config in plans.configurations.items():
        problems.extend(f"configuration '{name}': {p}" for p in _configuration_problems(config, plans))
    return problems + _target_problems(plans)


def _target_problems(plans: Plans) -> list[str]:
    target = plans.target
    if target.kind not in ("labels", "regions"):
        return [f"target.kind '{target.kind}' is not 'labels' or 'regions'"]
    if target.kind == "labels":
        return ["target.regions must be empty for kind 'labels'"] if target.regions else []
    expected = {"background": 0, **{r.name: k + 1 for k, r in enumerate(target.regions)}}
    if not target.regions or plans.labels != expected:
        return [f"target 'regions' needs labels {expected} (background 0, structure k -> k + 1)"]
    return []


def _configuration_problems(config: ConfigurationPlan, plans: Plans) -> list[str]:
    problems = []
    net = config.network
    if config.dims not in (2, 3) or net.dims != config.dims:
        problems.append(f"dims is {config.dims} and network.dims {net.dims}; both must be 2 or 3 and agree")
        return problems
    if len(config.patch_size) != config.dims:
        problems.append(f"patch_size {list(config.patch_size)} needs {config.dims} entries")
    problems.extend(_network_problems(net))
    if not problems:
        for axis, (size, stride) in enumerate(zip(config.patch_size, net.total_stride(), strict=True)):
            if size <= 0 or size % stride:
                lower, upper = max(stride, size // stride * stride), (size // stride + 1) * stride
                name = "zyx"[axis + 3 - config.dims]
                problems.append(
                    f"patch_size[{axis}] = {size} is not divisible by the total stride {stride} "
                    f"along {name}; use a multiple of {stride} (e.g. {lower} or {upper})"
                )
    if not 1 <= config.batch_size <= MAX_BATCH_SIZE:
        problems.append(f"batch_size {config.batch_size} is outside 1..{MAX_BATCH_SIZE}")
    if any(s <= 0 for s in config.spacing_mm) or len(config.spacing_mm) != 3:
        problems.append(f"spacing_mm {list(config.spacing_mm)} must be three positive numbers (z, y, x)")
    if len(config.normalization) != len(plans.channel_names):
        problems.append(
            f"normalization has {len(config.normalization)} entries for {len(plans.channel_names)} channel(s)"
        )
    for index, norm in enumerate(config.normalization):
        problems.extend(f"normalization[{index}]: {p}" for p in _normalization_problems(norm))
    if config.previous_stage is not None and config.previous_stage not in plans.configurations:
        problems.append(f"previous_stage '{config.previous_stage}' is not a planned configuration")
    if config.schedule.epochs < 1 or config.schedule.iterations_per_epoch < 1:
        problems.append("schedule needs epochs >= 1 and iterations_per_epoch >= 1")
    return problems + _orientation_problems(config.orientation)


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
    problems = []
    lengths = {
        "kernel_sizes": len(net.kernel_sizes),
        "strides": len(net.strides),
        "blocks_per_stage": len(net.blocks_per_stage),
    }
    for name, length in lengths.items():
        if length != stages:
            problems.append(f"network.{name} has {length} entries for {stages} stage(s) (features_per_stage)")
    if len(net.decoder_blocks_per_stage) != stages - 1:
        problems.append(
            f"network.decoder_blocks_per_stage has {len(net.decoder_blocks_per_stage)} entries; "
            f"expected {stages - 1} (stages - 1)"
        )
    for name, per_stage in (("kernel_sizes", net.kernel_sizes), ("strides", net.strides)):
        for stage, values in enumerate(per_stage):
            if len(values) != net.dims or any(v < 1 for v in values):
                problems.append(f"network.{name}[{stage}] = {list(values)} needs {net.dims} positive entries")
    if any(k % 2 == 0 for kernel in net.kernel_sizes for k in kernel):
        problems.append("network.kernel_sizes must be odd (1, 3, 5, ...)")
    if any(f < 1 for f in net.features_per_stage) or any(b < 1 for b in net.blocks_per_stage):
        problems.append("network.features_per_stage and blocks_per_stage must be positive")
    if any(b < 1 for b in net.decoder_blocks_per_stage):
        problems.append("network.decoder_blocks_per_stage must be positive")
    if net.architecture not in ("plain", "residual"):
        problems.append(f"network.architecture '{net.architecture}' is not 'plain' or 'residual'")
    return problems


def _normalization_problems(norm: ChannelNormalization) -> list[str]:
    if norm.scheme == "zscore":
        return []
    if norm.scheme != "ct":
        return [f"scheme '{norm.scheme}' is not 'ct' or 'zscore'"]
    values = (norm.clip_low, norm.clip_high, norm.mean, norm.std)
    if any(v is None for v in values):
        return ["'ct' needs clip_low, clip_high, mean and std"]
    assert norm.clip_low is not None and norm.clip_high is not None and norm.std is not None
    if norm.clip_low > norm.clip_high or norm.std <= 0:
        return ["'ct' needs clip_low <= clip_high and std > 0"]
    return []


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
