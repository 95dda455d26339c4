"""Markdown tables of a ``results.json`` written by the ``bench_predict_*.py`` scripts.

``python benchmarks/bench_predict_report.py ROOT/results.json`` (or the archived
``benchmarks/results/predict_2026-12-01.json``). Per comparison: seconds per case, total seconds (each run),
peak memory and the ratio of each arm's time to the first arm's in the same repeat (median and range);
Dice per class of each arm's outputs. Profiles and the setup's weight checks as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def comparison_table(key: str, entry: dict[str, Any]) -> list[str]:
    """One comparison: a timing table, then (hippocampus) a Dice table."""
    lines = [f"### {key} ({entry['cases']} cases, {entry['repeats']} repeats)", ""]
    lines += ["| tool / setting | s/case | total s (runs) | peak MiB | ratio to first (per repeat) |"]
    lines += ["|---|---|---|---|---|"]
    arms = entry["arms"]
    first = next(iter(arms.values()))["runs"]
    for name, arm in arms.items():
        walls = [r["wall_s"] for r in arm["runs"]]
        peaks = [r["peak_mib"] for r in arm["runs"]]
        ratios = [w / f["wall_s"] for w, f in zip(walls, first, strict=True)]
        lines.append(
            f"| {name} | {_median(walls) / entry['cases']:.2f} | {_median(walls):.1f} "
            f"({', '.join(f'{w:.1f}' for w in walls)}) | {_median(peaks):.0f} | "
            f"{_median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    if "quality" in entry:
        dice = entry["quality"]["dice"]
        classes = list(next(iter(dice.values())))
        lines += ["", f"| output | {' | '.join(classes)} |", "|---|" + "---|" * len(classes)]
        for folder, scores in dice.items():
            lines.append(f"| {Path(folder).name} | {' | '.join(f'{scores[c]:.4f}' for c in classes)} |")
        lines += ["", f"max disagreement: {entry['quality']['max_disagreement_vs_first']}"]
    return lines


def report(results: dict[str, Any]) -> str:
    """Every entry of ``results``: comparisons as tables, the rest as JSON."""
    lines: list[str] = []
    for key, entry in results.items():
        if key.startswith("compare/"):
            lines += ["", *comparison_table(key, entry)]
        else:
            lines += ["", f"### {key}", "", "```", json.dumps(entry, indent=1), "```"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="results.json")
    args = parser.parse_args(argv)
    print(report(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
