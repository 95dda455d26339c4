"""``autoseg plan``: read ``fingerprint.json``, run a planner preset, write ``plans.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autoseg.errors import PlansError
from autoseg.planning.budgets import DEFAULT_TIME_BUDGET, parse_duration
from autoseg.planning.registry import get_planner
from autoseg.workdir import Workdir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOptions:
    """What ``autoseg plan`` runs: the preset and its budget; ``None`` means the default."""

    planner: str | None = None
    device: Literal["cpu", "cuda"] | None = None
    gpu_memory_gb: float | None = None
    time_budget: str | None = None
    cpu_gflops: float | None = None
    minimum_iterations: int | None = None


def default_device() -> Literal["cpu", "cuda"]:
    """``cuda`` when PyTorch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def planner_kwargs(options: PlanOptions, planner: str, device: str, workdir: Path) -> dict[str, Any]:
    """The keyword arguments to pass to the preset: only what the user set, plus the device for memory
    presets."""
    kwargs: dict[str, Any] = {}
    if options.gpu_memory_gb is not None:
        kwargs["gpu_memory_gb"] = options.gpu_memory_gb
    if options.time_budget is not None:
        kwargs["time_budget"] = options.time_budget
    if options.cpu_gflops is not None:
        kwargs["cpu_gflops"] = options.cpu_gflops
    if options.minimum_iterations is not None:
        kwargs["minimum_iterations"] = options.minimum_iterations
    if planner == "cpu":
        if options.cpu_gflops is None:
            kwargs.update(_previous_time_model(Workdir(workdir), options))
    else:
        kwargs["device"] = device
    return kwargs


def run_plan(workdir: Path, options: PlanOptions) -> Path:
    """Plan from ``workdir/fingerprint.json`` into ``workdir/plans.json`` (deterministic for a given
    fingerprint, options and, for the cpu preset, measured throughput)."""
    work = Workdir(workdir)
    fingerprint = work.read_fingerprint()
    device = options.device or default_device()
    name = options.planner or ("default" if device == "cuda" else "cpu")
    kwargs = planner_kwargs(options, name, device, workdir)
    logger.info(
        "planning with preset '%s' for %s (%s)",
        name,
        device,
        ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "preset defaults",
    )
    plans = get_planner(name, **kwargs).plan(fingerprint)
    path = work.write_plans(plans)
    for config_name, config in plans.configurations.items():
        net = config.network
        logger.info(
            "%-18s spacing %s mm, patch %s, batch %d, %d stages %s, %.2f GB%s",
            config_name,
            "x".join(f"{s:.3g}" for s in config.spacing_mm),
            "x".join(map(str, config.patch_size)),
            config.batch_size,
            net.num_stages,
            list(net.features_per_stage),
            config.estimated_memory_gb,
            f", ~{config.schedule.estimated_seconds_per_iteration:.2f} s/iteration, "
            f"{config.schedule.epochs} epochs"
            if config.schedule.estimated_seconds_per_iteration
            else "",
        )
    logger.info("wrote %s", path)
    return path


def _previous_time_model(work: Workdir, options: PlanOptions) -> dict[str, Any]:
    """The previous cpu plan's time model (or fixed throughput) as planner kwargs; empty if there is none.
    With it the width the timed plan kept, unless the budget or the minimum iterations changed (then the
    width is chosen again); a re-plan that does not name a minimum keeps the previous plan's with its width
    (not the preset's default next to a width chosen for another minimum)."""
    if not work.has_plans():
        return {}
    try:
        previous = work.read_plans()
    except PlansError:
        return {}
    if previous.planner != "cpu":
        return {}
    model, gflops = previous.planner_options.get("time_model"), previous.planner_options.get("cpu_gflops")
    if isinstance(model, dict):
        logger.info("reusing the time model measured for the previous plan; pass --cpu-gflops to override")
        width = previous.planner_options.get("width")
        budget_s = parse_duration(options.time_budget or DEFAULT_TIME_BUDGET)
        same_budget = budget_s == previous.planner_options.get("time_budget_s") and (
            options.minimum_iterations in (None, previous.planner_options.get("minimum_iterations"))
        )
        if isinstance(width, int) and same_budget:
            kept: dict[str, Any] = {"time_model": model, "width": width}
            minimum = previous.planner_options.get("minimum_iterations")
            if options.minimum_iterations is None and isinstance(minimum, int):
                kept["minimum_iterations"] = minimum  # the width was chosen for it: keep the two together
            logger.info(
                "keeping the previous plan's width %d and minimum of %s iterations; pass --min-iterations or "
                "another --time-budget to choose them again",
                width,
                kept.get("minimum_iterations", options.minimum_iterations),
            )
            return kept
        return {"time_model": model}
    if isinstance(gflops, (int, float)):
        logger.info(
            "reusing the convolution throughput of the previous plan (%.1f GFLOP/s); pass --cpu-gflops "
            "to override",
            gflops,
        )
        return {"cpu_gflops": float(gflops)}
    return {}
