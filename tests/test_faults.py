"""Faults survived (issue 16, point 4): ``kill -9`` at seeded random points of preprocess, train, predict,
convert-dicom and evaluate; the re-run gives what an uninterrupted run gives, and no final-named file is ever
half-written. Two predicts into one folder and the same fold trained twice are refused by a lock; two
different folds train at once. More seeds: ``-m slow`` here and ``benchmarks/kill_nine.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_scenarios import (
    convert_dicom_scenario,
    evaluate_scenario,
    predict_scenario,
    preprocess_scenario,
    train_scenario,
)
from faults import (
    Reference,
    Scenario,
    compare_trees,
    incomplete_files,
    kill_trial,
    reference_run,
    run_to_end,
    start,
    unrecognised_temporaries,
)

from autoseg.cli.main import main
from autoseg.errors import FolderInUseError, WorkdirError
from autoseg.workdir import LOCK_FILE, folder_lock, remove_stale_temporaries

FAST_SEEDS = (0, 1)
SLOW_SEEDS = (2, 3, 4, 5)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault_inputs")


@pytest.fixture(scope="module")
def scenarios(inputs: Path, request: pytest.FixtureRequest) -> dict[str, Callable[[], Scenario]]:
    return {
        "preprocess": lambda: preprocess_scenario(inputs),
        "train": lambda: train_scenario(inputs),
        "predict": lambda: predict_scenario(inputs, request.getfixturevalue("trained_workdir")),
        "convert-dicom": lambda: convert_dicom_scenario(inputs),
        "evaluate": lambda: evaluate_scenario(inputs),
    }


@pytest.fixture(scope="module")
def references(inputs: Path) -> dict[str, tuple[Scenario, Reference]]:
    return {}  # filled on first use: one uninterrupted run per command


def _reference(
    name: str,
    inputs: Path,
    scenarios: dict[str, Callable[[], Scenario]],
    references: dict[str, tuple[Scenario, Reference]],
) -> tuple[Scenario, Reference]:
    if name not in references:
        scenario = scenarios[name]()
        references[name] = (scenario, reference_run(scenario, inputs / f"{name}-reference"))
    return references[name]


def _check(
    name: str,
    seed: int,
    inputs: Path,
    scenarios: dict[str, Callable[[], Scenario]],
    references: dict[str, tuple[Scenario, Reference]],
    *,
    whole_group: bool = True,
) -> None:
    scenario, reference = _reference(name, inputs, scenarios, references)
    root = inputs / f"{name}-seed{seed}-{whole_group}"
    trial = kill_trial(scenario, root, seed, reference, whole_group=whole_group)
    assert trial.killed.returncode in (-9, 0), trial.killed.stderr  # 0: it ended as the kill was sent
    assert not trial.problems, (trial.trigger, trial.problems)
    assert trial.comparison.identical, "nothing compared"
    assert not unrecognised_temporaries(scenario.output(root)), "the re-run left unknown hidden entries"
    shutil.rmtree(root)


@pytest.mark.parametrize(
    "seed", [*FAST_SEEDS, *(pytest.param(seed, marks=pytest.mark.stress) for seed in SLOW_SEEDS)]
)
@pytest.mark.parametrize("name", ["preprocess", "train", "predict", "convert-dicom", "evaluate"])
def test_kill_minus_9_then_rerun_gives_the_uninterrupted_outputs(
    name: str,
    seed: int,
    inputs: Path,
    scenarios: dict[str, Callable[[], Scenario]],
    references: dict[str, tuple[Scenario, Reference]],
) -> None:
    _check(name, seed, inputs, scenarios, references)


@pytest.mark.parametrize("name", ["preprocess", "evaluate"])
def test_kill_minus_9_of_the_process_alone_ends_its_workers_too(
    name: str,
    inputs: Path,
    scenarios: dict[str, Callable[[], Scenario]],
    references: dict[str, tuple[Scenario, Reference]],
) -> None:
    """Only the main process is killed (as the OOM killer does): its ``-np 2`` workers must not go on
    writing into the folder the re-run works in, nor wait forever (they did before autoseg.parallel watched
    the parent)."""
    _check(name, 0, inputs, scenarios, references, whole_group=False)


# ---------------------------------------------------------------------- one writer per folder
def _hold_lock(folder: Path, activity: str) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s lock until it is killed (it prints 'held' once it has it)."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom autoseg.workdir import folder_lock\n"
        f"with folder_lock(Path({str(folder)!r}), {activity!r}):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_folder_lock_refuses_a_second_holder_and_survives_kill_minus_9(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    holder = _hold_lock(folder, "predict")
    try:
        refused = pytest.raises(FolderInUseError, match=rf"{folder} is in use .*pid {holder.pid}: predict")
        with refused, folder_lock(folder, "predict"):
            pass
    finally:
        holder.kill()  # kill -9: no clean-up runs; the kernel drops the lock
        holder.communicate()
    assert (folder / LOCK_FILE).is_file()  # the file is left behind ...
    with folder_lock(folder, "predict"):  # ... but the lock is not: it is taken over
        assert f"pid {os.getpid()}" in (folder / LOCK_FILE).read_text()
    assert not (folder / LOCK_FILE).exists()  # removed on release


def _plant_temporaries(folder: Path) -> list[Path]:
    """Temporaries as a killed autoseg leaves them, made by the same calls autoseg's atomic writers use."""
    sub = folder / "labelsTr"
    sub.mkdir(parents=True, exist_ok=True)
    planted = [
        Path(tempfile.mkdtemp(prefix=".case_000.nii.gz.", suffix=".tmp", dir=folder)),  # atomic_target
        Path(tempfile.mkdtemp(prefix=".autoseg-partial-", dir=folder)),  # atomic_files
        Path(tempfile.mkdtemp(prefix=".case_001.partial-", dir=folder)),  # atomic_folder
        Path(tempfile.mkdtemp(prefix=".case_001.stale-", dir=folder)),
        Path(tempfile.mkdtemp(prefix=".case_002.nii.gz.", suffix=".tmp", dir=sub)),
    ]
    (planted[0] / "case_000.nii.gz").write_bytes(b"half a file")
    return planted


