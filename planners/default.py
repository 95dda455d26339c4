"""The ``default`` preset: nnU-Net's rules with a plain U-Net at an 8 GB GPU reference."""

from __future__ import annotations

from typing import Literal

from autoseg.planning import Architecture, Fingerprint, MemoryBudget, Plans, make_plans, register


@register("default")
class DefaultPlanner:
    """Plain U-Net (2 convs per stage), sized for a GPU with gpu_memory_gb of memory (8 GB reference)."""

    def __init__(self, gpu_memory_gb: float = 8.0, device: Literal["cpu", "cuda"] = "cuda") -> None:
        self.gpu_memory_gb = gpu_memory_gb
        self.device = device

    def plan(self, fingerprint: Fingerprint) -> Plans:
        """Plan every configuration."""
        budget = MemoryBudget(self.gpu_memory_gb, self.device)
        options = {"gpu_memory_gb": self.gpu_memory_gb, "device": self.device}
        return make_plans(
            fingerprint, budget, Architecture("plain", (2,), 2), planner="default", options=options
        )
