"""Training a fold: outputs, checkpoints, exact resume (also after kill -9), determinism, dead workers."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import plan_and_preprocess_argv, tiny_train_config

from autoseg.cli.main import main
from autoseg.errors import CheckpointError, WorkerError
from autoseg.training import callbacks, validation
from autoseg.training.checkpoint import load_checkpoint
from autoseg.training.config import RunState, TrainConfig, most_epochs, resolve_time_limit
from autoseg.training.data import BatchSpec, epoch_batches
from autoseg.training.loop import train_fold
from autoseg.workdir import Workdir


def run_dir_of(workdir: Path, config: TrainConfig) -> Path:
    """The run folder of ``config`` (the tiny work directories plan 3d_fullres, their default)."""
    return Workdir(workdir).run(config.configuration or "3d_fullres", config.fold).path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    network: dict[str, torch.Tensor] = load_checkpoint(path)["network"]
    return network


def test_a_fold_trains_and_writes_everything(prepared: Path) -> None:
    summary = train_fold(prepared, tiny_train_config(fold="0"), show_progress=False).summary
    assert summary is not None
    run = run_dir_of(prepared, tiny_train_config(fold="0"))
    for name in (
        "checkpoint_latest.pt",
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "log.jsonl",
        "progress.png",
        "training.log",
        "train_config.json",
        "plans.json",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_seconds"} <= set(
        records[0]
    )
    assert records[1]["lr"] < records[0]["lr"] == pytest.approx(1e-2)
    splits = json.loads((prepared / "splits.json").read_text())
    validation = splits[0]["val"]
    assert sorted(summary["cases"]) == sorted(validation)
    assert set(summary["mean_dice_per_class"]) == {"organ", "core"}
    for case in validation:
        assert (run / "validation" / f"{case}.nii.gz").is_file()
    assert load_checkpoint(run / "checkpoint_final.pt")["state"]["epoch"] == 2


def test_validation_batches_default_to_the_plans_schedule(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``validation_iterations`` given: the plan's ``schedule.validation_iterations`` run, recorded."""
    workdir = prepared
    plans = json.loads((workdir / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["schedule"]["validation_iterations"] = 3
    (workdir / "plans.json").write_text(json.dumps(plans))
    counts: list[int] = []
    real = validation.patch_scores

    def counting(network, loss, batches, count, *args, **kwargs):  # type: ignore[no-untyped-def]
        counts.append(count)
        return real(network, loss, batches, count, *args, **kwargs)

    monkeypatch.setattr(validation, "patch_scores", counting)
    config = tiny_train_config(fold="1", configuration="3d_fullres", epochs=1, validation_iterations=None)
    train_fold(workdir, config, show_progress=False)
    assert counts == [3]
    recorded = json.loads((run_dir_of(workdir, config) / "train_config.json").read_text())
    assert recorded["validation_iterations"] == 3


def test_the_learning_rate_is_a_flag_recorded_and_kept_on_resume(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "0", "--workdir", str(prepared), "--epochs", "2", "--iters-per-epoch", "1"]
    argv += ["--val-iters", "1", "--num-workers", "0", "--device", "cpu", "-q"]
    assert main([*argv, "--lr", "0.03"]) == 0
    run = run_dir_of(prepared, tiny_train_config(fold="0"))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[0]["lr"] == pytest.approx(0.03) and records[1]["lr"] == pytest.approx(0.03 * 0.5**0.9)
    assert json.loads((run / "train_config.json").read_text())["initial_lr"] == 0.03
    capsys.readouterr()
    assert main([*argv, "--resume"]) != 0  # the default 0.01 would silently change the run's schedule
    assert "was trained with --lr 0.03" in capsys.readouterr().err
    assert main([*argv, "--resume", "--lr", "0.03"]) == 0
    assert main([*argv[:-1], "--lr", "0"]) != 0  # argparse: not a positive number


def test_checkpoints_refuse_pickles(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"network": object()}))
    with pytest.raises(CheckpointError, match="not a readable autoseg checkpoint"):
        load_checkpoint(path)


