"""Seconds per training iteration, data loading included: ``autoseg train`` against nnU-Net v2.6's
``nnUNetTrainer`` on the same plan, side by side, alternating, medians.

Both tools train hippocampus ``3d_fullres`` with the plan both planners choose for it (patch 40 x 56 x 40,
batch 7, PlainConvUNet 32..256, 4 stages, deep supervision; ``--batch`` overrides the batch in both), fold 0,
on the CPU, one augmentation worker each. Each measurement is a fresh process that builds the tool's own
trainer, takes ``--warmup`` iterations, then times ``--steps`` iterations, each split into the wait for the
next batch (``next(loader)``) and the training step; the process reports the median of each. Tools (and
autoseg's precisions) alternate A, B, C, A, B, C ... over ``--rounds`` rounds so that a change of machine load
hits every variant; the figure is the median over rounds.

nnU-Net runs in its own virtual environment (``pip install torch==2.13.0 nnunetv2==2.6.0``), never
in autoseg's: ``--nnunet-python`` is that venv's ``python``, ``--nnunet-preprocessed`` its
``nnUNet_preprocessed`` folder holding ``Dataset004_Hippocampus`` (``nnUNetv2_plan_and_preprocess -d 4 -c
3d_fullres``). autoseg's work directory comes from ``autoseg plan_and_preprocess hippocampus --planner
default --device cuda -c 3d_fullres`` (the GPU preset plans the same patch and batch as nnU-Net).
Run on a quiet machine::

    python benchmarks/bench_train_compare.py --autoseg-workdir W --nnunet-python NNVENV/bin/python \\
        --nnunet-preprocessed NNPRE --batch 7 --rounds 3 --out benchmarks/results/train_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

NNUNET_DRIVER = r"""
import json, os, statistics, sys, time
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

batch, warmup, steps = (int(v) for v in sys.argv[1:4])
folder = os.path.join(os.environ["nnUNet_preprocessed"], "Dataset004_Hippocampus")
plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
plans["configurations"]["3d_fullres"]["batch_size"] = batch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
trainer = nnUNetTrainer(plans, "3d_fullres", 0, load_json(os.path.join(folder, "dataset.json")),
                        device=torch.device("cpu"))
trainer.on_train_start()
trainer.on_train_epoch_start()
waits, step_times = [], []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    data = next(trainer.dataloader_train)
    t1 = time.perf_counter()
    trainer.train_step(data)
    t2 = time.perf_counter()
    if i >= warmup:
        waits.append(t1 - t0)
        step_times.append(t2 - t1)
print("RESULT " + json.dumps({"wait": waits, "step": step_times}), flush=True)
for loader in (trainer.dataloader_train, trainer.dataloader_val):
    finish = getattr(loader, "_finish", None)
    if finish is not None:
        finish()
os._exit(0)
"""


def autoseg_worker(
    workdir: Path, precision: str, batch: int, warmup: int, steps: int
) -> dict[str, list[Any]]:
    """Time autoseg's own training iterations (``autoseg.training.loop.training_step``)."""
    import torch

    from autoseg.training.config import TrainConfig
    from autoseg.training.loop import training_step
    from autoseg.training.parts import autocast_dtype, default_parts, fold_batches, resolve_training_precision
    from autoseg.workdir import Workdir

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    work = Workdir(workdir)
    plans = work.read_plans()
    resolved = resolve_training_precision(precision, torch.device("cpu"), deterministic=False)
    config = TrainConfig(configuration="3d_fullres", fold="0", precision=resolved, num_workers=1)
    plan = replace(plans.configuration("3d_fullres"), batch_size=batch)
    batches = fold_batches(work, plan, config, regions=plans.region_based)
    parts = default_parts(
        plan,
        config,
        num_channels=len(plans.channel_names),
        num_classes=plans.num_outputs,
        batches=batches,
        regions=plans.region_based,
    )
    parts.network.train()
    stream = batches.train_batches(0)
    dtype = autocast_dtype(resolved)
    device = torch.device("cpu")
    waits, step_times = [], []
    for index in range(warmup + steps):
        t0 = time.perf_counter()
        data = next(stream)
        t1 = time.perf_counter()
        training_step(parts, data, device, dtype, config.gradient_clip)
        t2 = time.perf_counter()
        if index >= warmup:
            waits.append(t1 - t0)
            step_times.append(t2 - t1)
    return {"wait": waits, "step": step_times, "precision": [resolved]}