def test_stale_temporaries_are_removed_by_their_names_only(tmp_path: Path) -> None:
    """Only autoseg's own temporary names, only folders, two levels deep, no link followed, nothing under a
    hidden folder; everything else hidden stays."""
    planted = _plant_temporaries(tmp_path)
    deep = Path(tempfile.mkdtemp(prefix=".x.nii.gz.", suffix=".tmp", dir=_made(tmp_path / "a" / "b")))
    too_deep = Path(tempfile.mkdtemp(prefix=".x.nii.gz.", suffix=".tmp", dir=_made(tmp_path / "a/b/c")))
    kept = [
        _made(tmp_path / ".keep-me"),
        _made(tmp_path / ".notes.tmp"),  # no random part
        _made(tmp_path / ".hidden" / ".x.nii.gz.abcd1234.tmp"),  # under a hidden folder
        too_deep,
    ]
    (tmp_path / ".file.nii.gz.abcd1234.tmp").write_text("a file, not a folder")
    kept.append(tmp_path / ".file.nii.gz.abcd1234.tmp")
    elsewhere = _made(tmp_path.parent / f"{tmp_path.name}-elsewhere")
    linked = Path(tempfile.mkdtemp(prefix=".y.nii.gz.", suffix=".tmp", dir=elsewhere))
    (tmp_path / "link").symlink_to(elsewhere)
    kept.append(linked)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([*planted, deep])
    assert not any(p.exists() for p in removed) and all(p.exists() for p in kept)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_temporaries_stay_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    planted = _plant_temporaries(folder)
    holder = _hold_lock(folder, "predict")
    try:
        with pytest.raises(FolderInUseError), folder_lock(folder, "predict", remove_temporaries=True):
            pass
        assert all(p.exists() for p in planted)  # a live writer's temporaries are not touched
    finally:
        holder.kill()
        holder.communicate()
    with folder_lock(folder, "predict", remove_temporaries=True):
        assert not any(p.exists() for p in planted)


