"""autoseg: a self-configuring segmentation pipeline for 3D medical images.

The packages follow the pipeline (``docs/design.md``, "Architecture"): ``dataset`` -> ``fingerprint`` ->
``planning`` -> ``preprocessing`` -> ``training`` -> ``inference`` -> ``postprocessing`` -> ``evaluation``,
with ``report`` and ``dicom`` beside them and ``cli`` on top. Each package's ``__init__`` names its entry
points and imports them on first use (:func:`lazy_exports`), so ``import autoseg.<stage>`` costs nothing
until a name is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__version__ = "0.1.0"

__all__ = ["__version__", "lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) for ``package``: ``exports`` maps a public name to the module that
    defines it (a submodule name relative to ``package``, or a full ``autoseg.`` name), imported on the
    name's first use."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        return getattr(
            importlib.import_module(module if module.startswith("autoseg.") else f"{package}.{module}"), name
        )

    return __getattr__
