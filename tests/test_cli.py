"""The CLI contract: commands with --help, work directory, exit codes, no tracebacks, the demo."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg.cli.main import all_commands, main
from autoseg.dataset.catalogue import default_catalogue_path
from autoseg.demo import HELDOUT_CASES, demo_dataset_config

DEMO_DICE_FLOOR = 0.7
"""Every class of the demo's held-out cases must reach this Dice (issue 15: a demo that convinces)."""

COMMAND_NAMES = [spec.name for spec in all_commands()]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMAND_NAMES:
        assert name in out


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_each_command_has_help_with_workdir(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--workdir" in out
    assert "--debug" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["verify"]) == 2
    assert main(["fingerprint", "x", "-np", "0"]) == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_workdir_defaults_to_environment_then_autoseg_work(
    monkeypatch: pytest.MonkeyPatch, tiny_dataset: Path, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOSEG_WORKDIR", raising=False)
    assert main(["fingerprint", str(tiny_dataset), "-q"]) == 0
    assert (tmp_path / "autoseg-work" / "fingerprint.json").is_file()
    monkeypatch.setenv("AUTOSEG_WORKDIR", str(tmp_path / "from-env"))
    assert main(["fingerprint", str(tiny_dataset), "-q"]) == 0
    assert (tmp_path / "from-env" / "fingerprint.json").is_file()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text("{broken")
    plain = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoseg",
            "fingerprint",
            str(tmp_path / "ds"),
            "-q",
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr
    assert "dataset.json: not valid JSON" in plain.stderr
    debug = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoseg",
            "fingerprint",
            str(tmp_path / "ds"),
            "-q",
            "--debug",
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr


def test_unexpected_exceptions_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_dataset: Path
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("autoseg.dataset.verify.verify_dataset", explode)
    assert main(["verify", str(tiny_dataset), "-q"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: boom" in err
    assert "--debug" in err


def test_demo_dataset_comes_from_the_catalogue() -> None:
    catalogue = json.loads(default_catalogue_path().read_text())
    assert catalogue["datasets"]["synthetic-demo"]["generator"] == demo_dataset_config().to_json()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "-q", "-np", "2"]) == 0
    out = capsys.readouterr().out
    assert "verify:      6 cases, 0 errors" in out
    assert "fingerprint: median spacing" in out
    assert "plan:        3d_fullres" in out  # sizes depend on the measured CPU throughput
    assert "preprocess:  6 cases for 2d" in out and "3d_fullres -> " in out
    assert "train:       3d_fullres fold 0" in out and "validation Dice per class: organ" in out
    assert "best:        3d_fullres, cross-validation Dice" in out
    assert "predict:     2 held-out cases" in out and "_rtstruct.dcm" in out
    assert "evaluate:    2 held-out cases" in out and "surface Dice" in out
    assert (workdir / "predictions" / "synthct_000_report.png").is_file()
    assert (workdir / "predictions_dicom" / "synthct_000_rtstruct.dcm").is_file()
    assert (workdir / "evaluation" / "summary.json").is_file()
    assert (workdir / "fingerprint.json").is_file()
    # the demo convinces: every class of both held-out cases segmented, none flagged as missing, too small
    # or too large, or in pieces (a small structure's mean confidence may still fall under the 0.80 floor)
    summary = json.loads((workdir / "evaluation" / "summary.json").read_text())
    assert set(summary["per_class"]) == {"1", "2", "3"}
    for value, stats in summary["per_class"].items():
        assert stats["dice"]["mean"] >= DEMO_DICE_FLOOR, (value, stats["dice"], out)
        assert stats["hd95_mm"]["mean"] is not None and math.isfinite(stats["hd95_mm"]["mean"])
    tables = sorted((workdir / "predictions").glob("*_structures.json"))
    assert len(tables) == HELDOUT_CASES
    for table in tables:
        rows = json.loads(table.read_text())["structures"]
        flags = [f for row in rows for f in row["flags"] if f["kind"] != "confidence"]
        assert flags == [], (table.name, flags)
    stamp = (workdir / "fingerprint.json").stat().st_mtime_ns
    assert main(["demo", "--workdir", str(workdir), "-q"]) == 0
    assert (workdir / "fingerprint.json").stat().st_mtime_ns == stamp


def test_synth_command_writes_a_dataset_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ct"
    argv = ["synth", str(out), "--cases", "2", "--shape", "16", "24", "24", "--spacing", "3", "1", "1"]
    assert main([*argv, "--classes", "4", "--modality", "MR", "--channels", "2", "--seed", "7", "-q"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and len(meta["channel_names"]) == 2 and len(meta["labels"]) == 5
    assert meta["autoseg_synth"]["spacing_mm"] == [3.0, 1.0, 1.0]
    assert main(["verify", str(out), "-q"]) == 0
    preset = tmp_path / "preset"
    assert main(["synth", str(preset), "--preset", "synthetic-demo", "--cases", "2", "-q"]) == 0
    generator = json.loads((preset / "dataset.json").read_text())["autoseg_synth"]
    assert generator == {**demo_dataset_config().to_json(), "cases": 2}
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "bad"), "--classes", "99", "-q"]) == 2
    assert "classes" in capsys.readouterr().err
    assert main(["synth", str(preset), "--cases", "3", "-q"]) == 2  # a different dataset already lives there


def test_plan_and_planners_commands(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "w"
    assert main(["plan", "--workdir", str(workdir), "-q"]) == 1
    assert "run 'autoseg fingerprint DATASET' first" in capsys.readouterr().err
    assert main(["fingerprint", str(tiny_dataset), "--workdir", str(workdir), "-q"]) == 0
    assert main(["plan", "--workdir", str(workdir), "--planner", "default", "--gpu-memory", "4", "-q"]) == 0
    plans = json.loads((workdir / "plans.json").read_text())
    assert plans["planner"] == "default" and plans["planner_options"]["gpu_memory_gb"] == 4.0
    assert (
        main(
            [
                "plan",
                "--workdir",
                str(workdir),
                "--planner",
                "cpu",
                "--cpu-gflops",
                "30",
                "--time-budget",
                "30m",
                "-q",
            ]
        )
        == 0
    )
    cpu = json.loads((workdir / "plans.json").read_text())
    assert cpu["planner"] == "cpu" and cpu["device"] == "cpu" and cpu["planner_options"]["cpu_gflops"] == 30.0
    assert main(["plan", "--workdir", str(workdir), "--planner", "cpu", "--time-budget", "30m", "-q"]) == 0
    assert (workdir / "plans.json").read_text() == json.dumps(cpu, indent=2) + "\n"  # throughput reused
    capsys.readouterr()
    assert main(["plan", "--workdir", str(workdir), "--planner", "cpu", "--gpu-memory", "8", "-q"]) == 2
    assert "does not take gpu_memory_gb" in capsys.readouterr().err
    assert main(["plan", "--workdir", str(workdir), "--planner", "nope", "-q"]) == 2
    assert main(["plan", "--workdir", str(workdir), "--planner", "cpu", "--time-budget", "soon", "-q"]) == 2
    assert "'soon' is not a duration" in capsys.readouterr().err
    assert main(["planners"]) == 0
    listing = capsys.readouterr().out
    for name in ("default", "cpu", "resenc-m", "resenc-l"):
        assert name in listing
