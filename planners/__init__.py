"""Planner presets for ``autoseg plan``: one module per preset, registered by name.

The planner issue fills this package (registry, ``default``, ``cpu`` and ``resenc-*`` presets).
"""

from __future__ import annotations
