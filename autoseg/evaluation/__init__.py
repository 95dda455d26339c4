"""Evaluate: overlap and surface metrics per case and class, and the choice of the best configuration.

Reads prediction and reference label maps; writes ``summary.json``, ``metrics.csv``, ``metrics.png``, and for
``find_best_configuration`` ``best_configuration.json``/``.md``, ``training_reference.json`` and the
ensembles' cross-validation predictions. Modules: ``metrics`` (the pure core, :func:`dice_per_label`,
:func:`evaluate_case`), ``stage`` (:func:`run_evaluate`), ``summary`` (statistics and files),
``best_configuration`` (:func:`run_find_best_configuration`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.evaluation.best_configuration import BestConfiguration, run_find_best_configuration
    from autoseg.evaluation.metrics import ClassMetrics, dice_per_label, evaluate_case
    from autoseg.evaluation.stage import EvaluateRequest, run_evaluate
    from autoseg.evaluation.summary import EvaluationSummary, summarize

__all__ = [
    "BestConfiguration",
    "ClassMetrics",
    "EvaluateRequest",
    "EvaluationSummary",
    "dice_per_label",
    "evaluate_case",
    "run_evaluate",
    "run_find_best_configuration",
    "summarize",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "ClassMetrics": "metrics",
        "dice_per_label": "metrics",
        "evaluate_case": "metrics",
        "EvaluateRequest": "stage",
        "run_evaluate": "stage",
        "EvaluationSummary": "summary",
        "summarize": "summary",
        "BestConfiguration": "best_configuration",
        "run_find_best_configuration": "best_configuration",
    },
)
