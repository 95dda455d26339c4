"""What a training run is told (:class:`TrainConfig`, written to ``train_config.json``) and where it stands
(:class:`RunState`, restored from a checkpoint). Cheap to import: no torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoseg.workdir import Workdir


@dataclass(frozen=True)
class TrainConfig:
    """A training run; ``None`` fields come from the plan's schedule (``configuration``: the work directory's
    default configuration, see :meth:`autoseg.workdir.Workdir.default_configuration`). Written, resolved, to
    ``train_config.json``."""

    configuration: str | None = None
    fold: str = "0"
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    validation_iterations: int | None = None
    """Validation batches per epoch; ``None``: the plan's ``schedule.validation_iterations``."""
    initial_lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    gradient_clip: float = 12.0
    seed: int = 0
    deterministic: bool = False
    time_limit_s: float | None = None
    """End within this many seconds (the schedule shortens, the learning rate follows); ``None`` on a plan
    made for a time budget (the ``cpu`` preset) means that budget unless ``epochs`` is given
    (:func:`resolve_time_limit`); the final validation comes after it."""
    num_workers: int | None = None
    device: str = "cpu"
    groups_file: str | None = None
    precision: str = "auto"
    """Arithmetic of the forward and backward passes: ``auto``, ``float32``, ``bfloat16`` or ``float16``
    (:func:`autoseg.training.parts.resolve_training_precision`); weights, optimiser state and the loss stay
    float32. Written resolved."""

    @property
    def configuration_name(self) -> str:
        """The configuration of a resolved config (see :func:`resolve_configuration`)."""
        if self.configuration is None:
            raise ValueError("TrainConfig.configuration is not resolved; call resolve_configuration first")
        return self.configuration


@dataclass
class RunState:
    """What a checkpoint restores: progress, the schedule's length, the best score so far."""

    epoch: int = 0
    epochs: int = 1
    ema_pseudo_dice: float | None = None
    best_ema: float | None = None
    seconds: float = 0.0


def resolve_configuration(config: TrainConfig, workdir: Workdir, planned: Sequence[str]) -> TrainConfig:
    """``config`` with ``configuration`` set: as given, else the work directory's default among
    ``planned``."""
    if config.configuration is not None:
        return config
    return replace(config, configuration=workdir.default_configuration(list(planned)))


def resolve_time_limit(config: TrainConfig, time_budget_s: float | None) -> TrainConfig:
    """``config`` with the plan's training-time budget as its time limit, when the run sets neither a limit
    nor its own number of epochs: a plan sized for an hour trains for an hour even where a real epoch (data
    augmentation, validation, checkpoints) costs more than the planner's timed steps."""
    if config.time_limit_s is not None or config.epochs is not None or not time_budget_s:
        return config
    return replace(config, time_limit_s=float(time_budget_s))


BUDGET_GROWTH = 2
"""A plan made for a time budget trains for that budget: its schedule may grow up to this many times the
planned epochs when real epochs run faster than the planner estimated (a user's ``--time-limit`` only
shortens the schedule)."""


def most_epochs(config: TrainConfig, planned: int, time_budget_s: float | None) -> int:
    """The most epochs the time limit may fit: ``--epochs`` or the plan's, or :data:`BUDGET_GROWTH` times the
    plan's when the limit is the plan's own time budget (:func:`resolve_time_limit`)."""
    if config.epochs is not None:
        return config.epochs
    from_budget = time_budget_s is not None and config.time_limit_s == float(time_budget_s)
    return planned * BUDGET_GROWTH if from_budget else planned


def learning_rate(config: TrainConfig, state: RunState) -> float:
    """Poly schedule: ``initial_lr * (1 - epoch / epochs) ** 0.9`` for the epoch about to run."""
    return float(config.initial_lr * (1 - state.epoch / state.epochs) ** 0.9)
