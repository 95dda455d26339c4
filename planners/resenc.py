"""The ``resenc-m`` and ``resenc-l`` presets: residual-encoder U-Nets, as nnU-Net's published ResEnc presets.

Encoder stages hold 1, 3, 4, 6, 6, 6 residual blocks, the decoder one conv per stage; M is sized for 8 GB of
GPU memory, L for 24 GB (Isensee et al. 2024, "nnU-Net Revisited").
"""

from __future__ import annotations

from typing import Literal

from autoseg.planning import Architecture, Fingerprint, MemoryBudget, Plans, make_plans, register

RESIDUAL_ENCODER = Architecture("residual", (1, 3, 4, 6, 6, 6), 1)


class _ResidualEncoderPlanner:
    name = ""
    reference_gb = 0.0

    def __init__(self, gpu_memory_gb: float | None = None, device: Literal["cpu", "cuda"] = "cuda") -> None:
        self.gpu_memory_gb = self.reference_gb if gpu_memory_gb is None else gpu_memory_gb
        self.device = device

    def plan(self, fingerprint: Fingerprint) -> Plans:
        """Plan every configuration."""
        budget = MemoryBudget(self.gpu_memory_gb, self.device)
        options = {"gpu_memory_gb": self.gpu_memory_gb, "device": self.device}
        return make_plans(fingerprint, budget, RESIDUAL_ENCODER, planner=self.name, options=options)


@register("resenc-m")
class ResEncMPlanner(_ResidualEncoderPlanner):
    """Residual-encoder U-Net (1, 3, 4, 6, 6, 6 blocks) sized for 8 GB of GPU memory."""

    name = "resenc-m"
    reference_gb = 8.0


@register("resenc-l")
class ResEncLPlanner(_ResidualEncoderPlanner):
    """Residual-encoder U-Net (1, 3, 4, 6, 6, 6 blocks) sized for 24 GB of GPU memory."""

    name = "resenc-l"
    reference_gb = 24.0
