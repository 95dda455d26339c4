"""``autoseg demo``: its easy synthetic preset (the demo's own run, with its Dice floor on the held-out cases,
is ``tests/test_cli.py::test_demo_runs_end_to_end_and_is_idempotent``, slow)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from autoseg.dataset.synthetic import SynthConfig, synthesize_case
from autoseg.demo import HELDOUT_CASES, demo_dataset_config
from autoseg.errors import UsageError


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
