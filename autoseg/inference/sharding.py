"""``autoseg predict --shard I/N``: spread one input folder over N independent workers, resumably.

A case belongs to shard ``sha256(identifier) mod N`` (0-based, as ``SLURM_ARRAY_TASK_ID`` and Kubernetes'
``JOB_COMPLETION_INDEX`` are): the assignment depends on the case's name only, not on the other cases, the
machine or Python's randomised ``hash()``, so a re-run shard takes the same cases and a case added later
does not move the others. The N shards write into one output folder; each keeps its own record,
``predict.shard-I-of-N.json``, and its own lock (``docs/scale.md``).

Resuming: a case whose every output is already there and reads back whole (:func:`missing_or_broken`) is
skipped; one with an output missing, empty or truncated (a worker killed between two renames, a disk that
filled) is predicted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import AutosegError, UsageError
from autoseg.inference.inputs import InputCase
from autoseg.inference.outputs import OutputOptions
from autoseg.io import check_image_file, read_json

logger = logging.getLogger(__name__)

_SHARD = re.compile(r"^\s*(?P<index>\d+)\s*/\s*(?P<count>\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    @property
    def label(self) -> str:
        """``shard-I-of-N``, the shard's part of its record and lock names."""
        return f"shard-{self.index}-of-{self.count}"

    @property
    def record_name(self) -> str:
        """``predict.shard-I-of-N.json``: this shard's ``predict.json``."""
        return f"predict.{self.label}.json"

    @property
    def lock_name(self) -> str:
        """The shard's own lock file (hidden, a temporary by name: ``.autoseg.lock-shard-I-of-N``)."""
        return f".autoseg.lock-{self.label}"


def parse_shard(text: str, environment: Mapping[str, str]) -> Shard:
    """``I/N`` (0 <= I < N), or ``auto``: the Slurm job array's task (``SLURM_ARRAY_TASK_ID`` less
    ``SLURM_ARRAY_TASK_MIN``, of ``SLURM_ARRAY_TASK_COUNT``).

    Raises:
        UsageError: not ``I/N``, ``N`` < 1, ``I`` outside ``0..N-1``, or ``auto`` outside a Slurm job array.
    """
    if text.strip() == "auto":
        return _slurm_shard(environment)
    match = _SHARD.match(text)
    if match is None:
        raise UsageError(f"--shard '{text}': expected I/N, e.g. 0/4 (0-based), or auto")
    index, count = int(match["index"]), int(match["count"])
    if count < 1 or index >= count:
        raise UsageError(f"--shard {index}/{count}: I must be in 0..N-1 (0-based, as SLURM_ARRAY_TASK_ID)")
    return Shard(index, count)


def _slurm_shard(environment: Mapping[str, str]) -> Shard:
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    missing = [name for name in names if not environment.get(name)]
    if missing:
        raise UsageError(
            f"--shard auto: {', '.join(missing)} not set (not a Slurm job array); give --shard I/N, e.g. "
            '--shard "$JOB_COMPLETION_INDEX/4" in a Kubernetes Indexed Job'
        )
    try:
        task, count = int(environment[names[0]]), int(environment[names[1]])
        first = int(environment.get("SLURM_ARRAY_TASK_MIN", "0"))
    except ValueError:
        raise UsageError(f"--shard auto: {names[0]}/{names[1]} are not integers") from None
    return parse_shard(f"{task - first}/{count}", environment)


