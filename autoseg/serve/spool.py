"""The spool folder of ``autoseg serve``: received instances, results and the job queue, owner-only.

Layout (folders 0700, files 0600)::

    SPOOL/jobs.sqlite                     the queue (autoseg.serve.jobs)
    SPOOL/jobs/<id>/input/<SOP UID>.dcm   one received instance, fsynced before the C-STORE response
    SPOOL/jobs/<id>/results/              what prediction wrote (RTSTRUCT, SEG, predict.json)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from autoseg.errors import ServeError
from autoseg.io import atomic_target

QUEUE_FILE = "jobs.sqlite"
_UID = re.compile(r"^[0-9.]{1,64}$")


class Spool:
    """Paths of the spool and the durable, owner-only writes into it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def queue(self) -> Path:
        return self.root / QUEUE_FILE

    def job_folder(self, job_id: int) -> Path:
        return self.root / "jobs" / str(job_id)

    def input_folder(self, job_id: int) -> Path:
        return self.job_folder(job_id) / "input"

    def results_folder(self, job_id: int) -> Path:
        return self.job_folder(job_id) / "results"

    def create(self) -> None:
        """Make the spool (0700), or tighten an existing one's permissions."""
        try:
            private_folder(self.root)
            private_folder(self.root / "jobs")
        except OSError as error:
            raise ServeError(f"{self.root}: cannot use as the spool ({error.strerror})") from None
        if self.queue.exists():
            self.queue.chmod(0o600)

    def write_instance(self, job_id: int, sop_instance_uid: str, data: bytes) -> Path:
        """Write one received instance (a DICOM file: preamble, file meta, dataset) durably: written, fsynced,
        renamed into place, the folder fsynced. Raises ``OSError`` (a full disk) for the caller to refuse."""
        folder = self.input_folder(job_id)
        if not folder.is_dir():
            private_folder(self.job_folder(job_id))
            private_folder(folder)
        path = folder / f"{instance_file_stem(sop_instance_uid)}.dcm"
        with atomic_target(path) as temporary:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        sync_folder(folder)
        return path

    def free_mb(self) -> float:
        """Free space on the spool's file system, MiB."""
        return shutil.disk_usage(self.root).free / 2**20

    def remove_job_files(self, job_id: int) -> None:
        """Delete a job's input and results (retention); the queue keeps its row."""
        shutil.rmtree(self.job_folder(job_id), ignore_errors=True)


def instance_file_stem(sop_instance_uid: str) -> str:
    """The file name of an instance: its UID when it is a plain UID, else a digest (no path tricks)."""
    if _UID.match(sop_instance_uid):
        return sop_instance_uid
    return "x" + hashlib.sha256(sop_instance_uid.encode("utf-8", "replace")).hexdigest()[:40]


def private_folder(path: Path) -> None:
    """Create ``path`` (parents as needed) readable by the owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def sync_folder(path: Path) -> None:
    """fsync a folder so a rename into it survives a crash."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
