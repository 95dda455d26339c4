"""Connected-component operations on label maps, the building blocks of post-processing.

Components use face connectivity (6 neighbours in 3D), as :data:`autoseg.fingerprint.CONNECTIVITY`, so that
the component sizes seen in training (``fingerprint.json``) and removed here are counted the same way. A
removed voxel becomes background (0). Ties between equally large components keep the first one in raster
(C) order, so every result is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autoseg.fingerprint import CONNECTIVITY
from autoseg.regions import foreground_mask, is_region_target, structure_mask
from autoseg.types import BoolVolume, LabelVolume, Triple

LabelSelection: TypeAlias = Sequence[int] | Literal["foreground"]
"""Label values treated one by one, or ``"foreground"``: every nonzero voxel as one class."""

ComponentMap: TypeAlias = npt.NDArray[np.int32]
"""``(Z, Y, X)`` int32 component index per voxel: 0 outside, 1..n in raster order of first voxel."""

_STRUCTURE = ndimage.generate_binary_structure(3, CONNECTIVITY)


def label_components(mask: BoolVolume) -> tuple[ComponentMap, npt.NDArray[np.int64]]:
    """Face-connected components of a mask.

    Args:
        mask: ``(Z, Y, X)`` bool.

    Returns:
        The component map and the voxel count of each component (``sizes[i]`` is component ``i + 1``).
    """
    components = np.zeros(mask.shape, np.int32)
    count = int(ndimage.label(mask, structure=_STRUCTURE, output=components))
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:].astype(np.int64)
    return components, sizes


def keep_largest_component(labels: LabelVolume, label_ids: LabelSelection) -> LabelVolume:
    """Keep only the largest connected component, per class or of the whole foreground.

    Args:
        labels: ``(Z, Y, X)`` uint8/uint16 label map (not modified).
        label_ids: classes to treat one by one (each keeps its largest component; other classes untouched), or
            ``"foreground"``: all nonzero voxels form one object; only its largest component stays, with its
            classes, and everything else becomes background.

    Returns:
        A new label map of the same shape and dtype.
    """
    result = labels.copy()
    selected: list[int | None] = [None] if label_ids == "foreground" else list(label_ids)
    for label, mask in zip(selected, _masks(labels, label_ids), strict=True):
        components, sizes = label_components(mask)
        if sizes.size > 1:
            _clear(result, label, mask & (components != int(np.argmax(sizes)) + 1))
    return result


def _clear(result: LabelVolume, label: int | None, voxels: BoolVolume) -> None:
    """Set ``voxels`` to background: in a label map; in a region target (``(K, Z, Y, X)``, structures that
    may overlap) in structure ``label``'s channel only, or in every channel for the whole foreground."""
    if not is_region_target(result):
        result[voxels] = 0
    elif label is None:
        result[:, voxels] = 0
    else:
        result[label - 1][voxels] = 0


def remove_small_components(
    labels: LabelVolume,
    label_ids: LabelSelection,
    min_volume_mm3: float | Mapping[int, float],
    spacing_mm: Triple,
) -> LabelVolume:
    """Set to background every connected component smaller than a volume.

    Args:
        labels: ``(Z, Y, X)`` uint8/uint16 label map (not modified).
        label_ids: classes to treat one by one, or ``"foreground"`` (components of all nonzero voxels).
        min_volume_mm3: components with a volume strictly below this are removed; one number for all, or one
            per label value (labels without an entry are left alone; use a number with ``"foreground"``).
        spacing_mm: voxel size ``(z, y, x)`` in mm.

    Returns:
        A new label map of the same shape and dtype.
    """
    voxel_mm3 = float(np.prod(spacing_mm))
    result = labels.copy()
    selected: list[int | None] = [None] if label_ids == "foreground" else list(label_ids)
    for label, mask in zip(selected, _masks(labels, label_ids), strict=True):
        threshold = _threshold_for(min_volume_mm3, label)
        if threshold is None:
            continue
        components, sizes = label_components(mask)
        small = np.concatenate([[False], sizes * voxel_mm3 < threshold])  # indexed by component number
        if small.any():
            _clear(result, label, small[components])
    return result


def _masks(labels: LabelVolume, label_ids: LabelSelection) -> Iterator[BoolVolume]:
    """One mask at a time (memory: one boolean volume)."""
    if label_ids == "foreground":
        yield foreground_mask(labels)
        return
    for label in label_ids:
        yield structure_mask(labels, label)


def _threshold_for(min_volume_mm3: float | Mapping[int, float], label: int | None) -> float | None:
    if isinstance(min_volume_mm3, Mapping):
        return None if label is None else min_volume_mm3.get(label)
    return float(min_volume_mm3)
