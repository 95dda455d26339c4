"""Evaluation and post-processing, measured: agreement with an independent implementation, the post-processing
choice on real cross-validation predictions, and speed on a large CT-sized volume.

1. autoseg's metrics (:mod:`autoseg.evaluation.metrics`: numpy counts + MONAI surface distances) against
   SimpleITK (``LabelOverlapMeasuresImageFilter`` for Dice / IoU; ``LabelContour`` surfaces and
   ``SignedMaurerDistanceMap`` distances for HD95 / ASSD) on every validation prediction, at the files'
   spacing and at a made-up anisotropic spacing (2.0, 0.7, 1.3) mm.
2. :func:`autoseg.postprocessing.choice.choose_postprocessing` on the same predictions, and a check that
   applying the chosen steps and scoring with :func:`autoseg.evaluation.metrics.dice_per_label` reproduces
   its evidence.
3. Seconds for one 100 x 512 x 512 case with three classes (a liver-sized ellipsoid and two small organs):
   :func:`autoseg.evaluation.metrics.evaluate_case`, MONAI's three public metric functions, and a SciPy
   distance-transform alternative on the cropped box.

Usage (by hand): ``python benchmarks/bench_evaluate.py --predictions RUN/trained/3d_fullres/fold_0/validation
--references DATA/hippocampus/labelsTr --fingerprint RUN/fingerprint.json``. Prints Markdown.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from autoseg.evaluation.metrics import dice_per_label, evaluate_case
from autoseg.evaluation.stage import match_cases, read_pair
from autoseg.fingerprint import load_fingerprint
from autoseg.postprocessing.choice import (
    case_components,
    choose_postprocessing,
    min_volume_mm3_from_fingerprint,
)
from autoseg.postprocessing.components import keep_largest_component
from autoseg.postprocessing.steps import apply_postprocessing

Spacing = tuple[float, float, float]
ANISOTROPIC: Spacing = (2.0, 0.7, 1.3)


def simpleitk_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Spacing) -> tuple[float, ...]:
    """Dice, IoU, HD95 (mm), ASSD (mm) of two non-empty masks, computed with SimpleITK only."""

    def image(mask: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(np.pad(mask, 1).astype(np.uint8))  # outside the image is outside
        result.SetSpacing([float(s) for s in spacing[::-1]])
        return result

    def distance_to(surface: sitk.Image) -> np.ndarray:
        mapped = sitk.SignedMaurerDistanceMap(
            surface, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        return np.asarray(np.maximum(sitk.GetArrayFromImage(mapped), 0.0), dtype=np.float64)

    p, r = image(prediction), image(reference)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(r, p)
    p_surface, r_surface = (sitk.LabelContour(m, fullyConnected=False) for m in (p, r))
    p_mask, r_mask = (sitk.GetArrayFromImage(s).astype(bool) for s in (p_surface, r_surface))
    forward, backward = distance_to(r_surface)[p_mask], distance_to(p_surface)[r_mask]
    hd95 = max(float(np.percentile(forward, 95)), float(np.percentile(backward, 95)))
    assd = float(np.concatenate([forward, backward]).mean())
    return overlap.GetDiceCoefficient(1), overlap.GetJaccardCoefficient(1), hd95, assd


def compare_with_simpleitk(
    cases: Sequence[tuple[str, np.ndarray, np.ndarray, Spacing]], labels: Sequence[int]
) -> None:
    """Print the largest differences between autoseg and SimpleITK, per spacing."""
    print(
        "| spacing (mm) | case x class pairs | max abs Dice diff | max abs IoU diff | max HD95 diff (mm) |",
        end="",
    )
    print(" max ASSD diff (mm) |")
    print("|---|---|---|---|---|---|")
    for which in ("file", "anisotropic"):
        worst = np.zeros(4)
        pairs = 0
        for _, prediction, reference, spacing in cases:
            spacing = spacing if which == "file" else ANISOTROPIC
            ours = evaluate_case(prediction, reference, spacing, labels)
            for label in labels:
                if not ((prediction == label).any() and (reference == label).any()):
                    continue
                theirs = simpleitk_metrics(prediction == label, reference == label, spacing)
                mine = (ours[label].dice, ours[label].iou, ours[label].hd95_mm, ours[label].assd_mm)
                worst = np.maximum(worst, np.abs(np.subtract(mine, theirs)))
                pairs += 1
        shown = "files' own" if which == "file" else " x ".join(f"{s:g}" for s in ANISOTROPIC)
        print(f"| {shown} | {pairs} | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} | {worst[3]:.1e} |")


def postprocessing_choice(
    cases: Sequence[tuple[str, np.ndarray, np.ndarray, Spacing]],
    labels: Sequence[int],
    fingerprint: Path | None,
) -> None:
    """Print the chosen steps, the Dice per class before/after, and the check by applying them."""
    thresholds = min_volume_mm3_from_fingerprint(load_fingerprint(fingerprint)) if fingerprint else None
    triples = [(p, r, s) for _, p, r, s in cases]
    start = time.perf_counter()
    chosen = choose_postprocessing(triples, labels, thresholds)
    seconds = time.perf_counter() - start
    assert chosen.evidence is not None
    print(f"\nthresholds (mm3): {thresholds}; choice took {seconds:.2f} s for {len(cases)} cases\n")
    print("| candidate | " + " | ".join(f"Dice {k} before -> after" for k in labels) + " | kept |")
    print("|---|" + "---|" * len(labels) + "---|")
    for c in chosen.evidence.candidates:
        cells = " | ".join(f"{c.dice_before[k]:.4f} -> {c.dice_after[k]:.4f}" for k in labels)
        print(f"| {c.step.describe()} | {cells} | {'yes' if c.accepted else 'no'} |")
    processed = [apply_postprocessing(p, chosen, s) for p, _, s in triples]
    measured = [dice_per_label(p, r, labels) for p, (_, r, _) in zip(processed, triples, strict=True)]
    for k in labels:
        defined = [m[k] for m in measured if not math.isnan(m[k])]
        before, after = chosen.evidence.dice_before[k], chosen.evidence.dice_after[k]
        again = float(np.mean(defined))
        print(f"\nclass {k}: mean Dice {before:.4f} -> {after:.4f} (applied and re-scored: {again:.4f})")
    print("\nchosen: " + (", ".join(s.describe() for s in chosen.steps) or "none"))


def large_volume() -> tuple[np.ndarray, np.ndarray, Spacing]:
    """A 100 x 512 x 512 case, 2.5 x 0.8 x 0.8 mm: a liver-sized ellipsoid (class 1) and two small organs."""
    spacing = (2.5, 0.8, 0.8)
    z, y, x = np.ogrid[:100, :512, :512]

    def ellipsoid(centre: Spacing, radii_mm: Spacing) -> np.ndarray:
        terms = [
            ((g - c) * s / r) ** 2 for g, c, s, r in zip((z, y, x), centre, spacing, radii_mm, strict=True)
        ]
        return np.asarray(terms[0] + terms[1] + terms[2] < 1)

    reference = np.zeros((100, 512, 512), np.uint8)
    prediction = np.zeros_like(reference)
    reference[ellipsoid((50, 250, 240), (150, 88, 72))] = 1
    prediction[ellipsoid((51, 255, 238), (145, 90, 72))] = 1
    for label, centre in ((2, (40, 300, 330)), (3, (60, 200, 380))):
        reference[ellipsoid(centre, (40, 16, 16))] = label
        prediction[ellipsoid((centre[0], centre[1] + 2, centre[2]), (44, 16, 15))] = label
    return prediction, reference, spacing


def seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timing(repeats: int) -> None:
    """Print seconds per 100 x 512 x 512 case for autoseg, MONAI's public functions and an EDT alternative."""
    from monai.metrics.hausdorff_distance import compute_hausdorff_distance
    from monai.metrics.surface_dice import compute_surface_dice
    from monai.metrics.surface_distance import compute_average_surface_distance

    torch.set_num_threads(1)
    prediction, reference, spacing = large_volume()
    labels = [1, 2, 3]

    def monai_public() -> None:
        onehot = [
            torch.from_numpy(np.stack([m == k for k in (0, *labels)])[None]) for m in (prediction, reference)
        ]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            compute_hausdorff_distance(onehot[0], onehot[1], percentile=95, spacing=spacing)
            compute_average_surface_distance(onehot[0], onehot[1], symmetric=True, spacing=spacing)
            compute_surface_dice(onehot[0], onehot[1], [2.0] * 3, spacing=spacing)

    def edt_alternative() -> None:
        for k in labels:
            p, r = prediction == k, reference == k
            box = ndimage.find_objects((p | r).astype(np.uint8))[0]
            box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
            surfaces = [m[box] & ~ndimage.binary_erosion(m[box], border_value=0) for m in (p, r)]
            for a, b in ((0, 1), (1, 0)):
                ndimage.distance_transform_edt(~surfaces[b], sampling=spacing)[surfaces[a]]

    rows = (
        ("dice_per_label (counts only)", lambda: dice_per_label(prediction, reference, labels)),
        ("evaluate_case (all metrics)", lambda: evaluate_case(prediction, reference, spacing, labels)),
        ("MONAI public HD95 + ASD + NSD (one-hot, full volume)", monai_public),
        ("SciPy EDT on cropped box (distances only)", edt_alternative),
        (
            "case_components (post-processing choice)",
            lambda: case_components(prediction, reference, spacing, labels),
        ),
        ("keep_largest_component(foreground)", lambda: keep_largest_component(prediction, "foreground")),
    )
    print(f"\n| 100 x 512 x 512, 3 classes, 1 thread | median s ({repeats} runs) |\n|---|---|")
    for name, function in rows:
        print(f"| {name} | {seconds(function, repeats):.2f} |")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the three measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--predictions", type=Path, nargs="+", required=True, help="validation folder(s)")
    parser.add_argument("--references", type=Path, required=True, help="labelsTr")
    parser.add_argument("--fingerprint", type=Path, help="fingerprint.json (size thresholds)")
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cases = []
    for folder in args.predictions:
        for pair in match_cases(folder, args.references, missing_predictions="ignore"):
            prediction, reference, geometry = read_pair(pair)
            cases.append((pair.case, prediction, reference, geometry.spacing_mm))
    print(f"{len(cases)} validation case(s)\n")
    compare_with_simpleitk(cases, args.labels)
    postprocessing_choice(cases, args.labels, args.fingerprint)
    timing(args.repeats)


if __name__ == "__main__":
    main()
