"""Training: one fold of a planned, preprocessed configuration, from parts and callbacks.

Reads (all from the work directory, never the raw dataset): ``plans.json``, ``fingerprint.json`` (the case
identifiers), ``splits.json`` (made on first use), ``preprocessed/<folder>/`` and
``reference_labels/<case>.nii.gz``.

Writes ``trained/<configuration>/fold_<k>/``: ``train_config.json`` and a copy of ``plans.json``,
``log.jsonl``, ``training.log``, ``progress.png``, ``checkpoint_{latest,best,final}.pt``, and
``validation/`` (``<case>.nii.gz``, ``<case>.npz``, ``summary.json``).

Entry points: :func:`run_train` (the stage: resolves the configuration, launches several GPUs, returns the
validation summary) and :func:`train_fold` (one fold in this process, with optional
:class:`TrainingParts` from :func:`default_parts` and extra :class:`Callback` objects). Importing this package
is cheap: the submodules (and torch) load on first use of a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.training.callbacks import Callback, TrainingRun
    from autoseg.training.config import RunState, TrainConfig
    from autoseg.training.loop import FoldResult, default_callbacks, train_fold
    from autoseg.training.parts import FoldBatches, TrainingParts, default_parts, fold_batches
    from autoseg.training.stage import run_train

__all__ = [
    "Callback",
    "FoldBatches",
    "FoldResult",
    "RunState",
    "TrainConfig",
    "TrainingParts",
    "TrainingRun",
    "default_callbacks",
    "default_parts",
    "fold_batches",
    "run_train",
    "train_fold",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "Callback": "callbacks",
        "TrainingRun": "callbacks",
        "RunState": "config",
        "TrainConfig": "config",
        "FoldResult": "loop",
        "default_callbacks": "loop",
        "train_fold": "loop",
        "FoldBatches": "parts",
        "TrainingParts": "parts",
        "default_parts": "parts",
        "fold_batches": "parts",
        "run_train": "stage",
    },
)
