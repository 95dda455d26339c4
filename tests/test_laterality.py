"""Laterality is kept: names with a side, training augmentation and test-time mirroring in patient space."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_fingerprint
from torch import nn

from autoseg.inference.ensemble import InferenceSettings, labels_from_probabilities
from autoseg.inference.stage import case_settings, predict_case
from autoseg.io import Geometry
from autoseg.planning import get_planner
from autoseg.planning.laterality import lateral_pairs, side_of
from autoseg.plans import (
    ChannelNormalization,
    ConfigurationPlan,
    MirroringPlan,
    OrientationPlan,
    left_right_axis,
)
from autoseg.preprocessing.case import CaseProperties, PreprocessedCase, sample_foreground
from autoseg.preprocessing.store import save_case
from autoseg.training.data import BatchSpec, PatchBatches

DIRECTIONS = {
    "LPS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),  # array x = patient x (towards the left)
    "RAS": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0),  # array x runs towards the right
    "permuted": (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0),  # array axis 0 runs left-right
}
KEEP_LATERALITY = MirroringPlan(left_right=False, lateral_structures=("Lung_L", "Lung_R"))


def test_names_with_a_side_and_their_pairs() -> None:
    assert side_of("Parotid_L") == ("L", "parotid")
    assert side_of("Lt Parotid") == ("L", "parotid")
    assert side_of("R_Kidney") == ("R", "kidney")
    assert side_of("lung upper lobe right") == ("R", "lung_upper_lobe")
    assert side_of("LungLeft") == ("L", "lung")
    assert side_of("Vertebra_L5") is None and side_of("L") is None and side_of("Brainstem") is None
    names = ["Lt Parotid", "PAROTID_R", "Lens_L", "Heart", "Kidney_L", "Kidney_R"]
    assert lateral_pairs(names) == [("Kidney_L", "Kidney_R"), ("Lt Parotid", "PAROTID_R")]


def test_the_planner_reads_sides_as_the_tg263_matcher_does() -> None:
    from autoseg.dicom.names import match_tg263

    for left, right in (("Parotid_Lft", "Parotid_Rgt"), ("Niere links", "Niere rechts")):
        assert side_of(left) is not None and side_of(right) is not None
        assert lateral_pairs([left, right]) == [(left, right)]
    assert match_tg263("Parotid_Lft").standard == "Parotid_L"


# ----------------------------------------------------------------------------------- training augmentation


def _half_case(folder: Path, identifier: str, direction: tuple[float, ...], axis: int) -> None:
    """A stored 20^3 case: label 1 in the low-index half along array ``axis``, label 2 in the high one.
    Rotation (at most 30 degrees per axis), scaling and cropping keep label 2 above label 1 along ``axis``;
    mirroring along ``axis``, and only that, puts it below."""
    shape = (20, 20, 20)
    image = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    labels = np.ones(shape, np.uint8)
    labels[tuple(slice(10, None) if a == axis else slice(None) for a in range(3))] = 2
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    properties = CaseProperties(
        identifier, shape, geometry, ((0, 20),) * 3, shape, (1.0, 1.0, 1.0), shape, (1, 2)
    )
    foreground = sample_foreground(labels, np.random.default_rng(0))
    save_case(PreprocessedCase(image, labels, properties, foreground), folder / identifier, "test")


def _mirrored(folder: Path, identifier: str, axis: int, mirroring: MirroringPlan) -> list[bool]:
    """Per augmented sample holding both labels (of 32), whether it came out mirrored along ``axis``: label
    2's centre below label 1's."""
    spec = BatchSpec(folder, (identifier,), (16, 16, 16), 2, augment=True, seed=3, mirroring=mirroring)
    mirrored = []
    for batch in itertools.islice(iter(PatchBatches(spec, epoch=0)), 16):
        for target in batch["target"].numpy():
            low, high = np.nonzero(target == 1)[axis], np.nonzero(target == 2)[axis]
            if min(low.size, high.size) > 0.05 * target.size:
                mirrored.append(bool(high.mean() < low.mean()))
    assert len(mirrored) >= 16
    return mirrored


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_augmentation_never_mirrors_the_left_right_axis_when_the_plan_keeps_laterality(
    tmp_path: Path, name: str
) -> None:
    direction = DIRECTIONS[name]
    lateral = left_right_axis(direction)
    assert lateral == (0 if name == "permuted" else 2)
    _half_case(tmp_path, "lateral", direction, lateral)
    assert not any(_mirrored(tmp_path, "lateral", lateral, KEEP_LATERALITY))
    assert any(_mirrored(tmp_path, "lateral", lateral, MirroringPlan()))  # before: every axis mirrored
    for other in {0, 1, 2} - {lateral}:  # the other axes are still mirrored
        _half_case(tmp_path, f"axis_{other}", direction, other)
        assert any(_mirrored(tmp_path, f"axis_{other}", other, KEEP_LATERALITY))


# --------------------------------------------------------------------------------------------- prediction


class SideAwareNetwork(nn.Module):
    """A network that is not mirror-symmetric: a bright voxel is ``Lung_L`` (class 1) on the patient's left
    half of the window and ``Lung_R`` (class 2) on the right half, as a trained network would tell them apart
    by where they are. ``axis``: the array axis running left-right, ``towards_left``: whether the patient's
    left is at its high indices."""

    def __init__(self, axis: int, towards_left: bool) -> None:
        super().__init__()
        self.axis, self.towards_left = axis, towards_left

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x[:, :1] > 0.5).float()
        size = x.shape[2 + self.axis]
        index = torch.arange(size, dtype=torch.float32).reshape(
            [-1 if a == self.axis else 1 for a in range(3)]
        )
        high = (index >= size / 2).float()
        left = high if self.towards_left else 1 - high
        return torch.cat([torch.full_like(bright, 0.5), 2 * bright * left, 2 * bright * (1 - left)], dim=1)


def _plan(
    mirroring: MirroringPlan, patch: tuple[int, int, int], orientation: str = "canonical"
) -> ConfigurationPlan:
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 2, [patch] * 2, channel_names=("CT",))
    plan = get_planner("default").plan(fingerprint).configuration("3d_fullres")
    identity = ChannelNormalization("ct", False, -1e6, 1e6, 0.0, 1.0)
    return dataclasses.replace(
        plan,
        spacing_mm=(1.0, 1.0, 1.0),
        patch_size=patch,
        normalization=(identity,),
        mirroring=mirroring,
        orientation=OrientationPlan(mode="as-stored" if orientation == "as-stored" else "canonical"),
    )


@pytest.mark.parametrize("orientation", ["canonical", "as-stored"])
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_a_left_structure_is_never_predicted_on_the_right(name: str, orientation: str) -> None:
    direction = DIRECTIONS[name]
    axis = left_right_axis(direction)
    towards_left = direction[6 + axis] > 0
    shape = [8, 12, 12]
    shape[axis] = 24
    image = np.full((1, *shape), 0.1, np.float32)
    low: list[slice] = [slice(None)] * 3
    high: list[slice] = [slice(None)] * 3
    low[axis], high[axis] = slice(3, 8), slice(16, 21)  # two bright organs, mirror images of each other
    image[0][tuple(low)] = image[0][tuple(high)] = 1.0
    left_side, right_side = (high, low) if towards_left else (low, high)
    # the network sees the stored array ("as-stored") or the canonical one: left-right on axis 2, left high
    network = (
        SideAwareNetwork(axis, towards_left) if orientation == "as-stored" else SideAwareNetwork(2, True)
    ).eval()
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    settings = InferenceSettings(mirror_axes=(0, 1, 2))
    patch = (shape[0], shape[1], shape[2])
    if orientation == "canonical":  # the window covers the canonical array: left-right (24) last
        others = [shape[a] for a in range(3) if a != axis]
        patch = (others[0], others[1], shape[axis])

    def predict(mirroring: MirroringPlan) -> tuple[np.ndarray, np.ndarray]:
        plan = _plan(mirroring, patch, orientation)
        probabilities = predict_case(image.copy(), geometry, [network], plan, 3, settings)
        return probabilities, labels_from_probabilities(probabilities)

    probabilities, labels = predict(KEEP_LATERALITY)
    assert (labels[tuple(left_side)] == 1).all() and (labels[tuple(right_side)] == 2).all()
    assert not (labels[tuple(right_side)] == 1).any()
    old_probabilities, old_labels = predict(MirroringPlan())  # every axis mirrored, as before
    np.testing.assert_allclose(old_probabilities[1], old_probabilities[2])  # left and right can't be told
    assert (old_labels[tuple(right_side)] == 1).all()  # the tie goes to Lung_L: on the right side
    assert not np.array_equal(probabilities, old_probabilities)


def test_case_settings_leave_out_the_left_right_axis_of_each_image() -> None:
    canonical = _plan(KEEP_LATERALITY, (8, 16, 16))  # the network sees LPS: left-right is always axis 2
    settings = InferenceSettings(mirror_axes=(0, 1, 2))
    for direction in DIRECTIONS.values():
        assert case_settings(
            settings, canonical, Geometry((1.0,) * 3, (0.0,) * 3, direction)
        ).mirror_axes == (0, 1)
    plan = _plan(KEEP_LATERALITY, (8, 16, 16), "as-stored")  # the stored array: its own left-right axis
    settings = InferenceSettings(mirror_axes=(0, 1, 2))
    geometry = {n: Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), d) for n, d in DIRECTIONS.items()}
    assert case_settings(settings, plan, geometry["LPS"]).mirror_axes == (0, 1)
    assert case_settings(settings, plan, geometry["RAS"]).mirror_axes == (0, 1)
    assert case_settings(settings, plan, geometry["permuted"]).mirror_axes == (1, 2)
    assert case_settings(InferenceSettings(), plan, geometry["LPS"]).mirror_axes == ()
    every = _plan(MirroringPlan(), (8, 16, 16), "as-stored")
    assert case_settings(settings, every, geometry["permuted"]) is settings
    two_d = dataclasses.replace(plan, dims=2, patch_size=(16, 16))
    assert case_settings(InferenceSettings(mirror_axes=(0, 1)), two_d, geometry["LPS"]).mirror_axes == (0,)
    assert case_settings(InferenceSettings(mirror_axes=(0, 1)), two_d, geometry["permuted"]).mirror_axes == (
        0,
        1,
    )


def test_rotation_and_mirroring_together_never_make_a_left_right_mirror_image() -> None:
    """A 180-degree in-plane rotation followed by a mirror of the other in-plane axis is a left-right mirror:
    with laterality kept, the full 2D pipeline never puts a left structure (and its marker) on the right."""
    from autoseg.training.augment import training_transforms

    transforms = training_transforms((48, 48), in_plane_only=False, mirror_left_right=False)
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002 (batchgenerators draws from numpy's global generator)
    try:
        mirrored = 0
        for _ in range(40):
            seg = np.zeros((8, 1, 48, 48), np.float32)
            seg[:, 0, 6:15, 4:13] = 1  # a left structure, anterior
            seg[:, 0, 33:42, 4:13] = 2  # a marker on the left, posterior
            out = transforms(data=seg.copy(), seg=seg, mirror_axes=[(0,)] * 8)  # y may flip, x never
            for sample in out["seg"][:, 0]:
                first, second = (np.nonzero(np.rint(sample) == v) for v in (1, 2))
                if first[1].size and second[1].size and first[1].mean() > 24 and second[1].mean() > 24:
                    mirrored += 1
    finally:
        np.random.set_state(state)  # noqa: NPY002
    assert mirrored == 0
