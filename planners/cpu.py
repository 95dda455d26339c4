"""The ``cpu`` preset: plans for a training-time budget on this CPU instead of a GPU's memory."""

from __future__ import annotations

import logging
import math
from typing import Any

from autoseg.planning import (
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
"""A width is kept when its 3D patch still covers this fraction of the median image (or the patch is the whole
median image); otherwise a narrower network buys a larger patch."""


@register("cpu")
class CpuPlanner:
    """Plain U-Net sized so that training fits --time-budget on this CPU (a time model of timed networks).

    Args:
        cpu_gflops: plan with this fixed throughput (+ 0.05 s per iteration) instead of timing this CPU.
        time_model: a recorded :class:`TimeModel` (its ``to_json()``), e.g. the previous plan's, instead of
            timing this CPU.
        precision: the training arithmetic to time (``auto``: as ``autoseg train`` resolves it).
    """

    def __init__(
        self,
        time_budget: str | float = "2h",
        cpu_gflops: float | None = None,
        ram_gb: float = 8.0,
        minimum_iterations: int = 4000,
        time_model: dict[str, Any] | None = None,
        precision: str = "auto",
    ) -> None:
        self.seconds = parse_duration(time_budget) if isinstance(time_budget, str) else float(time_budget)
        self.cpu_gflops = cpu_gflops
        self.ram_gb = ram_gb
        self.minimum_iterations = minimum_iterations
        self.time_model = time_model
        self.precision = precision

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
        """Plan every configuration, trying widths 32, 24, 16 until the patch keeps enough context; with a
        model measured here, time the chosen configuration and re-plan on the rescaled model while its
        estimate is more than 10 % off (at most :data:`MAX_CHECKS` times)."""
        model, recorded = self._model()
        measured_here = self.cpu_gflops is None and self.time_model is None
        plans, name = self._plan_widths(fingerprint, model, recorded)
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
            model = rescaled
            plans, name = self._plan_widths(fingerprint, model, {"time_model": model.to_json()})
        plans.why["cpu"] = (
            f"time budget {format_duration(self.seconds)} with the time model {model.describe()}: "
            f"base width {plans.configurations[name].network.features_per_stage[0]} is the "
            f"widest of {WIDTHS} whose patch covers >= {100 * MIN_PATCH_COVERAGE:.0f}% of the "
            "median image (or the narrowest)"
        )
        return plans

    def _plan_widths(
        self, fingerprint: Fingerprint, model: TimeModel, recorded: dict[str, Any]
    ) -> tuple[Plans, str]:
        """The plans of the widest base width whose patch covers enough, and its main configuration."""
        budget = TimeBudget(self.seconds, model, self.ram_gb, self.minimum_iterations)
        options = {
            "time_budget_s": self.seconds,
            **recorded,
            "ram_gb": self.ram_gb,
            "minimum_iterations": self.minimum_iterations,
        }
        plans = None
        for width in WIDTHS:
            plans = make_plans(
                fingerprint, budget, Architecture("plain", (2,), 2, width), planner="cpu", options=options
            )
            name = "3d_fullres" if "3d_fullres" in plans.configurations else "2d"
            config = plans.configurations[name]
            coverage = math.prod(config.patch_size) / math.prod(config.median_shape[-config.dims :])
            if coverage >= MIN_PATCH_COVERAGE or width == WIDTHS[-1]:
                break
            logger.info(
                "width %d leaves a %s patch covering %.0f%% of the median image; trying narrower",
                width,
                name,
                100 * coverage,
            )
        assert plans is not None
        return plans, name
