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

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoseg.fingerprint import Fingerprint
    from autoseg.planning.budgets import (
        MemoryBudget,
        TimeBudget,
        format_duration,
        measure_conv_throughput,
        parse_duration,
    )
    from autoseg.planning.registry import Planner, available_planners, describe, get_planner, register
    from autoseg.planning.rules import Architecture, make_plans
    from autoseg.planning.stage import PlanRequest, run_plan
    from autoseg.plans import Plans

_EXPORTS = {
    "Architecture": "autoseg.planning.rules",
    "make_plans": "autoseg.planning.rules",
    "MemoryBudget": "autoseg.planning.budgets",
    "TimeBudget": "autoseg.planning.budgets",
    "format_duration": "autoseg.planning.budgets",
    "measure_conv_throughput": "autoseg.planning.budgets",
    "parse_duration": "autoseg.planning.budgets",
    "Planner": "autoseg.planning.registry",
    "available_planners": "autoseg.planning.registry",
    "describe": "autoseg.planning.registry",
    "get_planner": "autoseg.planning.registry",
    "register": "autoseg.planning.registry",
    "PlanRequest": "autoseg.planning.stage",
    "run_plan": "autoseg.planning.stage",
    "Fingerprint": "autoseg.fingerprint",
    "Plans": "autoseg.plans",
}
__all__ = [
    "Architecture",
    "Fingerprint",
    "MemoryBudget",
    "PlanRequest",
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


def __getattr__(name: str) -> object:
    """Import an exported name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
