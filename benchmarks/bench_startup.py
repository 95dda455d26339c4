"""Start-up time of ``autoseg --help`` and of ``autoseg predict``, for one or more source trees side by side.

Each measurement is a fresh ``python`` process with the tree first on ``PYTHONPATH`` (interpreter start and
exit included); the trees alternate run by run, and the median of ``--repeats`` runs is reported.

- ``help``: ``python -m autoseg --help``.
- ``predict``: what ``autoseg predict`` imports before it reads anything: the CLI, then the predict stage
  module (``--predict-module``, one per tree: ``autoseg.inference.stage`` now, ``autoseg.predict`` before the
  stage packages).

Usage (nothing else running)::

    python benchmarks/bench_startup.py --tree before=/tmp/autoseg-old:autoseg.predict \\
        --tree after=.:autoseg.inference.stage --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def seconds(source: Path, code: list[str]) -> float:
    """Wall seconds of one ``python ARGS`` process with ``source`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(source.resolve())}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-P", *code], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tree",
        action="append",
        required=True,
        metavar="NAME=PATH:PREDICT_MODULE",
        help="a source tree to measure, named, with its predict stage module",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    trees = []
    for spec in args.tree:
        name, rest = spec.split("=", 1)
        path, module = rest.rsplit(":", 1)
        trees.append((name, Path(path), module))
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name, path, module in trees:
            help_code = ["-m", "autoseg", "--help"]
            predict_code = ["-c", f"import autoseg.cli, {module}"]
            times.setdefault((name, "help"), []).append(seconds(path, help_code))
            times.setdefault((name, "predict"), []).append(seconds(path, predict_code))
    print(f"| tree | `autoseg --help` (s) | `autoseg predict` start-up (s) |   (median of {args.repeats})")
    print("|---|---|---|")
    for name, _, _ in trees:
        help_s, predict_s = (statistics.median(times[(name, k)]) for k in ("help", "predict"))
        print(f"| {name} | {help_s:.3f} | {predict_s:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
