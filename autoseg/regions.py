"""Region targets: structures that may overlap (PTV contains CTV contains GTV; every organ lies inside BODY).

A dataset whose structures overlap cannot be one label map. autoseg then trains one sigmoid output per
structure (region-based training, as nnU-Net's regions) and every stage works on a *region target*: a
``(K, Z, Y, X)`` uint8 stack, channel ``k`` the binary mask of structure ``k``. A label map stays the target
of a dataset of disjoint classes. Both are "targets"; :func:`structure_mask` is the one way to get the mask of
one structure (label value ``v`` of a label map; structure number ``v`` = channel ``v - 1`` of a region
target), so that evaluation, post-processing and the report treat both alike.

Two dataset forms give a region target (``docs/dicom.md``, "Overlapping structures"):

* nnU-Net v2 regions: ``"labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
  "enhancing": 3}``: the label file is a label map, region ``k`` the union of its label values
  (:func:`regions_from_labels`);
* a multi-label file: ``"structures": ["GTV", "CTV", "PTV"]``, the label file is 4D with one binary channel
  per structure, in that order.

Structure numbers are 1-based (``plans.labels`` maps ``background`` to 0 and structure ``k`` to ``k + 1``).

A reference region target may also hold :data:`UNKNOWN` (2): voxels of nnU-Net's ignore label, whose class
nobody knows (``docs/dicom.md``, "The ignore label"). Such a voxel is in no structure's mask
(:func:`structure_mask` is ``== 1``), the loss and every score leave it out, and predictions never hold it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import ndimage

from autoseg.types import BoolVolume, LabelVolume, TargetVolume

Box = tuple[slice, slice, slice]

UNKNOWN = 2
"""Value of a reference region target's voxel whose class is unknown (nnU-Net's ignore label), in every
channel: neither inside nor outside any structure."""

REGION_THRESHOLD = 0.5
"""A voxel belongs to a structure when its sigmoid probability is at least this."""


@dataclass(frozen=True)
class Region:
    """One structure of a region target.

    Attributes:
        name: the structure's name (``"CTV"``, ``"whole_tumor"``).
        label_values: nnU-Net region: the label values of the label file whose union it is; ``()`` for a
            channel of a multi-label (4D) label file.
    """

    name: str
    label_values: tuple[int, ...] = ()


def is_region_target(target: TargetVolume) -> bool:
    """Whether ``target`` is a ``(K, Z, Y, X)`` region target rather than a ``(Z, Y, X)`` label map."""
    return target.ndim == 4


def structure_mask(target: TargetVolume, value: int) -> BoolVolume:
    """The ``(Z, Y, X)`` bool mask of label value ``value`` (label map) or structure number ``value``
    (channel ``value - 1`` of a region target)."""
    if is_region_target(target):
        mask: BoolVolume = target[value - 1] == 1
        return mask
    found: BoolVolume = target == value
    return found


def structure_values(target: TargetVolume) -> list[int]:
    """The structure numbers (region target) or nonzero label values (label map) that have a voxel."""
    if is_region_target(target):
        return [index + 1 for index in range(len(target)) if (target[index] == 1).any()]
    return [int(v) for v in np.unique(target) if v != 0]


def structure_boxes(target: TargetVolume, values: Sequence[int]) -> dict[int, Box]:
    """Bounding box of each of ``values`` that has a voxel (as :func:`scipy.ndimage.find_objects`); crop a
    structure with :func:`structure_mask` of ``crop(target, box)``."""
    if not is_region_target(target):
        boxes = ndimage.find_objects(target)
        return {v: boxes[v - 1] for v in values if 0 < v <= len(boxes) and boxes[v - 1] is not None}
    found: dict[int, Box] = {}
    for value in values:
        (box,) = ndimage.find_objects(structure_mask(target, value).view(np.uint8), max_label=1)
        if box is not None:
            found[value] = box
    return found


def crop(target: TargetVolume, box: tuple[slice, ...]) -> TargetVolume:
    """The ``(Z, Y, X)`` box of a label map or of every channel of a region target (a view)."""
    cropped: TargetVolume = target[(slice(None), *box)] if is_region_target(target) else target[box]
    return cropped


def probability_channel(target: TargetVolume, value: int) -> int:
    """The probability channel of structure ``value``: ``value - 1`` (sigmoids of a region model, no
    background) for a region target, ``value`` (softmax, background 0) for a label map."""
    return value - 1 if is_region_target(target) else value


def foreground_mask(target: TargetVolume) -> BoolVolume:
    """Voxels of any structure (any nonzero label)."""
    mask: BoolVolume = np.any(target == 1, axis=0) if is_region_target(target) else np.asarray(target > 0)
    return mask


def regions_from_labels(
    labels: TargetVolume, regions: Sequence[Region], ignore_label: int | None = None
) -> TargetVolume:
    """The ``(K, Z, Y, X)`` uint8 region target of an nnU-Net region label map: channel ``k`` is 1 where the
    label is one of ``regions[k].label_values``; :data:`UNKNOWN` in every channel where it is
    ``ignore_label`` (which no region holds, as nnU-Net requires)."""
    target = np.zeros((len(regions), *labels.shape), np.uint8)
    for index, region in enumerate(regions):
        target[index] = np.isin(labels, region.label_values)
    if ignore_label is not None:
        target[:, labels == ignore_label] = UNKNOWN
    return target


def overlapping_pairs(target: TargetVolume, names: Sequence[str]) -> dict[str, int]:
    """``"A+B"`` -> voxels in both, for every pair of structures of a region target that overlap."""
    found: dict[str, int] = {}
    for first, second in combinations(range(len(names)), 2):
        shared = int(np.count_nonzero((target[first] == 1) & (target[second] == 1)))
        if shared:
            found[f"{names[first]}+{names[second]}"] = shared
    return found


def are_disjoint(target: TargetVolume) -> bool:
    """Whether no voxel of a region target belongs to two structures."""
    return bool(((target == 1).sum(0) <= 1).all()) if len(target) else True


def label_map_in_class_order(target: TargetVolume, class_order: Sequence[int]) -> LabelVolume:
    """nnU-Net's label map of region predictions (``regions_class_order``): region ``k``'s voxels get label
    value ``class_order[k]``, the regions painted in order, a later one over an earlier one. For nested
    regions (BraTS whole tumour ``[1, 2, 3]`` / tumour core ``[2, 3]`` / enhancing ``3``, order ``[1, 2, 3]``)
    this gives back the label values the regions were made from (:func:`regions_from_labels`).

    Args:
        target: ``(K, Z, Y, X)`` region target (0/1).
        class_order: one label value per region, ``K`` of them.

    Returns:
        ``(Z, Y, X)`` uint8 label map (uint16 for values above 255).
    """
    if len(class_order) != len(target):
        raise ValueError(f"regions_class_order has {len(class_order)} values for {len(target)} regions")
    labels = np.zeros(target.shape[1:], np.uint8 if max(class_order, default=0) < 256 else np.uint16)
    for index, value in enumerate(class_order):
        labels[target[index] == 1] = value
    return labels


def label_map_of(target: TargetVolume) -> LabelVolume:
    """A disjoint region target as a label map (structure number ``k + 1`` where channel ``k`` is set;
    uint8, uint16 above 255 structures). The caller checks :func:`are_disjoint` first."""
    labels = np.zeros(target.shape[1:], np.uint8 if len(target) < 256 else np.uint16)
    for index in range(len(target)):
        labels[target[index] == 1] = index + 1
    return labels
