"""Fault injection for the CLI: start ``python -m autoseg ...`` as a subprocess, kill or signal it at a seeded
random point, then scan and compare output trees. Used by ``tests/test_faults.py``, ``tests/test_signals.py``
and ``benchmarks/kill_nine.py``.

Kill points do not depend on the machine's speed: a run is killed when a seeded random number of final-named
files has appeared in the watched tree (polled every 10 ms), or, for a command that writes its files at the
end, after a seeded random fraction of its own measured uninterrupted run time.

Temporaries are recognisable by name: every entry autoseg writes before it is complete is hidden (a path
component starting with ``.``: ``.<name>.<random>.tmp/`` of :func:`autoseg.io.atomic_target`,
``.<name>.partial-*`` / ``.<name>.stale-*`` of :func:`autoseg.io.atomic_folder`, ``.autoseg.lock``); a
final name is any path with no hidden component.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TEMPORARY_MARKERS = (".tmp", ".partial-", ".stale-", ".autoseg.lock")
"""What a hidden entry's name contains when autoseg made it (anything else hidden is a finding)."""


def autoseg_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "autoseg", *(str(a) for a in args)]


def _environment() -> dict[str, str]:
    """One thread per process (the machine is shared), no colours, no progress-bar noise."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Run:
    """One finished (or killed) run: exit code, stderr, wall seconds, what the kill waited for."""

    returncode: int
    stderr: str
    seconds: float
    trigger: str = ""
    survivors: list[int] = field(default_factory=list)  # processes of its tree alive 10 s after it ended


def run_to_end(argv: Sequence[str], *, timeout_s: float = 300.0) -> Run:
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, env=_environment(), check=False
    )
    return Run(done.returncode, done.stderr, time.monotonic() - started)


def final_files(root: Path) -> list[Path]:
    """Files under ``root`` whose path has no hidden component (relative to ``root``); safe to call while a
    process renames and removes folders there."""
    found = []
    for folder, subfolders, files in os.walk(root):  # os.walk skips what vanishes while it walks
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        found += [Path(folder) / f for f in files if not f.startswith(".")]
    return sorted(p for p in found if p.is_file())


def hidden_entries(root: Path) -> list[Path]:
    """Hidden files and folders under ``root`` (outermost only)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        found += [Path(folder) / name for name in [*subfolders, *files] if name.startswith(".")]
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
    return sorted(found)


def unrecognised_temporaries(root: Path) -> list[str]:
    return [str(p) for p in hidden_entries(root) if not any(m in p.name for m in TEMPORARY_MARKERS)]


@dataclass
class KillPlan:
    """Kill when ``files`` final files exist under ``watch`` (if given), else after ``delay_s``."""

    watch: Path | None = None
    files: int = 0
    delay_s: float = 0.0
    signum: int = signal.SIGKILL
    whole_group: bool = True  # SIGKILL: the process and its workers, as a crash or an OOM kill of the tree


def start(argv: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
        start_new_session=True,  # its own process group: the test can kill the tree, and no signal leaks
    )


