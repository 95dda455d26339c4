"""``autoseg serve``: a DICOM node that receives CT/MR series (C-STORE), contours them with a trained model
and sends the RTSTRUCT and/or SEG on (C-STORE), with a crash-safe job queue. See ``docs/serve.md``.

Reads: a configuration file (TOML or JSON) or flags, DICOM instances from the network, models (work
directories or exported ``.zip``). Writes: the spool folder (received instances, results, ``jobs.sqlite``);
sends results to the configured destinations. Only :mod:`autoseg.serve.scp` and
:mod:`autoseg.serve.sender` import pynetdicom, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.serve.config import EXAMPLE_CONFIG, ServeConfig, ServeOverrides, load_config
    from autoseg.serve.node import ServeNode, retry_failed, run_serve, serve_status

__all__ = [
    "EXAMPLE_CONFIG",
    "ServeConfig",
    "ServeNode",
    "ServeOverrides",
    "load_config",
    "retry_failed",
    "run_serve",
    "serve_status",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "EXAMPLE_CONFIG": "config",
        "ServeConfig": "config",
        "ServeOverrides": "config",
        "load_config": "config",
        "ServeNode": "node",
        "retry_failed": "node",
        "run_serve": "node",
        "serve_status": "node",
    },
)
