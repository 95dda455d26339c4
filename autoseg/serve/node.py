"""``autoseg serve``: the DICOM node, its status and its retry command.

:class:`ServeNode` wires the pieces: the Storage SCP (:mod:`autoseg.serve.scp`, pynetdicom threads, one per
association) spools instances and records them in the queue (:mod:`autoseg.serve.jobs`); a monitor thread
completes quiet series and applies retention; one worker thread (:mod:`autoseg.serve.worker`) predicts and
sends, one job at a time. :func:`run_serve` runs a node until ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.errors import ServeConfigError, ServeError
from autoseg.serve.config import ServeConfig
from autoseg.serve.jobs import STATES, Job, JobStore
from autoseg.serve.spool import Spool

logger = logging.getLogger(__name__)

POLL_S = 0.25
RETENTION_EVERY_S = 600.0


class ServeNode:
    """A running node: ``start()``, then ``stop()`` (also a context manager). ``port`` is the bound port
    (useful with port 0)."""

    def __init__(self, config: ServeConfig) -> None:
        from autoseg.serve.scp import StorageHandlers
        from autoseg.serve.worker import Worker

        for index, route in enumerate(config.routes):
            if not route.model.exists():
                raise ServeConfigError(
                    f"routes[{index}].model: {route.model} does not exist (a work directory or a model .zip)"
                )
        self.config = config
        self.spool = Spool(config.spool)
        self.spool.create()
        self.store = JobStore(self.spool.queue)
        self.spool.queue.chmod(0o600)
        self.stopping = threading.Event()
        self.worker = Worker(config, self.spool, self.store, self.stopping)
        self.handlers = StorageHandlers(config, self.spool, self.store, self.worker.complete)
        self.threads: list[threading.Thread] = []
        self.server: Any = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1]) if self.server else self.config.port

    def start(self) -> ServeNode:
        from autoseg.serve.scp import server_context, storage_ae

        queued, sends = self.store.recover()
        if queued or sends:
            logger.info("event=recovered requeued=%d resend=%d", queued, sends)
        ae = storage_ae(self.config)
        context = server_context(self.config.tls) if self.config.tls else None
        try:
            self.server = ae.start_server(
                (self.config.host, self.config.port),
                block=False,
                evt_handlers=self.handlers.events(),
                ssl_context=context,
            )
        except OSError as error:
            raise ServeError(f"{self.config.host}:{self.config.port}: cannot listen ({error})") from None
        for name, target in (("monitor", self._monitor), ("worker", self._work)):
            thread = threading.Thread(target=target, name=f"autoseg-serve-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        logger.info(
            "event=listening ae_title=%s address=%s:%d tls=%s routes=%s counts=%s",
            self.config.ae_title,
            self.config.host,
            self.port,
            "on" if context else "off",
            ",".join(route.name for route in self.config.routes),
            self.store.counts(),
        )
        return self

    def stop(self) -> None:
        """Stop listening, let the worker finish its current step, close the queue."""
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        for thread in self.threads:
            thread.join(timeout=120)
        self.store.close()
        logger.info("event=stopped")

    def __enter__(self) -> ServeNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _monitor(self) -> None:
        last_retention = 0.0
        while not self.stopping.wait(POLL_S):
            self._guarded(self.worker.complete_quiet)
            if time.monotonic() - last_retention > RETENTION_EVERY_S:
                last_retention = time.monotonic()
                self._guarded(self.worker.apply_retention)

    def _work(self) -> None:
        while not self.stopping.is_set():
            if not self._guarded(self.worker.run_next):
                self.stopping.wait(POLL_S)

    def _guarded(self, step: Any) -> bool:
        """Run one step; an unexpected error is logged and the node goes on."""
        try:
            return bool(step())
        except Exception:  # the node must keep serving; the traceback goes to the log
            logger.exception("event=internal_error step=%s", getattr(step, "__name__", step))
            return False


def run_serve(config: ServeConfig, *, stop: threading.Event | None = None) -> None:
    """Run the node until ``stop`` is set (or KeyboardInterrupt)."""
    stop = stop or threading.Event()
    with ServeNode(config):
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            logger.info("event=interrupted")


@dataclass(frozen=True)
class ServeStatus:
    """Jobs per state and the most recent jobs."""

    counts: dict[str, int]
    jobs: list[Job]

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "jobs": [
                {
                    "id": j.id,
                    "state": j.state,
                    "series": j.series_uid,
                    "calling_ae": j.calling_ae,
                    "route": j.route,
                    "instances": j.instances,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(j.updated_at)),
                    "predict_seconds": j.predict_seconds,
                    "failed_stage": j.failed_stage,
                    "reason": j.reason,
                    "results": list(j.results),
                }
                for j in self.jobs
            ],
        }


def serve_status(spool: Path, *, limit: int = 50) -> ServeStatus:
    """The queue's state, read without a running node (or beside one)."""
    with _existing_queue(spool) as store:
        return ServeStatus(store.counts(), store.jobs(STATES, limit=limit))


def retry_failed(spool: Path) -> int:
    """Queue every failed job again (a running node picks them up); returns how many."""
    with _existing_queue(spool) as store:
        return store.retry_failed()


@contextlib.contextmanager
def _existing_queue(spool: Path) -> Iterator[JobStore]:
    queue = Spool(spool).queue
    if not queue.is_file():
        raise ServeError(f"{queue}: no job queue here; is {spool} the node's spool?")
    store = JobStore(queue)
    try:
        yield store
    finally:
        store.close()
