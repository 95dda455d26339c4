"""What a configuration must fit: GPU memory (nnU-Net's way) or, on a CPU, a training-time budget.

:class:`MemoryBudget` sizes a configuration so the estimated training memory (:mod:`autoseg.planning.cost`)
fits the GPU. :class:`TimeBudget` sizes it so the default schedule fits a wall-clock budget, from this
machine's time model (:mod:`autoseg.planning.time_model`, fitted on timed calibration networks) and the
configuration's convolution work and activations.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from autoseg.errors import UsageError
from autoseg.planning.cost import estimate_training_memory, training_gflops
from autoseg.planning.time_model import TimeModel, training_melements
from autoseg.plans import NetworkPlan, TrainingSchedule

logger = logging.getLogger(__name__)

GIB = 2**30


@dataclass(frozen=True)
class MemoryBudget:
    """Fit the estimated training memory into ``memory_gb`` x ``usable_fraction``.

    ``usable_fraction`` leaves room for cuDNN workspaces and allocator fragmentation, which the model does not
    count. On CUDA, activations are 2 bytes (mixed precision); on a CPU, 4.
    """

    memory_gb: float
    device: Literal["cpu", "cuda"] = "cuda"
    usable_fraction: float = 0.85
    default_schedule: TrainingSchedule = field(default_factory=TrainingSchedule)

    @property
    def activation_bytes(self) -> int:
        """Bytes per kept activation element."""
        return 2 if self.device == "cuda" else 4

    def largest_batch(
        self, net: NetworkPlan, patch: Sequence[int], in_channels: int, num_classes: int
    ) -> int:
        """Samples that fit: (budget - parameter state) / (activations + transient per sample)."""
        one = estimate_training_memory(
            net, patch, 1, in_channels, num_classes, activation_bytes=self.activation_bytes
        )
        free = self.memory_gb * GIB * self.usable_fraction - one.parameters
        return max(0, int(free // (one.activations + one.transient)))

    def describe(
        self, net: NetworkPlan, patch: Sequence[int], batch: int, in_channels: int, num_classes: int
    ) -> tuple[float, str]:
        """Estimated memory in GB and a sentence for the plan's ``why``."""
        estimate = estimate_training_memory(
            net, patch, batch, in_channels, num_classes, activation_bytes=self.activation_bytes
        )
        total = estimate.total / GIB
        return total, (
            f"estimated training memory {total:.2f} GB (activations {estimate.activations / GIB:.2f}, "
            f"parameters+gradients+momentum {estimate.parameters / GIB:.3f}, transient "
            f"{estimate.transient / GIB:.2f}) of a {self.memory_gb:g} GB {self.device} budget used to "
            f"{100 * self.usable_fraction:.0f}%"
        )

    def schedule(
        self, net: NetworkPlan, patch: Sequence[int], batch: int, in_channels: int, num_classes: int
    ) -> TrainingSchedule:
        """nnU-Net's default schedule."""
        return self.default_schedule


VALIDATION_STEP_SHARE = 0.3
"""Seconds of a validation batch (forward only, no gradient) per second of a training step, measured 0.29 on
the hippocampus 1h plan in bfloat16 (``docs/planning.md``); every epoch runs ``validation_iterations``."""


