"""The persistent job queue of ``autoseg serve``: one SQLite database (WAL, ``synchronous=FULL``) in the
spool.

A job is one received series. Its states::

    received -> queued -> running -> sending -> done
        \\-> unmatched        \\-> failed (stage predict)   \\-> failed (stage send)

``received``: instances are arriving. ``queued``: complete, a route matched, waiting for the one prediction
slot. ``running``: being predicted. ``sending``: results written, being sent (each destination's delivery is
recorded in ``deliveries`` as it succeeds, so a restart sends only what is missing). ``done``: every
destination has every result; set in one transaction. ``failed``: with the stage and the reason.
``unmatched``: complete but no route matched; kept, never predicted.

After a crash (:meth:`JobStore.recover`): ``running`` jobs are queued again, failed sends are retried.
Every change is committed before the caller goes on (a C-STORE is answered only after its instance's row is
on disk).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import ServeError

STATES = ("received", "queued", "running", "sending", "done", "failed", "unmatched")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    state TEXT NOT NULL,
    route TEXT,
    modality TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    instances INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    failed_stage TEXT,
    reason TEXT,
    results TEXT NOT NULL DEFAULT '[]',
    predict_seconds REAL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS instances (
    job_id INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    result TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (job_id, destination, result)
);
"""


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``."""

    id: int
    series_uid: str
    calling_ae: str
    state: str
    route: str | None
    modality: str
    description: str
    instances: int
    created_at: float
    last_instance_at: float
    updated_at: float
    failed_stage: str | None
    reason: str | None
    results: tuple[str, ...]
    predict_seconds: float | None
    purged: bool


class JobStore:
    """Thread-safe access to the queue (one connection, one lock; other processes may open the same file)."""

    def __init__(self, path: Path) -> None:
        try:
            self.connection = sqlite3.connect(
                path, timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise ServeError(f"{path}: cannot open the job queue ({error})") from None
        self.path = path
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.connection.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on an exception); call with ``self.lock`` held."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ receiving

    def receiving_job(self, series_uid: str, calling_ae: str, modality: str, description: str) -> Job:
        """The job collecting ``series_uid``'s instances now: the one still ``received``, else a new one."""
        now = time.time()
        with self.lock, self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE series_uid = ? AND state = 'received' ORDER BY id DESC LIMIT 1",
                (series_uid,),
            ).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO jobs (series_uid, calling_ae, state, modality, description, created_at,"
                    " last_instance_at, updated_at) VALUES (?, ?, 'received', ?, ?, ?, ?, ?)",
                    (series_uid, calling_ae, modality, description, now, now, now),
                )
                row = (cursor.lastrowid,)
            return self._get(int(row[0]))

    def add_instance(self, job_id: int, sop_instance_uid: str) -> bool:
        """Record an instance written to the job's folder; ``False`` if the job had it already."""
        now = time.time()
        with self.lock, self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO instances (job_id, sop_instance_uid) VALUES (?, ?)",
                (job_id, sop_instance_uid),
            )
            new = cursor.rowcount == 1
            db.execute(
                "UPDATE jobs SET instances = instances + ?, last_instance_at = ?, updated_at = ? "
                "WHERE id = ?",
                (int(new), now, now, job_id),
            )
        return new

    def quiet_jobs(self, quiet_period_s: float) -> list[Job]:
        """``received`` jobs without a new instance for ``quiet_period_s``."""
        return self._select("state = 'received' AND last_instance_at <= ?", (time.time() - quiet_period_s,))

    def complete(self, job_id: int, route: str | None, reason: str | None = None) -> bool:
        """A ``received`` job is complete: ``queued`` on ``route``, or ``unmatched`` (``route`` ``None``)
        with ``reason``. ``False`` if it was no longer ``received``."""
        state = "queued" if route is not None else "unmatched"
        return self._move(job_id, ("received",), state, route=route, reason=reason)

    # ------------------------------------------------------------------------------------------ working

    def claim_next(self) -> Job | None:
        """The oldest job that needs the worker: a ``sending`` one (results exist) or a ``queued`` one, which
        becomes ``running``."""
        with self.lock, self._transaction() as db:
            row = db.execute(
                "SELECT id, state FROM jobs WHERE state IN ('queued', 'sending') "
                "ORDER BY state = 'queued', id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            if row[1] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ?", (time.time(), row[0])
                )
            return self._get(int(row[0]))

    def predicted(self, job_id: int, results: Sequence[str], seconds: float) -> None:
        """``running`` -> ``sending`` with the result files (names in the job's results folder)."""
        self._move(job_id, ("running",), "sending", results=json.dumps(list(results)), seconds=seconds)

    def delivered(self, job_id: int, destination: str, result: str, sop_instance_uid: str) -> None:
        with self.lock, self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?)",
                (job_id, destination, result, sop_instance_uid, time.time()),
            )

    def deliveries(self, job_id: int) -> set[tuple[str, str]]:
        """``(destination, result)`` pairs already sent for the job."""
        with self.lock:
            rows = self.connection.execute(
                "SELECT destination, result FROM deliveries WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {(str(d), str(r)) for d, r in rows}

    def all_deliveries(self) -> list[tuple[int, str, str, str]]:
        """Every delivery: ``(job_id, destination, result, sop_instance_uid)``."""
        with self.lock:
            rows = self.connection.execute(
                "SELECT job_id, destination, result, sop_instance_uid FROM deliveries ORDER BY job_id"
            ).fetchall()
        return [(int(j), str(d), str(r), str(u)) for j, d, r, u in rows]

    def done(self, job_id: int) -> None:
        self._move(job_id, ("sending",), "done")

    def fail(self, job_id: int, stage: str, reason: str) -> None:
        """An unfinished job -> ``failed`` with the stage (``receive``, ``predict``, ``send``) and reason."""
        self._move(job_id, ("received", "queued", "running", "sending"), "failed", stage=stage, reason=reason)

    # ------------------------------------------------------------------------------------------ recovery

    def recover(self) -> tuple[int, int]:
        """After a restart: ``running`` -> ``queued``; failed sends -> ``sending``. Returns both counts."""
        with self.lock, self._transaction() as db:
            now = time.time()
            running = db.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ? WHERE state = 'running'", (now,)
            ).rowcount
            sends = db.execute(
                "UPDATE jobs SET state = 'sending', failed_stage = NULL, reason = NULL, updated_at = ? "
                "WHERE state = 'failed' AND failed_stage = 'send'",
                (now,),
            ).rowcount
        return running, sends

    def retry_failed(self) -> int:
        """Every failed job again: a failed send -> ``sending``, a failed prediction -> ``queued``."""
        with self.lock, self._transaction() as db:
            now = time.time()
            count = db.execute(
                "UPDATE jobs SET state = CASE failed_stage WHEN 'send' THEN 'sending' ELSE 'queued' END, "
                "failed_stage = NULL, reason = NULL, updated_at = ? "
                "WHERE state = 'failed' AND route IS NOT NULL AND purged = 0",
                (now,),
            ).rowcount
        return int(count)

    def expired(self, states: Sequence[str], older_than_s: float) -> list[Job]:
        """Jobs in ``states`` last changed over ``older_than_s`` ago whose files are still there."""
        marks = ", ".join("?" * len(states))
        return self._select(
            f"state IN ({marks}) AND purged = 0 AND updated_at <= ?", (*states, time.time() - older_than_s)
        )

    def purged(self, job_id: int) -> None:
        with self.lock:
            self.connection.execute("UPDATE jobs SET purged = 1 WHERE id = ?", (job_id,))

    # ------------------------------------------------------------------------------------------ reading

    def jobs(self, states: Sequence[str] = STATES, limit: int | None = None) -> list[Job]:
        """Jobs in ``states``, newest first."""
        marks = ", ".join("?" * len(states))
        tail = f" LIMIT {int(limit)}" if limit else ""
        return self._select(f"state IN ({marks}) ORDER BY id DESC{tail}", tuple(states))

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state, zeros included)."""
        with self.lock:
            rows = self.connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return dict.fromkeys(STATES, 0) | {str(s): int(n) for s, n in rows}

    def get(self, job_id: int) -> Job:
        with self.lock:
            return self._get(job_id)

    def _get(self, job_id: int) -> Job:
        row = self.connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def _select(self, where: str, values: tuple[object, ...]) -> list[Job]:
        with self.lock:
            rows = self.connection.execute(f"SELECT * FROM jobs WHERE {where}", values).fetchall()
        return [_job(row) for row in rows]

    def _move(
        self,
        job_id: int,
        sources: Sequence[str],
        state: str,
        *,
        route: str | None = None,
        reason: str | None = None,
        stage: str | None = None,
        results: str | None = None,
        seconds: float | None = None,
    ) -> bool:
        marks = ", ".join("?" * len(sources))
        with self.lock:
            cursor = self.connection.execute(
                "UPDATE jobs SET state = ?, route = COALESCE(?, route), reason = COALESCE(?, reason), "
                "failed_stage = COALESCE(?, failed_stage), results = COALESCE(?, results), "
                "predict_seconds = COALESCE(?, predict_seconds), updated_at = ? "
                f"WHERE id = ? AND state IN ({marks})",
                (state, route, reason, stage, results, seconds, time.time(), job_id, *sources),
            )
        return cursor.rowcount == 1


def _job(row: tuple[object, ...]) -> Job:
    values = list(row)
    values[13] = tuple(json.loads(str(values[13])))
    values[15] = bool(values[15])
    return Job(*values)  # type: ignore[arg-type]
