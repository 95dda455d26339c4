"""Dice of ``3d_fullres``, ``3d_lowres`` and the cascade (``3d_cascade_fullres``) trained for the same budget
on the ``synthetic-ct-cascade`` preset, where the 3d_fullres patch covers about 2% of the median image.

Steps: ``plan_and_preprocess synthetic-ct-cascade`` with the cpu planner at a fixed throughput (the same plan
on every machine: 20-minute budget at 100 GFLOP/s; patch 16x28x28 for both full-resolution stages with the
cpu preset of 2026-12-03), a two-fold split written to ``splits.json`` (4 validation cases per fold; the
cascade needs every fold of 3d_lowres, so
two folds keep the run short), then ``train`` of 3d_lowres folds 0 and 1, 3d_fullres fold 0 and
3d_cascade_fullres fold 0, each for ``--epochs`` x ``--iterations`` iterations, with the same seed. Each
stage's figure is the mean Dice of fold 0's validation cases (its ``validation/summary.json``: accurate
sliding window, mirroring, original geometry), the same four cases for all three; the cascade + 3d_fullres
ensemble is scored on them too (mean of the two probabilities). Run::

    python benchmarks/bench_cascade.py --out benchmarks/results/cascade.json

``--parallel`` trains the three runs that do not depend on each other as simultaneous processes (their
seconds are then not recorded). A run already validated in ``--workdir`` is reused, not trained again.

About 4.5 minutes on 2 quiet CPU cores at the defaults (measured 2026-12-03, bfloat16). Seconds are recorded
with the machine's load average, but the point is Dice: correctness figures hold under load, timings do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.cli.main import main
from autoseg.evaluation.metrics import dice_per_label
from autoseg.inference.ensemble import labels_from_probabilities
from autoseg.io import read_labels, read_probabilities
from autoseg.training import TrainConfig, train_fold
from autoseg.workdir import Workdir

DATASET = "synthetic-ct-cascade"
STAGES = ("3d_fullres", "3d_lowres", "3d_cascade_fullres")
FOLDS = 2


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="synthetic dataset cache")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    parser.add_argument("--num-workers", type=int, default=1, help="augmentation workers per training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="train 3d_lowres folds 0, 1 and 3d_fullres fold 0 at once (three processes), then the cascade",
    )
    return parser.parse_args()


def _plan(workdir: Path, cache_dir: Path | None) -> None:
    argv = [
        "plan_and_preprocess",
        DATASET,
        "--workdir",
        str(workdir),
        "--planner",
        "cpu",
        "--time-budget",
        "20m",
        "--cpu-gflops",
        "100",
        "-c",
        *STAGES,
        "-q",
    ]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    if main(argv) != 0:
        raise SystemExit("plan_and_preprocess failed")
    work = Workdir(workdir)
    plans = work.read_plans()
    if "3d_cascade_fullres" not in plans.configurations:
        raise SystemExit(f"{work.plans_path}: no cascade planned; the preset no longer calls for one")
    identifiers = sorted(case.identifier for case in work.read_fingerprint().cases)
    if work.read_splits() is None:
        folds = [identifiers[k::FOLDS] for k in range(FOLDS)]
        work.write_splits([{"train": [c for c in identifiers if c not in v], "val": v} for v in folds])


def _coverage(workdir: Path) -> dict[str, Any]:
    plans = Workdir(workdir).read_plans()
    out = {}
    for name in STAGES:
        plan = plans.configuration(name)
        out[name] = {
            "spacing_mm": list(plan.spacing_mm),
            "patch_size": list(plan.patch_size),
            "median_shape": [round(v, 1) for v in plan.median_shape],
            "patch_coverage": float(np.prod(plan.patch_size) / np.prod(plan.median_shape)),
        }
    return out


def _train(workdir: Path, stage: str, fold: int, args: argparse.Namespace) -> dict[str, Any]:
    config = TrainConfig(
        configuration=stage,
        fold=str(fold),
        epochs=args.epochs,
        iterations_per_epoch=args.iterations,
        validation_iterations=5,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    run = Workdir(workdir).run(stage, fold)
    if run.is_validated():
        return {"seconds": None, "summary": run.read_validation_summary()}
    started = time.perf_counter()
    summary = train_fold(workdir, config, show_progress=False).summary
    return {"seconds": round(time.perf_counter() - started, 1), "summary": summary}


def _train_at_once(workdir: Path, runs: list[tuple[str, int]], args: argparse.Namespace) -> None:
    """Train ``runs`` as simultaneous ``autoseg train`` processes with the benchmark's budget."""
    budget = ["--epochs", str(args.epochs), "--iters-per-epoch", str(args.iterations), "--val-iters", "5"]
    budget += ["--num-workers", str(args.num_workers), "--seed", str(args.seed), "--workdir", str(workdir)]
    started = [
        subprocess.Popen([sys.executable, "-m", "autoseg", "train", str(fold), "-c", stage, *budget, "-q"])
        for stage, fold in runs
        if not Workdir(workdir).run(stage, fold).is_validated()
    ]
    if any(process.wait() != 0 for process in started):
        raise SystemExit("a training process failed")