@dataclass(frozen=True)
class TimeBudget:
    """Fit ``minimum_iterations`` training iterations into ``seconds`` on this CPU (and the batch into RAM).

    Seconds per iteration come from ``model`` (:class:`autoseg.planning.time_model.TimeModel`: a fixed
    overhead, a term per GFLOP of convolution work and one per million kept activations), recorded in the
    plan. An epoch also validates ``validation_iterations`` batches, charged at :data:`VALIDATION_STEP_SHARE`
    of a step each: the budget is for training as ``autoseg train`` runs it, validation included.
    """

    seconds: float
    model: TimeModel
    memory_gb: float = 8.0
    minimum_iterations: int = 4000
    iterations_per_epoch: int = 100
    device: Literal["cpu", "cuda"] = "cpu"
    validation_iterations: int = 50

    @property
    def epoch_factor(self) -> float:
        """Seconds of an epoch per second of its training steps (the validation batches' share added)."""
        return 1 + VALIDATION_STEP_SHARE * self.validation_iterations / self.iterations_per_epoch

    def seconds_per_iteration(
        self, net: NetworkPlan, patch: Sequence[int], batch: int, in_channels: int, num_classes: int
    ) -> float:
        """Estimated wall time of one training iteration on this machine."""
        return self.model.seconds(
            training_gflops(net, patch, batch, in_channels, num_classes),
            training_melements(net, patch, batch, in_channels, num_classes),
        )

    def largest_batch(
        self, net: NetworkPlan, patch: Sequence[int], in_channels: int, num_classes: int
    ) -> int:
        """Samples per batch such that ``minimum_iterations`` fit the time budget and the batch fits RAM."""
        per_iteration = self.seconds / (self.minimum_iterations * self.epoch_factor) - self.model.overhead_s
        one = self.seconds_per_iteration(net, patch, 1, in_channels, num_classes)
        per_sample = one - self.model.overhead_s
        by_time = int(per_iteration // per_sample) if per_iteration > 0 and per_sample > 0 else 0
        by_memory = MemoryBudget(self.memory_gb, "cpu", 0.8).largest_batch(
            net, patch, in_channels, num_classes
        )
        return min(by_time, by_memory)

    def describe(
        self, net: NetworkPlan, patch: Sequence[int], batch: int, in_channels: int, num_classes: int
    ) -> tuple[float, str]:
        """Estimated memory in GB and a sentence with the time estimate."""
        memory = estimate_training_memory(net, patch, batch, in_channels, num_classes).total / GIB
        seconds = self.seconds_per_iteration(net, patch, batch, in_channels, num_classes)
        work = training_gflops(net, patch, batch, in_channels, num_classes)
        elements = training_melements(net, patch, batch, in_channels, num_classes)
        return memory, (
            f"estimated {seconds:.2f} s per iteration ({work:.1f} GFLOP, {elements:.0f} million kept "
            f"activations; time model {self.model.describe()}): {self.iterations(seconds)} iterations "
            f"in the {format_duration(self.seconds)} budget (at least {self.minimum_iterations} wanted); "
            f"{memory:.2f} GB of RAM"
        )

    def schedule(
        self, net: NetworkPlan, patch: Sequence[int], batch: int, in_channels: int, num_classes: int
    ) -> TrainingSchedule:
        """As many epochs of ``iterations_per_epoch`` as fit the budget, validation included."""
        seconds = self.seconds_per_iteration(net, patch, batch, in_channels, num_classes)
        epochs = max(1, self.iterations(seconds) // self.iterations_per_epoch)
        return TrainingSchedule(
            epochs,
            self.iterations_per_epoch,
            round(seconds, 4),
            validation_iterations=self.validation_iterations,
        )

    def iterations(self, seconds_per_iteration: float) -> int:
        """Training iterations that fit the budget at ``seconds_per_iteration``, with their validation."""
        return int(self.seconds // (seconds_per_iteration * self.epoch_factor))


def measure_conv_throughput(*, repeats: int = 5) -> float:
    """Effective GFLOP/s of U-Net training on this CPU, in the units of :func:`training_gflops`.

    Times training steps (forward, a loss on every deep-supervision output, backward, SGD step) of a small 3D
    U-Net (features 16..128, patch 32x48x48, batch 2) and divides the work :func:`training_gflops` counts for
    it by the median time of ``repeats`` steps after a warm-up step (about 2 s on 2 cores). Measuring a whole
    network rather than one convolution makes the model's blind spots (normalisation, activations, small deep
    layers, the first layer's missing input gradient) part of the calibration: the estimate for another
    network is then right to the extent that its mix of layers resembles this one's. The machine may be
    shared: the median resists a passing load, and a warning says when other processes (or the hypervisor,
    as steal time) took more than ``BUSY_WARNING_CORES`` during the measurement, since a plan made then is
    sized for a machine that stays that busy (measured: 45 instead of 226 GFLOP/s while a test suite ran).
    """
    import torch

    from autoseg.network import build_network

    net = NetworkPlan(
        "plain",
        3,
        (16, 32, 64, 128),
        ((3, 3, 3),) * 4,
        ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
        (2, 2, 2, 2),
        (2, 2, 2),
    )
    patch, batch, classes = (32, 48, 48), 2, 3
    model = build_network(net, 1, classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 1, *patch)
    times = []
    with warn_when_busy("the throughput"):
        for step in range(repeats + 1):
            start = time.perf_counter()
            outputs = model(x)
            loss = sum(o.float().logsumexp(1).mean() for o in outputs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:
                times.append(time.perf_counter() - start)
    throughput = training_gflops(net, patch, batch, 1, classes) / float(sorted(times)[len(times) // 2])
    logger.info(
        "measured training throughput: %.1f GFLOP/s (median of %d steps, %d threads)",
        throughput,
        repeats,
        torch.get_num_threads(),
    )
    return throughput


@contextmanager
def warn_when_busy(what: str) -> Iterator[None]:
    """Around a timing: warn, naming ``--cpu-gflops``, when other processes (or the hypervisor, as steal
    time) took more than ``BUSY_WARNING_CORES`` meanwhile (``/proc/stat``; silent where it is missing)."""
    busy_before, own_before, wall_before = machine_busy_seconds(), time.process_time(), time.perf_counter()
    yield
    busy_after = machine_busy_seconds()
    if busy_before is None or busy_after is None:
        return
    own = time.process_time() - own_before
    others = max(busy_after - busy_before - own, 0.0) / max(time.perf_counter() - wall_before, 1e-6)
    if others > BUSY_WARNING_CORES:
        logger.warning(
            "other processes used %.1f of %d cores while %s was measured: the plan is sized for a machine "
            "that stays this busy. Plan again on a quiet machine, or pass --cpu-gflops",
            others,
            os.cpu_count() or 1,
            what,
        )


BUSY_WARNING_CORES = 0.5
"""Cores used by others during the throughput measurement above which the planner warns."""


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (user, system, interrupts and hypervisor steal, from
    ``/proc/stat``); ``None`` where that is not available."""
    try:
        with Path("/proc/stat").open(encoding="ascii") as stat:
            fields = stat.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


DEFAULT_TIME_BUDGET = "2h"
"""The ``cpu`` preset's training-time budget when ``--time-budget`` is not given."""


def parse_duration(text: str) -> float:
    """``"2h"``, ``"90m"``, ``"1h30m"``, ``"3600"`` or ``"45s"`` -> seconds.

    Raises:
        UsageError: not a duration.
    """
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise UsageError(f"'{text}' is not a duration; use e.g. 2h, 90m, 1h30m or 3600")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"duration '{text}' must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as ``1h30m``-style text."""
    minutes = math.ceil(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
