"""``autoseg predict`` against ``nnUNetv2_predict`` on the same weights (after ``bench_predict_setup.py``).

The tools (arms) alternate run by run in rotating order (A B C, B C A, ...); each run is a fresh process
(start-up included) on an input folder: its wall time, the peak PSS of its process tree (sampled every
0.25 s), the cores other people's processes used meanwhile. For the hippocampus experiments, the mean Dice
per class of each arm's last outputs against the dataset's labels, and the largest disagreement with the
first arm. Results go to ``ROOT/results.json`` under ``compare/<key>``; ``bench_predict_report.py`` prints
them.

Experiments: ``hippo-fast`` (``--preset fast`` / nnU-Net ``-f 0 --disable_tta -step_size 0.75``),
``hippo-accurate`` and ``hippo-accurate-subset`` (5 cases) (``--preset accurate -f <folds>`` / nnU-Net's
default with ``-f <folds>``), ``ct-fast``, ``ct-accurate`` (the timing-only CT model; no Dice). nnU-Net runs
with its default workers and with ``-npp 1 -nps 1``; ``--drop-arm`` skips arms, ``--extra-arm NAME=FLAGS``
adds an autoseg arm with more flags (e.g. ``fp32=--precision float32``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from measure import OthersMeter, run_once, wait_for_quiet
from predict_layout import (
    CONFIGURATION,
    CT_DATASET,
    FOLDS,
    HIPPO_DATASET,
    InputsName,
    Layout,
    ModelName,
    autoseg_command,
    fresh_folder,
)

from autoseg.dataset.layout import load_dataset
from autoseg.evaluation.metrics import dice_per_label
from autoseg.io import read_labels

SAMPLE_INTERVAL_S = 0.25
"""Memory sampling period: reading a process tree's PSS every 20 ms costs about 40% of one of the 2 cores."""


@dataclass(frozen=True)
class Experiment:
    """Which model, which inputs, which preset."""

    model: ModelName
    inputs: InputsName
    preset: Literal["fast", "accurate"]


EXPERIMENTS = {
    "hippo-fast": Experiment("hippo", "hippo", "fast"),
    "hippo-accurate": Experiment("hippo", "hippo", "accurate"),
    "hippo-accurate-subset": Experiment("hippo", "hippo_subset", "accurate"),
    "ct-fast": Experiment("ct", "ct", "fast"),
    "ct-accurate": Experiment("ct", "ct", "accurate"),
}


@dataclass(frozen=True)
class Arm:
    """One tool and setting of a comparison."""

    name: str
    command: list[str]
    env: dict[str, str]
    output: Path


def experiment_arms(layout: Layout, tag: str, folds: int, nnunet_venv: Path | None) -> list[Arm]:
    """autoseg's arm, then nnU-Net's (default workers, ``-npp 1 -nps 1``) when its venv is known."""
    experiment = EXPERIMENTS[tag]
    inputs, model = layout.inputs(experiment.inputs), layout.model(experiment.model)
    fold_args = [str(f) for f in range(folds)]
    if experiment.preset == "fast":
        ours, theirs = ["--preset", "fast"], ["-f", "0", "--disable_tta", "-step_size", "0.75"]
        names = ("autoseg fast", "nnU-Net -f 0 --disable_tta -step_size 0.75")
    else:
        ours, theirs = ["--preset", "accurate", "-f", *fold_args], ["-f", *fold_args]
        names = ("autoseg accurate", "nnU-Net default")
    out = layout.outputs(f"{tag}-autoseg")
    command = [*autoseg_command(), "predict", "-i", str(inputs), "-o", str(out), "-m", str(model)]
    arms = [Arm(f"{tag}/{names[0]}", [*command, "--device", "cpu", "-q", *ours], dict(os.environ), out)]
    if nnunet_venv is None:
        return arms
    dataset = HIPPO_DATASET if experiment.model == "hippo" else CT_DATASET
    env = dict(os.environ)
    env |= {
        "nnUNet_raw": str(fresh_folder(layout.root / "nnUNet_raw")),
        "nnUNet_preprocessed": str(fresh_folder(layout.root / "nnUNet_preprocessed")),
        "nnUNet_results": str(layout.nnunet_results),
    }
    for suffix, workers in (("", []), ("-np1", ["-npp", "1", "-nps", "1"])):
        out = layout.outputs(f"{tag}-nnunet{suffix}")
        command = [str(nnunet_venv / "bin" / "nnUNetv2_predict"), "-i", str(inputs), "-o", str(out)]
        command += ["-d", dataset, "-p", "autosegPlans", "-c", CONFIGURATION, "-device", "cpu"]
        name = " ".join([names[1], *workers])
        arms.append(Arm(f"{tag}/{name}", [*command, "--disable_progress_bar", *theirs, *workers], env, out))
    return arms


def with_extra_arms(layout: Layout, tag: str, arms: list[Arm], specs: Sequence[str]) -> list[Arm]:
    """``NAME=FLAGS`` each: autoseg's arm with more flags, e.g. ``fp32=--precision float32``."""
    extra = []
    for spec in specs:
        label, flags = spec.split("=", 1)
        base, out = arms[0], layout.outputs(f"{tag}-{label}")
        command = [*base.command, *flags.split()]
        command[command.index("-o") + 1] = str(out)
        extra.append(Arm(f"{base.name} {flags}", command, base.env, out))
    return [*arms, *extra]