def run_and_kill(argv: Sequence[str], plan: KillPlan, *, timeout_s: float = 300.0) -> Run:
    """Start ``argv``, wait for the plan's moment, send the signal; the run's outcome after it ended. With
    ``plan.whole_group`` false only the process itself is signalled; its descendants then have 10 s to end by
    themselves (those left are listed in ``survivors``, then killed)."""
    started = time.monotonic()
    process = start(argv)
    survivors: list[int] = []
    try:
        trigger = _wait_for_moment(process, plan, started + timeout_s)
        tree = descendants(process.pid)
        if process.poll() is None:
            if plan.whole_group:
                os.killpg(process.pid, plan.signum)
            else:
                process.send_signal(plan.signum)
        process.wait(timeout=timeout_s)
        deadline = time.monotonic() + 10
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = alive(tree)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the tree (the test's own clean-up)
        _, stderr = process.communicate()
    return Run(process.returncode, stderr, time.monotonic() - started, trigger, survivors)


def _wait_for_moment(process: subprocess.Popen[str], plan: KillPlan, deadline: float) -> str:
    started = time.monotonic()
    if plan.watch is not None:
        while process.poll() is None and time.monotonic() < deadline:
            count = len(final_files(plan.watch))
            if count >= plan.files:
                return f"{count} file(s) under {plan.watch.name}/ (wanted {plan.files})"
            time.sleep(0.01)
        return "ended before the kill"
    while process.poll() is None and time.monotonic() < started + plan.delay_s:
        time.sleep(0.01)
    return f"after {plan.delay_s:.2f} s" if process.poll() is None else "ended before the kill"


# ---------------------------------------------------------------------- is every final file complete?
def incomplete_files(root: Path) -> list[str]:
    """Final-named files under ``root`` that cannot be read back in full, with the reason."""
    problems = []
    for path in final_files(root):
        try:
            _read_fully(path)
        except Exception as error:  # any failure to read is the finding
            problems.append(f"{path.relative_to(root)}: {type(error).__name__}: {error}")
    return problems


def _read_fully(path: Path) -> None:
    name = path.name
    if name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        import SimpleITK as sitk

        sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    elif name.endswith(".json"):
        json.loads(path.read_text(encoding="utf-8"))
    elif name.endswith(".jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            json.loads(line)
    elif name.endswith(".npy"):
        np.load(path, allow_pickle=False).sum()
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                data[key].sum()
    elif name.endswith((".pt", ".zip")):
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"bad CRC in {bad}")
    elif name.endswith(".png"):
        if not path.read_bytes().endswith(b"IEND\xaeB`\x82"):
            raise ValueError("PNG without its end chunk")
    elif name.endswith(".dcm"):
        import pydicom

        dataset = pydicom.dcmread(path)
        if "PixelData" in dataset:
            len(dataset.PixelData)
    elif name.endswith((".csv", ".md", ".txt")):
        path.read_text(encoding="utf-8")
    # training.log is an append-only text log (its last line may be cut by a kill -9); other names: no check


# ---------------------------------------------------------------------- are two trees the same?
Decoder = Callable[[Path], object]


@dataclass
class Comparison:
    """Files identical byte for byte, files equal once decoded (they embed a time), and differences."""

    identical: list[str] = field(default_factory=list)
    decoded_equal: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)


def compare_trees(
    expected: Path, actual: Path, decoders: dict[str, Decoder] | None = None, ignore: Sequence[str] = ()
) -> Comparison:
    """Compare the final files of two trees: byte for byte, except files whose name ends with a key of
    ``decoders``, which must decode to equal values (JSON with timings, checkpoints with times)."""
    decoders = decoders or {}
    result = Comparison()
    want = {str(p.relative_to(expected)): p for p in final_files(expected)}
    got = {str(p.relative_to(actual)): p for p in final_files(actual)}
    for name in sorted(set(want) | set(got)):
        if any(name.endswith(i) for i in ignore):
            continue
        if name not in got or name not in want:
            result.differences.append(f"{name}: only in {'expected' if name in want else 'actual'}")
            continue
        if want[name].read_bytes() == got[name].read_bytes():
            result.identical.append(name)
            continue
        decoder = next((d for ending, d in decoders.items() if name.endswith(ending)), None)
        if decoder is not None and _equal(decoder(want[name]), decoder(got[name])):
            result.decoded_equal.append(name)
        else:
            result.differences.append(f"{name}: content differs")
    return result


def _equal(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "shape") and hasattr(b, "shape"):
        import torch

        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.dtype == b.dtype and torch.equal(a, b)
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return bool(a == b)


def json_without(*keys: str) -> Decoder:
    """A decoder: the JSON with every (nested) key in ``keys`` dropped (timings), and paths inside the file's
    own folder made relative (two runs write to two folders)."""

    def decode(path: Path) -> object:
        folder = f"{path.parent}/"

        def clean(value: object) -> object:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items() if k not in keys}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value.removeprefix(folder) if isinstance(value, str) else value

        return clean(json.loads(path.read_text(encoding="utf-8")))

    return decode