def shard_of(identifier: str, count: int) -> int:
    """The shard (0-based) of the case named ``identifier`` among ``count``: the first 8 bytes of its
    UTF-8 name's SHA-256, modulo ``count``."""
    digest = hashlib.sha256(identifier.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_cases(identifiers: Sequence[str], shard: Shard) -> list[str]:
    """The identifiers that belong to ``shard``, in their order."""
    return [name for name in identifiers if shard_of(name, shard.count) == shard.index]


def select_cases(
    cases: Sequence[InputCase],
    shard: Shard | None,
    options: OutputOptions,
    out: Path,
    settings: Mapping[str, object] | None,
) -> tuple[list[InputCase], list[str]]:
    """``(cases to predict, identifiers skipped)``: the cases of ``shard`` (all without one), less, when
    ``settings`` is given (skipping is on), those whose outputs in ``out`` are all there and whole.

    Args:
        settings: this run's :func:`output_settings`; ``None``: overwrite, skip nothing.

    Raises:
        UsageError: skipping, and a record in ``out`` says its cases were made with other settings.
    """
    if shard is not None:
        mine = set(shard_cases([c.identifier for c in cases], shard))
        cases = [c for c in cases if c.identifier in mine]
    if settings is None:
        return list(cases), []
    require_same_settings(out, settings)
    todo: list[InputCase] = []
    skipped: list[str] = []
    for case in cases:
        reason = missing_or_broken(case.identifier, options, out)
        if reason is None:
            skipped.append(case.identifier)
            continue
        todo.append(case)
        if not reason.endswith(" missing") or any(out.glob(f"{case.identifier}[._]*")):
            logger.warning("%s: predicted again (%s)", case.identifier, reason)
    if skipped:
        logger.info("%d case(s) already written and whole: skipped", len(skipped))
    return todo, skipped


def require_same_settings(out: Path, settings: Mapping[str, object]) -> None:
    """Refuse to skip the cases of a folder that an earlier run (a record ``predict*.json``) filled with
    other :func:`output_settings`."""
    ours = json.loads(json.dumps(dict(settings)))  # as a record reads back: lists, not tuples
    for name, theirs in previous_settings(out):
        different = [key for key, value in ours.items() if theirs.get(key) != value]
        if different:
            raise UsageError(
                f"{out / name}: its cases were predicted with other {', '.join(different)}; skipping them "
                "would mix two predictions. Use a new output folder, or --overwrite"
            )


def expected_outputs(identifier: str, options: OutputOptions) -> list[str]:
    """The file names ``write_case_outputs`` writes for the case under ``options`` (the DICOM objects are
    left out with ``skip_empty_structures`` and no structure predicted: such a case is predicted again)."""
    names = []
    if "nifti" in options.formats:
        names.append(f"{identifier}.nii.gz")
    if "dicom-seg" in options.formats:
        names.append(f"{identifier}_seg.dcm")
    if "rtstruct" in options.formats:
        names.append(f"{identifier}_rtstruct.dcm")
    if options.instances:
        names += [f"{identifier}_instances.nii.gz", f"{identifier}_instances.json"]
    if options.save_probabilities:
        names.append(f"{identifier}_probabilities.npz")
    if options.report:
        names += [f"{identifier}_report.png", f"{identifier}_structures.json"]
    return names


def missing_or_broken(identifier: str, options: OutputOptions, out: Path) -> str | None:
    """Why the case must be predicted (again): ``"NAME missing"`` or the first output that does not read
    back whole; ``None`` when every output is complete."""
    for name in expected_outputs(identifier, options):
        path = out / name
        if not path.is_file():
            return f"{name} missing"
        problem = _file_problem(path)
        if problem is not None:
            return f"{name}: {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    """What is wrong with one written output, checked as its writer checks it (``None``: whole)."""
    name = path.name
    try:
        if path.stat().st_size == 0:
            return "empty"
        if name.endswith(".nii.gz"):
            check_image_file(path)
        elif name.endswith(".json"):
            read_json(path)
        elif name.endswith(".npz"):
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
            return None if broken is None else f"member {broken} is corrupt"
        elif name.endswith(".png"):
            return None if path.read_bytes().endswith(_PNG_END) else "truncated (no IEND chunk)"
        elif name.endswith(".dcm"):
            return _dicom_problem(path)
    except AutosegError as error:
        return error.message
    except (OSError, zipfile.BadZipFile) as error:
        return str(error)
    return None


_PNG_END = b"IEND\xaeB`\x82"


def _dicom_problem(path: Path) -> str | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
        for _ in dataset.iterall():  # reads every element: a cut file fails here
            pass
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        return f"not a whole DICOM file ({error})"
    return None


def previous_settings(out: Path) -> list[tuple[str, dict[str, object]]]:
    """``(record name, what it predicted with)`` of each ``predict*.json`` in ``out``: configurations, folds,
    window step, mirroring, post-processing (what decides the outputs; the device and paths may differ
    between workers)."""
    found = []
    for path in sorted(out.glob("predict*.json")):
        try:
            data = read_json(path)
        except AutosegError:
            continue  # a record cut short is rewritten by its shard; it decides nothing
        if isinstance(data, dict):
            found.append((path.name, output_settings(data)))
    return found


def output_settings(record: Mapping[str, object]) -> dict[str, object]:
    """The part of a ``predict.json`` record that decides the outputs."""
    settings = record.get("settings")
    settings = settings if isinstance(settings, dict) else {}
    return {
        "configurations": record.get("configurations"),
        "folds": record.get("folds"),
        "step": settings.get("step"),
        "mirror_axes": list(settings.get("mirror_axes") or []),
        "postprocessing": record.get("postprocessing"),
    }
