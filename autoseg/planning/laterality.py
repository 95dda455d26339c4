"""Laterality: whether a dataset's structures have a side, and so whether left-right mirroring is allowed.

Mirroring an image along the patient's left-right axis turns a left lung into a right one. When a structure
name says its side (TG-263 ``Lung_L``/``Lung_R``, or a common spelling: ``Left``/``Right``, ``Lt``/``Rt``,
``L_``/``R_`` prefixes, ``parotid left``, ``LungLeft``), the planner keeps training and test-time augmentation
from mirroring that axis (:class:`autoseg.plans.MirroringPlan`), as TotalSegmentator trains without mirroring.
Vertebra-like names (``L5``, ``T12``) are not sides: a side is a whole word. Structures whatever their names
that the fingerprint finds as mirror-image pairs (:func:`autoseg.fingerprint.find_mirror_pairs`: centroids
mirrored across the patient's left-right axis, similar volumes) do the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from autoseg.dicom.names import LEFT_WORDS, RIGHT_WORDS
from autoseg.fingerprint import MirrorPair
from autoseg.plans import MirroringPlan

SIDES = {**dict.fromkeys(LEFT_WORDS, "L"), **dict.fromkeys(RIGHT_WORDS, "R")}
"""Words (lower case) that name a side: the same vocabulary as the TG-263 matcher
(:data:`autoseg.dicom.names.LEFT_WORDS`), so a name the matcher reads as sided is sided here too."""

_WORDS = re.compile(r"[A-Z]+(?![a-z])\d*|[A-Z]?[a-z]+\d*|\d+")


def name_words(name: str) -> list[str]:
    """The words of a structure name, lower case: split at separators and camel-case steps, digits kept on
    the word they follow (``"LtParotid_2"`` -> ``["lt", "parotid", "2"]``, ``"L5"`` -> ``["l5"]``)."""
    return [word.lower() for word in _WORDS.findall(name)]


def side_of(name: str) -> tuple[str, str] | None:
    """``(side, base)`` of a name with exactly one side word (``"Parotid_L"`` -> ``("L", "parotid")``),
    else ``None``; ``base`` is the name's other words, so ``Lt Parotid`` and ``Parotid_R`` share it."""
    words = name_words(name)
    sided = [index for index, word in enumerate(words) if word in SIDES]
    if len(sided) != 1 or len(words) < 2:
        return None
    index = sided[0]
    return SIDES[words[index]], "_".join(words[:index] + words[index + 1 :])


def lateral_pairs(names: list[str]) -> list[tuple[str, str]]:
    """``(left, right)`` name pairs that differ only by their side (``Lung_L``/``Lung_R``), sorted."""
    by_base: dict[str, dict[str, str]] = {}
    for name in names:
        found = side_of(name)
        if found is not None:
            by_base.setdefault(found[1], {})[found[0]] = name
    return sorted((sides["L"], sides["R"]) for sides in by_base.values() if {"L", "R"} <= set(sides))


def mirroring_plan(
    labels: Mapping[str, int], mirror_pairs: Sequence[MirrorPair] = ()
) -> tuple[MirroringPlan, str]:
    """The mirroring a dataset allows, with the reason for ``plans.json``.

    Args:
        labels: structure name -> label value, background included (it never has a side).
        mirror_pairs: structures the fingerprint found as mirror-image pairs
            (:func:`autoseg.fingerprint.find_mirror_pairs`), whatever their names.
    """
    names = [name for name, value in labels.items() if value != 0]
    lateral = sorted(name for name in names if side_of(name) is not None)
    found_pairs = [p for p in mirror_pairs if p.left in names and p.right in names]
    if not lateral and not found_pairs:
        return MirroringPlan(), (
            "no structure name has a side (_L/_R, Left/Right, Lt/Rt, L_/R_) and the fingerprint found no "
            "mirror-image pair: every axis mirrored, as nnU-Net"
        )
    pairs = lateral_pairs(names)
    paired = {name for pair in pairs for name in pair}
    reasons = []
    if lateral:
        sided = [f"{left}/{right}" for left, right in pairs] + [n for n in lateral if n not in paired]
        reasons.append(f"structures with a side ({', '.join(sided)})")
    if found_pairs:
        listed = ", ".join(
            f"{p.left}/{p.right} in {p.cases} of {p.both_present} case(s)" for p in found_pairs
        )
        reasons.append(
            "mirror-image pairs found in the fingerprint (centroids mirrored across the patient's left-right "
            f"axis, similar volumes: {listed}; the first lies on the patient's left)"
        )
    why = (
        f"{'; '.join(reasons)}: no mirroring along the patient's left-right axis (per image the array axis "
        "closest to patient x, from its direction), so the network can tell left from right; the other axes "
        "are mirrored"
    )
    mirrored = {name for p in found_pairs for name in (p.left, p.right)}
    return MirroringPlan(left_right=False, lateral_structures=tuple(sorted({*lateral, *mirrored}))), why
