"""Multi-process data-parallel training with ``torch.distributed`` (DDP).

``autoseg train --num-gpus N`` starts N processes (one per GPU, NCCL); under ``torchrun`` the processes
already exist and the environment says so. On a CPU the same code runs with the gloo backend (used by the
tests). Each rank takes its share of the planned batch and its own data stream; gradients are averaged by DDP,
so every rank holds the same weights; only rank 0 writes logs, checkpoints and validation results.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import spawn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Rank:
    """This process's place in the run."""

    index: int = 0
    count: int = 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes files."""
        return self.index == 0


def current_rank() -> Rank:
    """The rank of this process (0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size())
    return Rank()


def init_from_environment(device_type: str) -> Rank:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return current_rank()


def launch(processes: int, function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(rank, processes, *args)`` in ``processes`` spawned processes inside one process
    group."""
    port = _free_port()
    spawn(_entry, args=(processes, port, function, args), nprocs=processes, join=True)


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a :class:`DistributedDataParallel` wrapper (or ``network`` itself)."""
    module: nn.Module = network.module if isinstance(network, DistributedDataParallel) else network
    return module


def _entry(
    index: int, processes: int, port: int, function: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=processes)
    try:
        if backend == "nccl":
            torch.cuda.set_device(index)
        function(index, processes, *args)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
