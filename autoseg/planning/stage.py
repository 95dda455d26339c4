"""``autoseg plan``: read ``fingerprint.json``, run a planner preset, write ``plans.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autoseg.errors import PlansError
from autoseg.planning.registry import get_planner
from autoseg.workdir import Workdir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for; ``None`` means the default."""

    planner: str | None = None
    device: Literal["cpu", "cuda"] | None = None
    gpu_memory_gb: float | None = None
    time_budget: str | None = None
    cpu_gflops: float | None = None


def default_device() -> Literal["cpu", "cuda"]:
    """``cuda`` when PyTorch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def planner_options(request: PlanRequest, planner: str, device: str, workdir: Path) -> dict[str, Any]:
    """The options to pass to the preset: only what the user set, plus the device for memory presets."""
    options: dict[str, Any] = {}
    if request.gpu_memory_gb is not None:
        options["gpu_memory_gb"] = request.gpu_memory_gb
    if request.time_budget is not None:
        options["time_budget"] = request.time_budget
    if request.cpu_gflops is not None:
        options["cpu_gflops"] = request.cpu_gflops
    if planner == "cpu":
        if request.cpu_gflops is None:
            previous = _previous_throughput(Workdir(workdir))
            if previous is not None:
                logger.info(
                    "reusing the convolution throughput measured for the previous plan (%.1f GFLOP/s); "
                    "pass --cpu-gflops to override",
                    previous,
                )
                options["cpu_gflops"] = previous
    else:
        options["device"] = device
    return options


def run_plan(workdir: Path, request: PlanRequest) -> Path:
    """Plan from ``workdir/fingerprint.json`` into ``workdir/plans.json`` (deterministic for a given
    fingerprint, options and, for the cpu preset, measured throughput)."""
    work = Workdir(workdir)
    fingerprint = work.read_fingerprint()
    device = request.device or default_device()
    name = request.planner or ("default" if device == "cuda" else "cpu")
    options = planner_options(request, name, device, workdir)
    logger.info(
        "planning with preset '%s' for %s (%s)",
        name,
        device,
        ", ".join(f"{k}={v}" for k, v in options.items()) or "preset defaults",
    )
    plans = get_planner(name, **options).plan(fingerprint)
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


def _previous_throughput(work: Workdir) -> float | None:
    if not work.has_plans():
        return None
    try:
        previous = work.read_plans()
    except PlansError:
        return None
    value = previous.planner_options.get("cpu_gflops")
    return float(value) if previous.planner == "cpu" and isinstance(value, (int, float)) else None
