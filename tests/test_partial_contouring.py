"""Partly contoured cases: an unannotated structure is left out of the loss, not background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.training.loss import DeepSupervisionLoss, RegionLoss, soft_dice_sigmoid


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 4, 6, 6, generator=generator)
    target = (torch.rand(2, 2, 4, 6, 6, generator=generator) > 0.6).to(torch.uint8)
    annotated = torch.tensor([[1, 1], [1, 0]], dtype=torch.uint8)  # structure 1 unannotated in sample 1
    return logits, target, annotated


@pytest.mark.parametrize("batch_dice", [False, True])
def test_the_masked_loss_ignores_an_unannotated_channel(batch_dice: bool) -> None:
    logits, target, annotated = _batch()
    loss = RegionLoss(batch_dice=batch_dice)
    masked = float(loss(logits, target, annotated))
    changed_logits, changed_target = logits.clone(), target.clone()
    changed_logits[1, 1] = 50.0  # the unannotated channel's predictions and target change...
    changed_target[1, 1] = 0
    assert float(loss(changed_logits, changed_target, annotated)) == pytest.approx(
        masked, abs=1e-6
    )  # ...no effect
    assert float(loss(changed_logits, changed_target)) != pytest.approx(
        masked, abs=1e-3
    )  # unmasked: it counts
    every = torch.ones_like(annotated)
    assert float(loss(logits, target, every)) == pytest.approx(float(loss(logits, target)), abs=1e-6)
    leaf = logits.clone().requires_grad_(True)
    loss(leaf, target, annotated).backward()
    assert leaf.grad is not None and not leaf.grad[1, 1].any() and leaf.grad[1, 0].any()


def test_masked_dice_and_deep_supervision() -> None:
    logits, target, annotated = _batch()
    per_sample = float(soft_dice_sigmoid(logits, target, batch_dice=False, annotated=annotated))
    one = [(logits[b : b + 1, k : k + 1], target[b : b + 1, k : k + 1]) for b, k in ((0, 0), (0, 1), (1, 0))]
    pairs = [float(soft_dice_sigmoid(x, y, batch_dice=False)) for x, y in one]
    assert per_sample == pytest.approx(sum(pairs) / 3, abs=1e-6)  # the mean over annotated pairs
    batch = float(soft_dice_sigmoid(logits, target, batch_dice=True, annotated=annotated))
    first = float(soft_dice_sigmoid(logits[:, :1], target[:, :1], batch_dice=True))
    second = float(soft_dice_sigmoid(logits[:1, 1:], target[:1, 1:], batch_dice=True))
    assert batch == pytest.approx((first + second) / 2, abs=1e-6)  # structure 1 summed over sample 0 only
    wrapped = DeepSupervisionLoss(RegionLoss(batch_dice=False))
    plain = float(RegionLoss(batch_dice=False)(logits, target, annotated))
    coarse = logits[..., ::2, ::2, ::2]  # weights 1, 0 for two outputs: the mask reaches the loss unchanged
    assert float(wrapped([logits, coarse], target, annotated)) == pytest.approx(plain, abs=1e-6)


def test_fold_validation_skips_a_structure_a_case_never_contoured(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from helpers import plan_and_preprocess_argv, tiny_train_config
    from test_regions import write_multi_label_dataset

    from autoseg.cli.main import main
    from autoseg.training import train_fold
    from autoseg.workdir import Workdir

    dataset = write_multi_label_dataset(tmp_path / "Dataset005_Partial", rng)
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    Workdir(workdir).write_reference_annotated({"case_000": (2, 3)})  # case_000's GTV (1) was never drawn
    summary = train_fold(workdir, tiny_train_config(), show_progress=False).summary
    assert summary is not None
    assert summary["cases"]["case_000"]["1"] is None  # not scored there, not a zero
    assert all(summary["cases"][case]["1"] is not None for case in ("case_001", "case_002", "case_003"))
    assert summary["cases"]["case_000"]["2"] is not None


def _two_cases() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Case 0 predicted exactly (a GTV (1) touching an organ (2): one foreground object); case 1's reference
    has no GTV and its prediction a small separate GTV blob."""
    first = np.zeros((16, 16, 16), np.uint8)
    first[2:6, 2:6, 2:6], first[2:6, 2:6, 6:10] = 1, 2
    reference, prediction = np.zeros_like(first), np.zeros_like(first)
    reference[8:14, 8:14, 8:14] = prediction[8:14, 8:14, 8:14] = 2
    prediction[1:3, 1:3, 1:3] = 1
    return [(first, first.copy(), (1.0, 1.0, 1.0)), (prediction, reference, (1.0, 1.0, 1.0))]


def test_postprocessing_is_chosen_on_contoured_structures_only() -> None:
    from dataclasses import replace

    from autoseg.postprocessing.choice import case_components, choose_from_components

    components = [case_components(p, r, s, [1, 2]) for p, r, s in _two_cases()]
    scored_everywhere = choose_from_components(components, [1, 2])
    # Scored as drawn, case 1's GTV blob is a false positive (Dice 0) that keeping the largest object removes.
    assert [s.describe() for s in scored_everywhere.steps] == ["keep_largest_component(foreground)"]
    # Case 1 never contoured a GTV: its blob says nothing, and nothing is worth removing.
    components[1] = replace(components[1], unannotated=frozenset({1}))
    assert choose_from_components(components, [1, 2]).steps == ()


def test_find_best_configuration_skips_structures_a_case_never_contoured(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from helpers import plan_and_preprocess_argv, tiny_train_config
    from test_regions import write_multi_label_dataset

    from autoseg.cli.main import main
    from autoseg.evaluation.best_configuration import (
        BestConfigurationOptions,
        run_find_best_configuration,
    )
    from autoseg.training import train_fold
    from autoseg.workdir import Workdir

    dataset = write_multi_label_dataset(tmp_path / "Dataset005_Partial", rng)
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    Workdir(workdir).write_reference_annotated({"case_000": (2, 3)})
    summary = train_fold(workdir, tiny_train_config(), show_progress=False).summary
    assert summary is not None and summary["cases"]["case_000"]["1"] is None
    result = run_find_best_configuration(
        workdir, BestConfigurationOptions(configurations=("3d_fullres",)), show_progress=False
    )
    # The choice's per-structure means are the fold summary's, which leaves case_000's GTV out.
    for name, mean in summary["mean_dice_per_class"].items():
        assert result.best.dice_per_class[name] == pytest.approx(mean, abs=1e-6)
