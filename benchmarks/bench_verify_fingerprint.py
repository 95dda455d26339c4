"""Benchmark ``autoseg verify`` and ``autoseg fingerprint`` on a dataset with 1 and 2 processes.

Usage: ``python benchmarks/bench_verify_fingerprint.py [DATASET] [--repeats 3]`` (default DATASET:
hippocampus).
Prints a Markdown table for ``docs/benchmarks.md``: median wall time and median peak memory (PSS) of the
process tree.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

from measure import measure


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", nargs="?", default="hippocampus")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    autoseg = [sys.executable, "-m", "autoseg"]
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| command | processes | median wall (s) | runs (s) | median peak memory, process tree (MiB) |")
    print("|---|---|---|---|---|")
    startup = measure([*autoseg, "--help"], repeats=args.repeats)
    print(
        f"| startup (autoseg --help) | - | {startup.median_wall_s:.2f} | "
        f"{', '.join(f'{w:.2f}' for w in startup.wall_s)} | {startup.median_peak_mb:.0f} |"
    )
    for processes in (1, 2):
        with tempfile.TemporaryDirectory() as workdir:
            commands = {
                "verify": [*autoseg, "verify", args.dataset, "-q", "-np", str(processes)],
                "fingerprint": [
                    *autoseg,
                    "fingerprint",
                    args.dataset,
                    "-q",
                    "-np",
                    str(processes),
                    "--force",
                    "--workdir",
                    str(Path(workdir)),
                ],
            }
            for name, command in commands.items():
                result = measure(command, repeats=args.repeats)
                runs = ", ".join(f"{w:.2f}" for w in result.wall_s)
                print(
                    f"| {name} | {processes} | {result.median_wall_s:.2f} | {runs} "
                    f"| {result.median_peak_mb:.0f} |"
                )


if __name__ == "__main__":
    main()
