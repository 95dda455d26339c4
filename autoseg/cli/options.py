"""What the command modules share: argument types, common flags, the dataset argument, ``CommandSpec``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoseg.dataset.catalogue import default_catalogue_path, resolve_dataset


@dataclass(frozen=True)
class CommandSpec:
    """One sub-command: its name, one-line help, how to add its flags, and what runs it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a usage error, exit 2, otherwise: NaN and Inf included)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def positive_duration(text: str) -> str:
    """argparse type: a duration (``2h``, ``90m``, ``3600``) longer than zero, kept as text for the stage."""
    from autoseg.errors import UsageError
    from autoseg.planning.budgets import parse_duration

    try:
        seconds = parse_duration(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(error.message) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration '{text}' must be positive")
    return text


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on an interactive terminal, unless --quiet (piped output and CI logs stay clean)."""
    return not args.quiet and sys.stderr.isatty()


def add_num_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-np",
        "--num-processes",
        dest="num_workers",
        type=positive_int,
        default=1,
        help="worker processes over cases (default: 1)",
    )


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help="dataset folder (nnU-Net v2 or MSD layout) or a name from datasets.json",
    )


def catalogue_path(args: argparse.Namespace) -> Path:
    path: Path | None = args.datasets_file
    return path if path is not None else default_catalogue_path()


def dataset_folder(args: argparse.Namespace) -> Path:
    return resolve_dataset(
        args.dataset,
        catalogue_path=catalogue_path(args),
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        num_workers=args.num_workers,
        show_progress=show_progress(args),
    )
