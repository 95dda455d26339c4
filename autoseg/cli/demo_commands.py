"""CLI commands ``demo``: the pipeline end to end on the built-in synthetic dataset.

Each command parses flags, builds the stage's options, calls its entry point and prints the outcome.
"""

from __future__ import annotations

import argparse

from autoseg.cli.options import (
    CommandSpec,
    add_num_workers,
    catalogue_path,
    show_progress,
)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    add_num_workers(parser)


def run_demo_command(args: argparse.Namespace) -> int:
    """``autoseg demo``: the pipeline end to end on the built-in synthetic dataset."""
    from autoseg.demo import run_demo

    lines = run_demo(
        args.workdir,
        catalogue_path=catalogue_path(args),
        num_workers=args.num_workers,
        show_progress=show_progress(args),
    )
    for line in lines:
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
