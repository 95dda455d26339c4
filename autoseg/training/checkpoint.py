"""Checkpoints: only tensors and JSON-compatible values, loadable with ``torch.load(weights_only=True)``,
written atomically (temporary file in the same folder, then rename)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from autoseg.errors import AutosegError
from autoseg.io import atomic_target


class CheckpointError(AutosegError):
    """A checkpoint is missing, unreadable, or not one autoseg wrote."""


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
