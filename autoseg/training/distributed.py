"""Multi-process data-parallel training with ``torch.distributed`` (DDP).

``autoseg train --num-gpus N`` starts N processes (one per GPU, NCCL); under ``torchrun`` the processes
already exist and the environment says so, on one machine or across several (``torchrun --nnodes N
--rdzv-endpoint HOST:PORT``: ``docs/scale.md``). On a CPU the same code runs with the gloo backend (used by
the tests). Each rank takes its share of the planned batch and its own data stream; gradients are averaged by
DDP, so every rank holds the same weights (checked at the end: :func:`require_same_weights`); only rank 0
writes logs, checkpoints and validation results, into a work directory every node sees (a shared file
system). Decisions one rank makes alone (the time limit's new schedule) are rank 0's, broadcast
(:func:`first_rank_value`), so no rank stops while another waits for it.
"""

from __future__ import annotations

import hashlib
import logging
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

from autoseg.errors import AutosegError

logger = logging.getLogger(__name__)


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


def local_device(device: str) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun (each rank of a node on its own GPU); other names as
    they are."""
    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(local)}"
    return device


def first_rank_value(value: int) -> int:
    """Rank 0's ``value`` on every rank (``value`` itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every entry's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def require_same_weights(network: nn.Module) -> str:
    """Compare the weights of every rank (their :func:`weights_digest`) and return the digest; each rank logs
    its own. Not distributed: the digest alone.

    Raises:
        AutosegError: the ranks' weights differ (DDP should never let them: a bug or a broken node).
    """
    digest = weights_digest(unwrap(network).state_dict())
    rank = current_rank()
    if rank.count == 1:
        return digest
    logger.info("rank %d of %d: final weights sha256 %s", rank.index, rank.count, digest)
    every: list[object] = [None] * rank.count
    dist.all_gather_object(every, digest)
    if len(set(every)) != 1:
        lines = [f"rank {index}: {value}" for index, value in enumerate(every)]
        raise AutosegError("the ranks ended with different weights", details=lines)
    return digest


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
