"""Training building blocks: splits, Dice + CE with deep supervision, patch sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.errors import SplitsError, UsageError
from autoseg.training.loss import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    downsample_target,
    soft_dice,
)
from autoseg.training.sampling import forced_foreground, sample_patch
from autoseg.training.splits import load_or_create_splits, make_splits, read_groups
from autoseg.workdir import Workdir

CASES = [f"case_{i:02d}" for i in range(23)]


def test_splits_partition_the_cases_and_are_seeded() -> None:
    splits = make_splits(CASES, seed=1)
    assert len(splits) == 5
    validation = [c for s in splits for c in s["val"]]
    assert sorted(validation) == CASES  # every case validated exactly once
    assert {len(s["val"]) for s in splits} <= {4, 5}
    for split in splits:
        assert not set(split["train"]) & set(split["val"])
        assert sorted(split["train"] + split["val"]) == CASES
    assert make_splits(CASES, seed=1) == splits
    assert make_splits(CASES, seed=2) != splits


def test_groups_keep_a_patient_in_one_fold(tmp_path: Path) -> None:
    groups = {case: f"patient_{i // 3}" for i, case in enumerate(CASES)}  # 3 scans per patient
    splits = make_splits(CASES, groups=groups)
    for split in splits:
        assert not {groups[c] for c in split["train"]} & {groups[c] for c in split["val"]}
    path = tmp_path / "groups.csv"
    path.write_text("case,patient\n" + "".join(f"{c},{g}\n" for c, g in groups.items()))
    assert read_groups(path, CASES) == groups
    path.write_text("case,patient\ncase_00,p\n")
    with pytest.raises(SplitsError, match="no group for 22 case"):
        read_groups(path, CASES)
    with pytest.raises(UsageError, match="cannot fill 5 folds"):
        make_splits(CASES, groups=dict.fromkeys(CASES, "same"))


def test_splits_file_is_made_once_and_checked(tmp_path: Path) -> None:
    first = load_or_create_splits(Workdir(tmp_path), CASES)
    stamp = (tmp_path / "splits.json").stat().st_mtime_ns
    assert load_or_create_splits(Workdir(tmp_path), CASES, seed=99) == first  # reused, not re-drawn
    assert (tmp_path / "splits.json").stat().st_mtime_ns == stamp
    with pytest.raises(SplitsError, match="does not match the dataset"):
        load_or_create_splits(Workdir(tmp_path), [*CASES, "new_case"])
    assert json.loads((tmp_path / "splits.json").read_text())[0]["val"] == first[0]["val"]
    small = load_or_create_splits(Workdir(tmp_path / "small"), CASES[:3])
    assert len(small) == 3 and all(len(s["val"]) == 1 for s in small)  # fewer cases than folds


def test_soft_dice_and_loss_values() -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    perfect = torch.where(torch.nn.functional.one_hot(target, 2).movedim(-1, 1) > 0, 20.0, -20.0)
    assert soft_dice(perfect, target, batch_dice=True).item() == pytest.approx(1.0, abs=1e-6)
    assert DiceCELoss(batch_dice=False)(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    wrong = -perfect
    assert soft_dice(wrong, target, batch_dice=False).item() < 1e-6
    uniform = torch.zeros(2, 2, 8, 8)
    loss = DiceCELoss(batch_dice=True)(uniform, target).item()
    dice = 2 * 0.5 * 16 / (0.5 * 64 + 16)  # probability 0.5 everywhere against a 16-voxel square
    assert loss == pytest.approx(np.log(2) + 1 - dice, rel=1e-4)


def test_background_is_excluded_from_dice() -> None:
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[:, 6:8, 6:8] = 1  # 4 foreground voxels among 256
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 0] = 10.0  # predicts background everywhere: right on 252 voxels, wrong on the structure
    assert (
        soft_dice(logits, target, batch_dice=False).item() < 0.01
    )  # with background counted it would be ~0.5


def test_deep_supervision_weights_and_targets() -> None:
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    target = torch.arange(16).reshape(1, 4, 4) % 3
    small = downsample_target(target, (2, 2))
    assert small.shape == (1, 2, 2) and small.dtype == torch.long
    assert set(small.unique().tolist()) <= {0, 1, 2}
    outputs = [
        torch.randn(1, 3, 8, 8, requires_grad=True),
        torch.randn(1, 3, 4, 4, requires_grad=True),
        torch.randn(1, 3, 2, 2, requires_grad=True),
    ]
    full = torch.randint(0, 3, (1, 8, 8))
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=False))(outputs, full)
    loss.backward()
    assert outputs[0].grad is not None and outputs[1].grad is not None
    assert outputs[2].grad is None or float(outputs[2].grad.abs().sum()) == 0.0  # coarsest output: weight 0
    expected = 2 / 3 * DiceCELoss(batch_dice=False)(outputs[0], full) + 1 / 3 * DiceCELoss(batch_dice=False)(
        outputs[1], downsample_target(full, (4, 4))
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_forced_patches_contain_the_chosen_class(rng: np.random.Generator) -> None:
    labels = np.zeros((40, 60, 60), np.uint8)
    labels[30:33, 50:53, 5:8] = 2  # a small structure near a corner
    image = rng.normal(size=(2, 40, 60, 60)).astype(np.float32)
    foreground = {2: np.argwhere(labels == 2).astype(np.int32)}
    for _ in range(50):
        patch, target = sample_patch(image, labels, foreground, (16, 24, 24), rng, force_foreground=True)
        assert patch.shape == (2, 16, 24, 24) and target.shape == (16, 24, 24)
        assert (target == 2).any()
    hits = sum(
        bool(
            (sample_patch(image, labels, foreground, (16, 24, 24), rng, force_foreground=False)[1] == 2).any()
        )
        for _ in range(100)
    )
    assert hits < 50  # unforced patches find the small structure far less often
    assert forced_foreground(2) == 1 and forced_foreground(3) == 1 and forced_foreground(7) == 3


def test_patches_pad_beyond_the_border_and_2d_takes_slices(rng: np.random.Generator) -> None:
    labels = np.ones((4, 6, 6), np.uint8)
    image = np.ones((1, 4, 6, 6), np.float32)
    padded = [sample_patch(image, labels, {}, (8, 10, 10), rng, force_foreground=False) for _ in range(20)]
    for patch, target in padded:
        assert patch.shape == (1, 8, 10, 10)
        assert (
            patch.sum() == target.sum() > 0
        )  # image voxels where the window overlaps it, zero padding elsewhere
    starts_seen = {tuple(np.argwhere(p[0] > 0).min(0)) for p, _ in padded}
    assert len(starts_seen) > 1  # placement varies
    patch2d, target2d = sample_patch(
        image, labels, {1: np.array([[2, 3, 3]], np.int32)}, (6, 6), rng, force_foreground=True
    )
    assert patch2d.shape == (1, 6, 6) and target2d.shape == (6, 6)
