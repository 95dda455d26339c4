"""``python -m autoseg``: the same as the ``autoseg`` command."""

from __future__ import annotations

import sys

from autoseg.cli.main import main

sys.exit(main())
