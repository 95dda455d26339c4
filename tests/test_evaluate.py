"""Evaluation metrics: hand-computed cases, empty conventions, MONAI and SimpleITK agreement, the report."""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from autoseg.errors import EvaluationError
from autoseg.evaluation.metrics import dice_from_counts, dice_per_label, evaluate_case
from autoseg.evaluation.stage import EvaluateRequest, match_cases, read_label_names, run_evaluate
from autoseg.io import Geometry, read_labels, write_labels

ANISOTROPIC = (3.0, 0.8, 0.8)


def cube(shape: tuple[int, int, int], start: tuple[int, int, int], edge: int, value: int = 1) -> np.ndarray:
    """A uint8 label map holding one cube of ``value``."""
    labels = np.zeros(shape, np.uint8)
    labels[tuple(slice(s, s + edge) for s in start)] = value
    return labels


def test_cubes_offset_along_z_give_hand_computed_metrics() -> None:
    # 6-voxel cubes, the prediction one voxel higher (3 mm). Per direction, of the 152 surface voxels: the 36
    # of the face that sticks out are 3 mm from the other surface, the 16 inner voxels of the buried face are
    # 0.8 mm (12 of them) or 1.6 mm (4) from the other cube's side walls, the other 100 lie on the other
    # surface.
    reference = cube((12, 12, 12), (2, 3, 3), 6)
    prediction = cube((12, 12, 12), (3, 3, 3), 6)
    metrics = evaluate_case(prediction, reference, ANISOTROPIC, [1], tolerance_mm=2.0)[1]
    assert metrics.dice == pytest.approx(2 * 180 / 432)
    assert metrics.iou == pytest.approx(180 / 252)
    assert metrics.hd95_mm == pytest.approx(3.0)
    assert metrics.assd_mm == pytest.approx(2 * (36 * 3.0 + 12 * 0.8 + 4 * 1.6) / 304)
    assert metrics.surface_dice == pytest.approx((304 - 72) / 304)
    assert metrics.precision == pytest.approx(180 / 216)
    assert metrics.recall == pytest.approx(180 / 216)
    assert metrics.reference_volume_ml == pytest.approx(216 * 3.0 * 0.8 * 0.8 / 1000)
    assert metrics.volume_difference_ml == pytest.approx(0.0)


@pytest.mark.parametrize(("axis", "k"), [(0, 1), (0, 2), (2, 1), (2, 3)])
def test_plates_shifted_by_k_voxels_are_k_spacings_apart(axis: int, k: int) -> None:
    # One-voxel-thick plates: every voxel is surface and its nearest counterpart is k voxels along ``axis``.
    reference = np.zeros((10, 12, 12), np.uint8)
    reference[4, 2:8, 2:8] = 2
    prediction = np.roll(reference, k, axis=axis)
    expected_mm = k * ANISOTROPIC[axis] if axis == 0 else None
    metrics = evaluate_case(prediction, reference, ANISOTROPIC, [2], tolerance_mm=2.0)[2]
    if expected_mm is not None:  # a shift across the plate: all distances equal
        assert metrics.hd95_mm == pytest.approx(expected_mm)
        assert metrics.assd_mm == pytest.approx(expected_mm)
        assert metrics.surface_dice == (1.0 if expected_mm <= 2.0 else 0.0)
        assert metrics.dice == 0.0
    else:  # a shift within the plate: the overlap is at 0 mm, each of the k outer columns j * 0.8 mm away
        column_mm = [j * 0.8 for j in range(1, k + 1)]
        assert metrics.hd95_mm == pytest.approx(k * 0.8)
        assert metrics.assd_mm == pytest.approx(6 * sum(column_mm) / 36)
        assert metrics.surface_dice == pytest.approx(1 - 6 * sum(d > 2.0 for d in column_mm) / 36)


def test_surface_dice_counts_distances_up_to_the_tolerance_inclusive() -> None:
    reference = cube((10, 10, 10), (3, 3, 3), 1)
    prediction = cube((10, 10, 10), (4, 3, 3), 1)  # 3 mm away along z
    assert evaluate_case(prediction, reference, ANISOTROPIC, [1], tolerance_mm=2.999)[1].surface_dice == 0.0
    assert evaluate_case(prediction, reference, ANISOTROPIC, [1], tolerance_mm=3.0)[1].surface_dice == 1.0


