"""The ``autoseg`` command line: parse flags, build a stage's options, call its ``run_<stage>``, print.

Reads and writes nothing itself: every file is read and written by the stage a command calls (paths in
:mod:`autoseg.workdir`). Exit codes: 0 success, 1 a data problem, 2 a usage problem.

``main.py`` holds the parser and :func:`main`; each other module is one group of commands.
"""

from __future__ import annotations

from autoseg.cli.main import main

__all__ = ["main"]
