"""CLI commands ``demo``: the pipeline end to end on the built-in synthetic dataset.

Each command parses flags, builds the stage's options, calls its entry point and prints the outcome.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from autoseg.cli.options import (
    CommandSpec,
    add_num_workers,
    show_progress,
)

if TYPE_CHECKING:
    pass


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    add_num_workers(parser)


def run_demo_command(args: argparse.Namespace) -> int:
    """``autoseg demo``: the pipeline end to end on the built-in synthetic dataset."""
    from autoseg.demo import run_demo

    for line in run_demo(args.workdir, num_workers=args.num_workers, show_progress=show_progress(args)):
        print(line)
    return 0


COMMANDS = [
    CommandSpec(
        "demo",
        "run the pipeline end to end on a built-in synthetic dataset",
        _demo_arguments,
        run_demo_command,
    ),
]