def dropped(arm: Arm, text: str) -> bool:
    """Whether ``text`` is the arm's name (after the experiment) or, starting with '-', a flag it passes."""
    if text.startswith("-"):
        return text in " ".join(arm.command)
    return arm.name.split("/", 1)[1] == text


def run_arms(arms: Sequence[Arm], repeats: int, inputs: Path) -> dict[str, list[dict[str, float]]]:
    """Every arm ``repeats`` times, alternating; each run's wall, peak memory, others' load and wait."""
    cases = len(list(inputs.glob("*_0000.nii.gz")))
    runs: dict[str, list[dict[str, float]]] = {arm.name: [] for arm in arms}
    for repeat in range(repeats):
        for arm in [*arms[repeat % len(arms) :], *arms[: repeat % len(arms)]]:
            fresh_folder(arm.output)
            waited = wait_for_quiet()
            meter = OthersMeter()
            wall, peak = run_once(arm.command, env=arm.env, interval_s=SAMPLE_INTERVAL_S)
            others = meter.cores()
            produced = len(list(arm.output.glob("*.nii.gz")))
            if produced != cases:
                raise RuntimeError(f"{arm.name}: {produced} of {cases} outputs")
            runs[arm.name].append(
                {"wall_s": wall, "peak_mib": peak, "others_cores": others, "waited_s": waited}
            )
            print(f"{arm.name}: {wall:.1f} s, {peak:.0f} MiB (others {others:.2f} cores)", flush=True)
    return runs


def quality(dataset: Path, outputs: Sequence[Path]) -> dict[str, Any]:
    """Mean Dice per class of each output folder against the dataset's labels (cases where both are empty
    left out, autoseg's convention), and the largest per-case fraction of voxels on which any folder
    disagrees with the first."""
    raw = load_dataset(dataset)
    references = {case.identifier: case.label_path for case in raw.cases}
    classes = {value: name for name, value in raw.labels.items() if value != 0}
    cases = sorted(p.name.removesuffix(".nii.gz") for p in outputs[0].glob("*.nii.gz"))
    per_folder: dict[str, dict[str, float]] = {}
    worst: dict[str, Any] = {"case": "", "voxels": 0, "fraction": 0.0}
    for folder in outputs:
        scores: dict[int, list[float]] = {label: [] for label in classes}
        for case in cases:
            reference_path = references[case]
            assert reference_path is not None, case
            prediction, _ = read_labels(folder / f"{case}.nii.gz")
            reference, _ = read_labels(reference_path)
            for label, score in dice_per_label(prediction, reference, list(classes)).items():
                scores[label].append(score)
            if folder != outputs[0]:
                first, _ = read_labels(outputs[0] / f"{case}.nii.gz")
                differing = int((first != prediction).sum())
                if differing / first.size > float(worst["fraction"]) or not worst["case"]:
                    worst = {"case": case, "voxels": differing, "fraction": differing / first.size}
        per_folder[str(folder)] = {classes[k]: float(np.nanmean(v)) for k, v in scores.items()}
    return {"dice": per_folder, "max_disagreement_vs_first": worst, "cases": len(cases)}


def main(argv: Sequence[str] | None = None) -> None:
    """Run one comparison and record it."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="the folder bench_predict_setup.py filled")
    parser.add_argument("--experiment", choices=sorted(EXPERIMENTS), required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=FOLDS, help="accurate: folds 0..N-1")
    parser.add_argument("--extra-arm", action="append", default=[], metavar="NAME=FLAGS")
    parser.add_argument(
        "--drop-arm", action="append", default=[], metavar="TEXT", help="skip an arm: its name, or a flag"
    )
    parser.add_argument("--key", help="results key (default: the experiment)")
    args = parser.parse_args(argv)
    layout = Layout(args.root)
    sources = layout.read_sources()
    arms = experiment_arms(layout, args.experiment, args.folds, sources.nnunet_venv)
    arms = [arm for arm in arms if not any(dropped(arm, text) for text in args.drop_arm)]
    arms = with_extra_arms(layout, args.experiment, arms, args.extra_arm)
    inputs = layout.inputs(EXPERIMENTS[args.experiment].inputs)
    runs = run_arms(arms, args.repeats, inputs)
    entry: dict[str, Any] = {
        "cases": len(list(inputs.glob("*_0000.nii.gz"))),
        "folds": args.folds,
        "repeats": args.repeats,
        "sample_interval_s": SAMPLE_INTERVAL_S,
        "arms": {
            arm.name: {"command": " ".join(arm.command), "runs": runs[arm.name], "output": str(arm.output)}
            for arm in arms
        },
    }
    if EXPERIMENTS[args.experiment].model == "hippo":
        entry["quality"] = quality(sources.dataset, [arm.output for arm in arms])
    layout.record(f"compare/{args.key or args.experiment}", entry)


if __name__ == "__main__":
    main()
