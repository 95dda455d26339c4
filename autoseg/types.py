"""Array type aliases shared by every stage.

Axis convention (see ``docs/conventions.md``): arrays are indexed ``(Z, Y, X)`` (slowest to fastest), image
arrays carry a leading channel axis ``(C, Z, Y, X)``, and every spacing, origin, shape or patch tuple follows
the same ``(z, y, x)`` order.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

FloatVolume: TypeAlias = npt.NDArray[np.float32]
"""Image, ``(C, Z, Y, X)`` float32 (or ``(Z, Y, X)`` for one channel where documented)."""

LabelVolume: TypeAlias = npt.NDArray[np.unsignedinteger]
"""Label map, ``(Z, Y, X)`` uint8, or uint16 when a label value exceeds 255."""

AnyArray: TypeAlias = npt.NDArray[np.generic]
"""Raw array as stored in a file, any dtype."""

BoolVolume: TypeAlias = npt.NDArray[np.bool_]
"""Mask, ``(Z, Y, X)`` bool."""

Triple: TypeAlias = tuple[float, float, float]
"""A ``(z, y, x)`` triple of floats, e.g. spacing in millimetres."""

IntTriple: TypeAlias = tuple[int, int, int]
"""A ``(z, y, x)`` triple of ints, e.g. a shape in voxels."""

TargetVolume: TypeAlias = npt.NDArray[np.unsignedinteger]
"""A training target: a ``(Z, Y, X)`` label map, or a ``(K, Z, Y, X)`` uint8 region target (one binary channel
per structure, :mod:`autoseg.regions`)."""
