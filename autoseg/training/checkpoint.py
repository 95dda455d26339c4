"""Checkpoints: only tensors and JSON-compatible values, loadable with ``torch.load(weights_only=True)``,
written atomically (temporary file in the same folder, then rename).

A training checkpoint holds ``network``, ``optimizer`` and ``scaler`` state dicts, the run's ``state``
(:class:`~autoseg.training.config.RunState` as a dict) and the states of the run's global generators:
``torch_rng`` (PyTorch's CPU generator), ``cuda_rng`` (the training device's, on CUDA), ``numpy_rng`` and
``python_rng`` (NumPy's and Python's global generators, as tensors and numbers).

Randomness of a run, and why a resume is exact: the training and validation patches and their augmentation
draw from generators derived from ``(seed, epoch, worker)`` (:mod:`autoseg.training.data`), so an epoch's
data is the same whenever it runs, in the main process or in DataLoader workers; checkpoints are written at
epoch boundaries. Everything else (the DataLoader's base seed, a part using dropout or ``torch.rand``) draws
from the global generators, which :func:`run_random_state` gives the run privately: seeded from the run's
seed at its start, restored from the checkpoint on resume, and the caller's states put back after the run.
Before, a run started from whatever state the process held, and a resumed run's ``torch_rng`` differed from
an uninterrupted one's.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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


@contextlib.contextmanager
def run_random_state(seed: int, device: torch.device) -> Iterator[None]:
    """Give the block its own global generators (PyTorch's CPU one and, on CUDA, ``device``'s; NumPy's and
    Python's), seeded from ``seed``; the caller's states are put back afterwards, however the block ends.
    Inside it :func:`restore_training` may replace them with a checkpoint's."""
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 (the run's private state, the caller's is put back)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)  # noqa: NPY002
            random.setstate(python_state)


def random_states(device: torch.device) -> dict[str, Any]:
    """The global generators' states as checkpoint values (tensors and plain numbers)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    assert kind == "MT19937"
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": {
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python_rng": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def restore_random_states(checkpoint: dict[str, Any], device: torch.device) -> None:
    """Set the global generators from a checkpoint's :func:`random_states` (older checkpoints hold only
    ``torch_rng``; the others then keep their state)."""
    torch.set_rng_state(checkpoint["torch_rng"].cpu())
    if "cuda_rng" in checkpoint and device.type == "cuda":
        torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
    if "numpy_rng" in checkpoint:
        saved = checkpoint["numpy_rng"]
        keys = saved["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, saved["position"], saved["has_gauss"], saved["gauss"]))  # noqa: NPY002
    if "python_rng" in checkpoint:
        saved = checkpoint["python_rng"]
        internal = tuple(int(v) for v in saved["internal"].tolist())
        random.setstate((saved["version"], internal, saved["gauss_next"]))


def training_checkpoint(parts: TrainingParts, state: RunState) -> dict[str, Any]:
    """What :func:`restore_training` needs to continue exactly: weights (without a DDP wrapper's
    ``module.`` prefix), optimiser and scaler, the run's state and the global generators' states."""
    device = next(parts.network.parameters()).device
    return {
        "network": unwrap(parts.network).state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "state": asdict(state),
        **random_states(device),
    }


def restore_training(parts: TrainingParts, path: Path, *, epochs: int | None) -> RunState:
    """Load a :func:`training_checkpoint` into ``parts`` and the global generators (call it inside
    :func:`run_random_state`); ``epochs`` (if given) replaces the schedule's length.

    Raises:
        CheckpointError: see :func:`load_checkpoint`.
    """
    device = next(parts.network.parameters()).device
    checkpoint = load_checkpoint(path, device=device)
    unwrap(parts.network).load_state_dict(checkpoint["network"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    state = RunState(**checkpoint["state"])
    if epochs is not None:
        state.epochs = epochs
    restore_random_states(checkpoint, device)
    logger.info("resuming at epoch %d of %d", state.epoch, state.epochs)
    return state
