"""CLI command ``serve``: run the DICOM node, print an example configuration, show the queue, retry failures.

Parses flags only; the node is :func:`autoseg.serve.node.run_serve` (imported on use, so ``autoseg --help``
loads neither pynetdicom nor torch).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

from autoseg.cli.options import CommandSpec, positive_int
from autoseg.errors import UsageError


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="configuration (.toml or .json)"
    )
    parser.add_argument("--example-config", action="store_true", help="print a complete, commented example")
    parser.add_argument("--status", action="store_true", help="list queued, running, done and failed jobs")
    parser.add_argument("--json", action="store_true", help="with --status: print JSON")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="queue every failed job again (a running node picks them up)",
    )
    parser.add_argument(
        "-m", "--model", type=Path, default=None, help="model for every series (a first route)"
    )
    parser.add_argument("--spool", type=Path, default=None, metavar="DIR", help="spool folder (node.spool)")
    parser.add_argument("--ae-title", default=None, metavar="AE", help="our AE title (node.ae_title)")
    parser.add_argument("--host", default=None, help="address to listen on (node.host, default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="DICOM port (node.port, default 11112)")
    parser.add_argument(
        "--send-to", action="append", default=[], metavar="AE@HOST:PORT", help="destination (repeatable)"
    )
    parser.add_argument(
        "--allow", action="append", default=[], metavar="CALLING_AE", help="calling AE allowed (repeatable)"
    )
    parser.add_argument("--allow-any", action="store_true", help="an open node: any calling AE may send")
    parser.add_argument(
        "--quiet-period", type=float, default=None, metavar="SECONDS",
        help="a series is complete after this long without a new instance (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--format", dest="formats", nargs="+", default=[], choices=("rtstruct", "dicom-seg"),
        help="result format(s) (default rtstruct)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: auto)")
    parser.add_argument("--limit", type=positive_int, default=50, help="with --status: jobs listed")


def run_serve_command(args: argparse.Namespace) -> int:
    """``autoseg serve``: receive series, contour them, send the structures on."""
    from autoseg.serve.config import EXAMPLE_CONFIG

    if args.example_config:
        print(EXAMPLE_CONFIG, end="")
        return 0
    if args.status or args.retry_failed:
        return _queue_command(args)
    from autoseg.serve.node import run_serve

    config = _config(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_serve(config, stop=stop)
    return 0


def _config(args: argparse.Namespace) -> Any:
    from autoseg.serve.config import ServeOverrides, load_config

    overrides = ServeOverrides(
        model=args.model,
        spool=args.spool,
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        send_to=tuple(args.send_to),
        allow=tuple(args.allow),
        allow_any=args.allow_any,
        quiet_period_s=args.quiet_period,
        formats=tuple(args.formats),
        device=args.device,
    )
    return load_config(args.config, overrides)


def _queue_command(args: argparse.Namespace) -> int:
    from autoseg.serve.config import read_config_file
    from autoseg.serve.node import retry_failed, serve_status

    spool = args.spool
    if spool is None and args.config is not None:
        value = read_config_file(args.config).get("node", {}).get("spool")
        spool = Path(value) if isinstance(value, str) else None
    if spool is None:
        raise UsageError("give --spool DIR (or --config FILE) to find the job queue")
    if args.retry_failed:
        print(f"{retry_failed(spool)} failed job(s) queued again")
        return 0
    status = serve_status(spool, limit=args.limit)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
        return 0
    print("  ".join(f"{state} {count}" for state, count in status.counts.items()))
    for row in status.to_json()["jobs"]:
        why = f"  {row['failed_stage']}: {row['reason']}" if row["state"] == "failed" else ""
        print(f"{row['id']:>6}  {row['state']:<9} {row['updated']}  {row['instances']:>4} inst  "
              f"{row['route'] or '-':<12} {row['series']}{why}")  # fmt: skip
    return 0


COMMANDS = [
    CommandSpec(
        "serve",
        "DICOM node: receive CT/MR series (C-STORE), contour them, send the RTSTRUCT/SEG on",
        _serve_arguments,
        run_serve_command,
    ),
]
