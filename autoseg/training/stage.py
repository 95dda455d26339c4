"""``run_train``: the training stage's one entry point (one process, several GPUs, or under torchrun)."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from autoseg.errors import UsageError
from autoseg.preprocessing.stage import require_current_store
from autoseg.training.config import TrainConfig, resolve_configuration
from autoseg.workdir import Workdir, folder_lock


def run_train(
    workdir: Path, config: TrainConfig, *, num_gpus: int = 1, resume: bool = False, show_progress: bool = True
) -> dict[str, Any]:
    """Train one fold (on ``num_gpus`` GPUs with data parallelism when above 1) and validate it.

    ``config.configuration`` ``None`` means the work directory's default configuration
    (:meth:`~autoseg.workdir.Workdir.default_configuration`); the run records it resolved in
    ``train_config.json``.

    Returns:
        The validation summary (``validation/summary.json`` of the run folder): ``mean_dice_per_class``,
        ``mean_dice`` and Dice per class per case.

    Raises:
        UsageError: fewer GPUs than ``num_gpus``, an existing run without ``resume``, an unknown fold.
        FolderInUseError: another process is training this fold (its run folder is locked).
        WorkdirError: the work directory is not planned and preprocessed for the configuration.
    """
    import torch

    from autoseg.training.distributed import launch, local_device, require_same_weights
    from autoseg.training.loop import train_fold, train_rank

    work = Workdir(workdir)
    plans = work.read_plans()
    config = resolve_configuration(config, work, list(plans.configurations))
    require_current_store(work, config.configuration_name, plans.configuration(config.configuration_name))
    run = work.run(config.configuration_name, config.fold)
    with _run_lock(run.path, config):
        if num_gpus > 1:
            if torch.cuda.device_count() < num_gpus:
                raise UsageError(f"--num-gpus {num_gpus}: PyTorch sees {torch.cuda.device_count()} GPU(s)")
            launch(num_gpus, partial(train_rank, resume=resume, show_progress=show_progress), workdir, config)
            return run.read_validation_summary()
        config = replace(config, device=local_device(config.device))  # torchrun: cuda:LOCAL_RANK
        result = train_fold(workdir, config, resume=resume, show_progress=show_progress)
        require_same_weights(result.network)  # torchrun: every rank ends with the same weights
    summary = result.summary
    return summary if summary is not None else run.read_validation_summary()  # torchrun: rank > 0


def _run_lock(folder: Path, config: TrainConfig) -> AbstractContextManager[None]:
    """The run folder's lock (:func:`autoseg.workdir.folder_lock`): the same fold trained twice at once is
    refused; other folds train beside it. Under torchrun only rank 0 takes it (the ranks share the run; on
    several nodes the others' ``RANK`` is above 0 too)."""
    if os.environ.get("RANK", "0") != "0":
        return nullcontext()
    return folder_lock(
        folder, f"train {config.configuration_name} fold {config.fold}", remove_temporaries=True
    )
