"""The reviewer report of a prediction: contours on slices, a structure table and flags.

Reads a label map, its image and probabilities, and the training reference (``training_reference.json``);
writes ``<case>_report.png`` and ``<case>_structures.json``. Modules: ``structures`` (the table and its
flags, :class:`TrainingReference`), ``views`` (which slices, in radiological orientation), ``figure``
(:func:`render_report`, the only matplotlib user).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.report.figure import render_report
    from autoseg.report.structures import StructureRow, TrainingReference, structure_table

__all__ = [
    "StructureRow",
    "TrainingReference",
    "render_report",
    "structure_table",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "StructureRow": "structures",
        "TrainingReference": "structures",
        "structure_table": "structures",
        "render_report": "figure",
    },
)
