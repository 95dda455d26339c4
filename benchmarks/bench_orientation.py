"""Does a trained model give the same contour whatever the scan's orientation? (issue 16, point 1)

Takes a trained work directory and a fold's validation cases (images the model never trained on), makes
variants of each scan that hold the same anatomy in the world (SimpleITK, in physical space):

* ``permuted``: axes reordered and one flipped, the affine following (exactly the same voxels);
* ``oblique_1mm``: resampled (linear) onto a grid rotated 20 degrees about x, at the plain spacing;
* ``double_oblique_1mm``: 20 degrees about x then 10 about z;
* ``double_oblique_0.5mm``: the same at half the spacing (the issue's DICOM series: 0.5 mm voxels);
* ``double_oblique_0.5mm_dicom``: that grid written as a DICOM series (one file per slice, rotated
  ImageOrientationPatient; the suite's ``tests/dicom_helpers.write_ct_series``, stored values + 1024 with
  rescale -1024, so the series reads back as the MR's values; a modality warning is expected);

predicts every variant with ``autoseg predict`` (default settings), moves each prediction back onto the plain
scan's grid (nearest neighbour) and reports, per variant and label, the Dice against the plain scan's own
prediction ("agreement") and against the reference ("truth"), next to the "ceiling": the reference moved
onto the variant's grid and back the same way (what a perfect segmentation would score through the two
resamplings). Median and minimum over cases; writes a JSON record.

    python benchmarks/bench_orientation.py --workdir /work/bench_train/as_1h \\
        --dataset ../shared/data/hippocampus --cases 10 --out benchmarks/results/orientation.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg.cli.main import main as autoseg

VARIANTS = (
    "permuted",
    "oblique_1mm",
    "double_oblique_1mm",
    "double_oblique_0.5mm",
    "double_oblique_0.5mm_dicom",
)


def rotation(x_degrees: float, z_degrees: float) -> np.ndarray:
    """Rotation about x, then about z (world axes), as a 3x3 matrix."""
    a, b = math.radians(x_degrees), math.radians(z_degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    matrix: np.ndarray = rz @ rx
    return matrix


def oblique(image: sitk.Image, direction: np.ndarray, spacing: float, nearest: bool = False) -> sitk.Image:
    """``image`` resampled onto a grid of ``direction`` (columns: the axes) and isotropic ``spacing`` that
    covers its whole physical extent (0 outside)."""
    size = np.array(image.GetSize())
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        for corner in np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in size])).reshape(3, -1).T
    ]
    local = np.array(corners) @ direction  # coordinates along the new axes
    low, high = local.min(0), local.max(0)
    new_size = [math.ceil((h - lo) / spacing) for lo, h in zip(low, high, strict=True)]
    origin = direction @ (low + spacing / 2)
    resampled: sitk.Image = sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        [float(v) for v in origin],
        [spacing] * 3,
        [float(v) for v in direction.ravel()],
        0.0,
        image.GetPixelID(),
    )
    return resampled


def permuted(image: sitk.Image) -> sitk.Image:
    """Axes (x, y, z) -> (z, x, y) with the new first axis flipped; the same voxels in the world."""
    flipped: sitk.Image = sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [True, False, False])
    return flipped


def variant(image: sitk.Image, name: str, nearest: bool = False) -> sitk.Image:
    """The named variant of ``image`` (labels: ``nearest``)."""
    spacing = float(min(image.GetSpacing()))
    if name == "permuted":
        return permuted(image)
    if name == "oblique_1mm":
        return oblique(image, rotation(20, 0), spacing, nearest)
    if name == "double_oblique_1mm":
        return oblique(image, rotation(20, 10), spacing, nearest)
    if name in ("double_oblique_0.5mm", "double_oblique_0.5mm_dicom"):
        return oblique(image, rotation(20, 10), spacing / 2, nearest)
    raise ValueError(name)


def write_series(image: sitk.Image, folder: Path) -> None:
    """``image`` as a DICOM series (the suite's writer: int16 stored values, rescale intercept -1024)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dicom_helpers import write_ct_series

    direction = np.asarray(image.GetDirection()).reshape(3, 3)  # columns: the index axes, rows: x, y, z
    row, column = direction[:, 0], direction[:, 1]
    values = np.rint(sitk.GetArrayFromImage(image) + 1024.0).astype(np.int16)
    write_ct_series(
        folder,
        values,
        spacing_zyx=tuple(float(v) for v in image.GetSpacing()[::-1]),
        origin_xyz=tuple(float(v) for v in image.GetOrigin()),
        orientation=(*(float(v) for v in row), *(float(v) for v in column)),
    )


def back(labels: sitk.Image, plain: sitk.Image) -> np.ndarray:
    """A label image moved onto ``plain``'s grid (nearest neighbour), as a ``(z, y, x)`` array."""
    moved = sitk.Resample(labels, plain, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(moved)


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    """Dice of one label (NaN when absent from both)."""
    x, y = a == label, b == label
    total = int(x.sum() + y.sum())
    return 2 * int((x & y).sum()) / total if total else math.nan


def validation_cases(workdir: Path, fold: int, count: int) -> list[str]:
    """The first ``count`` validation cases of ``fold`` (``splits.json``)."""
    splits = json.loads((workdir / "splits.json").read_text())
    return sorted(splits[fold]["val"])[:count]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True, help="a trained work directory")
    parser.add_argument("--dataset", type=Path, required=True, help="its nnU-Net raw dataset folder")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/orientation.json"))
    args = parser.parse_args(argv)
    cases = validation_cases(args.workdir, args.fold, args.cases)
    started = time.perf_counter()
    per_case: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_orientation_") as scratch:
        root = Path(scratch)
        images: dict[str, sitk.Image] = {}
        for case in cases:
            images[case] = sitk.ReadImage(str(args.dataset / "imagesTr" / f"{case}_0000.nii.gz"))
            for name in ("plain", *VARIANTS):
                folder = root / "in" / name
                folder.mkdir(parents=True, exist_ok=True)
                image = images[case] if name == "plain" else variant(images[case], name)
                if name.endswith("_dicom"):
                    write_series(image, folder / case)
                else:
                    sitk.WriteImage(image, str(folder / f"{case}_0000.nii.gz"))
        for name in ("plain", *VARIANTS):
            sources = (
                [root / "in" / name / c for c in cases] if name.endswith("_dicom") else [root / "in" / name]
            )
            for source in sources:
                argv_predict = ["predict", "-i", str(source), "-o", str(root / "out" / name)]
                if autoseg([*argv_predict, "-m", str(args.workdir), "-q"]) != 0:
                    raise SystemExit(f"predict failed on the {name} variant ({source.name})")
        for case in cases:
            plain = images[case]
            truth_image = sitk.ReadImage(str(args.dataset / "labelsTr" / f"{case}.nii.gz"), sitk.sitkUInt8)
            truth = sitk.GetArrayFromImage(truth_image)
            reference = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "out" / "plain" / f"{case}.nii.gz")))
            row: dict[str, Any] = {
                "plain_truth": {str(k): dice(reference, truth, k) for k in args.labels},
            }
            for name in VARIANTS:
                predicted = sitk.ReadImage(str(root / "out" / name / f"{case}.nii.gz"), sitk.sitkUInt8)
                moved = back(predicted, plain)
                ceiling = back(variant(truth_image, name, nearest=True), plain)
                row[name] = {
                    "agreement": {str(k): dice(moved, reference, k) for k in args.labels},
                    "truth": {str(k): dice(moved, truth, k) for k in args.labels},
                    "ceiling": {str(k): dice(ceiling, truth, k) for k in args.labels},
                    "shape": list(predicted.GetSize()),
                }
            per_case[case] = row
    summary = summarise(per_case, args.labels)
    record = {
        "workdir": str(args.workdir),
        "cases": cases,
        "per_case": per_case,
        "summary": summary,
        "seconds": time.perf_counter() - started,
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print_table(summary, args.labels, len(cases))
    return 0


def summarise(per_case: dict[str, dict[str, Any]], labels: Sequence[int]) -> dict[str, Any]:
    """Median and minimum over cases, per variant, measure and label."""
    summary: dict[str, Any] = {}
    plain = [row["plain_truth"][str(k)] for row in per_case.values() for k in labels]
    summary["plain_truth_median"] = statistics.median(plain)
    for name in VARIANTS:
        summary[name] = {}
        for measure in ("agreement", "truth", "ceiling"):
            for k in labels:
                values = [row[name][measure][str(k)] for row in per_case.values()]
                values = [v for v in values if not math.isnan(v)]
                summary[name][f"{measure}_{k}"] = {"median": statistics.median(values), "min": min(values)}
    return summary


def print_table(summary: dict[str, Any], labels: Sequence[int], cases: int) -> None:
    print(f"{cases} cases; plain prediction vs truth, median Dice {summary['plain_truth_median']:.3f}")
    head = " | ".join(f"{m} {k}" for m in ("agreement", "truth", "ceiling") for k in labels)
    print(f"| variant | {head} |")
    print("|---" * (1 + 3 * len(labels)) + "|")
    for name in VARIANTS:
        cells = " | ".join(
            f"{summary[name][f'{m}_{k}']['median']:.3f} (min {summary[name][f'{m}_{k}']['min']:.3f})"
            for m in ("agreement", "truth", "ceiling")
            for k in labels
        )
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    raise SystemExit(main())
