"""Seconds per training iteration on this CPU: a linear model fitted on timed calibration networks.

A training iteration costs a fixed part (optimiser step, gradient clipping, Python and dispatch), a part
proportional to the convolution work (:func:`autoseg.planning.cost.training_gflops`, compute bound) and a part
proportional to the activations the iteration writes and reads again (:func:`training_melements`: instance
norm, leaky ReLU, concatenations, the loss; memory bound)::

    seconds = overhead_s + seconds_per_gflop * GFLOP + seconds_per_melement * million kept elements

A single throughput (GFLOP/s) has no fixed part and charges memory traffic in proportion to convolution work,
so it over-estimated narrow, small configurations and under-estimated wide, large ones (-36 % to +29 % on the
hippocampus budget table, ``docs/planning.md``). :func:`measure_time_model` times full training steps of
:data:`CALIBRATION_NETWORKS`, three small U-Nets whose ratios of work to activations and whose sizes differ
(about 3 s on 2 cores), in the arithmetic training will use (bfloat16 autocast where the CPU has native
bfloat16, else float32), and :func:`fit_time_model` fits the three coefficients by non-negative least
squares. Three small networks cannot know how this CPU's kernels scale to a plan's widths, patch and batch, so
the ``cpu`` planner then times the configuration it chose (:func:`check_plan`) and rescales the model when it
is more than 10 % off. The plan records the model with its measured points and checks
(``planner_options.time_model``).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from autoseg.errors import PlansError
from autoseg.planning.cost import network_layers, training_gflops
from autoseg.plans import NetworkPlan

logger = logging.getLogger(__name__)

DEFAULT_OVERHEAD_S = 0.05
"""Fixed seconds per iteration of a model given as a plain throughput (``--cpu-gflops``)."""


def training_melements(
    net: NetworkPlan, patch_size: Sequence[int], batch_size: int, in_channels: int, num_classes: int
) -> float:
    """Activation elements one training iteration keeps for backward (the memory model's count), in
    millions: a proxy for the memory traffic of the element-wise layers."""
    layers = network_layers(net, patch_size, in_channels, num_classes)
    return batch_size * sum(layer.kept_elements for layer in layers) / 1e6


@dataclass(frozen=True)
class CalibrationPoint:
    """One timed configuration: its convolution work, kept activations and measured seconds per step."""

    name: str
    gflop: float
    melements: float
    seconds: float


@dataclass(frozen=True)
class TimeModel:
    """``seconds = overhead_s + seconds_per_gflop * GFLOP + seconds_per_melement * Melements``.

    Attributes:
        precision: the arithmetic the points were timed in (``float32`` or ``bfloat16``).
        points: the measurements the model was fitted on (empty for a model given as a throughput).
    """

    overhead_s: float
    seconds_per_gflop: float
    seconds_per_melement: float = 0.0
    precision: str = "float32"
    points: tuple[CalibrationPoint, ...] = ()
    checks: tuple[CalibrationPoint, ...] = ()
    """Planned configurations timed after fitting (:func:`check_plan`), each of which rescaled the model."""

    @classmethod
    def from_throughput(cls, gflops_per_second: float, overhead_s: float = DEFAULT_OVERHEAD_S) -> TimeModel:
        """The one-parameter model: work / throughput + a fixed overhead."""
        return cls(overhead_s, 1.0 / gflops_per_second)

    def scaled(self, factor: float, check: CalibrationPoint) -> TimeModel:
        """Every coefficient times ``factor``, so that the model gives ``check``'s measured seconds."""
        return replace(
            self,
            overhead_s=self.overhead_s * factor,
            seconds_per_gflop=self.seconds_per_gflop * factor,
            seconds_per_melement=self.seconds_per_melement * factor,
            checks=(*self.checks, check),
        )

    def seconds(self, gflop: float, melements: float) -> float:
        """Estimated seconds of one training iteration of ``gflop`` convolution work and ``melements``
        million kept activations."""
        return self.overhead_s + self.seconds_per_gflop * gflop + self.seconds_per_melement * melements

    def describe(self) -> str:
        """A sentence for the plan's ``why``."""
        if not self.points and not self.seconds_per_melement:
            return f"{1 / self.seconds_per_gflop:g} GFLOP/s + {self.overhead_s:g} s overhead"
        fitted = f", fitted on {len(self.points)} timed networks" if self.points else ""
        if self.checks:
            fitted += f", rescaled on {len(self.checks)} timed plan(s)"
        return (
            f"{self.overhead_s:.3f} s + {1e3 * self.seconds_per_gflop:.2f} ms/GFLOP + "
            f"{1e3 * self.seconds_per_melement:.2f} ms per million activations ({self.precision}{fitted})"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict, as :meth:`from_json` reads it."""

        def point(p: CalibrationPoint) -> dict[str, Any]:
            return {
                "name": p.name,
                "gflop": round(p.gflop, 4),
                "melements": round(p.melements, 4),
                "seconds": round(p.seconds, 5),
            }

        data: dict[str, Any] = {
            "overhead_s": round(self.overhead_s, 6),
            "seconds_per_gflop": round(self.seconds_per_gflop, 8),
            "seconds_per_melement": round(self.seconds_per_melement, 8),
            "precision": self.precision,
            "points": [point(p) for p in self.points],
        }
        if self.checks:
            data["checks"] = [point(p) for p in self.checks]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TimeModel:
        """Read :meth:`to_json`'s dict.

        Raises:
            PlansError: a missing or non-numeric coefficient, or a coefficient <= 0 for the work term.
        """

        def points(key: str) -> tuple[CalibrationPoint, ...]:
            return tuple(
                CalibrationPoint(
                    str(p["name"]), float(p["gflop"]), float(p["melements"]), float(p["seconds"])
                )
                for p in data.get(key, ())
            )

        try:
            model = cls(
                float(data["overhead_s"]),
                float(data["seconds_per_gflop"]),
                float(data.get("seconds_per_melement", 0.0)),
                str(data.get("precision", "float32")),
                points("points"),
                points("checks"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PlansError(f"time_model {dict(data)!r} is malformed ({error}); plan again") from error
        coefficients = (model.overhead_s, model.seconds_per_gflop, model.seconds_per_melement)
        if not all(math.isfinite(c) and c >= 0 for c in coefficients) or model.seconds_per_gflop <= 0:
            raise PlansError(f"time_model {dict(data)!r} has a negative or zero coefficient; plan again")
        return model


def fit_time_model(points: Sequence[CalibrationPoint], precision: str = "float32") -> TimeModel:
    """Fit overhead, seconds per GFLOP and seconds per million activations to ``points``.

    Non-negative least squares on relative errors (each row divided by its measured seconds), so that a
    small configuration counts as much as a large one. With two points only the overhead and the work term
    are fitted (a two-point line); a fit that leaves the work term at zero falls back to the two-point line
    through the smallest and largest point.

    Raises:
        ValueError: fewer than two points, or points with non-positive seconds or work.
    """
    if len(points) < 2:
        raise ValueError(f"a time model needs at least 2 calibration points, got {len(points)}")
    if any(p.seconds <= 0 or p.gflop <= 0 for p in points):
        raise ValueError(f"calibration points need positive work and seconds: {points}")
    from scipy.optimize import nnls

    seconds = np.array([p.seconds for p in points])
    columns = [np.ones(len(points)), np.array([p.gflop for p in points])]
    if len(points) >= 3:
        columns.append(np.array([p.melements for p in points]))
    design = np.stack(columns, axis=1) / seconds[:, None]
    solution, _ = nnls(design, np.ones(len(points)))
    coefficients = [float(v) for v in solution] + [0.0] * (3 - len(solution))
    if coefficients[1] <= 0:
        small, large = min(points, key=lambda p: p.gflop), max(points, key=lambda p: p.gflop)
        slope = max((large.seconds - small.seconds) / max(large.gflop - small.gflop, 1e-9), 1e-9)
        coefficients = [max(small.seconds - slope * small.gflop, 0.0), slope, 0.0]
    return TimeModel(coefficients[0], coefficients[1], coefficients[2], precision, tuple(points))


def _plain_net(widths: Sequence[int]) -> NetworkPlan:
    stages = len(widths)
    return NetworkPlan(
        "plain",
        3,
        tuple(widths),
        ((3, 3, 3),) * stages,
        ((1, 1, 1),) + ((2, 2, 2),) * (stages - 1),
        (2,) * stages,
        (2,) * (stages - 1),
    )


CALIBRATION_NETWORKS: tuple[tuple[str, NetworkPlan, tuple[int, int, int], int], ...] = (
    ("narrow 8..64, 16x24x24, batch 1", _plain_net((8, 16, 32, 64)), (16, 24, 24), 1),
    ("narrow 16..128, 32x48x48, batch 2", _plain_net((16, 32, 64, 128)), (32, 48, 48), 2),
    ("wide 32..256, 24x32x32, batch 2", _plain_net((32, 64, 128, 256)), (24, 32, 32), 2),
)
"""(name, network, patch, batch) of the timed networks: a tiny one (mostly fixed cost), a narrow one with
many activations per FLOP, a wide one with few."""

CALIBRATION_CLASSES = 3

WARMUP_STEPS = 2
"""Untimed steps before the timed ones (oneDNN picks its kernels over the first calls of a shape), as in
``benchmarks/bench_train_compare.py``."""


def time_training_step(
    net: NetworkPlan,
    patch_size: Sequence[int],
    batch_size: int,
    *,
    in_channels: int = 1,
    num_classes: int = CALIBRATION_CLASSES,
    precision: str = "float32",
    repeats: int = 3,
) -> list[float]:
    """Seconds of ``repeats`` training steps after :data:`WARMUP_STEPS` warm-up steps, as ``autoseg train``
    runs them: autocast in ``precision`` (``float32``: none), Dice + cross-entropy on every deep-supervision
    output, backward, gradient clipping at 12, SGD with Nesterov momentum. Random data, fixed seeds; data
    loading excluded."""
    import torch
    from torch import nn

    from autoseg.network import build_network
    from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss

    generator = torch.Generator().manual_seed(0)
    model = build_network(net, in_channels, num_classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    loss_fn = DeepSupervisionLoss(DiceCELoss(batch_dice=False))
    image = torch.randn(batch_size, in_channels, *patch_size, generator=generator)
    target = torch.randint(0, num_classes, (batch_size, *patch_size), generator=generator)
    dtype = {"bfloat16": torch.bfloat16}.get(precision)
    times = []
    for step in range(repeats + WARMUP_STEPS):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            outputs = model(image)
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        loss = loss_fn([o.float() for o in outputs], target)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return times


CHECK_TOLERANCE = 0.10
""":func:`check_plan` rescales the model when a plan's measured step is off its estimate by more than this."""


def check_plan(
    model: TimeModel,
    name: str,
    net: NetworkPlan,
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    num_classes: int,
    *,
    repeats: int = 3,
) -> TimeModel | None:
    """Time the planned configuration itself (median of ``repeats`` steps after the warm-up, in the model's
    precision) and return the model rescaled to it when the estimate is off by more than
    :data:`CHECK_TOLERANCE`, else ``None``.

    Why: three small calibration networks cannot know how this CPU's kernels scale to the plan's widths,
    patch and batch (measured on an AMX Xeon in bfloat16: the fitted model 21-37 % low for the hippocampus
    plans, ``docs/planning.md``); the plan's own step is the one that matters, and costs a few seconds.
    """
    gflop = training_gflops(net, patch_size, batch_size, in_channels, num_classes)
    melements = training_melements(net, patch_size, batch_size, in_channels, num_classes)
    estimated = model.seconds(gflop, melements)
    from autoseg.planning.budgets import warn_when_busy

    with warn_when_busy("the plan's time check"):
        steps = time_training_step(
            net,
            patch_size,
            batch_size,
            in_channels=in_channels,
            num_classes=num_classes,
            precision=model.precision,
            repeats=repeats,
        )
    measured = statistics.median(steps)
    logger.info(
        "time model check: %s (batch %d, patch %s) estimated %.3f s, measured %.3f s per iteration",
        name,
        batch_size,
        "x".join(map(str, patch_size)),
        estimated,
        measured,
    )
    if estimated <= 0 or abs(measured / estimated - 1) <= CHECK_TOLERANCE:
        return None
    logger.info("rescaling the time model x%.2f to the timed plan and planning again", measured / estimated)
    label = f"{name} {'x'.join(map(str, patch_size))} batch {batch_size}"
    return model.scaled(measured / estimated, CalibrationPoint(label, gflop, melements, measured))


def training_precision_on_cpu(precision: str = "auto") -> str:
    """The arithmetic ``autoseg train --precision PRECISION`` uses on this CPU (``auto``: bfloat16 with
    native bfloat16 units, else float32)."""
    import torch

    from autoseg.training.parts import resolve_training_precision

    return str(resolve_training_precision(precision, torch.device("cpu"), deterministic=False))


def measure_time_model(*, precision: str = "auto", repeats: int = 3) -> TimeModel:
    """Time :data:`CALIBRATION_NETWORKS` (median of ``repeats`` steps each) and fit a :class:`TimeModel`.

    About 3 s on 2 cores in float32. Warns, as :func:`autoseg.planning.budgets.measure_conv_throughput`,
    when other processes took more than half a core meanwhile: the model is then that of a busy machine.
    """
    import torch

    from autoseg.planning.budgets import warn_when_busy

    resolved = training_precision_on_cpu(precision)
    points = []
    with warn_when_busy("the time model"):
        for name, net, patch, batch in CALIBRATION_NETWORKS:
            steps = time_training_step(net, patch, batch, precision=resolved, repeats=repeats)
            points.append(
                CalibrationPoint(
                    name,
                    training_gflops(net, patch, batch, 1, CALIBRATION_CLASSES),
                    training_melements(net, patch, batch, 1, CALIBRATION_CLASSES),
                    statistics.median(steps),
                )
            )
    model = fit_time_model(points, resolved)
    logger.info(
        "time model (%d threads, %d cores): %s; measured %s",
        torch.get_num_threads(),
        os.cpu_count() or 1,
        model.describe(),
        ", ".join(f"{p.seconds:.3f} s ({p.name})" for p in points),
    )
    return model
