"""kill -9 at seeded random points of preprocess, train, predict, convert-dicom and evaluate; after each kill
the output tree is scanned (every final-named file must read back in full, every hidden entry must be one of
autoseg's temporaries), the command is re-run (train: with ``--resume`` once a checkpoint exists) and its
outputs are compared with an uninterrupted run's, byte for byte or, for the files that embed a time, decoded.

The harness is ``tests/faults.py`` (the scenarios: ``tests/fault_scenarios.py``), the same code the tests run.
Kill points do not depend on the machine's speed: at a seeded random count of final files written
(preprocess, predict, convert-dicom), or at a seeded random fraction of the measured uninterrupted run (train,
evaluate: they write at the end or rewrite the same files).

Usage: ``python benchmarks/kill_nine.py [--seeds 10] [--commands preprocess train ...] [--scratch DIR]
[--json OUT.json]``. Prints a Markdown table for ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault_scenarios import (
    convert_dicom_scenario,
    evaluate_scenario,
    predict_scenario,
    preprocess_scenario,
    train_scenario,
    trained_model,
)
from faults import KillTrial, Scenario, kill_trial, reference_run

COMMANDS: dict[str, Callable[[Path], Scenario]] = {
    "preprocess": lambda inputs: preprocess_scenario(inputs),
    "train": lambda inputs: train_scenario(inputs),
    "predict": lambda inputs: predict_scenario(inputs, trained_model(inputs)),
    "convert-dicom": lambda inputs: convert_dicom_scenario(inputs),
    "evaluate": lambda inputs: evaluate_scenario(inputs),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="kills per command (seeds 0..N-1)")
    parser.add_argument("--commands", nargs="+", choices=sorted(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--scratch", type=Path, default=None, help="working folder (default: a temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write every trial as JSON here")
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kill_nine-"))
    rows, records, failures = [], [], 0
    for name in args.commands:
        scenario = COMMANDS[name](scratch / "inputs")
        reference = reference_run(scenario, scratch / f"{name}-reference")
        print(f"{scenario.name}: uninterrupted {reference.seconds:.1f} s, {reference.files} files")
        for seed in range(args.seeds):
            trial = kill_trial(scenario, scratch / f"{name}-{seed}", seed, reference)
            failures += bool(trial.problems)
            rows.append(_row(scenario.name, trial))
            records.append(_record(scenario.name, trial))
            print(rows[-1], flush=True)
            shutil.rmtree(scratch / f"{name}-{seed}")
    print()
    print(
        "| command | seed | killed at | exit | temporaries after kill | half files | re-run | identical |"
        " equal decoded | differences | temporaries after re-run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    print(f"\n{len(rows)} kills, {failures} with a problem")
    return 1 if failures else 0


def _row(command: str, trial: KillTrial) -> str:
    decoded = ", ".join(sorted({Path(n).name for n in trial.comparison.decoded_equal})) or "-"
    return (
        f"| {command} | {trial.seed} | {trial.trigger} | {trial.killed.returncode} | "
        f"{trial.temporaries_after_kill} | {len(trial.incomplete)} | {trial.rerun.returncode} | "
        f"{len(trial.comparison.identical)} | {len(trial.comparison.decoded_equal)} ({decoded}) | "
        f"{len(trial.comparison.differences)} | {len(trial.temporaries_after_rerun)} |"
    )


def _record(command: str, trial: KillTrial) -> dict[str, object]:
    return {
        "command": command,
        "seed": trial.seed,
        "trigger": trial.trigger,
        "killed_exit": trial.killed.returncode,
        "temporaries_after_kill": trial.temporaries_after_kill,
        "incomplete": trial.incomplete,
        "unrecognised": trial.unrecognised,
        "rerun_exit": trial.rerun.returncode,
        "identical": trial.comparison.identical,
        "decoded_equal": trial.comparison.decoded_equal,
        "differences": trial.comparison.differences,
        "temporaries_after_rerun": trial.temporaries_after_rerun,
    }


if __name__ == "__main__":
    sys.exit(main())
