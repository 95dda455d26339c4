"""Check that two source trees of autoseg behave the same: plans, preprocessed arrays and predictions.

Runs the CLI of each tree (``python -P -m autoseg`` with that tree first on ``PYTHONPATH``) on one synthetic
dataset: ``synth`` -> ``plan_and_preprocess`` (cpu planner with a fixed throughput, so the plan is
deterministic) in a separate work directory per tree; compares ``plans.json`` and every preprocessed ``.npy``
byte for byte. Then one fold is trained once with the *old* tree, the run folder is copied into the new
tree's work directory, and both trees predict the same held-out cases with ``--precision float32``; the label
maps must be identical.

Usage (from the repository root, nothing else running)::

    git worktree add /tmp/autoseg-old <commit>
    python benchmarks/compare_behaviour.py --old /tmp/autoseg-old --new . --scratch /tmp/compare

Exit status 0 when everything matches, 1 otherwise; one line per compared artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def run_cli(source: Path, argv: list[str]) -> None:
    """Run ``python -m autoseg ARGV`` with ``source`` first on the import path; raise on failure."""
    env = {**os.environ, "PYTHONPATH": str(source.resolve())}
    command = [sys.executable, "-P", "-m", "autoseg", *argv, "-q"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{source}: autoseg {' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_files(old_root: Path, new_root: Path, pattern: str) -> list[str]:
    """Compare every file matching ``pattern`` under both roots byte for byte; return the differences."""
    old = {p.relative_to(old_root): p for p in sorted(old_root.glob(pattern))}
    new = {p.relative_to(new_root): p for p in sorted(new_root.glob(pattern))}
    problems = [f"only in old: {name}" for name in old.keys() - new.keys()]
    problems += [f"only in new: {name}" for name in new.keys() - old.keys()]
    problems += [
        f"differs: {name}" for name in old.keys() & new.keys() if digest(old[name]) != digest(new[name])
    ]
    print(f"{pattern:32s} {len(old):4d} old, {len(new):4d} new, {len(problems)} difference(s)")
    return problems


def compare_label_maps(old_dir: Path, new_dir: Path) -> list[str]:
    """Compare the predicted label maps voxel for voxel, and their affines."""
    problems = []
    files = sorted(old_dir.glob("*.nii.gz"))
    for old_file in files:
        new_file = new_dir / old_file.name
        if not new_file.exists():
            problems.append(f"prediction missing in new: {old_file.name}")
            continue
        old_image, new_image = nib.nifti1.load(old_file), nib.nifti1.load(new_file)
        old_array, new_array = np.asarray(old_image.dataobj), np.asarray(new_image.dataobj)
        differing = (
            int(np.count_nonzero(old_array != new_array)) if old_array.shape == new_array.shape else -1
        )
        same_affine = np.array_equal(old_image.affine, new_image.affine)
        print(f"prediction {old_file.name:28s} differing voxels: {differing}, same affine: {same_affine}")
        if differing != 0 or not same_affine or old_array.dtype != new_array.dtype:
            problems.append(f"prediction differs: {old_file.name}")
    if not files:
        problems.append("no prediction written")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", type=Path, required=True, help="source tree of the reference version")
    parser.add_argument("--new", type=Path, required=True, help="source tree of the changed version")
    parser.add_argument("--scratch", type=Path, required=True, help="empty folder for datasets and work dirs")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    scratch: Path = args.scratch
    if scratch.exists():
        shutil.rmtree(scratch)
    raw, heldout = scratch / "raw", scratch / "heldout"
    synth = ["--cases", "6", "--shape", "20", "32", "32", "--classes", "2", "--modality", "CT", "--seed", "5"]
    run_cli(args.old, ["synth", str(raw), *synth])
    run_cli(args.old, ["synth", str(heldout), "--cases", "2", *synth[2:-1], "6"])
    workdirs = {"old": scratch / "work_old", "new": scratch / "work_new"}
    sources = {"old": args.old, "new": args.new}
    plan = ["--planner", "cpu", "--cpu-gflops", "50", "--time-budget", "10m", "--device", "cpu"]
    for name, workdir in workdirs.items():
        run_cli(sources[name], ["plan_and_preprocess", str(raw), "--workdir", str(workdir), *plan])
    problems = compare_files(workdirs["old"], workdirs["new"], "plans.json")
    problems += compare_files(workdirs["old"], workdirs["new"], "preprocessed/*/*/*.npy")
    train = [
        "train",
        "0",
        "-c",
        "3d_fullres",
        "--epochs",
        str(args.epochs),
        "--iters-per-epoch",
        "2",
        "--val-iters",
        "1",
        "--num-workers",
        "0",
        "--device",
        "cpu",
    ]
    run_cli(args.old, [*train, "--workdir", str(workdirs["old"])])
    shutil.copytree(workdirs["old"] / "trained", workdirs["new"] / "trained", dirs_exist_ok=True)
    outputs = {}
    for name, workdir in workdirs.items():
        outputs[name] = scratch / f"predicted_{name}"
        images = heldout / "imagesTr"
        predict = ["predict", "-i", str(images), "-o", str(outputs[name]), "--workdir", str(workdir)]
        run_cli(sources[name], [*predict, "-c", "3d_fullres", "-f", "0", "--precision", "float32"])
    problems += compare_label_maps(outputs["old"], outputs["new"])
    for planner in ("default", "resenc-m", "resenc-l"):  # the other presets, from the same fingerprint
        for name, workdir in workdirs.items():
            run_cli(
                sources[name], ["plan", "--workdir", str(workdir), "--planner", planner, "--device", "cuda"]
            )
        print(f"planner {planner:9s} ", end="")
        problems += compare_files(workdirs["old"], workdirs["new"], "plans.json")
    for problem in problems:
        print(f"DIFFERENCE {problem}")
    print("identical" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
