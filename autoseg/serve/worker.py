"""The one prediction slot of ``autoseg serve``: completes quiet series, predicts one job at a time, sends the
results, and applies retention.

Prediction runs in this process (a worker thread) through :func:`autoseg.inference.stage.run_predict`: the
model is read per job and freed after it, so memory is bounded by one series; receiving runs on other
threads and never waits for it (``docs/serve.md`` says why not a child process).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path

from autoseg.errors import AutosegError, ServeError
from autoseg.serve.config import Route, ServeConfig
from autoseg.serve.jobs import Job, JobStore
from autoseg.serve.routes import choose_route, series_info
from autoseg.serve.sender import send_with_retries
from autoseg.serve.spool import Spool, private_folder

logger = logging.getLogger(__name__)


class Worker:
    """Completion, prediction, sending and retention over one :class:`JobStore`."""

    def __init__(self, config: ServeConfig, spool: Spool, store: JobStore, stop: threading.Event) -> None:
        self.config, self.spool, self.store, self.stop = config, spool, store, stop
        self.routes = {route.name: route for route in config.routes}
        self.model_ids: dict[Path, str] = {}
        self.completion_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ completion

    def complete(self, job_ids: set[int] | list[int]) -> None:
        """Route complete series: ``queued`` on the first matching route, else ``unmatched``."""
        with self.completion_lock:
            for job_id in sorted(job_ids):
                job = self.store.get(job_id)
                if job.state == "received":
                    self._complete_one(job)

    def _complete_one(self, job: Job) -> None:
        info = series_info(self.spool.input_folder(job.id), job.calling_ae)
        if info is None:
            self._fail(job, "receive", "no readable instance in the spool")
            return
        route = choose_route(self.config.routes, info)
        if route is None:
            self.store.complete(job.id, None, f"no route matches {info.describe()}")
            logger.warning(
                "event=unmatched job=%d series=%s instances=%d %s kept_days=%g",
                job.id,
                job.series_uid,
                job.instances,
                info.describe(),
                self.config.unmatched_keep_days,
            )
            return
        self.store.complete(job.id, route.name)
        logger.info(
            "event=complete job=%d series=%s instances=%d route=%s model=%s",
            job.id,
            job.series_uid,
            job.instances,
            route.name,
            route.model.name,
        )

    def complete_quiet(self) -> None:
        """Complete every series that has been quiet for the quiet period."""
        quiet = self.store.quiet_jobs(self.config.quiet_period_s)
        if quiet:
            self.complete([job.id for job in quiet])

    # ------------------------------------------------------------------------------------------ jobs

    def run_next(self) -> bool:
        """Predict and/or send the next job; ``False`` when there was none."""
        job = self.store.claim_next()
        if job is None:
            return False
        route = self.routes.get(job.route or "")
        if route is None:
            self._fail(job, "predict", f"route {job.route!r} is no longer in the configuration")
            return True
        if job.state == "running" and not self.predict(job, route):
            return True
        self.send(self.store.get(job.id), route)
        return True

    def predict(self, job: Job, route: Route) -> bool:
        """Predict the job's series into its results folder; ``running`` -> ``sending`` or ``failed``."""
        from autoseg.inference.outputs import OutputOptions
        from autoseg.inference.stage import PredictRequest, run_predict

        results = self.spool.results_folder(job.id)
        shutil.rmtree(results, ignore_errors=True)  # a half-written try before a crash
        private_folder(results)
        request = PredictRequest(
            inputs=self.spool.input_folder(job.id),
            output=results,
            model=route.model,
            preset=self.config.preset,
            device=self.config.device,
            threads=self.config.threads,
            outputs=OutputOptions(formats=route.formats, uid_seed=self.uid_seed(route.model)),
        )
        start = time.perf_counter()
        try:
            outputs = run_predict(request, show_progress=False)
        except AutosegError as error:
            self._fail(job, "predict", "; ".join(line.strip() for line in error.lines()))
            return False
        except Exception as error:  # an unforeseen failure on one series must not stop the node
            self._fail(job, "predict", f"internal error: {type(error).__name__}: {error}")
            return False
        seconds = time.perf_counter() - start
        for path in results.rglob("*"):  # owner-only, as the inputs
            path.chmod(0o700 if path.is_dir() else 0o600)
        files = [path.name for output in outputs for path in output.files if path.suffix == ".dcm"]
        self.store.predicted(job.id, files, seconds)
        logger.info("event=predicted job=%d series=%s seconds=%.1f results=%s", job.id, job.series_uid,
                    seconds, ",".join(files))  # fmt: skip
        return True

    def send(self, job: Job, route: Route) -> None:
        """Send every result to every destination not yet given it; ``done`` when all are sent."""
        sent = self.store.deliveries(job.id)
        folder = self.spool.results_folder(job.id)
        for name in route.destinations:
            destination = self.config.destinations[name]
            for result in job.results:
                if (name, result) in sent:
                    continue
                try:
                    uid = send_with_retries(
                        folder / result, destination, self.config.send, self.config.ae_title, self.stop
                    )
                except (ServeError, OSError) as error:
                    reason = error.message if isinstance(error, ServeError) else str(error)
                    self._fail(job, "send", reason)
                    return
                self.store.delivered(job.id, name, result, uid)
                logger.info("event=sent job=%d series=%s destination=%s result=%s sop=%s", job.id,
                            job.series_uid, name, result, uid)  # fmt: skip
        self.store.done(job.id)
        latency = time.time() - job.last_instance_at
        logger.info("event=done job=%d series=%s seconds_since_last_instance=%.1f", job.id, job.series_uid,
                    latency)  # fmt: skip

    def uid_seed(self, model: Path) -> str:
        """What result UIDs are derived from (with the input series' UID): the model's identity."""
        if model not in self.model_ids:
            if model.is_file():
                digest = hashlib.sha256()
                with model.open("rb") as stream:
                    for block in iter(lambda: stream.read(2**20), b""):
                        digest.update(block)
                self.model_ids[model] = f"autoseg-serve|model-sha256:{digest.hexdigest()}"
            else:
                self.model_ids[model] = f"autoseg-serve|workdir:{model.resolve()}"
        return self.model_ids[model]

    def _fail(self, job: Job, stage: str, reason: str) -> None:
        self.store.fail(job.id, stage, reason)
        logger.error(
            "event=failed job=%d series=%s stage=%s reason=%s", job.id, job.series_uid, stage, reason
        )

    # ------------------------------------------------------------------------------------------ retention

    def apply_retention(self) -> None:
        """Delete the files of jobs done over ``keep_days`` ago and unmatched series over
        ``unmatched_keep_days`` ago (the queue keeps their rows)."""
        day = 86400.0
        expired = [
            *self.store.expired(("done",), self.config.keep_days * day),
            *self.store.expired(("unmatched",), self.config.unmatched_keep_days * day),
        ]
        for job in expired:
            self.spool.remove_job_files(job.id)
            self.store.purged(job.id)
            logger.info("event=purged job=%d series=%s state=%s", job.id, job.series_uid, job.state)
