"""Region-based training: whether the network predicts one softmax over a label map's classes or one sigmoid
per structure (``docs/design.md``, "Region-based training").

Structures that overlap (PTV contains CTV contains GTV; every organ lies inside BODY) cannot be classes of one
softmax: a voxel has one class. A dataset that declares regions (nnU-Net's list label values, or the
multi-label ``"structures"`` layout, :mod:`autoseg.regions`) is trained region-based, as nnU-Net does for its
regions: one sigmoid output per structure, Dice + binary cross-entropy with deep supervision, a threshold of
0.5 per structure at prediction. Every other dataset keeps the softmax.
"""

from __future__ import annotations

from autoseg.fingerprint import Fingerprint
from autoseg.plans import TargetPlan


def training_target(fingerprint: Fingerprint) -> tuple[TargetPlan, str]:
    """The network's target for ``fingerprint``'s dataset, and the reason (the plan's ``why["target"]``)."""
    types = dict(fingerprint.structure_types)
    if not fingerprint.regions:
        ignore = fingerprint.ignore_label
        return (
            TargetPlan(structure_types=types, ignore_label=ignore),
            "softmax over the classes: the labels are one label map of disjoint classes"
            + (
                ""
                if ignore is None
                else f"; label value {ignore} is nnU-Net's ignore label (unknown class): left out of the "
                "loss, foreground sampling and validation, never predicted"
            ),
        )
    names = [region.name for region in fingerprint.regions]
    ignore = fingerprint.ignore_label
    target = TargetPlan(
        "regions", fingerprint.regions, fingerprint.regions_class_order, types, ignore_label=ignore
    )
    declared = (
        "nnU-Net regions (label values that are lists)"
        if fingerprint.regions[0].label_values
        else "a multi-label layout ('structures', one binary channel per structure)"
    )
    overlaps = fingerprint.overlap_cases()
    found = (
        "; overlapping in the training cases: "
        + ", ".join(f"{_pair_names(pair, names)} in {count} case(s)" for pair, count in overlaps.items())
        if overlaps
        else ("; nested by definition" if fingerprint.regions[0].label_values else "; no overlap measured")
    )
    return target, (
        f"region-based: sigmoid per structure ({', '.join(names)}), Dice + BCE with deep supervision, "
        f"threshold 0.5; the dataset declares {declared}{found}"
        + (
            ""
            if ignore is None
            else f"; label value {ignore} is nnU-Net's ignore label: unknown in every structure, left out "
            "of the loss, foreground sampling and validation"
        )
    )


def _pair_names(pair: str, names: list[str]) -> str:
    """``"1+3"`` (structure numbers, as the fingerprint counts them) -> ``"GTV+PTV"``."""
    return "+".join(names[int(number) - 1] for number in pair.split("+"))
