"""``autoseg demo``: its easy synthetic preset, and (slow) the demo's Dice floor on its held-out cases."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.synthetic import SynthConfig, synthesize_case
from autoseg.demo import HELDOUT_CASES, demo_dataset_config, run_demo
from autoseg.errors import UsageError

DICE_FLOOR = 0.7
"""Every class of the demo's held-out cases must reach this Dice (issue 15, point 6)."""


def test_demo_preset_is_the_easy_variant_of_the_same_anatomy() -> None:
    config = replace(demo_dataset_config(), cases=3)
    assert config.difficulty == "easy" and config.classes == 3 and config.modality == "CT"
    standard = replace(config, difficulty="standard")
    for index in range(config.cases):
        image, labels, _ = synthesize_case(config, index)
        plain_image, plain_labels, _ = synthesize_case(standard, index)
        # same random draws: the organ (with its lesion) and the neighbour are the standard ones
        assert np.array_equal(np.isin(labels, (1, 2)), np.isin(plain_labels, (1, 2)))
        assert np.array_equal(labels == 3, plain_labels == 3)
        lesion, organ, neighbour = (image[0][labels == v].mean() for v in (2, 1, 3))
        assert (labels == 2).sum() > (plain_labels == 2).sum()  # a larger lesion
        assert lesion < organ - 50 and neighbour > organ + 40  # one sign, high contrast
        noise = float(np.std(image[0][labels == 1]))
        assert noise < float(np.std(plain_image[0][plain_labels == 1]))


def test_difficulty_is_written_only_when_easy_and_checked() -> None:
    assert "difficulty" not in SynthConfig().to_json()  # the standard presets' dataset.json are unchanged
    easy = SynthConfig(difficulty="easy")
    assert easy.to_json()["difficulty"] == "easy"
    assert SynthConfig.from_json(easy.to_json()) == easy
    with pytest.raises(UsageError, match="difficulty is 'hard'"):
        SynthConfig.from_json({"difficulty": "hard"})


def test_heldout_cases_hold_every_class() -> None:
    config = demo_dataset_config()
    heldout = replace(config, cases=HELDOUT_CASES, seed=config.seed + 1000)
    for index in range(HELDOUT_CASES):
        _, labels, _ = synthesize_case(heldout, index)
        assert set(np.unique(labels)) == {0, 1, 2, 3}


@pytest.mark.slow
@pytest.mark.xfail(
    reason="not yet (issue 15.6): in a 500-iteration run of the easy preset (2026-12-02, load 10-20) the "
    "validation Dice after the last epoch was organ 0.75, lesion 0.00, neighbour 0.00; the 800-iteration "
    "schedule is not yet seen passing",
    strict=False,
)
def test_demo_segments_every_class_of_the_heldout_cases(tmp_path: Path) -> None:
    lines = run_demo(tmp_path / "demo", show_progress=False)
    text = "\n".join(lines)
    summary = json.loads((tmp_path / "demo" / "evaluation" / "summary.json").read_text())
    assert set(summary["per_class"]) == {"1", "2", "3"}
    for value, stats in summary["per_class"].items():
        assert stats["dice"]["mean"] >= DICE_FLOOR, (value, stats["dice"], text)
        assert stats["hd95_mm"]["mean"] is not None and math.isfinite(stats["hd95_mm"]["mean"])
    assert "HD95 mm" in text
    tables = sorted((tmp_path / "demo" / "predictions").glob("*_structures.json"))
    assert len(tables) == HELDOUT_CASES
    for table in tables:
        flags = [f for row in json.loads(table.read_text())["structures"] for f in row["flags"]]
        assert flags == [], (table.name, flags)
    assert text.count(" flags: none") == HELDOUT_CASES
