"""Post-processing: component operations, the JSON artifact, and the choice on cross-validation cases."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fingerprint
from scipy import ndimage

from autoseg.errors import EvaluationError, PostprocessingError
from autoseg.evaluation.metrics import dice_per_label
from autoseg.fingerprint import Distribution
from autoseg.io import Geometry, read_labels, write_labels
from autoseg.postprocessing.choice import (
    choose_postprocessing,
    min_volume_mm3_from_fingerprint,
    run_choose_postprocessing,
)
from autoseg.postprocessing.components import keep_largest_component, remove_small_components
from autoseg.postprocessing.steps import (
    Postprocessing,
    PostprocessingStep,
    apply_postprocessing,
    load_postprocessing,
    save_postprocessing,
)

SPACING = (3.0, 0.8, 0.8)


def box(labels: np.ndarray, value: int, start: tuple[int, int, int], size: tuple[int, int, int]) -> None:
    """Paint a box of ``value`` into ``labels`` in place."""
    labels[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = value


def three_objects() -> np.ndarray:
    """Class 1: a 2x3x3 box touching a 2x2x2 class-2 box (together 26 voxels), and a separate 3x3x3 class-1
    box (27 voxels); a lone class-2 voxel."""
    labels = np.zeros((8, 12, 12), np.uint8)
    box(labels, 1, (0, 0, 0), (2, 3, 3))
    box(labels, 2, (0, 3, 0), (2, 2, 2))
    box(labels, 1, (4, 6, 6), (3, 3, 3))
    labels[7, 11, 11] = 2
    return labels


def test_keep_largest_component_per_class_and_of_the_foreground() -> None:
    labels = three_objects()
    per_class = keep_largest_component(labels, [1])
    assert (
        np.count_nonzero(per_class == 1) == 27 and np.count_nonzero(per_class == 2) == 9
    )  # class 2 untouched
    both = keep_largest_component(labels, [1, 2])
    assert np.count_nonzero(both == 2) == 8 and both[7, 11, 11] == 0
    foreground = keep_largest_component(labels, "foreground")
    assert np.count_nonzero(foreground == 1) == 27 and np.count_nonzero(foreground == 2) == 0
    labels[4:7, 6:9, 6:9] = 0  # now the touching pair (26 voxels) is the largest foreground object
    foreground = keep_largest_component(labels, "foreground")
    assert np.count_nonzero(foreground == 1) == 18 and np.count_nonzero(foreground == 2) == 8
    assert labels[7, 11, 11] == 2, "the input is not modified"


def test_components_are_face_connected_and_ties_keep_the_first() -> None:
    labels = np.zeros((3, 4, 4), np.uint16)
    labels[1, 1, 1] = labels[1, 2, 2] = 300  # touching along an edge only: two components
    result = keep_largest_component(labels, [300])
    assert result.dtype == np.uint16
    assert result[1, 1, 1] == 300 and result[1, 2, 2] == 0


def test_remove_small_components_by_volume_in_mm3() -> None:
    labels = three_objects()  # voxel volume 1.92 mm3; class-2 objects are 8 voxels (15.36 mm3) and 1 voxel
    kept = remove_small_components(labels, [1, 2], {2: 15.36}, SPACING)
    assert np.count_nonzero(kept == 2) == 8 and np.count_nonzero(kept == 1) == 45  # class 1 has no threshold
    removed = remove_small_components(labels, [2], 15.37, SPACING)
    assert np.count_nonzero(removed == 2) == 0
    foreground = remove_small_components(labels, "foreground", 2.0, SPACING)
    assert foreground[7, 11, 11] == 0 and np.count_nonzero(foreground) == 53


def test_apply_postprocessing_runs_the_steps_in_order() -> None:
    labels = three_objects()
    steps = (
        PostprocessingStep("remove_small_components", (2,), 2.0),
        PostprocessingStep("keep_largest_component", "foreground"),
    )
    result = apply_postprocessing(labels, Postprocessing(steps), SPACING)
    expected = keep_largest_component(remove_small_components(labels, [2], 2.0, SPACING), "foreground")
    assert np.array_equal(result, expected)
    assert apply_postprocessing(labels, Postprocessing(()), SPACING) is labels


def test_postprocessing_json_round_trip_keeps_steps_and_evidence(tmp_path: Path) -> None:
    chosen = choose_postprocessing([_noisy_case(np.random.default_rng(1))], [1, 2, 3, 4], {1: 5.0, 2: 5.0})
    assert chosen.evidence is not None and math.isnan(chosen.evidence.dice_before[4])  # never present
    path = tmp_path / "postprocessing.json"
    save_postprocessing(chosen, path)
    loaded = load_postprocessing(path)
    assert loaded.steps == chosen.steps
    assert loaded.evidence is not None
    assert len(loaded.evidence.candidates) == len(chosen.evidence.candidates) == 1 + 4 + 2
    for a, b in zip(loaded.evidence.candidates, chosen.evidence.candidates, strict=True):
        assert (a.step, a.accepted) == (b.step, b.accepted)
        assert a.dice_after == pytest.approx(b.dice_after, nan_ok=True)
    assert loaded.evidence.dice_after == pytest.approx(chosen.evidence.dice_after, nan_ok=True)
    assert json.loads(path.read_text())["evidence"]["dice_before"]["4"] is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"schema_version": 9, "steps": []}', "schema_version 9"),
        ('{"schema_version": 1}', "'steps' must be a list"),
        ('{"schema_version": 1, "steps": [{"operation": "fill_holes", "labels": [1]}]}', "unknown operation"),
        (
            '{"schema_version": 1, "steps": [{"operation": "remove_small_components", "labels": [1]}]}',
            "needs min",
        ),
        (
            '{"schema_version": 1, "steps": [{"operation": "keep_largest_component", "labels": []}]}',
            "labels must",
        ),
        (
            '{"schema_version": 1, "steps": [{"operation": "keep_largest_component", "labels": "foreground", '
            '"min_volume_mm3": 3}]}',
            "takes no min_volume_mm3",
        ),
        (
            '{"schema_version": 1, "steps": [], "evidence": {"num_cases": 1}}',
            "evidence: missing field 'candidates'",
        ),
    ],
)
def test_malformed_postprocessing_json_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "postprocessing.json"
    path.write_text(content)
    with pytest.raises(PostprocessingError, match=message) as raised:
        load_postprocessing(path)
    assert str(path) in raised.value.message
    with pytest.raises(PostprocessingError, match="no post-processing file"):
        load_postprocessing(tmp_path / "missing.json")


def test_a_second_true_object_keeps_component_removal_out() -> None:
    cases = []
    for shift in range(3):
        reference = three_objects()
        reference[7, 11, 11] = 0
        prediction = np.roll(reference, shift, axis=2)
        box(prediction, 1, (6, 0, 9), (2, 2, 2))  # a false positive away from everything
        cases.append((prediction, reference, SPACING))
    chosen = choose_postprocessing(cases, [1, 2])
    assert chosen.evidence is not None
    first = chosen.evidence.candidates[0]
    assert first.step == PostprocessingStep("keep_largest_component", "foreground")
    assert first.dice_after[2] == 0.0 and first.dice_after[1] < first.dice_before[1]
    assert chosen.steps == (), "the touching pair is a true object: keeping one object per class loses it"
    assert chosen.evidence.dice_after == chosen.evidence.dice_before


def test_foreground_step_is_refused_when_it_lowers_a_class_even_if_the_mean_rises() -> None:
    reference = np.zeros((10, 20, 20), np.uint8)
    box(reference, 1, (0, 0, 0), (4, 6, 6))  # 144 voxels
    box(reference, 2, (6, 10, 10), (2, 2, 2))  # a small separate true object
    prediction = reference.copy()
    box(prediction, 1, (0, 12, 0), (4, 5, 5))  # a large false positive (100 voxels)
    box(prediction, 0, (6, 10, 10), (2, 2, 2))
    prediction[6, 10, 10] = 2  # class 2 found poorly (Dice 2/9), so losing it costs less than class 1 gains
    chosen = choose_postprocessing([(prediction, reference, SPACING)], [1, 2])
    assert chosen.evidence is not None
    foreground = chosen.evidence.candidates[0]
    assert not foreground.accepted
    before, after = foreground.dice_before, foreground.dice_after
    assert after[1] + after[2] > before[1] + before[2] and after[2] == 0.0
    assert chosen.steps == (PostprocessingStep("keep_largest_component", (1,)),)
    assert chosen.evidence.dice_after == {1: 1.0, 2: pytest.approx(2 / 9)}


def test_the_choice_scores_exactly_what_apply_postprocessing_produces(rng: np.random.Generator) -> None:
    cases = [_noisy_case(rng) for _ in range(6)]
    cases.append((np.zeros((12, 16, 16), np.uint8), np.zeros((12, 16, 16), np.uint8), SPACING))  # both empty
    chosen = choose_postprocessing(cases, [1, 2, 3], {1: 4 * 1.92, 2: 2 * 1.92, 3: 1.0})
    assert chosen.evidence is not None
    accepted: list[PostprocessingStep] = []
    for (
        candidate
    ) in chosen.evidence.candidates:  # each candidate was scored after the steps accepted before it
        steps = Postprocessing((*accepted, candidate.step))
        processed = [apply_postprocessing(p, steps, s) for p, _, s in cases]
        measured = _mean_dice_over_cases(processed, [r for _, r, _ in cases], [1, 2, 3])
        assert measured == pytest.approx(candidate.dice_after, abs=1e-12, nan_ok=True)
        accepted += [candidate.step] if candidate.accepted else []
    assert tuple(accepted) == chosen.steps and len(chosen.steps) >= 2


def test_min_volume_comes_from_the_fifth_percentile_of_training_components() -> None:
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)], [(10, 10, 10)])
    volumes = Distribution(
        min=1.0, median=1500.0, mean=1400.0, max=2400.0, percentile_05=1200.0, percentile_95=2200.0
    )
    classes = (replace(fingerprint.classes[0], component_volume_mm3=volumes), fingerprint.classes[1])
    assert min_volume_mm3_from_fingerprint(replace(fingerprint, classes=classes)) == {1: 120.0}


def test_run_choose_postprocessing_reads_every_fold(tmp_path: Path, rng: np.random.Generator) -> None:
    geometry = Geometry(SPACING, (0.0, 0.0, 0.0))
    for index in range(4):
        prediction, reference, _ = _noisy_case(rng)
        write_labels(reference, geometry, tmp_path / "labelsTr" / f"case_{index}.nii.gz")
        write_labels(prediction, geometry, tmp_path / f"fold_{index % 2}" / f"case_{index}.nii.gz")
    fingerprint = make_fingerprint(
        [SPACING], [(12, 16, 16)], labels={"background": 0, "a": 1, "b": 2, "c": 3}
    )
    folders = [tmp_path / "fold_0", tmp_path / "fold_1"]
    out = tmp_path / "postprocessing.json"
    chosen = run_choose_postprocessing(folders, tmp_path / "labelsTr", fingerprint, out, show_progress=False)
    assert chosen.evidence is not None and chosen.evidence.num_cases == 4
    assert load_postprocessing(out).steps == chosen.steps
    with pytest.raises(EvaluationError, match="case_0 is predicted twice"):
        run_choose_postprocessing([folders[0], folders[0]], tmp_path / "labelsTr", fingerprint, out)


@pytest.mark.realdata
def test_choice_on_hippocampus_labels_with_spurious_blobs(data_root: Path) -> None:
    folder = data_root / "hippocampus" / "labelsTr"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    cases = []
    for path in sorted(folder.glob("*.nii.gz"))[:8]:
        reference, geometry = read_labels(path)
        prediction = reference.copy()
        prediction[ndimage.binary_erosion(reference > 0, iterations=1) != (reference > 0)] = 0
        box(prediction, 2, (0, 0, 0), (3, 3, 3))  # a spurious blob in a corner, away from the hippocampus
        cases.append((prediction, reference, geometry.spacing_mm))
    chosen = choose_postprocessing(cases, [1, 2], {1: 100.0, 2: 100.0})
    assert chosen.evidence is not None
    assert chosen.steps[0] == PostprocessingStep("keep_largest_component", "foreground")
    assert chosen.evidence.dice_after[2] > chosen.evidence.dice_before[2]
    processed = [apply_postprocessing(p, chosen, s) for p, _, s in cases]
    measured = _mean_dice_over_cases(processed, [r for _, r, _ in cases], [1, 2])
    assert measured == pytest.approx(chosen.evidence.dice_after, abs=1e-12)


# ------------------------------------------------------------------------------------------------ helpers


def _noisy_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A reference with classes 1 and 2 and a prediction with shifted objects and random specks of 1..3."""
    reference = np.zeros((12, 16, 16), np.uint8)
    box(reference, 1, (2, 2, 2), (5, 7, 7))
    box(reference, 2, (3, 4, 4), (2, 3, 3))
    prediction = np.roll(reference, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 3)))
    specks = rng.random(prediction.shape) < 0.01
    prediction[specks] = rng.integers(1, 4, size=int(specks.sum()))
    return prediction, reference, SPACING


