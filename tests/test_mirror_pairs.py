"""Laterality found in the fingerprint: structures whose centroids mirror each other across the patient's
left-right axis with similar volumes, whatever their names, make the planner keep left from right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_nnunet_dataset

from autoseg.dataset.layout import load_dataset
from autoseg.fingerprint import Fingerprint, MirrorPair, extract_fingerprint, load_fingerprint
from autoseg.io import Geometry
from autoseg.planning.laterality import mirroring_plan

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FLIPPED_X = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # x index towards the patient's right (RAS-like)


def kidneys_case(
    rng: np.random.Generator, direction: tuple[float, ...], *, second_size: int = 4, shift_z: int = 0
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """A 16 x 20 x 24 case: "alpha" (1) at low x index, "beta" (2) at the mirrored high x index, a spleen-like
    "gamma" (3) in the middle; ``second_size`` changes beta's extent along x, ``shift_z`` moves beta along
    z (10 mm for -5)."""
    labels = np.zeros((16, 20, 24), np.uint8)
    labels[5:11, 7:13, 4:8] = 1
    labels[5 + shift_z : 11 + shift_z, 7:13, 16 : 16 + second_size] = 2
    labels[2:4, 2:5, 10:14] = 3
    image = rng.normal(size=(1, *labels.shape)).astype(np.float32) + labels
    return image, labels, Geometry((2.0, 1.5, 1.5), (0.0, 0.0, 0.0), direction)


def _fingerprint(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray, Geometry]]) -> Fingerprint:
    labels = {"background": 0, "alpha": 1, "beta": 2, "gamma": 3}
    dataset = load_dataset(write_nnunet_dataset(root, cases, labels=labels))
    return extract_fingerprint(dataset, show_progress=False)


@pytest.mark.parametrize(("direction", "left"), [(IDENTITY, "beta"), (FLIPPED_X, "alpha")])
def test_mirror_image_pairs_are_found_in_patient_space(
    tmp_path: Path, rng: np.random.Generator, direction: tuple[float, ...], left: str
) -> None:
    """LPS +x is the patient's left: with the identity direction beta (high x index) is the left one; stored
    with x flipped, the same arrays put alpha on the left."""
    cases = {f"case_{i}": kidneys_case(rng, direction) for i in range(3)}
    fingerprint = _fingerprint(tmp_path / "Dataset030_Pairs", cases)
    right = "alpha" if left == "beta" else "beta"
    assert fingerprint.mirror_pairs == (MirrorPair(left, right, 3, 3),)
    (tmp_path / "fingerprint.json").write_text(json.dumps(fingerprint.to_json()))
    assert load_fingerprint(tmp_path / "fingerprint.json").mirror_pairs == fingerprint.mirror_pairs
    plan, why = mirroring_plan(fingerprint.labels, fingerprint.mirror_pairs)
    assert not plan.left_right and plan.lateral_structures == ("alpha", "beta")
    assert "mirror-image pairs found in the fingerprint" in why and f"{left}/{right} in 3 of 3" in why


@pytest.mark.parametrize(
    "changes",
    [{"second_size": 8}, {"shift_z": -5}],  # beta twice alpha's volume; beta 10 mm lower than alpha
    ids=["different volumes", "not level"],
)
def test_structures_that_do_not_mirror_are_no_pair(
    tmp_path: Path, rng: np.random.Generator, changes: dict[str, int]
) -> None:
    cases = {f"case_{i}": kidneys_case(rng, IDENTITY, **changes) for i in range(3)}
    fingerprint = _fingerprint(tmp_path / "Dataset031_NoPairs", cases)
    assert fingerprint.mirror_pairs == ()
    assert "mirror_pairs" not in fingerprint.to_json()
    plan, why = mirroring_plan(fingerprint.labels, fingerprint.mirror_pairs)
    assert plan.left_right and "found no mirror-image pair" in why


def test_a_pair_needs_most_cases(tmp_path: Path, rng: np.random.Generator) -> None:
    """Mirrored in one case of three only: not a pair."""
    cases = {
        "case_0": kidneys_case(rng, IDENTITY),
        "case_1": kidneys_case(rng, IDENTITY, shift_z=-5),
        "case_2": kidneys_case(rng, IDENTITY, shift_z=-5),
    }
    assert _fingerprint(tmp_path / "Dataset032_Once", cases).mirror_pairs == ()
