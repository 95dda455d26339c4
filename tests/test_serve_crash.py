"""``autoseg serve`` as a child process (``python -m autoseg serve --config``): kill -9 at awkward moments and
restart, and a load test (20 series from 4 concurrent associations). A pynetdicom Storage SCP in the test is
the destination and counts what arrives; nothing may be lost or sent twice.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_serve import Receiver, counts, send_series, serve_model, synthetic_series, wait_for
from test_serve_tools import background, free_port, wait_for_port

from autoseg.serve.node import serve_status

__all__ = ["serve_model"]  # the session fixture, shared with tests/test_serve.py


def write_config(path: Path, spool: Path, model: Path, port: int, destination_port: int) -> Path:
    """A loopback node on ``port``: CPU, one thread, 3 s quiet period, fast retries."""
    config = {
        "node": {
            "ae_title": "AUTOSEG",
            "host": "127.0.0.1",
            "port": port,
            "spool": str(spool),
            "allowed_calling_aes": ["SCANNER"],
            "quiet_period_s": 3,
            "min_free_mb": 0,
            "device": "cpu",
            "threads": 1,
        },
        "send": {"attempts": 3, "backoff_s": 0.2, "max_backoff_s": 1.0, "timeout_s": 10},
        "destinations": {"DEST": {"ae_title": "DEST", "host": "127.0.0.1", "port": destination_port}},
        "routes": [{"name": "ct", "model": str(model), "modality": ["CT"], "destinations": ["DEST"]}],
    }
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def node_process(config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "autoseg", "serve", "--config", str(config)]
    with background(argv, log, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
        wait_for_port(port, process, timeout_s=60)
        yield process


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def states(spool: Path) -> list[str]:
    return [job.state for job in serve_status(spool).jobs]


@pytest.mark.slow
def test_kill_9_while_receiving_and_predicting_then_restart_loses_and_repeats_nothing(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    first, second = synthetic_series(tmp_path / "a", rng), synthetic_series(tmp_path / "b", rng)
    spool, port, log = tmp_path / "spool", free_port(), tmp_path / "node.log"
    with Receiver().running() as receiver:
        config = write_config(tmp_path / "serve.json", spool, serve_model, port, receiver.port)
        with node_process(config, port, log) as node:
            assert send_series(port, first) == [0] * 12  # released: complete, queued, then running
            assert send_series(port, second[:6], release=False) == [0] * 6  # aborted half-way: received
            wait_for(lambda: "running" in states(spool), 60, "the first job to run")
            kill_hard(node)  # mid-prediction of the first series, the second still receiving
        assert sorted(states(spool)) == ["received", "running"]
        with node_process(config, port, log):
            wait_for(lambda: counts(spool)["done"] == 2, 180, "both jobs done after the restart")
            jobs = serve_status(spool).jobs
    assert sorted(job.instances for job in jobs) == [6, 12]  # every acknowledged instance kept
    assert len(receiver.received) == 2 and set(receiver.sop_uids().values()) == {1}  # once each
    assert "event=recovered requeued=1" in log.read_text()


@pytest.mark.slow
def test_kill_9_after_sending_does_not_send_again(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    paths = synthetic_series(tmp_path / "a", rng)
    spool, port, log = tmp_path / "spool", free_port(), tmp_path / "node.log"
    with Receiver().running() as receiver:
        config = write_config(tmp_path / "serve.json", spool, serve_model, port, receiver.port)
        with node_process(config, port, log) as node:
            send_series(port, paths)
            wait_for(lambda: len(receiver.received) == 1, 120, "the result")
            wait_for(lambda: counts(spool)["done"] == 1, 30, "the job marked done")
            kill_hard(node)
        with node_process(config, port, log):
            time.sleep(3.0)  # a restarted node that would resend would do it now
            assert counts(spool)["done"] == 1
    assert len(receiver.received) == 1


@pytest.mark.slow
def test_twenty_series_from_four_concurrent_associations(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    series = [synthetic_series(tmp_path / f"s{i:02d}", rng) for i in range(20)]
    spool, port, log = tmp_path / "spool", free_port(), tmp_path / "node.log"
    statuses: list[list[int]] = [[] for _ in range(4)]

    def sender(index: int) -> None:  # 5 series, one association
        statuses[index] = send_series(port, [p for s in series[index::4] for p in s])

    with Receiver().running() as receiver:
        config = write_config(tmp_path / "serve.json", spool, serve_model, port, receiver.port)
        with node_process(config, port, log) as node:
            start = time.monotonic()
            threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            received_s = time.monotonic() - start
            wait_for(lambda: counts(spool)["done"] == 20, 600, "20 jobs done")
            total_s = time.monotonic() - start
            peak_mib = _peak_rss_mib(node.pid)
            jobs = serve_status(spool).jobs
    assert all(s == [0] * 60 for s in statuses)  # every instance acknowledged
    assert sorted(job.instances for job in jobs) == [12] * 20 and counts(spool)["failed"] == 0
    assert len(receiver.received) == 20 and set(receiver.sop_uids().values()) == {1}  # none lost or twice
    assert peak_mib < 4096, f"peak memory {peak_mib:.0f} MiB"
    predict = [job.predict_seconds or 0.0 for job in jobs]
    print(f"load: 240 instances received in {received_s:.1f} s, 20 series done in {total_s:.1f} s, "
          f"predict median {statistics.median(predict):.2f} s, peak RSS {peak_mib:.0f} MiB")  # fmt: skip


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")
