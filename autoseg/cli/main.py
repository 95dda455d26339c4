"""The ``autoseg`` command line: a thin layer that parses flags, calls a stage and prints its outcome.

Exit codes: 0 success, 1 a data problem (the message names the file), 2 a usage problem (bad flag, unknown
name).
No traceback is shown unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from autoseg import __version__
from autoseg.cli.options import CommandSpec
from autoseg.errors import AutosegError

logger = logging.getLogger("autoseg")

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``autoseg`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
    _configure_logging(args.verbose, args.quiet)
    command: Command = args.command
    try:
        with logging_redirect_tqdm():  # log lines print above progress bars instead of through them
            for handler in logging.getLogger().handlers:  # tqdm's replacement handler does not copy the level
                handler.setLevel(_console_level(args.verbose, args.quiet))
            return command(args)
    except AutosegError as error:
        if args.debug:
            raise
        for line in error.lines():
            print(f"autoseg: {line}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("autoseg: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an autoseg bug or an unforeseen environment problem: one line, no traceback
        if args.debug:
            raise
        print(
            f"autoseg: internal error: {type(error).__name__}: {error} (re-run with --debug for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one sub-command per stage, each with the common options."""
    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="Self-configuring segmentation of 3D medical images.",
        epilog="Run 'autoseg COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    common = _common_options()
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for spec in all_commands():
        sub = commands.add_parser(spec.name, parents=[common], help=spec.help, description=spec.help)
        spec.add_arguments(sub)
        sub.set_defaults(command=spec.run)
    return parser


def all_commands() -> list[CommandSpec]:
    """Every sub-command, in pipeline order: datasets in, planning, training, inference, evaluation, demo."""
    from autoseg.cli import (
        data_commands,
        demo_commands,
        evaluation_commands,
        inference_commands,
        plan_commands,
        train_commands,
    )

    groups = (
        data_commands,
        plan_commands,
        train_commands,
        inference_commands,
        evaluation_commands,
        demo_commands,
    )
    return [spec for group in groups for spec in group.COMMANDS]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("AUTOSEG_WORKDIR", "autoseg-work")),
        help="work directory holding everything autoseg makes for one dataset "
        "(default: $AUTOSEG_WORKDIR, else ./autoseg-work)",
    )
    group.add_argument(
        "--datasets-file",
        type=Path,
        default=None,
        help="dataset catalogue (default: the project's datasets.json)",
    )
    group.add_argument(
        "--data-root",
        type=Path,
        default=_env_path("AUTOSEG_DATA"),
        help="folder holding the catalogue's real datasets (default: $AUTOSEG_DATA, else "
        "../shared/data next to datasets.json)",
    )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=_default_cache_dir(),
        help="where catalogue synthetic datasets are generated (default: ~/.cache/autoseg/datasets)",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    group.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only; no progress bars"
    )
    group.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    return common


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "autoseg" / "datasets"


def _console_level(verbose: bool, quiet: bool) -> int:
    return logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO


def _configure_logging(verbose: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.setLevel(_console_level(verbose, quiet))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    for name in ("autoseg", "planners"):  # INFO always reaches file logs (training.log); the console filters
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
