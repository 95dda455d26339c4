"""Bounded-memory export (issue 17.2): peak memory and seconds of ``autoseg predict --preset fast`` with a
117-class model on a 600 x 512 x 512 CT, against the path before 17.2 where that fits; and the many-class
label resampling of preprocessing, per class in its box against every class over the whole volume.

``predict`` builds, in ``--scratch``: a synthetic int16 CT (0.8 x 0.8 x 1.0 mm; generated here, never
committed), a work directory planned by ``autoseg fingerprint`` + ``plan`` on a tiny two-case 117-label
dataset, its ``3d_fullres`` configuration replaced by a small random-weight 117-class network (64 x 128 x 128
patch) at ``--spacing-mm`` (default 2 mm; at 1.5 mm the float32 accumulation of the code before 17.2,
(K + 1) x 4 bytes per network-grid voxel, would be 14 GB; now 2K bytes, see docs/benchmarks.md). Then runs
``autoseg predict`` on each ``--shapes`` CT and reports wall seconds and the peak memory of the process tree
(PSS, sampled every 0.25 s), ``--rounds`` times, alternating the codes, with medians. With ``--baseline SRC``
(autoseg before 17.2: ``git archive 8cae1f2~1 | tar -x -C SRC``, then in ``SRC/autoseg/workdir.py`` move the
body of ``WorkDir.runs`` back under its ``def``, which that commit had misplaced) the same command also runs
on that code for the shapes in ``--baseline-shapes`` (where the (K, Z, Y, X) float32 arrays fit; run from that
folder first on ``sys.path``, on a copy of the work directory without the plan keys it does not know), and
the label maps are compared.

``labels`` resamples a 117-class ``--size``^3 label map (boxes of random size, 0.8 mm -> 1.2 mm, linear)
both ways, each in its own process: seconds, peak memory, identical output.

Run by hand on a quiet machine (the seconds mean nothing on a loaded one; the memory does):
``python benchmarks/bench_export_memory.py predict --scratch DIR [--baseline SRC]`` (DIR needs ~2 GB,
RAM 16 GB) and ``python benchmarks/bench_export_memory.py labels --scratch DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from measure import run_once

from autoseg.io import Geometry, read_labels, write_image, write_labels
from autoseg.network import build_network
from autoseg.plans import ChannelNormalization
from autoseg.training.checkpoint import save_checkpoint
from autoseg.workdir import Workdir

CLASSES = 117
SPACING_MM = (1.0, 0.8, 0.8)
LABELS = {"background": 0} | {f"structure_{k:03d}": k for k in range(1, CLASSES)}


def make_ct(shape: tuple[int, int, int], path: Path) -> None:
    """A body-like ellipse of soft tissue in air with a denser block, int16 HU, written slab by slab."""
    if path.is_file():
        return
    z, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x]
    inside = ((yy - y / 2) / (0.4 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 < 1
    volume = np.full(shape, -1000, np.int16)
    volume[:, inside] = 40
    volume[z // 4 : 3 * z // 4, 2 * y // 5 : 3 * y // 5, 3 * x // 10 : x // 2] = 300
    write_image(volume, Geometry(SPACING_MM, (0.0, 0.0, 0.0)), path)


def make_dataset(root: Path) -> None:
    """Two tiny CT cases whose label maps hold all 117 classes: enough to fingerprint and plan."""
    rng = np.random.default_rng(0)
    for index in range(2):
        labels = rng.integers(0, CLASSES, (24, 24, 24)).astype(np.uint8)
        image = (labels.astype(np.int16) * 5 - 500).astype(np.int16)
        write_image(image, Geometry(SPACING_MM, (0.0, 0.0, 0.0)), root / "imagesTr" / f"c{index}_0000.nii.gz")
        write_labels(labels, Geometry(SPACING_MM, (0.0, 0.0, 0.0)), root / "labelsTr" / f"c{index}.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))


def make_workdir(scratch: Path, spacing_mm: float) -> Path:
    """A work directory with a random-weight 117-class model at ``spacing_mm`` (isotropic)."""
    work = scratch / "work"
    if (work / "trained").is_dir():
        return work
    root = scratch / "Dataset117_Many"
    make_dataset(root)
    autoseg = [sys.executable, "-m", "autoseg"]
    subprocess.run([*autoseg, "fingerprint", str(root), "--workdir", str(work), "-q"], check=True)
    subprocess.run([*autoseg, "plan", "--workdir", str(work), "--planner", "default", "-q"], check=True)
    workdir = Workdir(work)
    plans = workdir.read_plans()
    config = plans.configurations["3d_fullres"]
    network = dataclasses.replace(
        config.network,
        features_per_stage=(8, 16, 32, 64, 64),
        kernel_sizes=((3, 3, 3),) * 5,
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
        blocks_per_stage=(1,) * 5,
        decoder_blocks_per_stage=(1,) * 4,
    )
    ct = ChannelNormalization("ct", False, -1000.0, 1000.0, 0.0, 300.0)
    spacing = (spacing_mm, spacing_mm, spacing_mm)
    config = dataclasses.replace(
        config, spacing_mm=spacing, patch_size=(64, 128, 128), network=network, normalization=(ct,)
    )
    workdir.write_plans(dataclasses.replace(plans, configurations={"3d_fullres": config}))
    torch.manual_seed(0)
    model = build_network(network, 1, CLASSES)
    save_checkpoint({"network": model.state_dict()}, workdir.run("3d_fullres", 0).checkpoint("final"))
    return work


def _autoseg(source: str | None) -> list[str]:
    """The ``autoseg`` command, from ``source`` when given (first on ``sys.path``: ``python -m`` would put the
    working folder, this checkout, first, and ``PYTHONPATH`` after it)."""
    if source is None:
        return [sys.executable, "-m", "autoseg"]
    code = (
        f"import runpy, sys; sys.path.insert(0, {source!r}); runpy.run_module('autoseg', run_name='__main__')"
    )
    return [sys.executable, "-c", code]


def _baseline_workdir(work: Path) -> Path:
    """A copy of ``work`` whose plans hold only keys the code before 17.2 reads (it refuses unknown ones)."""
    copy = work.with_name(work.name + "_before_17_2")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(work, copy)
    plans = json.loads((copy / "plans.json").read_text())
    for config in plans["configurations"].values():
        config.get("schedule", {}).pop("validation_iterations", None)
    (copy / "plans.json").write_text(json.dumps(plans, indent=2))
    return copy


def predict(args: argparse.Namespace) -> dict[str, object]:
    """Each shape through ``autoseg predict --preset fast``: this code, and the baseline where asked."""
    work = make_workdir(args.scratch, args.spacing_mm)
    results: dict[str, object] = {"load_before": os.getloadavg()[0], "spacing_mm": args.spacing_mm}
    for text in [s for s in args.baseline_shapes if s not in args.shapes] + args.shapes:
        shape = tuple(int(n) for n in text.split("x"))
        assert len(shape) == 3
        inputs = args.scratch / f"in_{text}"
        make_ct((shape[0], shape[1], shape[2]), inputs / "ct_0000.nii.gz")
        runs: list[tuple[str, str | None, Path]] = [("autoseg", None, work)] if text in args.shapes else []
        if args.baseline is not None and text in args.baseline_shapes:
            runs.append(("before_17_2", str(args.baseline), _baseline_workdir(work)))
        maps = {}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in runs}
        for _ in range(args.rounds):
            for name, source, model in runs:
                out = args.scratch / f"out_{text}_{name}"
                shutil.rmtree(out, ignore_errors=True)
                command = [*_autoseg(source), "predict", "-i", str(inputs), "-o", str(out), "-m", str(model)]
                command += ["-c", "3d_fullres", "--preset", "fast", "-q", "--device", "cpu"]
                wall, peak = run_once(command)
                times[name].append((wall, peak))
                print(f"{text} {name}: {wall:.0f} s, peak {peak / 1024:.2f} GiB", flush=True)
                maps[name] = read_labels(out / "ct.nii.gz")[0]
        for name, measured in times.items():
            results[f"{text} {name}"] = {
                "wall_s": round(statistics.median(w for w, _ in measured), 1),
                "walls_s": [round(w, 1) for w, _ in measured],
                "peak_tree_gib": round(max(p for _, p in measured) / 1024, 2),
            }
        if len(maps) == 2:
            same = int(np.count_nonzero(maps["autoseg"] != maps["before_17_2"]))
            results[f"{text} differing voxels"] = same
            print(f"{text}: {same} voxel(s) differ between the two label maps", flush=True)
    results["load_after"] = os.getloadavg()[0]
    return results


def labels_one(args: argparse.Namespace) -> None:
    """One variant of the many-class label resampling, in this process (for its peak memory)."""
    from autoseg.plans import ResamplingPlan
    from autoseg.preprocessing.resample import _resample_labels_whole, resample_labels, target_shape

    labels = np.load(args.scratch / "labels.npy")
    shape = target_shape(labels.shape, (0.8, 0.8, 0.8), (1.2, 1.2, 1.2))
    function = resample_labels if args.variant == "boxes" else _resample_labels_whole
    start = time.perf_counter()
    result = function(labels, shape, ResamplingPlan())
    print(f"{time.perf_counter() - start:.3f}")
    np.save(args.scratch / f"labels_{args.variant}.npy", result)


def many_class_labels(size: int) -> np.ndarray:
    """A ``size``^3 uint8 map: 116 boxes of random size and place (later ones over earlier) on background."""
    rng = np.random.default_rng(0)
    labels = np.zeros((size, size, size), np.uint8)
    for value in range(1, CLASSES):
        extent = rng.integers(size // 20, size // 4, 3)
        start = [int(rng.integers(0, size - e)) for e in extent]
        labels[tuple(slice(s, s + int(e)) for s, e in zip(start, extent, strict=True))] = value
    return labels


def labels(args: argparse.Namespace) -> dict[str, object]:
    """Both label resampling variants, each in a fresh process: seconds, peak, the same output."""
    args.scratch.mkdir(parents=True, exist_ok=True)
    np.save(args.scratch / "labels.npy", many_class_labels(args.size))
    results: dict[str, object] = {"load_before": os.getloadavg()[0], "size": args.size}
    for variant in ("whole", "boxes"):
        command = [
            sys.executable,
            __file__,
            "labels-one",
            "--scratch",
            str(args.scratch),
            "--variant",
            variant,
        ]
        wall, peak = run_once(command)
        results[variant] = {"process_wall_s": round(wall, 1), "peak_tree_mib": round(peak)}
        print(f"{variant}: {wall:.1f} s (process), peak {peak:.0f} MiB", flush=True)
    same = np.array_equal(
        np.load(args.scratch / "labels_whole.npy"), np.load(args.scratch / "labels_boxes.npy")
    )
    results["identical"] = same
    results["load_after"] = os.getloadavg()[0]
    print(f"identical output: {same}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("predict")
    run.add_argument("--scratch", type=Path, required=True)
    run.add_argument("--shapes", nargs="+", default=["600x512x512", "160x192x192"])
    run.add_argument("--baseline", type=Path, help="autoseg source before 17.2 (a git worktree)")
    run.add_argument("--baseline-shapes", nargs="+", default=["160x192x192"])
    run.add_argument("--spacing-mm", type=float, default=2.0)
    run.add_argument("--rounds", type=int, default=1, help="runs of each code per shape, alternated")
    many = commands.add_parser("labels")
    many.add_argument("--scratch", type=Path, required=True)
    many.add_argument("--size", type=int, default=200)
    one = commands.add_parser("labels-one")
    one.add_argument("--scratch", type=Path, required=True)
    one.add_argument("--variant", choices=["whole", "boxes"], required=True)
    args = parser.parse_args()
    if args.command == "labels-one":
        labels_one(args)
        return 0
    results = predict(args) if args.command == "predict" else labels(args)
    (args.scratch / f"results_{args.command}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
