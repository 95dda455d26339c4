"""CLI commands ``plan``, ``planners``, ``preprocess`` and ``plan_and_preprocess``.

Each command parses flags, builds the stage's options, calls its entry point and prints the outcome.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.cli.options import (
    CommandSpec,
    add_dataset_argument,
    add_num_workers,
    dataset_folder,
    positive_duration,
    positive_float,
    positive_int,
    show_progress,
)

if TYPE_CHECKING:
    from autoseg.planning.stage import PlanOptions
    from autoseg.preprocessing.stage import PreprocessOptions


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--planner",
        default=None,
        help="planner preset (see 'autoseg planners'; default: 'default' with a GPU, else 'cpu')",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device training will run on (default: cuda if a GPU is visible, else cpu)",
    )
    parser.add_argument(
        "--gpu-memory",
        type=positive_float,
        default=None,
        metavar="GB",
        help="GPU memory to plan for (default: the preset's reference, e.g. 8)",
    )
    parser.add_argument(
        "--time-budget",
        type=positive_duration,
        default=None,
        metavar="DURATION",
        help="cpu preset: training time to plan for, e.g. 2h, 90m (default: 2h)",
    )
    parser.add_argument(
        "--cpu-gflops",
        type=positive_float,
        default=None,
        help="cpu preset: convolution throughput to assume instead of measuring it",
    )
    parser.add_argument(
        "--min-iterations",
        type=positive_int,
        default=None,
        metavar="N",
        help="cpu preset: training iterations the time budget must hold; patch and batch shrink to fit "
        "(default: 8000)",
    )


def _plan_options(args: argparse.Namespace) -> PlanOptions:
    from autoseg.planning.stage import PlanOptions

    return PlanOptions(
        planner=args.planner,
        device=args.device,
        gpu_memory_gb=args.gpu_memory,
        time_budget=args.time_budget,
        cpu_gflops=args.cpu_gflops,
        minimum_iterations=args.min_iterations,
    )


def run_plan_command(args: argparse.Namespace) -> int:
    """``autoseg plan``: WORKDIR/fingerprint.json -> WORKDIR/plans.json."""
    from autoseg.planning.stage import run_plan

    print(run_plan(args.workdir, _plan_options(args)))
    return 0


def _planners_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options of its own


def run_planners_command(args: argparse.Namespace) -> int:
    """``autoseg planners``: list the presets."""
    from autoseg.planning.registry import available_planners, describe

    names = available_planners()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def _preprocess_options(args: argparse.Namespace) -> PreprocessOptions:
    from autoseg.preprocessing.stage import PreprocessOptions

    configurations = tuple(args.configurations) if args.configurations else None
    return PreprocessOptions(configurations, num_workers=args.num_workers, seed=args.seed)


def _preprocess_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        default=None,
        metavar="CONFIG",
        help="configurations to preprocess (default: every planned one)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the stored foreground samples (default: 0)"
    )


def _preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    _preprocess_flags(parser)
    add_num_workers(parser)


def run_preprocess_command(args: argparse.Namespace) -> int:
    """``autoseg preprocess``: plans.json -> WORKDIR/preprocessed."""
    from autoseg.preprocessing.stage import run_preprocess

    _print_folders(run_preprocess(args.workdir, _preprocess_options(args), show_progress=show_progress(args)))
    return 0


def _print_folders(folders: dict[str, Path]) -> None:
    for name, folder in folders.items():
        print(f"{name}: {folder}")


def _plan_and_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_argument(parser)
    _plan_arguments(parser)
    _preprocess_flags(parser)
    add_num_workers(parser)


def run_plan_and_preprocess_command(args: argparse.Namespace) -> int:
    """``autoseg plan_and_preprocess DATASET``: verify, fingerprint, plan, preprocess."""
    from autoseg.pipeline import plan_and_preprocess

    _, folders = plan_and_preprocess(
        dataset_folder(args),
        args.workdir,
        _plan_options(args),
        _preprocess_options(args),
        show_progress=show_progress(args),
    )
    _print_folders(folders)
    return 0


COMMANDS = [
    CommandSpec(
        "plan",
        "derive the configurations (spacing, topology, patch, batch) from "
        "WORKDIR/fingerprint.json into WORKDIR/plans.json",
        _plan_arguments,
        run_plan_command,
    ),
    CommandSpec(
        "preprocess",
        "crop, normalise, resample and store every case of the planned configurations",
        _preprocess_arguments,
        run_preprocess_command,
    ),
    CommandSpec(
        "plan_and_preprocess",
        "verify, fingerprint, plan and preprocess a dataset in one command",
        _plan_and_preprocess_arguments,
        run_plan_and_preprocess_command,
    ),
    CommandSpec("planners", "list the planner presets", _planners_arguments, run_planners_command),
]