def test_empty_conventions() -> None:
    reference = cube((8, 8, 8), (2, 2, 2), 3, value=1)
    empty = np.zeros_like(reference)
    both = evaluate_case(empty, empty, (1.0, 1.0, 1.0), [1])[1]
    assert all(math.isnan(v) for v in (both.dice, both.iou, both.hd95_mm, both.assd_mm, both.surface_dice))
    assert math.isnan(both.precision) and math.isnan(both.recall)
    assert (both.prediction_volume_ml, both.volume_difference_ml) == (0.0, 0.0)
    missed = evaluate_case(empty, reference, (1.0, 1.0, 1.0), [1])[1]
    assert (missed.dice, missed.iou, missed.surface_dice, missed.recall) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(missed.hd95_mm) and math.isnan(missed.assd_mm) and math.isnan(missed.precision)
    assert missed.prediction_empty and not missed.reference_empty
    assert missed.volume_difference_ml == pytest.approx(-0.027)
    spurious = evaluate_case(reference, empty, (1.0, 1.0, 1.0), [1])[1]
    assert (spurious.dice, spurious.precision, spurious.surface_dice) == (0.0, 0.0, 0.0)
    assert math.isnan(spurious.recall) and math.isnan(spurious.hd95_mm)


def test_dice_per_label_counts_every_label_and_marks_both_empty_nan() -> None:
    reference = np.zeros((4, 5, 6), np.uint16)
    reference[0, :2] = 1
    reference[1:3] = 300  # a uint16 label value
    prediction = reference.copy()
    prediction[0, 0] = 300
    dice = dice_per_label(prediction, reference, [1, 300, 7])
    assert dice[1] == pytest.approx(2 * 6 / (6 + 12))
    assert dice[300] == pytest.approx(2 * 60 / (66 + 60))
    assert math.isnan(dice[7])


