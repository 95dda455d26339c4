"""Checkpoints: only tensors and JSON-compatible values, loadable with ``torch.load(weights_only=True)``,
written atomically (temporary file in the same folder, then rename).

A training checkpoint holds ``network``, ``optimizer`` and ``scaler`` state dicts, the run's ``state``
(:class:`~autoseg.training.config.RunState` as a dict) and ``torch_rng``, PyTorch's CPU generator state.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from autoseg.errors import CheckpointError
from autoseg.io import atomic_target
from autoseg.training.config import RunState
from autoseg.training.distributed import unwrap

if TYPE_CHECKING:
    from autoseg.training.parts import TrainingParts

logger = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` (tensors, dicts, lists, numbers, strings) atomically."""
    with atomic_target(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path, *, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with pickling disabled (``weights_only=True``): a file cannot run code.

    Raises:
        CheckpointError: missing, corrupt, or holding objects other than tensors and plain data.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise CheckpointError(
            f"{path}: not a readable autoseg checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or "network" not in state:
        raise CheckpointError(f"{path}: not an autoseg checkpoint (no 'network' weights)")
    return state


def training_checkpoint(parts: TrainingParts, state: RunState) -> dict[str, Any]:
    """What :func:`restore_training` needs to continue exactly: weights (without a DDP wrapper's
    ``module.`` prefix), optimiser and scaler, the run's state and PyTorch's CPU generator."""
    return {
        "network": unwrap(parts.network).state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "state": asdict(state),
        "torch_rng": torch.get_rng_state(),
    }


def restore_training(parts: TrainingParts, path: Path, *, epochs: int | None) -> RunState:
    """Load a :func:`training_checkpoint` into ``parts`` and PyTorch's CPU generator; ``epochs`` (if given)
    replaces the schedule's length.

    Raises:
        CheckpointError: see :func:`load_checkpoint`.
    """
    checkpoint = load_checkpoint(path, device=next(parts.network.parameters()).device)
    unwrap(parts.network).load_state_dict(checkpoint["network"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    state = RunState(**checkpoint["state"])
    if epochs is not None:
        state.epochs = epochs
    torch.set_rng_state(checkpoint["torch_rng"])
    logger.info("resuming at epoch %d of %d", state.epoch, state.epochs)
    return state
