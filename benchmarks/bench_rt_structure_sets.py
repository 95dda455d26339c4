"""Radiotherapy structure sets end to end on synthetic data, scored by independent tools.

Runs the ``autoseg`` CLI (``python -P -m autoseg``, this tree first on ``PYTHONPATH``):

1. ``synth SCRATCH/rt --preset rt --cases N+H --seed S``: DICOM CT series with clinic-style RTSTRUCTs and a
   truth mask per structure (``<case>/truth/<TG-263 name>.nii.gz``); the last H cases are moved to
   ``SCRATCH/heldout`` before anything is trained;
2. ``convert-dicom SCRATCH/rt SCRATCH/dataset --names tg263`` (overlapping ROIs -> the multi-label layout);
3. ``plan_and_preprocess`` with the cpu planner (``--time-budget``, ``--cpu-gflops`` fixed unless 0), then
   ``train FOLD -c 3d_fullres --time-limit``;
4. ``predict -i <held-out CT series> --format rtstruct dicom-seg nifti`` per held-out case;
5. reads the predicted RTSTRUCT back with plastimatch (``--xor-contours`` on the CT grid, as
   ``tests/test_dicom_conformance.py`` does), the SEG with dcmqi's ``segimage2itkimage`` and autoseg's own
   NIfTI, puts every mask on the CT grid through patient coordinates, and scores Dice per structure against
   the synthetic truth; counts dciodvfy ``Error`` lines of both files;
6. prints a Markdown table and writes ``results.json`` (``--results``).

Usage (from anywhere; about 20 minutes on 2 busy cores with the defaults)::

    python benchmarks/bench_rt_structure_sets.py /tmp/rt_bench --cases 6 --heldout 2 --time-budget 12m

A failing stage is reported with its command and error output (in the JSON too), and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg.dicom.geometry import index_to_patient, patient_to_index
from autoseg.dicom.series import DicomSeries, series_geometry, single_series
from autoseg.io import Geometry, read_labels, read_target

REPOSITORY = Path(__file__).resolve().parents[1]
TOOLS = ("plastimatch", "segimage2itkimage", "dciodvfy")


class StageFailed(Exception):
    """A command of the pipeline exited non-zero."""

    def __init__(self, stage: str, command: list[str], returncode: int, output: str) -> None:
        super().__init__(f"{stage} failed ({returncode}): {' '.join(command)}")
        self.stage, self.command, self.returncode, self.output = stage, command, returncode, output


def run(stage: str, command: list[str], logs: Path, timings: dict[str, float]) -> str:
    """Run ``command``, log its output to ``logs/STAGE.log``, add its wall time; raise StageFailed."""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started
    output = result.stdout + result.stderr
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{stage}.log").open("a") as log:
        log.write(f"$ {' '.join(command)}\n{output}\n")
    print(f"[{timings[stage]:7.1f} s] {stage}: exit {result.returncode}", flush=True)
    if result.returncode != 0:
        raise StageFailed(stage, command, result.returncode, output)
    return output


def case_lines(output: str) -> list[str]:
    """convert-dicom's per-case report lines and its summary (not the TG-263 matches or the log)."""
    wanted = (": written", ": skipped", "written to")
    return [line for line in output.splitlines() if any(w in line for w in wanted) and " INFO " not in line]


def autoseg(*argv: str) -> list[str]:
    return [sys.executable, "-P", "-m", "autoseg", *argv]


# ------------------------------------------------------------------------------------------ read-back


def on_series_grid(mask: np.ndarray, geometry: Geometry, series: DicomSeries) -> np.ndarray:
    """Place the non-zero voxels of a mask on the series grid through patient space (every voxel must land
    on a grid point, within 0.02 voxel)."""
    target = series_geometry(series)
    first = series.instances[0]
    result = np.zeros((len(series.instances), first.rows, first.columns), bool)
    index = np.argwhere(mask)
    if len(index) == 0:
        return result
    mapped = patient_to_index(target, index_to_patient(geometry, index.astype(float)))
    rounded = np.rint(mapped).astype(int)
    if np.abs(mapped - rounded).max() > 0.02:
        raise ValueError("the mask's grid is not the series grid")
    inside = np.all((rounded >= 0) & (rounded < result.shape), axis=1)
    result[tuple(rounded[inside].T)] = True
    return result