def test_resume_continues_exactly(prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_fold(prepared, tiny_train_config(fold="all"), show_progress=False)
    straight = _weights(run_dir_of(prepared, tiny_train_config()) / "checkpoint_final.pt")
    interrupted = prepared / "second"
    interrupted.mkdir()
    for name in ("plans.json", "fingerprint.json", "preprocessed", "reference_labels"):
        (interrupted / name).symlink_to(prepared / name)
    calls = {"n": 0}

    def crash_after_first_epoch(*args: object) -> None:
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "plot_progress", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(interrupted, tiny_train_config(), show_progress=False)
    monkeypatch.undo()
    with pytest.raises(Exception, match="pass --resume"):
        train_fold(interrupted, tiny_train_config(), show_progress=False)
    train_fold(interrupted, tiny_train_config(), resume=True, show_progress=False)
    resumed = _weights(run_dir_of(interrupted, tiny_train_config()) / "checkpoint_final.pt")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    records = (run_dir_of(interrupted, tiny_train_config()) / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [0, 1]


class GlobalDraws(callbacks.Callback):
    """Draws from PyTorch's, NumPy's and Python's global generators at every step, as a part using dropout
    or ``np.random`` would, and records what it drew per epoch."""

    def __init__(self) -> None:
        self.draws: dict[int, list[tuple[float, float, float]]] = {}

    def on_step(self, run: callbacks.TrainingRun) -> None:
        draw = (float(torch.rand(1)), float(np.random.random()), random.random())  # noqa: NPY002
        self.draws.setdefault(run.state.epoch, []).append(draw)


def _checkpoint_values_equal(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_checkpoint_values_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_checkpoint_values_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return bool(a == b)


def test_a_resume_at_a_checkpoint_is_bit_identical_random_states_included(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped right after the epoch-1 checkpoint (as a kill -9 at that boundary) and resumed: every
    checkpoint value (weights, optimiser, scaler, run state, the torch/NumPy/Python generator states) equals
    the uninterrupted run's bit for bit, and so do the global random draws of the epochs after the resume.
    The run's generators are its own: seeded from the run's seed, whatever the process drew before, and the
    caller's states are put back afterwards. Before, the resumed run's torch_rng differed."""
    config = tiny_train_config(epochs=3)
    torch.manual_seed(123)  # a process state the run must not depend on
    before = (torch.get_rng_state(), pickle.dumps(np.random.get_state()), random.getstate())  # noqa: NPY002
    straight_draws = GlobalDraws()
    train_fold(prepared, config, show_progress=False, callbacks=[straight_draws])
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[2]
    assert pickle.dumps(np.random.get_state()) == before[1]  # noqa: NPY002
    straight = {
        k: load_checkpoint(run_dir_of(prepared, config) / f"checkpoint_{k}.pt") for k in ("latest", "final")
    }
    interrupted = prepared / "second"
    interrupted.mkdir()
    for name in ("plans.json", "fingerprint.json", "preprocessed", "reference_labels"):
        (interrupted / name).symlink_to(prepared / name)

    def stop_after_the_checkpoint(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "plot_progress", stop_after_the_checkpoint)
    torch.manual_seed(456)  # another process state at the first start
    with pytest.raises(KeyboardInterrupt):
        train_fold(interrupted, config, show_progress=False, callbacks=[GlobalDraws()])
    monkeypatch.undo()
    assert load_checkpoint(run_dir_of(interrupted, config) / "checkpoint_latest.pt")["state"]["epoch"] == 1
    torch.manual_seed(789)  # and another at the resume
    resumed_draws = GlobalDraws()
    train_fold(interrupted, config, resume=True, show_progress=False, callbacks=[resumed_draws])
    for kind in ("latest", "final"):
        resumed = load_checkpoint(run_dir_of(interrupted, config) / f"checkpoint_{kind}.pt")
        for key in ("torch_rng", "numpy_rng", "python_rng", "network", "optimizer", "scaler"):
            assert _checkpoint_values_equal(straight[kind][key], resumed[key]), (kind, key)
        seconds = "seconds"
        assert {k: v for k, v in straight[kind]["state"].items() if k != seconds} == {
            k: v for k, v in resumed["state"].items() if k != seconds
        }
    assert sorted(resumed_draws.draws) == [1, 2]
    assert all(resumed_draws.draws[e] == straight_draws.draws[e] for e in (1, 2))


def test_same_seed_gives_identical_weights_and_another_seed_does_not(prepared: Path) -> None:
    results = []
    for index, seed in enumerate((3, 3, 4)):
        workdir = prepared / f"run{index}"
        workdir.mkdir()
        for name in ("plans.json", "fingerprint.json", "preprocessed", "reference_labels"):
            (workdir / name).symlink_to(prepared / name)
        train_fold(workdir, tiny_train_config(epochs=1, seed=seed), show_progress=False)
        results.append(_weights(run_dir_of(workdir, tiny_train_config()) / "checkpoint_final.pt"))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert not all(torch.equal(results[0][k], results[2][k]) for k in results[0])


def test_a_dead_worker_fails_the_run_clearly(prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def die(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr("autoseg.training.data.sample_patch", die)
    folder = prepared / "preprocessed" / "3d_fullres"
    spec = BatchSpec(folder, ("case_000",), (8, 8, 8), 2, augment=False, seed=0)
    with pytest.raises(WorkerError, match="augmentation worker failed"):
        next(epoch_batches(spec, 0, num_workers=1, timeout_s=60))


def test_batches_have_the_planned_shape_and_are_augmented(prepared: Path) -> None:
    folder = prepared / "preprocessed" / "3d_fullres"
    spec = BatchSpec(
        folder, ("case_000", "case_001"), (8, 12, 12), 3, augment=True, in_plane_only=False, seed=0
    )
    batch = next(epoch_batches(spec, 0, num_workers=0))
    assert batch["image"].shape == (3, 1, 8, 12, 12) and batch["image"].dtype == torch.float32
    assert batch["target"].shape == (3, 8, 12, 12) and batch["target"].dtype == torch.int64
    assert set(np.unique(batch["target"].numpy())) <= {0, 1, 2}
    again = next(epoch_batches(spec, 0, num_workers=0))
    assert torch.equal(batch["image"], again["image"])  # an epoch's data is reproducible
    other = next(epoch_batches(spec, 1, num_workers=0))
    assert not torch.equal(batch["image"], other["image"])


@pytest.mark.slow
def test_kill_minus_9_then_resume(prepared: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "autoseg",
        "train",
        "all",
        "--workdir",
        str(prepared),
        "--epochs",
        "6",
        "--iters-per-epoch",
        "3",
        "--val-iters",
        "1",
        "--num-workers",
        "0",
        "-q",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run_dir_of(prepared, tiny_train_config()) / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-epoch (or between epochs): no clean-up runs
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = len(log.read_text().splitlines())
    assert 2 <= done < 6
    assert subprocess.run([*argv, "--resume"], capture_output=True, check=False).returncode == 0
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(6))  # continuous: no gap, no repeat
    assert load_checkpoint(log.parent / "checkpoint_final.pt")["state"]["epoch"] == 6


def test_time_limit_shortens_the_schedule() -> None:
    state = RunState(epoch=2, epochs=100, seconds=20.0)
    records: list[dict[str, object]] = [{"epoch_seconds": 10.0}, {"epoch_seconds": 10.0}]
    callbacks.apply_time_limit(state, records, time_limit_s=45.0, planned=100)
    assert state.epochs == 4  # 25 s left at 10 s per epoch: two more epochs
    callbacks.apply_time_limit(state, records, time_limit_s=None, planned=100)
    assert state.epochs == 4
    faster: list[dict[str, object]] = [{"epoch_seconds": 2.0}] * 5  # the machine got quieter: the schedule
    callbacks.apply_time_limit(state, faster, time_limit_s=45.0, planned=10)  # grows back, up to the plan
    assert state.epochs == 10


def test_a_plan_made_for_a_time_budget_is_trained_within_it() -> None:
    planned = TrainConfig(configuration="3d_fullres")
    assert resolve_time_limit(planned, 3600.0).time_limit_s == 3600.0  # the cpu preset's budget
    assert resolve_time_limit(planned, None).time_limit_s is None  # a GPU plan: its schedule as planned
    assert resolve_time_limit(replace(planned, time_limit_s=600.0), 3600.0).time_limit_s == 600.0
    assert resolve_time_limit(replace(planned, epochs=3), 3600.0).time_limit_s is None  # asked for epochs
    budget = resolve_time_limit(planned, 3600.0)
    assert most_epochs(budget, 40, 3600.0) == 80  # faster epochs than planned: the hour is used
    assert most_epochs(replace(planned, time_limit_s=600.0), 40, 3600.0) == 40  # a user's limit only shortens
    assert most_epochs(replace(budget, epochs=3), 40, 3600.0) == 3


def test_train_command_with_patient_groups(prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    groups = prepared / "patients.csv"
    groups.write_text("case,patient\ncase_000,p1\ncase_001,p1\ncase_002,p2\ncase_003,p2\n")
    argv = [
        "train",
        "0",
        "--workdir",
        str(prepared),
        "--epochs",
        "1",
        "--iters-per-epoch",
        "1",
        "--val-iters",
        "1",
        "--num-workers",
        "0",
        "--groups",
        str(groups),
        "-q",
    ]
    assert main(argv) == 0
    assert "validation mean Dice per class" in capsys.readouterr().out
    splits = json.loads((prepared / "splits.json").read_text())
    assert len(splits) == 2  # two patients: two folds
    assert sorted(sorted(s["val"]) for s in splits) == [["case_000", "case_001"], ["case_002", "case_003"]]
    assert main(argv) == 2  # the run exists: --resume or delete it
    assert "pass --resume" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*argv, "--num-gpus", "2"]) == 2
        assert "PyTorch sees 0 GPU(s)" in capsys.readouterr().err


def test_two_process_data_parallel_training_keeps_ranks_identical(prepared: Path, tmp_path: Path) -> None:
    from helpers import distributed_train

    from autoseg.training.distributed import launch

    out = tmp_path / "ranks"
    out.mkdir()
    launch(2, distributed_train, prepared, out)
    first = torch.load(out / "rank0.pt", weights_only=True)
    second = torch.load(out / "rank1.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)
    from autoseg.network import build_network
    from autoseg.plans import load_plans

    initial = build_network(load_plans(prepared / "plans.json").configuration("3d_fullres").network, 1, 3)
    assert not all(torch.equal(first[k], v) for k, v in initial.state_dict().items())  # it did train
    run = run_dir_of(prepared, tiny_train_config())
    assert (run / "checkpoint_final.pt").is_file() and (run / "validation" / "summary.json").is_file()
    saved = load_checkpoint(run / "checkpoint_final.pt")["network"]
    assert not any(k.startswith("module.") for k in saved)  # the weights, not the DDP wrapper's names


def test_2d_configuration_trains_and_validates(tmp_path: Path, tiny_dataset: Path) -> None:
    workdir = tmp_path / "w2d"
    argv = plan_and_preprocess_argv(tiny_dataset, workdir)
    assert main(argv) == 0
    config = tiny_train_config(configuration="2d", epochs=1)
    summary = train_fold(workdir, config, show_progress=False).summary
    assert summary is not None and set(summary["mean_dice_per_class"]) == {"organ", "core"}
    assert (run_dir_of(workdir, config) / "validation" / "case_000.nii.gz").is_file()
