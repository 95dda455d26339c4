"""The planner registry: presets found by name, built-in or installed by another package.

A preset is a class with ``plan(fingerprint) -> Plans``, registered with ``@register("name")``. The built-in
presets are the modules of the top-level ``planners`` folder (:data:`BUILT_IN_MODULES`, imported on the first
lookup, no folder scan); a third-party preset is exposed through the ``autoseg.planners`` entry-point group of
its package (``[project.entry-points."autoseg.planners"] my-planner = "my_package.my_planner:MyPlanner"``).
Everything a preset needs is importable from :mod:`autoseg.planning`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar

from autoseg.errors import UsageError
from autoseg.fingerprint import Fingerprint
from autoseg.plans import Plans

BUILT_IN_MODULES = ("planners.default", "planners.resenc", "planners.cpu")
"""The modules of the built-in presets, imported (and so registered) on the first lookup."""


class Planner(Protocol):
    """Turns a fingerprint into plans."""

    def plan(self, fingerprint: Fingerprint) -> Plans:
        """Plan every configuration for the fingerprinted dataset."""
        ...


P = TypeVar("P", bound=type)

_REGISTRY: dict[str, type] = {}
ENTRY_POINT_GROUP = "autoseg.planners"


def register(name: str) -> Callable[[P], P]:
    """Class decorator: make the planner available as ``name``."""

    def decorate(cls: P) -> P:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"planner name '{name}' is registered twice")
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_built_ins() -> None:
    for module in BUILT_IN_MODULES:
        importlib.import_module(module)


def available_planners() -> list[str]:
    """Built-in presets plus those installed through the ``autoseg.planners`` entry points, sorted."""
    _load_built_ins()
    return sorted(set(_REGISTRY) | {e.name for e in entry_points(group=ENTRY_POINT_GROUP)})


def planner_class(name: str) -> type:
    """The class registered as ``name``; :class:`UsageError` listing the known names otherwise."""
    _load_built_ins()
    if name not in _REGISTRY:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                _REGISTRY[name] = entry.load()
    if name not in _REGISTRY:
        raise UsageError(f"unknown planner '{name}'; known: {', '.join(available_planners())}")
    return _REGISTRY[name]


def get_planner(name: str, **options: Any) -> Planner:
    """An instance of planner ``name`` with ``options``; an option it does not take is a
    :class:`UsageError`."""
    cls = planner_class(name)
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UsageError(
            f"planner '{name}' does not take {', '.join(unknown)} (it takes: "
            f"{', '.join(sorted(accepted)) or 'no options'})"
        )
    planner: Planner = cls(**options)
    return planner


def describe(name: str) -> str:
    """First line of the planner's docstring."""
    doc = inspect.getdoc(planner_class(name)) or ""
    return doc.splitlines()[0] if doc else ""
