"""Run a command repeatedly and measure its wall time and peak memory (whole process tree), for benchmarks."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


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