def _ensemble_dice(workdir: Path, members: tuple[str, str]) -> dict[str, Any]:
    """Mean Dice of the two stages' mean probabilities on fold 0's validation cases."""
    work = Workdir(workdir)
    splits = work.read_splits()
    assert splits is not None
    labels = sorted(v for v in work.read_plans().labels.values() if v)
    per_case = {}
    for case in splits[0]["val"]:
        folders = [work.run(m, 0).validation for m in members]
        first, second = (read_probabilities(f.probabilities_path(case)) for f in folders)
        mean = ((first + second) / 2).astype(np.float32)
        reference = read_labels(work.reference_labels_path(case))[0]
        per_case[case] = dice_per_label(labels_from_probabilities(mean), reference, labels)
    per_class = {str(v): float(np.nanmean([d[v] for d in per_case.values()])) for v in labels}
    return {"mean_dice": float(np.mean(list(per_class.values()))), "dice_per_class": per_class}


def main_benchmark() -> None:
    args = _arguments()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cascade_")) / "work"
    started = time.perf_counter()
    _plan(workdir, args.cache_dir)
    runs = {}
    if args.parallel:
        _train_at_once(workdir, [("3d_lowres", 0), ("3d_lowres", 1), ("3d_fullres", 0)], args)
    for stage, fold in (("3d_lowres", 0), ("3d_lowres", 1), ("3d_fullres", 0), ("3d_cascade_fullres", 0)):
        runs[f"{stage}/fold_{fold}"] = _train(workdir, stage, fold, args)
        print(f"{stage} fold {fold}: {runs[f'{stage}/fold_{fold}']['summary']['mean_dice_per_class']}")
    results = {
        "dataset": DATASET,
        "workdir": str(workdir),
        "budget": {"epochs": args.epochs, "iterations_per_epoch": args.iterations, "seed": args.seed},
        "configurations": _coverage(workdir),
        "fold_0": {
            stage: {
                "mean_dice": runs[f"{stage}/fold_0"]["summary"]["mean_dice"],
                "dice_per_class": runs[f"{stage}/fold_0"]["summary"]["mean_dice_per_class"],
                "train_and_validate_seconds": runs[f"{stage}/fold_0"]["seconds"],
            }
            for stage in STAGES
        },
        "ensemble_cascade_fullres": _ensemble_dice(workdir, ("3d_cascade_fullres", "3d_fullres")),
        "lowres_fold_1_seconds": runs["3d_lowres/fold_1"]["seconds"],
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_average": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    print("| configuration | patch coverage | mean Dice (fold 0, 4 cases) | per class |")
    print("|---|---|---|---|")
    for stage in STAGES:
        row = results["fold_0"][stage]
        coverage = results["configurations"][stage]["patch_coverage"]
        classes = ", ".join(f"{k} {v:.3f}" for k, v in row["dice_per_class"].items() if v is not None)
        print(f"| {stage} | {100 * coverage:.0f}% | {row['mean_dice']:.3f} | {classes} |")
    ensemble = results["ensemble_cascade_fullres"]
    print(f"| 3d_cascade_fullres + 3d_fullres | | {ensemble['mean_dice']:.3f} | |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main_benchmark()
