"""The ``autoseg`` command line: parse flags, build a stage's options, call its ``run_<stage>``, print.

``main.py`` holds the parser and :func:`main`; each other module is one group of commands.
"""

from __future__ import annotations

from autoseg.cli.main import main

__all__ = ["main"]
