"""Dataset in: read a dataset folder (nnU-Net v2 or MSD layout), check it, find it by name, or make one.

Reads a dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``) and ``datasets.json``; writes nothing,
except :func:`write_synthetic_dataset` (a new dataset folder) and the catalogue's cache of synthetic datasets.
Modules: ``layout`` (:func:`load_dataset`, :func:`read_case`), ``verify`` (:func:`verify_dataset`),
``catalogue`` (:func:`resolve_dataset`: names from ``datasets.json``), ``synthetic`` and ``anatomy``
(anatomy-like synthetic cases), ``rt_synthetic`` and ``rt_anatomy`` (DICOM CT + RTSTRUCT structure sets as a
clinic has them: nested targets, overlaps, rings, name variants, missing structures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.dataset.catalogue import Catalogue, load_catalogue, resolve_dataset
    from autoseg.dataset.layout import Case, Dataset, Problem, load_dataset, read_case, scan_dataset
    from autoseg.dataset.synthetic import SynthConfig, write_synthetic_dataset
    from autoseg.dataset.verify import VerifyReport, verify_dataset

__all__ = [
    "Case",
    "Catalogue",
    "Dataset",
    "Problem",
    "SynthConfig",
    "VerifyReport",
    "load_catalogue",
    "load_dataset",
    "read_case",
    "resolve_dataset",
    "scan_dataset",
    "verify_dataset",
    "write_synthetic_dataset",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "Case": "layout",
        "Dataset": "layout",
        "Problem": "layout",
        "load_dataset": "layout",
        "read_case": "layout",
        "scan_dataset": "layout",
        "VerifyReport": "verify",
        "verify_dataset": "verify",
        "Catalogue": "catalogue",
        "load_catalogue": "catalogue",
        "resolve_dataset": "catalogue",
        "SynthConfig": "synthetic",
        "write_synthetic_dataset": "synthetic",
    },
)