def _mean_dice_over_cases(
    predictions: list[np.ndarray], references: list[np.ndarray], labels: list[int]
) -> dict[int, float]:
    scores = [dice_per_label(p, r, labels) for p, r in zip(predictions, references, strict=True)]
    means = {}
    for label in labels:
        defined = [s[label] for s in scores if not math.isnan(s[label])]
        means[label] = float(np.mean(defined)) if defined else math.nan
    return means


def test_region_targets_are_post_processed_per_structure() -> None:
    """Overlapping structures: GTV inside CTV. A stray GTV island (not in the reference) makes "keep the
    largest GTV component" pay off; the CTV, whose second part is real, keeps both parts, and the GTV
    voxels inside the CTV are one component of each. The chosen steps applied to a region target act on each
    structure's own mask."""
    reference = np.zeros((2, 10, 12, 12), np.uint8)
    reference[1, 1:6, 1:9, 1:9] = 1  # CTV, part 1
    reference[1, 8:10, 10:12, 10:12] = 1  # CTV, part 2 (real)
    reference[0, 2:5, 3:7, 3:7] = 1  # GTV inside CTV part 1
    prediction = reference.copy()
    prediction[0, 9, 0, 0] = 1  # a stray GTV voxel outside everything
    cases = [(prediction, reference, (1.0, 1.0, 1.0))] * 2
    chosen = choose_postprocessing(cases, [1, 2])
    assert [s.describe() for s in chosen.steps] == ["keep_largest_component(1)"]
    assert chosen.evidence is not None
    assert chosen.evidence.dice_before[1] < 1.0 and chosen.evidence.dice_after == {1: 1.0, 2: 1.0}
    rejected = [c for c in chosen.evidence.candidates if c.step.labels == (2,)]
    assert rejected and not any(c.accepted for c in rejected)  # the CTV's second part costs Dice
    applied = apply_postprocessing(prediction, chosen, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(applied, reference)
    assert np.array_equal(prediction[0, 9, 0, 0], 1)  # the input is not modified
