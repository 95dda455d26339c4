"""Plan: ``fingerprint.json`` -> ``plans.json`` (every configuration: spacing, normalisation, resampling,
U-Net topology, patch and batch size, training schedule, and the reason for each decision).

Modules: ``rules`` (nnU-Net's planning rules, :func:`make_plans`), ``budgets`` (what a configuration must fit:
GPU memory, or CPU time from a measured throughput), ``cost`` (memory and FLOP model of a U-Net), ``registry``
(planner presets by name), ``stage`` (:func:`run_plan`: read, plan, write).

This is the one import a planner preset needs, built-in (``planners/``) or third-party::

    from autoseg.planning import Architecture, MemoryBudget, Plans, make_plans, register

    @register("my-planner")
    class MyPlanner:
        def plan(self, fingerprint): ...

Names are imported on first use, so ``import autoseg.planning`` stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.fingerprint import Fingerprint
    from autoseg.planning.budgets import (
        DEFAULT_TIME_BUDGET,
        MemoryBudget,
        TimeBudget,
        format_duration,
        measure_conv_throughput,
        parse_duration,
    )
    from autoseg.planning.registry import Planner, available_planners, describe, get_planner, register
    from autoseg.planning.rules import Architecture, make_plans
    from autoseg.planning.stage import PlanOptions, run_plan
    from autoseg.plans import Plans


__all__ = [
    "DEFAULT_TIME_BUDGET",
    "Architecture",
    "Fingerprint",
    "MemoryBudget",
    "PlanOptions",
    "Planner",
    "Plans",
    "TimeBudget",
    "available_planners",
    "describe",
    "format_duration",
    "get_planner",
    "make_plans",
    "measure_conv_throughput",
    "parse_duration",
    "register",
    "run_plan",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "Architecture": "rules",
        "make_plans": "rules",
        "DEFAULT_TIME_BUDGET": "budgets",
        "MemoryBudget": "budgets",
        "TimeBudget": "budgets",
        "format_duration": "budgets",
        "measure_conv_throughput": "budgets",
        "parse_duration": "budgets",
        "Planner": "registry",
        "available_planners": "registry",
        "describe": "registry",
        "get_planner": "registry",
        "register": "registry",
        "PlanOptions": "stage",
        "run_plan": "stage",
        "Fingerprint": "autoseg.fingerprint",
        "Plans": "autoseg.plans",
    },
)