def checkpoint_contents(path: Path) -> object:
    """A decoder: a checkpoint's weights, optimiser and scaler state, run state and the run's generator
    states (``torch_rng``, ``numpy_rng``, ``python_rng``), less its wall-clock fields (``seconds``). The
    generator states were left out before ``training.checkpoint.run_random_state``: a resumed run's
    ``torch_rng`` differed from an uninterrupted one's (the run started from the process's state)."""
    from autoseg.training.checkpoint import load_checkpoint

    decoded = _drop_times(load_checkpoint(path))
    assert isinstance(decoded, dict)
    return decoded


def _drop_times(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_times(v) for k, v in value.items() if "second" not in str(k) and k != "time"}
    if isinstance(value, list):
        return [_drop_times(v) for v in value]
    return value


# ---------------------------------------------------------------------- is the process tree gone?
def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids: Sequence[int]) -> list[int]:
    """The pids still running (zombies count as gone)."""
    import psutil

    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            pass
    return living


@dataclass
class Scenario:
    """One command on prepared inputs. ``reset(root)`` makes ``root`` ready for a run (a fresh copy of the
    inputs, no outputs); ``argv(root)`` the command; ``output(root)`` the tree it writes and that is compared;
    ``resume_argv(root)`` what a re-run after a kill adds (train: ``--resume`` once a checkpoint exists)."""

    name: str
    reset: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    output: Callable[[Path], Path]
    decoders: dict[str, Decoder] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    kill_by_files: bool = True  # False: the command writes at the end; kill at a fraction of its run time
    resume_argv: Callable[[Path], list[str]] | None = None


# ---------------------------------------------------------------------- one kill, one re-run, one comparison
@dataclass
class Reference:
    """An uninterrupted run's output tree, how long it took and how many final files it made."""

    output: Path
    seconds: float
    files: int


@dataclass
class KillTrial:
    """What one seeded kill did, and what the re-run gave."""

    seed: int
    trigger: str
    killed: Run
    incomplete: list[str]
    unrecognised: list[str]
    temporaries_after_kill: int
    rerun: Run
    comparison: Comparison
    temporaries_after_rerun: list[str]

    @property
    def problems(self) -> list[str]:
        found = [f"half file after the kill: {p}" for p in self.incomplete]
        found += [f"process {pid} still running 10 s after the kill" for pid in self.killed.survivors]
        found += [f"unrecognised hidden entry: {p}" for p in self.unrecognised]
        if self.rerun.returncode != 0:
            found.append(f"re-run exit {self.rerun.returncode}: {self.rerun.stderr.strip()[-500:]}")
        return found + self.comparison.differences


def reference_run(scenario: Scenario, root: Path) -> Reference:
    scenario.reset(root)
    run = run_to_end(scenario.argv(root))
    assert run.returncode == 0, run.stderr
    output = scenario.output(root)
    return Reference(output, run.seconds, len(final_files(output)))


def kill_trial(
    scenario: Scenario, root: Path, seed: int, reference: Reference, *, whole_group: bool = True
) -> KillTrial:
    """Reset ``root``, run the command, kill it (SIGKILL to its process group, or to it alone) at a point
    drawn with ``seed``, scan the output, re-run to the end and compare with the reference."""
    generator = np.random.default_rng(seed)
    scenario.reset(root)
    output = scenario.output(root)
    if scenario.kill_by_files:
        baseline = len(final_files(output))
        wanted = int(generator.integers(baseline + 1, max(baseline + 2, reference.files)))
        plan = KillPlan(watch=output, files=wanted, whole_group=whole_group)
    else:
        delay = float(generator.uniform(0.1, 0.95)) * reference.seconds
        plan = KillPlan(delay_s=delay, whole_group=whole_group)
    killed = run_and_kill(scenario.argv(root), plan)
    incomplete, unrecognised = incomplete_files(output), unrecognised_temporaries(output)
    temporaries = len(hidden_entries(output))
    extra = scenario.resume_argv(root) if scenario.resume_argv is not None else []
    rerun = run_to_end([*scenario.argv(root), *extra])
    comparison = compare_trees(reference.output, output, scenario.decoders, scenario.ignore)
    left = [str(p.relative_to(output)) for p in hidden_entries(output)]
    return KillTrial(
        seed, killed.trigger, killed, incomplete, unrecognised, temporaries, rerun, comparison, left
    )
