"""``autoseg plan_and_preprocess`` against ``nnUNetv2_plan_and_preprocess`` (3d_fullres), side by side.

Both get the same raw data and process count; each run starts from nothing (fresh work directory / nnU-Net
preprocessed folder), and the two tools alternate, so load on the shared machine hits both alike. Reported:
median wall time and median peak memory (PSS) of the whole process tree.

nnU-Net must live in its own virtual environment (``pip install torch==2.13.0 nnunetv2==2.6.0``), never in
autoseg's; point ``--nnunet-bin`` at its ``bin`` folder and ``--nnunet-raw`` at an ``nnUNet_raw`` folder
holding the datasets as ``DatasetXXX_Name`` (symlinks to the same files autoseg reads).

Usage::

    python benchmarks/bench_plan_and_preprocess.py --nnunet-bin NNUNET_VENV/bin \\
        --nnunet-raw NNUNET_RAW --dataset 4:DATA/hippocampus \\
        --dataset 900:NNUNET_RAW/Dataset900_SynthCT --processes 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from measure import run_once


def main() -> None:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nnunet-bin", type=Path, required=True)
    parser.add_argument("--nnunet-raw", type=Path, required=True)
    parser.add_argument("--dataset", action="append", required=True, metavar="ID:FOLDER")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| dataset | tool | median wall (s) | runs (s) | median peak memory (GiB) | speed-up |")
    print("|---|---|---|---|---|---|")
    for item in args.dataset:
        dataset_id, folder = item.split(":", 1)
        results: dict[str, tuple[list[float], list[float]]] = {"autoseg": ([], []), "nnU-Net v2.6": ([], [])}
        for _ in range(args.repeats):
            for tool, command, cleanup, env in _commands(args, dataset_id, Path(folder)):
                wall, peak = run_once(command, env=env)
                cleanup()
                results[tool][0].append(wall)
                results[tool][1].append(peak / 1024)
        reference = statistics.median(results["nnU-Net v2.6"][0])
        for tool, (walls, peaks) in results.items():
            runs = ", ".join(f"{w:.1f}" for w in walls)
            print(
                f"| {Path(folder).name} | {tool} | {statistics.median(walls):.1f} | {runs} | "
                f"{statistics.median(peaks):.2f} | {reference / statistics.median(walls):.2f}x |"
            )


Command = tuple[str, list[str], Callable[[], None], dict[str, str]]


def _commands(args: argparse.Namespace, dataset_id: str, folder: Path) -> list[Command]:
    work = Path(tempfile.mkdtemp(prefix="autoseg-bench-"))
    preprocessed = Path(tempfile.mkdtemp(prefix="nnunet-pre-"))
    results = Path(tempfile.mkdtemp(prefix="nnunet-res-"))
    processes = str(args.processes)
    autoseg = [
        sys.executable,
        "-m",
        "autoseg",
        "plan_and_preprocess",
        str(folder),
        "--workdir",
        str(work),
        "--planner",
        "default",
        "--device",
        "cuda",
        "-c",
        "3d_fullres",
        "-np",
        processes,
        "-q",
    ]
    nnunet = [
        str(args.nnunet_bin / "nnUNetv2_plan_and_preprocess"),
        "-d",
        dataset_id,
        "-c",
        "3d_fullres",
        "-np",
        processes,
        "-npfp",
        processes,
        "--clean",
    ]
    env = dict(
        os.environ,
        nnUNet_raw=str(args.nnunet_raw),
        nnUNet_preprocessed=str(preprocessed),
        nnUNet_results=str(results),
    )
    return [
        ("autoseg", autoseg, lambda: shutil.rmtree(work, ignore_errors=True), dict(os.environ)),
        ("nnU-Net v2.6", nnunet, lambda: shutil.rmtree(preprocessed, ignore_errors=True), env),
    ]


if __name__ == "__main__":
    main()
