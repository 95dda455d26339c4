"""Post-process: connected-component steps chosen on cross-validation, and instance maps.

Reads validation predictions and reference labels (through :mod:`autoseg.evaluation`); writes
``postprocessing.json`` (a configuration's or an ensemble's). Modules: ``components`` (the array operations),
``steps`` (:class:`Postprocessing`: steps by name, stored and applied), ``choice`` (which steps to keep),
``instances`` (one id per object).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.postprocessing.choice import choose_postprocessing, run_choose_postprocessing
    from autoseg.postprocessing.components import (
        keep_largest_component,
        label_components,
        remove_small_components,
    )
    from autoseg.postprocessing.instances import label_instances
    from autoseg.postprocessing.steps import (
        Postprocessing,
        PostprocessingStep,
        apply_postprocessing,
        load_postprocessing,
    )

__all__ = [
    "Postprocessing",
    "PostprocessingStep",
    "apply_postprocessing",
    "choose_postprocessing",
    "keep_largest_component",
    "label_components",
    "label_instances",
    "load_postprocessing",
    "remove_small_components",
    "run_choose_postprocessing",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "keep_largest_component": "components",
        "label_components": "components",
        "remove_small_components": "components",
        "Postprocessing": "steps",
        "PostprocessingStep": "steps",
        "apply_postprocessing": "steps",
        "load_postprocessing": "steps",
        "choose_postprocessing": "choice",
        "run_choose_postprocessing": "choice",
        "label_instances": "instances",
    },
)
