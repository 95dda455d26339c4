"""``autoseg plan``: the planning rules, shared by every planner preset.

The rules (reasoning in ``docs/planning.md``):

* target spacing: the median spacing per axis, except that an axis more than 3x coarser than the others takes
  the 10th percentile of its spacings (never finer than the other axes);
* topology: pool an axis while its feature map stays >= 4 voxels and its spacing is within 2x of the finest;
  use kernel 1 on an axis while its spacing is more than 2x the finest (1x3x3 until spacings even out);
  features 32 doubling per stage up to 320 (3D) or 512 (2D);
* patch: start from the median shape at the target spacing, shrink the axis with the largest physical extent
  (by its total stride) until the cost fits the budget; batch >= 2, grown into spare budget, capped so that
  one batch covers at most 5% of the dataset's voxels;
* ``3d_lowres`` + ``3d_cascade_fullres`` when the full-resolution patch covers less than 25% of the median
  image;
* normalisation: CT channels clip to the foreground 0.5/99.5 percentiles and z-score with the foreground
  mean/std; others z-score per image, inside the nonzero mask when cropping removed at least a quarter of the
  image;
* mirroring: every axis, except the patient's left-right one when a structure name has a side
  (:mod:`autoseg.planning.laterality`).

A planner preset (``planners/``) supplies a :class:`Budget` (memory or time) and the block layout; everything
else is here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from autoseg import __version__
from autoseg.fingerprint import Fingerprint
from autoseg.planning.channels import channel_records
from autoseg.planning.laterality import mirroring_plan
from autoseg.planning.regions import training_target
from autoseg.plans import (
    PLANS_SCHEMA_VERSION,
    ChannelNormalization,
    ConfigurationPlan,
    NetworkPlan,
    Plans,
    ResamplingPlan,
    TrainingSchedule,
)

logger = logging.getLogger(__name__)

ANISOTROPY_RATIO = 3.0
MIN_FEATURE_MAP = 4
MAX_POOLINGS = 6
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
BATCH_DATASET_FRACTION = 0.05
LOWRES_COVERAGE = 0.25
LOWRES_SPACING_STEP = 1.03
NONZERO_MASK_CROP_RATIO = 0.75


@dataclass(frozen=True)
class Architecture:
    """The block layout a preset uses: plain (2 convs per stage both ways) or residual encoder."""

    kind: Literal["plain", "residual"] = "plain"
    encoder_blocks: tuple[int, ...] = (2,)
    decoder_blocks: int = 2
    base_features: int = BASE_FEATURES

    def blocks(self, stages: int) -> tuple[int, ...]:
        """Encoder blocks for ``stages`` stages: the listed counts, the last one repeated."""
        return tuple(self.encoder_blocks[min(s, len(self.encoder_blocks) - 1)] for s in range(stages))


class Budget(Protocol):
    """What a configuration must fit: GPU memory or CPU time. Costs are per training iteration."""

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        """The device training will run on."""
        ...

    def largest_batch(
        self, net: NetworkPlan, patch: Sequence[int], in_channels: int, num_classes: int
    ) -> int:
        """The largest batch size that fits (0 if not even one sample fits)."""
        ...

    def describe(
        self, net: NetworkPlan, patch: Sequence[int], batch: int, in_channels: int, num_classes: int
    ) -> tuple[float, str]:
        """(estimated memory in GB, a sentence on the cost of this choice) for the ``why`` record."""
        ...

    def schedule(
        self, net: NetworkPlan, patch: Sequence[int], batch: int, in_channels: int, num_classes: int
    ) -> TrainingSchedule:
        """The default training schedule on this budget."""
        ...


@dataclass(frozen=True)
class Candidate:
    """A sized configuration: patch, network and batch, with the reasons."""

    patch: tuple[int, ...]
    network: NetworkPlan
    batch: int
    why_patch: str
    why_batch: str


def make_plans(
    fingerprint: Fingerprint,
    budget: Budget,
    architecture: Architecture,
    *,
    planner: str,
    options: Mapping[str, object],
) -> Plans:
    """Plan every configuration the dataset calls for.

    Args:
        fingerprint: the dataset's fingerprint.
        budget: what each configuration must fit (memory or time).
        architecture: the preset's block layout.
        planner: registry name of the preset, recorded in the plan.
        options: the preset's options, recorded in the plan.
    """
    spacing, why_spacing = target_spacing(fingerprint)
    median = median_shape_at(fingerprint, spacing)
    normalization, why_norm = normalization_plan(fingerprint)
    configurations: dict[str, ConfigurationPlan] = {}
    common = {"normalization": why_norm}
    if median[0] > 1:
        full = plan_configuration(fingerprint, budget, architecture, spacing, 3, normalization)
        configurations["3d_fullres"] = _with_why(full, {"spacing_mm": why_spacing, **common})
        coverage = math.prod(full.patch_size) / math.prod(full.median_shape)
        if coverage < LOWRES_COVERAGE:
            low = plan_lowres(fingerprint, budget, architecture, spacing, normalization)
            if low is not None:
                configurations["3d_lowres"] = _with_why(
                    low,
                    {
                        **common,
                        "stage": (
                            f"the 3d_fullres patch covers {100 * coverage:.0f}% of the median image "
                            f"(< {100 * LOWRES_COVERAGE:.0f}%): a low-resolution stage sees the whole "
                            "context first"
                        ),
                    },
                )
                configurations["3d_cascade_fullres"] = _cascade(configurations["3d_fullres"])
    two_d = plan_configuration(fingerprint, budget, architecture, spacing, 2, normalization)
    configurations["2d"] = _with_why(
        two_d, {"spacing_mm": "in-plane target spacing; slices along z", **common}
    )
    mirroring, why_mirroring = mirroring_plan(fingerprint.labels, fingerprint.mirror_pairs)
    configurations = {
        name: replace(config, mirroring=mirroring, why={**config.why, "mirroring": why_mirroring})
        for name, config in configurations.items()
    }
    target, why_target = training_target(fingerprint)
    why = {"configurations": _why_configurations(configurations, median), "target": why_target}
    return Plans(
        PLANS_SCHEMA_VERSION,
        __version__,
        planner,
        dict(options),
        fingerprint.sha256(),
        fingerprint.dataset_name,
        dict(fingerprint.labels),
        fingerprint.channel_names,
        budget.device,
        dict(sorted(configurations.items())),
        channel_records(fingerprint),
        why,
        target,
    )


def target_spacing(fingerprint: Fingerprint) -> tuple[tuple[float, float, float], str]:
    """Median spacing per axis, with the anisotropy exception; returns the spacing and the reason."""
    spacings = np.array([c.spacing_mm for c in fingerprint.cases], dtype=np.float64)
    median = np.median(spacings, axis=0)
    coarse = int(np.argmax(median))
    others = [median[a] for a in range(3) if a != coarse]
    ratio = float(median[coarse] / min(others))
    axis = "zyx"[coarse]
    if ratio <= ANISOTROPY_RATIO:
        why = f"median spacing per axis; {axis}/finest spacing ratio {ratio:.2f} <= {ANISOTROPY_RATIO:g}"
        return _rounded(median), why
    percentile = float(np.percentile(spacings[:, coarse], 10))
    median[coarse] = max(percentile, max(others))
    why = (
        f"{axis}/finest spacing ratio {ratio:.2f} > {ANISOTROPY_RATIO:g}: target {axis} spacing from the "
        f"10th percentile of {axis} spacings ({percentile:.3g} mm, not finer than the other axes); "
        "others: median"
    )
    return _rounded(median), why


def median_shape_at(fingerprint: Fingerprint, spacing: Sequence[float]) -> tuple[float, float, float]:
    """Median shape, ``(z, y, x)`` voxels, of the cropped images resampled to ``spacing``."""
    shapes = np.array(
        [np.array(c.cropped_shape) * np.array(c.spacing_mm) / np.array(spacing) for c in fingerprint.cases]
    )
    median = np.median(shapes, axis=0)
    return float(median[0]), float(median[1]), float(median[2])


def topology(
    patch: Sequence[int], spacing: Sequence[float], dims: int, architecture: Architecture
) -> NetworkPlan:
    """Strides and kernels for a patch at a spacing, with features and blocks per stage."""
    size = np.array(patch, dtype=np.float64)
    current = np.array(spacing[-dims:], dtype=np.float64)
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = [_kernel(current)]
    for _ in range(MAX_POOLINGS):
        finest = current.min()
        pool = (size / 2 >= MIN_FEATURE_MAP) & (current / finest < 2)
        if not pool.any():
            break
        stride = tuple(int(p) + 1 for p in pool)
        size = np.where(pool, size / 2, size)
        current = np.where(pool, current * 2, current)
        strides.append(stride)
        kernels.append(_kernel(current))
    stages = len(strides)
    features = tuple(min(architecture.base_features * 2**s, MAX_FEATURES[dims]) for s in range(stages))
    return NetworkPlan(
        architecture.kind,
        dims,
        features,
        tuple(kernels),
        tuple(strides),
        architecture.blocks(stages),
        (architecture.decoder_blocks,) * (stages - 1),
    )


def fit_patch(
    initial: Sequence[float],
    spacing: Sequence[float],
    budget: Budget,
    architecture: Architecture,
    in_channels: int,
    num_classes: int,
) -> tuple[tuple[int, ...], NetworkPlan, str]:
    """Shrink the patch, axis of largest physical extent first, until a batch of 2 fits the budget."""
    dims = len(initial)
    patch = [max(1, round(s)) for s in initial]
    axis_spacing = list(spacing[-dims:])
    steps = 0
    while True:
        net = topology(patch, axis_spacing, dims, architecture)
        rounded = _round_up(patch, net.total_stride())
        if budget.largest_batch(net, rounded, in_channels, num_classes) >= 2 or max(patch) <= MIN_FEATURE_MAP:
            break
        extents = [p * s for p, s in zip(patch, axis_spacing, strict=True)]
        axis = max(range(dims), key=lambda a: (round(extents[a], 6), patch[a], a))
        patch[axis] = max(MIN_FEATURE_MAP, patch[axis] - net.total_stride()[axis])
        steps += 1
    why = (
        f"median shape {tuple(round(s) for s in initial)} at target spacing"
        + (
            f", shrunk {steps} time(s) along the axis of largest extent in mm to fit the budget"
            if steps
            else " fits the budget as it is"
        )
        + f"; rounded up to multiples of the total stride {net.total_stride()}"
    )
    return tuple(rounded), net, why


def choose_batch(
    net: NetworkPlan,
    patch: Sequence[int],
    budget: Budget,
    fingerprint: Fingerprint,
    median: Sequence[float],
    in_channels: int,
    num_classes: int,
) -> tuple[int, str]:
    """Largest batch that fits, at least 2, capped so that a batch covers at most 5% of the dataset's
    voxels."""
    fits = budget.largest_batch(net, patch, in_channels, num_classes)
    dims = len(patch)
    dataset_voxels = math.prod(median[-dims:]) * fingerprint.num_cases * (median[0] if dims == 2 else 1)
    cap = max(1, round(BATCH_DATASET_FRACTION * dataset_voxels / math.prod(patch)))
    batch = max(2, min(fits, cap))
    why = f"{fits} fit(s) the budget; 5% of the dataset's {dataset_voxels:.3g} voxels allows {cap}"
    why += f" -> {batch}" + (" (minimum 2)" if batch > min(fits, cap) else "")
    return batch, why


def plan_configuration(
    fingerprint: Fingerprint,
    budget: Budget,
    architecture: Architecture,
    spacing: tuple[float, float, float],
    dims: int,
    normalization: tuple[ChannelNormalization, ...],
) -> ConfigurationPlan:
    """One configuration (2D or 3D) at ``spacing``. Dice is computed over the whole batch in 2D (where one
    batch
    holds slices of many cases) and per sample in 3D, as nnU-Net does."""
    batch_dice = dims == 2
    in_channels = len(fingerprint.channel_names)
    # network outputs: a softmax channel per class, background included; one sigmoid per structure (regions)
    num_classes = len(fingerprint.labels) - (1 if fingerprint.regions else 0)
    median = median_shape_at(fingerprint, spacing)
    patch, net, why_patch = fit_patch(median[-dims:], spacing, budget, architecture, in_channels, num_classes)
    batch, why_batch = choose_batch(net, patch, budget, fingerprint, median, in_channels, num_classes)
    memory_gb, why_cost = budget.describe(net, patch, batch, in_channels, num_classes)
    why = {
        "patch_size": why_patch,
        "batch_size": why_batch,
        "cost": why_cost,
        "network": _why_network(net, spacing[-dims:]),
        "resampling": _why_resampling(spacing),
        "batch_dice": "2D: Dice over the whole batch of slices (nnU-Net's choice)"
        if batch_dice
        else "3D: Dice per sample (nnU-Net's choice)",
    }
    return ConfigurationPlan(
        dims=dims,
        spacing_mm=spacing,
        median_shape=median,
        patch_size=patch,
        batch_size=batch,
        network=net,
        normalization=normalization,
        resampling=resampling_plan(spacing),
        batch_dice=batch_dice,
        schedule=budget.schedule(net, patch, batch, in_channels, num_classes),
        estimated_memory_gb=round(memory_gb, 3),
        why=why,
    )


def plan_lowres(
    fingerprint: Fingerprint,
    budget: Budget,
    architecture: Architecture,
    spacing: tuple[float, float, float],
    normalization: tuple[ChannelNormalization, ...],
) -> ConfigurationPlan | None:
    """Coarsen the spacing (finer axes first) until the patch covers >= 25% of the median image."""
    low = np.array(spacing, dtype=np.float64)
    for _ in range(200):
        coarsest = low.max()
        low = (
            np.where(coarsest / low > 2, low * LOWRES_SPACING_STEP, low)
            if np.any(coarsest / low > 2)
            else low * LOWRES_SPACING_STEP
        )
        config = plan_configuration(fingerprint, budget, architecture, _rounded(low), 3, normalization)
        if math.prod(config.patch_size) / math.prod(config.median_shape) >= LOWRES_COVERAGE:
            why = dict(
                config.why,
                spacing_mm=f"full-resolution spacing coarsened in steps of "
                f"{LOWRES_SPACING_STEP}x (finer axes first) until the patch covers "
                f">= {100 * LOWRES_COVERAGE:.0f}% of the median image",
            )
            return replace(config, why=why)
    return None


def normalization_plan(fingerprint: Fingerprint) -> tuple[tuple[ChannelNormalization, ...], str]:
    """Per channel: CT -> dataset-wide clip + z-score; others -> per-image z-score (nonzero mask if
    cropped)."""
    ratios = [math.prod(c.cropped_shape) / math.prod(c.shape) for c in fingerprint.cases]
    use_mask = float(np.median(ratios)) < NONZERO_MASK_CROP_RATIO
    plans, reasons = [], []
    for name, stats in zip(fingerprint.channel_names, fingerprint.intensity, strict=True):
        if name.strip().upper().startswith("CT"):
            plans.append(
                ChannelNormalization(
                    "ct",
                    False,
                    stats.percentile_00_5,
                    stats.percentile_99_5,
                    stats.mean,
                    max(stats.std, 1e-8),
                )
            )
            reasons.append(
                f"{name}: CT -> clip to the foreground 0.5/99.5 percentiles "
                f"[{stats.percentile_00_5:.4g}, {stats.percentile_99_5:.4g}], z-score with the "
                f"foreground mean {stats.mean:.4g} and std {stats.std:.4g}"
            )
        else:
            plans.append(ChannelNormalization("zscore", use_mask))
            reasons.append(
                f"{name}: not CT -> z-score per image"
                + (
                    f", inside the nonzero mask (cropping kept a median {100 * np.median(ratios):.0f}% "
                    "of the image)"
                    if use_mask
                    else ""
                )
            )
    return tuple(plans), "; ".join(reasons)


def resampling_plan(spacing: Sequence[float]) -> ResamplingPlan:
    """Third order for images, per-class linear for labels; the coarse axis separately (order 0) when
    the target spacing is anisotropic."""
    ratio = max(spacing) / min(spacing)
    separate = int(np.argmax(spacing)) if ratio > ANISOTROPY_RATIO else None
    return ResamplingPlan(3, 1, separate, 0, 0)


# ------------------------------------------------------------------------------------------- internals


def _kernel(current_spacing: np.ndarray) -> tuple[int, ...]:
    finest = current_spacing.min()
    return tuple(3 if s / finest < 2 else 1 for s in current_spacing)


def _round_up(patch: Sequence[int], multiple: Sequence[int]) -> list[int]:
    return [int(math.ceil(p / m) * m) for p, m in zip(patch, multiple, strict=True)]


def _rounded(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    a, b, c = (round(float(v), 6) for v in values)
    return a, b, c


def _why_network(net: NetworkPlan, spacing: Sequence[float]) -> str:
    poolings = [sum(s[a] > 1 for s in net.strides) for a in range(net.dims)]
    return (
        f"{net.num_stages} stages; poolings per axis {poolings} (pool while the feature map stays >= "
        f"{MIN_FEATURE_MAP} voxels and the spacing is within 2x of the finest, spacing {tuple(spacing)} mm); "
        f"kernel 1 on an axis while its spacing is > 2x the finest; features {BASE_FEATURES} doubling up to "
        f"{MAX_FEATURES[net.dims]}; {net.architecture} blocks {list(net.blocks_per_stage)}"
    )


def _why_resampling(spacing: Sequence[float]) -> str:
    plan = resampling_plan(spacing)
    if plan.separate_axis is None:
        return "isotropic enough: images order 3, labels per-class linear, all axes together"
    return (
        f"spacing ratio {max(spacing) / min(spacing):.2f} > {ANISOTROPY_RATIO:g}: axis "
        f"{'zyx'[plan.separate_axis]} resampled separately with order 0 (images and labels)"
    )


def _why_configurations(configurations: dict[str, ConfigurationPlan], median: Sequence[float]) -> str:
    if "3d_fullres" not in configurations:
        return f"median shape {tuple(round(m) for m in median)} has one slice: 2d only"
    return "planned: " + ", ".join(sorted(configurations))


def _with_why(config: ConfigurationPlan, extra: dict[str, str]) -> ConfigurationPlan:
    return replace(config, why={**extra, **config.why})


def _cascade(full: ConfigurationPlan) -> ConfigurationPlan:
    why = dict(
        full.why, stage="full resolution, with the one-hot 3d_lowres prediction as extra input channels"
    )
    return replace(full, previous_stage="3d_lowres", why=why)
