"""Shared by the benchmarks: run a command and measure its wall time and peak memory (whole process tree), and
watch what other people's processes do to a shared machine meanwhile."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from autoseg.planning.budgets import machine_busy_seconds


@dataclass(frozen=True)
class Measurement:
    """Repeated runs. Memory: the peak of the summed PSS (else RSS) of the process and its children."""

    wall_s: list[float]
    peak_tree_rss_mb: list[float]

    @property
    def median_wall_s(self) -> float:
        """Median wall time in seconds."""
        return statistics.median(self.wall_s)

    @property
    def median_peak_mb(self) -> float:
        """Median of the peak process-tree memory in MiB."""
        return statistics.median(self.peak_tree_rss_mb)


def _resident_bytes(process: psutil.Process) -> int:
    """Proportional set size where the OS has it (pages shared by forked workers counted once), else RSS."""
    try:
        return int(process.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):
        return int(process.memory_info().rss)


def run_once(
    command: Sequence[str], *, interval_s: float = 0.25, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak RSS of the process tree in MiB). Raises if it fails.

    Memory is sampled every ``interval_s`` (a faster sampler loads a core reading the PSS of many processes);
    the wall time is exact, since waiting returns as soon as the process ends. stderr goes to a temporary
    file, so a chatty command cannot fill a pipe and stall.
    """
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        root = psutil.Process(process.pid)
        peak = 0
        while True:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(_resident_bytes(p) for p in tree))
            except psutil.Error:
                pass
            try:
                process.wait(timeout=interval_s)
                break
            except subprocess.TimeoutExpired:
                continue
        wall = time.perf_counter() - start
        errors.seek(0)
        stderr = errors.read()
    if process.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {stderr.decode()[-2000:]}")
    return wall, peak / 2**20


def measure(command: Sequence[str], *, repeats: int = 3) -> Measurement:
    """Run ``command`` ``repeats`` times and collect the figures."""
    walls, peaks = [], []
    for _ in range(repeats):
        wall, peak = run_once(command)
        walls.append(wall)
        peaks.append(peak)
    return Measurement(walls, peaks)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, ``/proc/stat``; Linux only)."""
    busy = machine_busy_seconds()
    if busy is None:
        raise SystemExit("this benchmark reads /proc/stat (Linux)")
    return busy


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class OthersMeter:
    """CPU that other people's processes used while a measurement ran, in cores."""

    def __init__(self) -> None:
        self.busy, self.own, self.wall = machine_busy_s(), own_cpu_s(), time.perf_counter()

    def cores(self) -> float:
        """Average cores used by others since construction."""
        elapsed = max(time.perf_counter() - self.wall, 1e-6)
        return max((machine_busy_s() - self.busy) - (own_cpu_s() - self.own), 0.0) / elapsed


def wait_for_quiet(max_wait_s: float = 30.0, threshold_cores: float = 0.25) -> float:
    """Wait (up to ``max_wait_s``) for a second in which others use under ``threshold_cores``; the wait."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_wait_s:
        meter = OthersMeter()
        time.sleep(1.0)
        if meter.cores() < threshold_cores:
            break
    return time.perf_counter() - started
