"""The ``autoseg`` command line: a thin layer that parses flags, calls a stage and prints its outcome.

Exit codes: 0 success, 1 a data problem (the message names the file), 2 a usage problem (bad flag, unknown
name), 130 interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM).
No traceback is shown unless ``--debug`` is given.

Signals: SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, so the command unwinds as for an
error (atomic writes drop their temporaries, worker pools are terminated: :mod:`autoseg.parallel`), then
prints one line and exits 130 or 143. Once the first signal arrived, further ones are ignored, so a second
Ctrl-C cannot break the clean-up half-way. A signal whose :class:`Interrupted` is raised where Python swallows
exceptions (a weakref callback, a ``__del__``: "Exception ignored in ...") is not lost: ``sys.unraisablehook``
sees it, re-arms the handler and delivers the signal again, which then lands in ordinary code.
"""

from __future__ import annotations

import _thread
import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from autoseg import __version__
from autoseg.cli.options import CommandSpec
from autoseg.errors import AutosegError

logger = logging.getLogger("autoseg")

Command = Callable[[argparse.Namespace], int]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``autoseg`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    with _signals_interrupt(restore=argv is not None):
        try:
            return _run(argv)
        except KeyboardInterrupt as interruption:  # also one arriving outside _run's own handler
            return _interrupted(interruption)


def _run(argv: Sequence[str] | None) -> int:
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
    except KeyboardInterrupt as interruption:
        return _interrupted(interruption)
    except Exception as error:  # an autoseg bug or an unforeseen environment problem: one line, no traceback
        if args.debug:
            raise
        print(
            f"autoseg: internal error: {type(error).__name__}: {error} (re-run with --debug for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        return 1


def _interrupted(interruption: KeyboardInterrupt) -> int:
    """The one line and the exit code of an interrupted command (a plain KeyboardInterrupt: SIGINT)."""
    _ignore_signals()
    signum = interruption.signum if isinstance(interruption, Interrupted) else signal.SIGINT
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    print(f"autoseg: {what}; the outputs finished so far are kept", file=sys.stderr)
    return 128 + signum


@contextmanager
def _signals_interrupt(*, restore: bool) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the block runs (main thread only). Afterwards the
    previous handlers come back (``restore``: ``main`` called with an argv, from Python), or, when ``main`` is
    the program, both signals are ignored: the command is done, and a signal during the interpreter's exit
    (joining threads, stopping the forkserver) must neither print a traceback nor kill it by the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _redeliver_swallowed(previous_hook)
    for signum in previous:
        signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if restore else signal.SIG_IGN)
        sys.unraisablehook = previous_hook


def _raise_interrupted(signum: int, frame: object) -> None:
    _ignore_signals()  # the clean-up that follows runs to its end
    raise Interrupted(signum)


def _redeliver_swallowed(
    previous: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], object]:
    """An unraisable hook that does not let an :class:`Interrupted` die where it was raised: a signal that
    arrived while a weakref callback or a ``__del__`` ran raised there, and Python drops such exceptions (the
    command would run on, to exit 0). The hook puts the handler back and delivers the signal again 50 ms
    later from a timer thread (``_thread.interrupt_main``: the main thread's handler runs at its next
    bytecode, in the code that was running, not inside this hook).
    Any other unraisable exception goes to ``previous``."""

    def hook(unraisable: sys.UnraisableHookArgs) -> object:
        interruption = unraisable.exc_value
        in_main = threading.current_thread() is threading.main_thread()
        if not isinstance(interruption, Interrupted) or not in_main:
            return previous(unraisable)
        logger.debug("%s raised in %r was swallowed; delivered again", interruption, unraisable.object)
        signal.signal(interruption.signum, _raise_interrupted)
        again = threading.Timer(0.05, _thread.interrupt_main, args=(interruption.signum,))
        again.daemon = True  # 50 ms: past this hook's return, so the handler raises in the code that ran
        again.start()
        return None

    return hook


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


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
    """Every sub-command, in pipeline order: datasets in, planning, training, inference, evaluation, serve,
    demo."""
    from autoseg.cli import (
        data_commands,
        demo_commands,
        evaluation_commands,
        inference_commands,
        plan_commands,
        serve_commands,
        train_commands,
    )

    groups = (
        data_commands,
        plan_commands,
        train_commands,
        inference_commands,
        evaluation_commands,
        serve_commands,
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