@pytest.mark.parametrize("name", ["preprocess", "train", "predict", "convert-dicom"])
def test_a_rerun_removes_the_temporaries_a_killed_run_left(
    name: str, tmp_path: Path, inputs: Path, scenarios: dict[str, Callable[[], Scenario]]
) -> None:
    """The next run of the same stage removes the hidden temporaries a kill -9 left in the folder it locks
    (predict's output folder, convert-dicom's dataset folder, preprocessed/, the fold's run folder), and
    leaves other hidden entries alone."""
    scenario = scenarios[name]()
    scenario.reset(tmp_path)
    locked = {
        "preprocess": tmp_path / "work" / "preprocessed",
        "train": tmp_path / "work" / "trained" / "3d_fullres" / "fold_0",
        "predict": scenario.output(tmp_path),
        "convert-dicom": scenario.output(tmp_path),
    }[name]
    planted = _plant_temporaries(locked)
    keep = _made(locked / ".keep-me")
    assert main(scenario.argv(tmp_path)[3:]) == 0  # in this process: argv less 'python -m autoseg'
    assert not [p for p in planted if p.exists()]
    assert keep.is_dir() and not (locked / LOCK_FILE).exists()


def test_folder_lock_names_a_folder_it_cannot_make(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WorkdirError, match="cannot make the folder"), folder_lock(blocker / "out", "x"):
        pass


def test_second_predict_into_a_locked_folder_is_refused(
    trained_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = predict_scenario(tmp_path, trained_workdir)
    out = scenario.output(tmp_path)
    holder = _hold_lock(out, "predict")
    try:
        code = main(scenario.argv(tmp_path)[3:])  # in this process: argv less 'python -m autoseg'
    finally:
        holder.kill()
        holder.communicate()
    message = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert message[-1] == (
        f"autoseg: {out} is in use by another autoseg process (pid {holder.pid}: predict); "
        "wait for it to end or stop it"
    )
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # the refused run wrote nothing


def test_the_same_fold_twice_is_refused_and_two_folds_train_at_once(
    inputs: Path,
    scenarios: dict[str, Callable[[], Scenario]],
    references: dict[str, tuple[Scenario, Reference]],
) -> None:
    scenario, alone = _reference("train", inputs, scenarios, references)  # fold 0 trained alone
    root = inputs / "two-folds"
    scenario.reset(root)
    run_folder = root / "work" / "trained" / "3d_fullres" / "fold_0"
    holder = _hold_lock(run_folder, "train 3d_fullres fold 0")
    try:
        refused = run_to_end(scenario.argv(root))
    finally:
        holder.kill()
        holder.communicate()
    assert refused.returncode == 1
    assert f"{run_folder} is in use by another autoseg process (pid {holder.pid}" in refused.stderr
    assert not (run_folder / "train_config.json").exists()
    fold_1 = [a if a != "0" else "1" for a in scenario.argv(root)]
    both = [start(scenario.argv(root)), start(fold_1)]  # splits.json is made by both at once
    errors = [process.communicate(timeout=900)[1] for process in both]
    assert [p.returncode for p in both] == [0, 0], errors
    trained = root / "work" / "trained"
    assert not incomplete_files(root / "work")
    for fold in ("0", "1"):
        assert (trained / "3d_fullres" / f"fold_{fold}" / "validation" / "summary.json").is_file()
        assert not (trained / "3d_fullres" / f"fold_{fold}" / LOCK_FILE).exists()
    comparison = compare_trees(alone.output, trained, scenario.decoders, scenario.ignore)
    assert not [d for d in comparison.differences if "/fold_1/" not in d], comparison.differences
    assert any("/fold_0/checkpoint_final.pt" in n for n in comparison.identical + comparison.decoded_equal)
    reference_splits = alone.output.parent / "splits.json"
    assert (root / "work" / "splits.json").read_bytes() == reference_splits.read_bytes()