def plastimatch_masks(rtstruct: Path, series: DicomSeries, folder: Path) -> dict[str, np.ndarray]:
    """The RTSTRUCT rasterised by plastimatch (XOR of contours) on the series grid given as ``--fixed``."""
    folder.mkdir(parents=True, exist_ok=True)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    sitk.WriteImage(reader.Execute(), str(folder / "grid.nii.gz"))
    command = ["plastimatch", "convert", "--input", str(rtstruct), "--fixed", str(folder / "grid.nii.gz")]
    command += ["--output-prefix", str(folder / "masks"), "--prefix-format", "nii.gz", "--xor-contours"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StageFailed("plastimatch", command, result.returncode, result.stdout + result.stderr)
    masks = {}
    for path in sorted((folder / "masks").glob("*.nii.gz")):
        mask, geometry = read_labels(path)
        masks[path.name.removesuffix(".nii.gz")] = on_series_grid(mask > 0, geometry, series)
    return masks


def dcmqi_masks(seg: Path, series: DicomSeries, folder: Path) -> dict[str, np.ndarray]:
    """The SEG decoded by dcmqi's segimage2itkimage (one file per group of non-overlapping segments)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = ["segimage2itkimage", "--inputDICOM", str(seg), "--outputDirectory", str(folder), "-t", "nii"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StageFailed("segimage2itkimage", command, result.returncode, result.stdout + result.stderr)
    meta = json.loads((folder / "meta.json").read_text())
    masks = {}
    for group_index, group in enumerate(meta["segmentAttributes"], start=1):
        values, geometry = read_labels(folder / f"{group_index}.nii.gz")
        for segment in group:
            masks[segment["SegmentLabel"]] = on_series_grid(values == segment["labelID"], geometry, series)
    return masks


def nifti_masks(path: Path, names: list[str], series: DicomSeries) -> dict[str, np.ndarray]:
    """autoseg's NIfTI: a label map (structure k = value k, plan order) or the 4D file (channel k - 1)."""
    target, geometry = read_target(path)
    array = np.asarray(target)
    masks = {}
    for value, name in enumerate(names, start=1):
        mask = array[value - 1] > 0 if array.ndim == 4 else array == value
        masks[name] = on_series_grid(mask, geometry, series)
    return masks


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.sum(a & b)) / total


def score_case(case: Path, prediction: Path, names: list[str], work: Path) -> dict[str, Any]:
    """Dice per structure of the three read-backs against the truth, and dciodvfy errors per file."""
    series = single_series(case / "CT")
    (rtstruct,) = sorted(prediction.glob("*_rtstruct.dcm"))
    (seg,) = sorted(prediction.glob("*_seg.dcm"))
    (nifti,) = sorted(prediction.glob("*.nii.gz"))
    readers = {
        "rtstruct_plastimatch": plastimatch_masks(rtstruct, series, work / "plastimatch"),
        "seg_dcmqi": dcmqi_masks(seg, series, work / "dcmqi"),
        "nifti_autoseg": nifti_masks(nifti, names, series),
    }
    structures: dict[str, Any] = {}
    for name in names:
        truth_values, truth_geometry = read_labels(case / "truth" / f"{name}.nii.gz")
        truth = on_series_grid(truth_values > 0, truth_geometry, series)
        own = readers["nifti_autoseg"][name]
        empty = np.zeros_like(truth)
        entry: dict[str, Any] = {"truth_voxels": int(truth.sum()), "predicted_voxels": int(own.sum())}
        for reader, masks in readers.items():
            mask = masks.get(name, empty)
            entry[reader] = round(dice(mask, truth), 4)
            if reader != "nifti_autoseg":
                entry[f"{reader}_vs_nifti"] = round(dice(mask, own), 4)
        structures[name] = entry
    return {
        "rtstruct": rtstruct.name,
        "seg": seg.name,
        "nifti": nifti.name,
        "dciodvfy_errors": {
            "rtstruct": len(dciodvfy_errors(rtstruct)),
            "seg": len(dciodvfy_errors(seg)),
        },
        "structures": structures,
    }


