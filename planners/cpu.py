"""The ``cpu`` preset: plans for a training-time budget on this CPU instead of a GPU's memory."""

from __future__ import annotations

import logging
import math
from typing import Any

from autoseg.planning import (
    DEFAULT_TIME_BUDGET,
    Architecture,
    Fingerprint,
    Plans,
    TimeBudget,
    format_duration,
    make_plans,
    parse_duration,
    register,
)
from autoseg.planning.time_model import TimeModel, check_plan, measure_time_model

logger = logging.getLogger(__name__)

WIDTHS = (32, 24, 16)
"""Base feature counts tried, widest first (nnU-Net's 32 is the first choice)."""

MAX_CHECKS = 2
"""Times the chosen configuration is timed (and the plan redone on the rescaled model) at most."""

MIN_PATCH_COVERAGE = 0.5
"""The widest width whose patch is the whole median image is kept; when none is, the widest whose 3D patch
covers this fraction of it; otherwise the narrowest, which buys the largest patch. Measured on hippocampus
(docs/benchmarks.md): at one hour the patch and the iterations limited Dice, not the width."""

MINIMUM_ITERATIONS = 8000
"""Iterations the budget must hold. 4000 was too few: the one-hour hippocampus runs at 4,100-4,300
iterations were still improving at their end (Dice 0.850-0.855, docs/benchmarks.md)."""

VALIDATION_ITERATIONS = 20
"""Validation batches per epoch of 100 training iterations: nnU-Net's share (50 per 250). They only feed the
pseudo-Dice curve and the best-checkpoint average; at 50 they took 13 % of a one-hour budget's epochs."""


@register("cpu")
class CpuPlanner:
    """Plain U-Net sized so that training fits --time-budget on this CPU (a time model of timed networks).

    Args:
        cpu_gflops: plan with this fixed throughput (+ 0.05 s per iteration) instead of timing this CPU.
        time_model: a recorded :class:`TimeModel` (its ``to_json()``), e.g. the previous plan's, instead of
            timing this CPU.
        precision: the training arithmetic to time (``auto``: as ``autoseg train`` resolves it).
        width: plan this base width only, as a re-plan of a timed plan does (recorded as
            ``planner_options.width``).
    """

    def __init__(
        self,
        time_budget: str | float = DEFAULT_TIME_BUDGET,
        cpu_gflops: float | None = None,
        ram_gb: float = 8.0,
        minimum_iterations: int = MINIMUM_ITERATIONS,
        time_model: dict[str, Any] | None = None,
        precision: str = "auto",
        width: int | None = None,
    ) -> None:
        self.seconds = parse_duration(time_budget) if isinstance(time_budget, str) else float(time_budget)
        self.cpu_gflops = cpu_gflops
        self.ram_gb = ram_gb
        self.minimum_iterations = minimum_iterations
        self.time_model = time_model
        self.precision = precision
        self.width = width

    def _model(self) -> tuple[TimeModel, dict[str, Any]]:
        """The time model and how to record it in ``planner_options``."""
        if self.cpu_gflops is not None:
            return TimeModel.from_throughput(self.cpu_gflops), {"cpu_gflops": self.cpu_gflops}
        model = (
            TimeModel.from_json(self.time_model)
            if self.time_model is not None
            else measure_time_model(precision=self.precision)
        )
        return model, {"time_model": model.to_json()}

    def plan(self, fingerprint: Fingerprint) -> Plans:
        """Plan every configuration for widths 32, 24, 16 and keep one (:func:`_choose_width`); with a
        model measured here, time the chosen configuration and re-plan on the rescaled model while its
        estimate is more than 10 % off (at most :data:`MAX_CHECKS` times)."""
        model, recorded = self._model()
        measured_here = self.cpu_gflops is None and self.time_model is None
        if self.width is not None:
            recorded = {**recorded, "width": self.width}
        plans, name = self._plan_widths(
            fingerprint, model, recorded, None if self.width is None else (self.width,)
        )
        for _ in range(MAX_CHECKS if measured_here else 0):
            config = plans.configurations[name]
            rescaled = check_plan(
                model,
                name,
                config.network,
                config.patch_size,
                config.batch_size,
                len(plans.channel_names),
                plans.num_outputs,
            )
            if rescaled is None:
                break
            model = rescaled  # re-planned at the timed width: a model rescaled on one width is not
            width = config.network.features_per_stage[0]  # right for the others (narrow ones are slower)
            plans, name = self._plan_widths(
                fingerprint, model, {"time_model": model.to_json(), "width": width}, (width,)
            )
        plans.why["cpu"] = (
            f"time budget {format_duration(self.seconds)} with the time model {model.describe()}: "
            f"at least {self.minimum_iterations} iterations; base width "
            f"{plans.configurations[name].network.features_per_stage[0]} is the widest of {WIDTHS} whose "
            "patch is the whole median image, else the widest covering >= "
            f"{100 * MIN_PATCH_COVERAGE:.0f}% of it, else the narrowest"
            + (
                " (chosen on the fitted model; a timed re-plan keeps it)"
                if self.width is None
                else " (kept from the previous timed plan)"
            )
        )
        return plans

    def _plan_widths(
        self,
        fingerprint: Fingerprint,
        model: TimeModel,
        recorded: dict[str, Any],
        widths: tuple[int, ...] | None = None,
    ) -> tuple[Plans, str]:
        """The plans of the chosen base width (:func:`_choose_width`) and its main configuration."""
        budget = TimeBudget(
            self.seconds,
            model,
            self.ram_gb,
            self.minimum_iterations,
            validation_iterations=VALIDATION_ITERATIONS,
        )
        options = {
            "time_budget_s": self.seconds,
            **recorded,
            "ram_gb": self.ram_gb,
            "minimum_iterations": self.minimum_iterations,
        }
        planned: list[tuple[Plans, str, float]] = []
        for width in widths or WIDTHS:
            plans = make_plans(
                fingerprint, budget, Architecture("plain", (2,), 2, width), planner="cpu", options=options
            )
            name = "3d_fullres" if "3d_fullres" in plans.configurations else "2d"
            config = plans.configurations[name]
            median = config.median_shape[-config.dims :]
            coverage = math.prod(config.patch_size) / math.prod(median)
            whole = all(p >= m for p, m in zip(config.patch_size, median, strict=True))
            planned.append((plans, name, 1.0 if whole else min(coverage, 0.99)))
            logger.info(
                "width %d: %s patch %s %s",
                width,
                name,
                "x".join(map(str, config.patch_size)),
                "holds the whole median image"
                if whole
                else f"covers {100 * min(coverage, 0.99):.0f}% of the median image's voxels",
            )
        plans, name, _ = _choose_width(planned)
        return plans, name


def _choose_width(planned: list[tuple[Plans, str, float]]) -> tuple[Plans, str, float]:
    """Widest first: the widest plan whose patch is the whole median image, else the widest that covers
    :data:`MIN_PATCH_COVERAGE` of it, else the narrowest (which has the largest patch)."""
    whole = [entry for entry in planned if entry[2] >= 1.0]
    enough = [entry for entry in planned if entry[2] >= MIN_PATCH_COVERAGE]
    return (whole or enough or planned[-1:])[0]
