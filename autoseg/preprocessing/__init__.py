"""Preprocess: orient, crop, normalise and resample every case as planned, and store it for fast patch reads.

Reads ``plans.json``, ``fingerprint.json`` and the raw dataset; writes ``preprocessed/`` (one folder per
distinct preprocessing, ``configurations.json``) and ``reference_labels/``. Modules: ``case`` (the pure core,
:func:`preprocess_case` and its inverse :func:`restore_probabilities`), ``orientation`` (the canonical
orientation and its inverse), ``resample``, ``store`` (the case
folder's reader and writer), ``stage`` (:func:`run_preprocess`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.preprocessing.case import (
        CaseProperties,
        PreprocessedCase,
        preprocess_case,
        restore_labels,
        restore_probabilities,
    )
    from autoseg.preprocessing.stage import PreprocessOptions, run_preprocess
    from autoseg.preprocessing.store import StoredCase, load_case

__all__ = [
    "CaseProperties",
    "PreprocessOptions",
    "PreprocessedCase",
    "StoredCase",
    "load_case",
    "preprocess_case",
    "restore_labels",
    "restore_probabilities",
    "run_preprocess",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "CaseProperties": "case",
        "PreprocessedCase": "case",
        "preprocess_case": "case",
        "restore_labels": "case",
        "restore_probabilities": "case",
        "StoredCase": "store",
        "load_case": "store",
        "PreprocessOptions": "stage",
        "run_preprocess": "stage",
    },
)
