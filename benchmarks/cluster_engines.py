"""Ray or Dask for ``predict-cluster``: start-up of a 2-worker local cluster, the first task, the overhead per
task (200 no-op tasks), a failing task retried once, and the shutdown, for each engine importable here.

Run on a quiet machine (``uptime``): ``python benchmarks/cluster_engines.py [dask|ray ...]``; prints one JSON
line per engine. The figures in ``docs/scale.md`` came from this script (with the load they were taken at).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _noop(value: int) -> int:
    return value + 1


def _fail_first(marker: str) -> str:
    """Fails while ``marker`` exists (removing it): the first attempt fails, the retry succeeds."""
    path = Path(marker)
    if path.exists():
        path.unlink()
        raise RuntimeError("first attempt")
    return "ok"


def measure_dask() -> dict[str, Any]:
    started = time.perf_counter()
    from distributed import Client, LocalCluster

    imported = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    ready = time.perf_counter()
    client.submit(_noop, 0, pure=False).result()
    first = time.perf_counter()
    client.gather(client.map(_noop, range(200), pure=False))
    batch = time.perf_counter()
    marker = Path(tempfile.mkdtemp()) / "marker"
    marker.touch()
    assert client.submit(_fail_first, str(marker), retries=1, pure=False).result() == "ok"
    retried = time.perf_counter()
    client.close()
    cluster.close()
    stopped = time.perf_counter()
    return _figures("dask", started, imported, ready, first, batch, retried, stopped)


def measure_ray() -> dict[str, Any]:
    started = time.perf_counter()
    import ray

    imported = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    noop = ray.remote(num_cpus=1)(_noop)
    ready = time.perf_counter()
    ray.get(noop.remote(0))
    first = time.perf_counter()
    ray.get([noop.remote(i) for i in range(200)])
    batch = time.perf_counter()
    marker = Path(tempfile.mkdtemp()) / "marker"
    marker.touch()
    failing = ray.remote(num_cpus=1, max_retries=1, retry_exceptions=True)(_fail_first)
    assert ray.get(failing.remote(str(marker))) == "ok"
    retried = time.perf_counter()
    ray.shutdown()
    stopped = time.perf_counter()
    return _figures("ray", started, imported, ready, first, batch, retried, stopped)


def _figures(engine: str, *stamps: float) -> dict[str, Any]:
    started, imported, ready, first, batch, retried, stopped = stamps
    return {
        "engine": engine,
        "import_s": round(imported - started, 2),
        "start_2_workers_s": round(ready - imported, 2),
        "first_task_s": round(first - ready, 3),
        "per_task_ms": round((batch - first) / 200 * 1000, 2),
        "retry_s": round(retried - batch, 3),
        "stop_s": round(stopped - retried, 2),
        "load_1min": os.getloadavg()[0],
    }


if __name__ == "__main__":
    engines = sys.argv[1:] or ["dask", "ray"]
    for name in engines:
        try:
            print(json.dumps(measure_dask() if name == "dask" else measure_ray()))
        except ImportError as error:
            print(json.dumps({"engine": name, "skipped": str(error)}))