def run_variant(args: argparse.Namespace, variant: str, batch: int) -> dict[str, Any]:
    """One fresh process of ``variant`` (``nnunet`` or ``autoseg-PRECISION``); its timings and medians."""
    env = dict(
        os.environ, nnUNet_n_proc_DA="1", OMP_NUM_THREADS=str(args.threads), BENCH_THREADS=str(args.threads)
    )
    with tempfile.TemporaryDirectory(prefix="bench_train_") as scratch:
        if variant == "nnunet":
            driver = Path(scratch) / "driver.py"
            driver.write_text(NNUNET_DRIVER)
            env |= {
                "nnUNet_preprocessed": str(args.nnunet_preprocessed),
                "nnUNet_raw": str(Path(scratch) / "raw"),
                "nnUNet_results": str(Path(scratch) / "results"),
            }
            command = [str(args.nnunet_python), str(driver), str(batch), str(args.warmup), str(args.steps)]
        else:
            precision = variant.split("-", 1)[1]
            command = [
                sys.executable,
                __file__,
                "--worker",
                precision,
                "--autoseg-workdir",
                str(args.autoseg_workdir),
                "--batch",
                str(batch),
                "--warmup",
                str(args.warmup),
                "--steps",
                str(args.steps),
            ]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    timings = json.loads(lines[-1][len("RESULT ") :])
    total = [w + s for w, s in zip(timings["wait"], timings["step"], strict=True)]
    return {
        "variant": variant,
        "batch": batch,
        "iteration_s": statistics.median(total),
        "step_s": statistics.median(timings["step"]),
        "wait_s": statistics.median(timings["wait"]),
        "wait_share": sum(timings["wait"]) / sum(total),
        "process_wall_s": wall,
        "load_before": os.getloadavg()[0],
        **timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--autoseg-workdir", type=Path, required=True)
    parser.add_argument("--nnunet-python", type=Path)
    parser.add_argument("--nnunet-preprocessed", type=Path)
    parser.add_argument("--batch", type=int, nargs="+", default=[7])
    parser.add_argument("--precisions", nargs="+", default=["auto", "float32"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = autoseg_worker(args.autoseg_workdir, args.worker, args.batch[0], args.warmup, args.steps)
        print("RESULT " + json.dumps(result), flush=True)
        return
    variants = [f"autoseg-{p}" for p in args.precisions]
    if args.nnunet_python:
        variants.insert(0, "nnunet")
    runs: list[dict[str, Any]] = []
    for batch in args.batch:
        for round_index in range(args.rounds):
            for variant in variants:
                run = run_variant(args, variant, batch)
                run["round"] = round_index
                runs.append(run)
                print(
                    f"batch {batch} round {round_index + 1} {variant:18s} "
                    f"{run['iteration_s']:.3f} s/iteration (step {run['step_s']:.3f}, "
                    f"wait {run['wait_s']:.3f}, "
                    f"wait share {100 * run['wait_share']:.1f}%), load {run['load_before']:.1f}",
                    flush=True,
                )
    summary = []
    for batch in args.batch:
        for variant in variants:
            mine = [r for r in runs if r["batch"] == batch and r["variant"] == variant]
            summary.append(
                {
                    "batch": batch,
                    "variant": variant,
                    "iteration_s": statistics.median(r["iteration_s"] for r in mine),
                    "rounds": [round(r["iteration_s"], 3) for r in mine],
                    "wait_share": statistics.median(r["wait_share"] for r in mine),
                }
            )
    print("\nbatch  variant              s/iteration  (rounds)                wait share  vs nnU-Net")
    for row in summary:
        reference = next(
            (s["iteration_s"] for s in summary if s["batch"] == row["batch"] and s["variant"] == "nnunet"),
            None,
        )
        ratio = f"{reference / row['iteration_s']:.2f}x" if reference else "-"
        print(
            f"{row['batch']:5d}  {row['variant']:20s} {row['iteration_s']:10.3f}  {row['rounds']!s:24s} "
            f"{100 * row['wait_share']:8.1f}%  {ratio}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
