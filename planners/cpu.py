"""The ``cpu`` preset: plans for a training-time budget on this CPU instead of a GPU's memory."""

from __future__ import annotations

import logging
import math

from autoseg.planning import (
    Architecture,
    Fingerprint,
    Plans,
    TimeBudget,
    format_duration,
    make_plans,
    measure_conv_throughput,
    parse_duration,
    register,
)

logger = logging.getLogger(__name__)

WIDTHS = (32, 24, 16)
"""Base feature counts tried, widest first (nnU-Net's 32 is the first choice)."""

MIN_PATCH_COVERAGE = 0.5
"""A width is kept when its 3D patch still covers this fraction of the median image (or the patch is the whole
median image); otherwise a narrower network buys a larger patch."""


@register("cpu")
class CpuPlanner:
    """Plain U-Net sized so that training fits --time-budget on this CPU (measured convolution throughput)."""

    def __init__(
        self,
        time_budget: str | float = "2h",
        cpu_gflops: float | None = None,
        ram_gb: float = 8.0,
        minimum_iterations: int = 4000,
    ) -> None:
        self.seconds = parse_duration(time_budget) if isinstance(time_budget, str) else float(time_budget)
        self.cpu_gflops = cpu_gflops
        self.ram_gb = ram_gb
        self.minimum_iterations = minimum_iterations

    def plan(self, fingerprint: Fingerprint) -> Plans:
        """Plan every configuration, trying widths 32, 24, 16 until the patch keeps enough context."""
        gflops = self.cpu_gflops if self.cpu_gflops is not None else round(measure_conv_throughput(), 2)
        budget = TimeBudget(self.seconds, gflops, self.ram_gb, self.minimum_iterations)
        options = {
            "time_budget_s": self.seconds,
            "cpu_gflops": gflops,
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
        plans.why["cpu"] = (
            f"time budget {format_duration(self.seconds)} at a measured {gflops:g} GFLOP/s: "
            f"base width {plans.configurations[name].network.features_per_stage[0]} is the "
            f"widest of {WIDTHS} whose patch covers >= {100 * MIN_PATCH_COVERAGE:.0f}% of the "
            "median image (or the narrowest)"
        )
        return plans