# ------------------------------------------------------------------------------------------ report


def contoured_counts(archive: Path, cases: list[str]) -> dict[str, int]:
    """How many of ``cases`` have an ROI for each structure (synth_rt.json: null = not contoured)."""
    config = json.loads((archive / "synth_rt.json").read_text())["cases"]
    counts: dict[str, int] = {}
    for case in cases:
        for name, entry in config[case].items():
            counts[name] = counts.get(name, 0) + (entry is not None)
    return counts


def markdown_table(results: dict[str, Any]) -> str:
    cases = results["heldout_cases"]
    scores = results["scores"]
    header = ["structure", "contoured in training", "truth voxels"]
    for case in cases:
        header += [f"{case} RTSTRUCT (plastimatch)", f"{case} SEG (dcmqi)", f"{case} NIfTI"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    counts = results["contoured_in_training"]
    for name in results["structures"]:
        voxels = "/".join(str(scores[case]["structures"][name]["truth_voxels"]) for case in cases)
        row = [f"`{name}`", f"{counts.get(name, 0)}/{len(results['training_cases'])}", voxels]
        for case in cases:
            entry = scores[case]["structures"][name]
            row += [f"{entry[key]:.3f}" for key in ("rtstruct_plastimatch", "seg_dcmqi", "nifti_autoseg")]
        lines.append("| " + " | ".join(row) + " |")
    mean = ["**mean**", "", ""]
    for case in cases:
        for key in ("rtstruct_plastimatch", "seg_dcmqi", "nifti_autoseg"):
            values = [scores[case]["structures"][name][key] for name in results["structures"]]
            mean.append(f"**{np.mean(values):.3f}**")
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scratch", type=Path, help="folder for the archive, dataset, work dir (emptied)")
    parser.add_argument("--cases", type=int, default=6, help="training cases (default: 6)")
    parser.add_argument("--heldout", type=int, default=2, help="held-out cases to predict (default: 2)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="synth --shape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", default="12m", help="cpu planner budget (default: 12m)")
    parser.add_argument("--time-limit", help="train --time-limit (default: the time budget)")
    parser.add_argument(
        "--cpu-gflops", type=float, default=150.0, help="fixed planner throughput; 0: measure (default: 150)"
    )
    parser.add_argument("--fold", default="all", help="fold to train and predict with (default: all)")
    parser.add_argument("--epochs", type=int, help="train --epochs (default: the plan's)")
    parser.add_argument("--iters-per-epoch", type=int, help="train --iters-per-epoch (default: the plan's)")
    parser.add_argument("--num-workers", type=int, default=1, help="train augmentation workers (default: 1)")
    parser.add_argument("--results", type=Path, help="results JSON (default: SCRATCH/results.json)")
    args = parser.parse_args(argv)
    missing = [name for name in TOOLS if shutil.which(name) is None]
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)} (dicom3tools, plastimatch; pip install dcmqi)")
    scratch: Path = args.scratch.resolve()
    if scratch.exists():
        shutil.rmtree(scratch)
    archive, heldout, dataset, work = (scratch / name for name in ("rt", "heldout", "dataset", "work"))
    logs, timings = scratch / "logs", dict[str, float]()
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "timings_s": timings}
    results_path: Path = args.results or scratch / "results.json"
    try:
        synth = ["synth", str(archive), "--preset", "rt", "--cases", str(args.cases + args.heldout)]
        synth += ["--seed", str(args.seed)] + (["--shape", *map(str, args.shape)] if args.shape else [])
        run("synth", autoseg(*synth), logs, timings)
        cases = sorted(p.name for p in archive.iterdir() if p.is_dir())
        training, held = cases[: args.cases], cases[args.cases :]
        heldout.mkdir(parents=True)
        for case in held:
            shutil.move(archive / case, heldout / case)
        results |= {"training_cases": training, "heldout_cases": held}
        results["contoured_in_training"] = contoured_counts(archive, training)
        converted = run(
            "convert-dicom",
            autoseg("convert-dicom", str(archive), str(dataset), "--names", "tg263"),
            logs,
            timings,
        )
        results["convert_output"] = case_lines(converted)
        plan = ["plan_and_preprocess", str(dataset), "--workdir", str(work), "--planner", "cpu"]
        plan += ["--time-budget", args.time_budget, "--device", "cpu", "-c", "3d_fullres"]
        plan += ["--cpu-gflops", str(args.cpu_gflops)] if args.cpu_gflops > 0 else []
        run("plan_and_preprocess", autoseg(*plan), logs, timings)
        plans = json.loads((work / "plans.json").read_text())
        names = [region["name"] for region in plans["target"].get("regions", [])]
        if not names:
            labels = plans["labels"]
            names = [name for name, value in sorted(labels.items(), key=lambda item: item[1]) if value]
        configuration = plans["configurations"]["3d_fullres"]
        results |= {
            "structures": names,
            "target": plans["target"]["kind"],
            "why_target": plans["why"].get("target"),
            "plan": {
                key: configuration[key] for key in ("patch_size", "batch_size", "schedule", "mirroring")
            },
        }
        train = ["train", args.fold, "-c", "3d_fullres", "--workdir", str(work), "--device", "cpu"]
        train += ["--time-limit", args.time_limit or args.time_budget, "--num-workers", str(args.num_workers)]
        train += ["--epochs", str(args.epochs)] if args.epochs else []
        train += ["--iters-per-epoch", str(args.iters_per_epoch)] if args.iters_per_epoch else []
        results["train_output_tail"] = run("train", autoseg(*train), logs, timings).splitlines()[-8:]
        results["scores"] = {}
        for case in held:
            out = scratch / "pred" / case
            predict = ["predict", "-i", str(heldout / case / "CT"), "-o", str(out), "--workdir", str(work)]
            predict += ["-c", "3d_fullres", "-f", args.fold, "--device", "cpu"]
            predict += ["--format", "rtstruct", "dicom-seg", "nifti"]
            run("predict", autoseg(*predict), logs, timings)
            started = time.perf_counter()
            results["scores"][case] = score_case(heldout / case, out, names, scratch / "readback" / case)
            timings["read_back"] = timings.get("read_back", 0.0) + time.perf_counter() - started
    except StageFailed as failure:
        results["failure"] = {
            "stage": failure.stage,
            "command": " ".join(failure.command),
            "returncode": failure.returncode,
            "output_tail": failure.output[-4000:],
        }
        print(f"FAILED: {failure}\n{failure.output[-4000:]}", file=sys.stderr)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    if "failure" in results:
        return 1
    print()
    print(markdown_table(results))
    for case in results["heldout_cases"]:
        score = results["scores"][case]
        agreement = [
            min(entry[f"{reader}_vs_nifti"] for entry in score["structures"].values())
            for reader in ("rtstruct_plastimatch", "seg_dcmqi")
        ]
        print(
            f"\n{case}: dciodvfy errors RTSTRUCT {score['dciodvfy_errors']['rtstruct']}, SEG "
            f"{score['dciodvfy_errors']['seg']}; lowest Dice against autoseg's NIfTI: plastimatch "
            f"{agreement[0]:.4f}, dcmqi {agreement[1]:.4f}"
        )
    print("\ntimes (s): " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in timings.items()))
    print(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
