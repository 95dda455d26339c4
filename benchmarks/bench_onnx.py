"""PyTorch against onnxruntime for ``autoseg predict``, on this CPU, with the same trained folds.

Exports one configuration of ``--workdir`` twice (``export-model`` as PyTorch weights and ``--format onnx``),
then predicts the first ``--cases`` images of ``--inputs`` along three paths, alternating them ``--repeats``
times (so drift in the machine's load hits all alike), all in this process with ``--threads`` threads: each
file in float32 (onnxruntime computes in float32; bfloat16 autocast would compare different arithmetic), and
the PyTorch file in ``predict``'s default precision (bfloat16 on a CPU with native bfloat16: the speed a
PyTorch user gets). Reports per path the median over repeats of the seconds per case the networks took
(predict.json's ``predict_seconds``: the sliding window, mirroring and fold ensemble) and of the whole run's
wall time per case; the Dice between the two float32 label maps per label and case; the largest probability
difference (the saved float16 probabilities, so steps of 1e-3 near 1); and the load average before and
after, since a shared machine's timings are worthless (only correctness figures are).

    python benchmarks/bench_onnx.py --workdir runs/hippo --inputs ../shared/data/hippocampus/imagesTr \\
        --cases 10 --folds 0 --repeats 3 --threads 2 --out benchmarks/results/onnx.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from autoseg.evaluation.metrics import dice_per_label
from autoseg.inference.model_file import export_model
from autoseg.inference.outputs import OutputOptions
from autoseg.inference.stage import PredictRequest, run_predict
from autoseg.io import read_labels, read_probabilities

FORMATS = ("torch", "onnx")
PATHS = ("torch", "onnx", "torch-auto")
"""The timed paths: PyTorch weights in float32, the ONNX file (onnxruntime, float32), and the PyTorch
weights in ``predict``'s default precision (``auto``: bfloat16 autocast on a CPU with native bfloat16), which
is what a user of the PyTorch path gets; the correctness figures compare the two float32 paths."""


def copy_cases(inputs: Path, count: int, target: Path) -> list[str]:
    """The first ``count`` cases of a folder of ``CASE_0000.nii.gz`` files (channel 0 names the case), with
    all their channels, copied to ``target``; returns the case names."""
    firsts = sorted(inputs.glob("*_0000.*"))[:count]
    if not firsts:
        raise SystemExit(f"{inputs}: no CASE_0000.* images")
    target.mkdir(parents=True)
    names = []
    for first in firsts:
        name = first.name.split("_0000.")[0]
        names.append(name)
        for channel in sorted(inputs.glob(f"{name}_[0-9][0-9][0-9][0-9].*")):
            shutil.copy2(channel, target / channel.name)
    return names


PathPrecision = Literal["auto", "float32", "bfloat16", "float16"]


def predict_once(
    model: Path,
    inputs: Path,
    out: Path,
    folds: Sequence[str] | None,
    threads: int,
    precision: PathPrecision = "float32",
) -> dict[str, Any]:
    """One ``predict`` run; returns its wall time and the network seconds per case."""
    if out.exists():
        shutil.rmtree(out)
    request = PredictRequest(
        inputs=inputs,
        output=out,
        model=model,
        folds=tuple(folds) if folds else None,
        precision=precision,
        device="cpu",
        threads=threads,
        outputs=OutputOptions(save_probabilities=True),
    )
    started = time.perf_counter()
    outputs = run_predict(request, show_progress=False)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "predict_s": {o.identifier: o.predict_seconds for o in outputs}}


def compare(cases: Sequence[str], first: Path, second: Path, labels: Sequence[int]) -> dict[str, Any]:
    """Dice per label and case between the two label maps, and the largest probability difference."""
    dice: dict[str, dict[int, float]] = {}
    largest = 0.0
    differing = 0
    for case in cases:
        a, _ = read_labels(first / f"{case}.nii.gz")
        b, _ = read_labels(second / f"{case}.nii.gz")
        dice[case] = dice_per_label(b, a, labels)
        differing += int(np.count_nonzero(a != b))
        pa = read_probabilities(first / f"{case}_probabilities.npz").astype(np.float32)
        pb = read_probabilities(second / f"{case}_probabilities.npz").astype(np.float32)
        largest = max(largest, float(np.abs(pa - pb).max()))
    values = [d for per_case in dice.values() for d in per_case.values() if not np.isnan(d)]
    return {
        "dice": {case: {str(k): v for k, v in d.items()} for case, d in dice.items()},
        "min_dice": min(values) if values else None,
        "voxels_differing": differing,
        "max_probability_difference": largest,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True, help="a trained work directory")
    parser.add_argument("--inputs", type=Path, required=True, help="a folder of CASE_0000.nii.gz images")
    parser.add_argument("-c", "--configuration", default=None, help="default: the work directory's default")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="default: every trained fold")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as scratch:
        root = Path(scratch)
        cases = copy_cases(args.inputs, args.cases, root / "in")
        models: dict[str, Path] = {}
        export_s: dict[str, float] = {}
        for name in FORMATS:
            started = time.perf_counter()
            models[name] = export_model(
                args.workdir, root / f"{name}.zip", configuration=args.configuration, folds=args.folds,
                network_format="onnx" if name == "onnx" else "torch",
            )  # fmt: skip
            export_s[name] = time.perf_counter() - started
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PATHS}
        for _ in range(args.repeats):
            for name in PATHS:
                precision: PathPrecision = "auto" if name == "torch-auto" else "float32"
                model = models["torch"] if name == "torch-auto" else models[name]
                runs[name].append(
                    predict_once(model, root / "in", root / name, args.folds, args.threads, precision)
                )
        labels = json.loads((root / "torch" / "predict.json").read_text())
        record = _summary(runs, cases, export_s)
        record |= compare(cases, root / "torch", root / "onnx", _foreground(args.workdir))
        record |= {
            "configurations": labels["configurations"],
            "folds": labels["folds"],
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "torch_version": torch.__version__,
            "onnxruntime_version": _version("onnxruntime"),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    _print(record)
    return 0


def _summary(
    runs: dict[str, list[dict[str, Any]]], cases: Sequence[str], export_s: dict[str, float]
) -> dict[str, Any]:
    summary: dict[str, Any] = {"cases": len(cases), "export_s": export_s}
    for name, repeats in runs.items():
        per_case = [statistics.median(r["predict_s"][c] for r in repeats) for c in cases]
        summary[name] = {
            "network_s_per_case": statistics.mean(per_case),
            "wall_s_per_case": statistics.median(r["wall_s"] for r in repeats) / len(cases),
            "wall_s_runs": [r["wall_s"] for r in repeats],
        }
    onnx = summary["onnx"]["network_s_per_case"]
    summary["onnx_speedup"] = summary["torch"]["network_s_per_case"] / onnx
    summary["onnx_speedup_over_default"] = summary["torch-auto"]["network_s_per_case"] / onnx
    return summary


def _foreground(workdir: Path) -> list[int]:
    from autoseg.workdir import Workdir

    return [value for value in Workdir(workdir).read_plans().labels.values() if value != 0]


def _version(module: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(module)


def _print(record: dict[str, Any]) -> None:
    before, after = record["load_average_before"][0], record["load_average_after"][0]
    print(f"{record['cases']} cases, {record['threads']} threads, load {before:.2f} -> {after:.2f}")
    print("| path | network s/case | wall s/case | export s |")
    print("|---|---|---|---|")
    for name in PATHS:
        row, export = record[name], record["export_s"].get(name, record["export_s"]["torch"])
        print(f"| {name} | {row['network_s_per_case']:.3f} | {row['wall_s_per_case']:.3f} | {export:.1f} |")
    print(
        f"onnxruntime / PyTorch speed-up (network): {record['onnx_speedup']:.2f}x against float32, "
        f"{record['onnx_speedup_over_default']:.2f}x against the default precision; min Dice between the "
        f"label maps {record['min_dice']}; {record['voxels_differing']} voxels differ; max probability "
        f"difference {record['max_probability_difference']:.4f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