def test_distances_agree_with_monai_metric_functions(rng: np.random.Generator) -> None:
    from monai.metrics.hausdorff_distance import compute_hausdorff_distance
    from monai.metrics.surface_dice import compute_surface_dice
    from monai.metrics.surface_distance import compute_average_surface_distance

    reference = _blobs(rng, (20, 30, 26))
    prediction = ndimage.binary_dilation(np.roll(reference, 2, axis=2), iterations=1).astype(np.uint8)
    spacing = (2.5, 0.7, 1.1)
    ours = evaluate_case(prediction, reference, spacing, [1], tolerance_mm=1.5)[1]
    pred, ref = (
        torch.from_numpy(np.stack([m == 0, m == 1])[None].astype(np.float32)) for m in (prediction, reference)
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = compute_hausdorff_distance(pred, ref, percentile=95, spacing=spacing)
        assd = compute_average_surface_distance(pred, ref, symmetric=True, spacing=spacing)
        nsd = compute_surface_dice(pred, ref, [1.5], spacing=spacing)
    assert ours.hd95_mm == pytest.approx(float(hd95[0, 0]), rel=1e-5)
    assert ours.assd_mm == pytest.approx(float(assd[0, 0]), rel=1e-5)
    assert ours.surface_dice == pytest.approx(float(nsd[0, 0]), rel=1e-6)


def test_distances_agree_with_brute_force_on_anisotropic_grid(rng: np.random.Generator) -> None:
    reference = _blobs(rng, (14, 22, 18))
    prediction = np.roll(ndimage.binary_erosion(reference).astype(np.uint8), (1, -2, 1), axis=(0, 1, 2))
    spacing = (2.0, 0.6, 0.9)
    forward, backward = (
        _brute_force(a, b, spacing) for a, b in ((prediction, reference), (reference, prediction))
    )
    metrics = evaluate_case(prediction, reference, spacing, [1], tolerance_mm=1.0)[1]
    assert metrics.hd95_mm == pytest.approx(
        max(np.percentile(forward, 95), np.percentile(backward, 95)), rel=1e-6
    )
    assert metrics.assd_mm == pytest.approx(np.concatenate([forward, backward]).mean(), rel=1e-6)
    within = np.count_nonzero(forward <= 1.0) + np.count_nonzero(backward <= 1.0)
    assert metrics.surface_dice == pytest.approx(within / (forward.size + backward.size))


@pytest.mark.realdata
def test_metrics_match_simpleitk_on_perturbed_hippocampus_labels(data_root: Path) -> None:
    folder = data_root / "hippocampus" / "labelsTr"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    for index, path in enumerate(sorted(folder.glob("*.nii.gz"))[:4]):
        reference, geometry = read_labels(path)
        prediction = _perturb(reference, index)
        for spacing in (geometry.spacing_mm, (2.0, 0.7, 1.3)):  # the file's 1 mm, and an anisotropic grid
            ours = evaluate_case(prediction, reference, spacing, [1, 2])
            for label in (1, 2):
                dice, iou, hd95, assd = _simpleitk_metrics(prediction == label, reference == label, spacing)
                assert ours[label].dice == pytest.approx(dice, abs=1e-6)
                assert ours[label].iou == pytest.approx(iou, abs=1e-6)
                assert abs(ours[label].hd95_mm - hd95) <= min(spacing)
                assert abs(ours[label].assd_mm - assd) <= min(spacing)


def test_run_evaluate_writes_summary_csv_and_plot(tmp_path: Path) -> None:
    geometry = Geometry(ANISOTROPIC, (0.0, 0.0, 0.0))
    reference = cube((12, 12, 12), (2, 3, 3), 6)
    reference[4:6, 5:7, 5:7] = 2
    for name, shift in (("a", 0), ("b", 1)):
        write_labels(reference, geometry, tmp_path / "ref" / f"{name}.nii.gz")
        write_labels(np.roll(reference, shift, axis=0), geometry, tmp_path / "pred" / f"{name}.nrrd")
    write_labels(np.zeros_like(reference), geometry, tmp_path / "pred" / "c.nii.gz")
    write_labels(np.zeros_like(reference), geometry, tmp_path / "ref" / "c.nii.gz")
    labels_file = tmp_path / "dataset.json"
    labels_file.write_text(json.dumps({"labels": {"background": 0, "outer": 1, "inner": 2}}))
    request = EvaluateRequest(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", labels_file)
    summary = run_evaluate(request, show_progress=False)
    assert summary.labels == {1: "outer", 2: "inner"}
    assert summary.per_class[1]["dice"].defined == 2 and summary.per_class[1]["dice"].undefined == 1
    assert summary.cases["a"][1].dice == 1.0
    assert summary.mean_dice == pytest.approx(
        np.mean([np.mean([1.0, summary.cases["b"][k].dice]) for k in (1, 2)])
    )
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["cases"]["c"]["1"]["dice"] is None
    assert saved["mean_over_classes"]["dice"] == pytest.approx(summary.mean_dice)
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 6 and rows[0]["name"] == "outer" and rows[-1]["hd95_mm"] == ""
    assert (tmp_path / "out" / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_run_evaluate_without_labels_file_uses_the_values_found(tmp_path: Path) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_labels(cube((6, 6, 6), (1, 1, 1), 3, value=4), geometry, tmp_path / "p.nii.gz")
    write_labels(cube((6, 6, 6), (1, 1, 1), 3, value=1), geometry, tmp_path / "r.nii.gz")
    summary = run_evaluate(
        EvaluateRequest(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", tmp_path / "o"), show_progress=False
    )
    assert summary.labels == {1: "label_1", 4: "label_4"}
    assert summary.cases["p"][1].recall == 0.0 and summary.cases["p"][4].precision == 0.0


def test_mismatched_geometry_and_missing_cases_are_clear_errors(tmp_path: Path) -> None:
    labels = cube((6, 6, 6), (1, 1, 1), 3)
    write_labels(labels, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path / "ref" / "a.nii.gz")
    write_labels(labels, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path / "ref" / "b.nii.gz")
    write_labels(labels, Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path / "pred" / "a.nii.gz")
    request = EvaluateRequest(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    with pytest.raises(EvaluationError, match=r"1 reference case\(s\) .* b"):
        run_evaluate(request, show_progress=False)
    with pytest.raises(EvaluationError, match=r"pred/a.nii.gz: geometry differs .* spacing"):
        run_evaluate(replace(request, missing_predictions="ignore"))
    write_labels(labels, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path / "pred" / "z.nii.gz")
    with pytest.raises(EvaluationError, match=r"have no reference .*: z"):
        match_cases(tmp_path / "pred", tmp_path / "ref")
    bad = tmp_path / "dataset.json"
    bad.write_text(json.dumps({"labels": {"background": 0, "x": "one"}}))
    with pytest.raises(EvaluationError, match="invalid labels"):
        read_label_names(bad)


def test_worker_processes_give_the_same_summary(tmp_path: Path, rng: np.random.Generator) -> None:
    geometry = Geometry(ANISOTROPIC, (0.0, 0.0, 0.0))
    for name in ("a", "b"):
        reference = _blobs(rng, (10, 14, 14))
        write_labels(reference, geometry, tmp_path / "ref" / f"{name}.nii.gz")
        write_labels(np.roll(reference, 1, axis=1), geometry, tmp_path / "pred" / f"{name}.nii.gz")
    request = EvaluateRequest(tmp_path / "pred", tmp_path / "ref", tmp_path / "one")
    serial = run_evaluate(request, show_progress=False)
    parallel = run_evaluate(replace(request, output=tmp_path / "two", num_workers=2), show_progress=False)
    assert parallel.cases == serial.cases


# ------------------------------------------------------------------------------------------------ helpers


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A few smoothed random blobs, uint8 0/1, away from the border."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    mask = noise > np.percentile(noise, 80)
    mask[[0, -1]] = False
    mask[:, [0, -1]] = False
    mask[:, :, [0, -1]] = False
    return np.asarray(mask, dtype=np.uint8)


def _brute_force(source: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each surface voxel of ``source`` to the nearest surface voxel of ``target``."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        mask = mask.astype(bool)
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        return np.asarray(np.argwhere(edge) * np.asarray(spacing), dtype=np.float64)

    a, b = surface_points(source), surface_points(target)
    return np.asarray(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1), dtype=np.float64)


def _perturb(reference: np.ndarray, index: int) -> np.ndarray:
    """A plausible wrong prediction: eroded, shifted, or with a spurious blob, by case."""
    prediction = reference.copy()
    if index % 3 == 0:
        prediction[ndimage.binary_erosion(reference == 1, iterations=1) != (reference == 1)] = 0
    prediction = np.roll(prediction, index % 2 + 1, axis=index % 3)
    prediction[2:5, 2:6, 2:5] = 2
    return prediction


def _simpleitk_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[float, float, float, float]:
    """Dice and IoU (LabelOverlapMeasures) and HD95 / ASSD from contours and Maurer distance maps."""

    def image(mask: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(np.pad(mask, 1).astype(np.uint8))  # outside the image is outside
        result.SetSpacing([float(s) for s in spacing[::-1]])
        return result

    def contour(mask: sitk.Image) -> sitk.Image:
        surface: sitk.Image = sitk.LabelContour(mask, fullyConnected=False)
        return surface

    def distance_to(surface: sitk.Image) -> np.ndarray:
        mapped = sitk.SignedMaurerDistanceMap(
            surface, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        return np.asarray(np.maximum(sitk.GetArrayFromImage(mapped), 0.0), dtype=np.float64)

    p, r = image(prediction), image(reference)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(r, p)
    p_surface, r_surface = contour(p), contour(r)
    p_mask, r_mask = (sitk.GetArrayFromImage(s).astype(bool) for s in (p_surface, r_surface))
    forward, backward = distance_to(r_surface)[p_mask], distance_to(p_surface)[r_mask]
    hd95 = max(float(np.percentile(forward, 95)), float(np.percentile(backward, 95)))
    assd = float(np.concatenate([forward, backward]).mean())
    return overlap.GetDiceCoefficient(1), overlap.GetJaccardCoefficient(1), hd95, assd


def test_dice_from_counts_is_undefined_when_both_masks_are_empty() -> None:
    assert math.isnan(dice_from_counts(0, 0, 0))  # docs/evaluation.md: left out of means, counted
    assert dice_from_counts(0, 5, 0) == 0.0 and dice_from_counts(0, 0, 5) == 0.0
    assert dice_from_counts(3, 4, 6) == 0.6
