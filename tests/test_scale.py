"""Many scans on many machines: ``predict --shard I/N`` (stable assignment, shared output folder, resuming),
its locks, and the resume check of existing outputs."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from faults import KillPlan, autoseg_argv, final_files, run_and_kill, run_to_end, start
from helpers import tiny_case

from autoseg.cli.main import main
from autoseg.errors import FolderInUseError, UsageError
from autoseg.inference.outputs import OutputOptions
from autoseg.inference.sharding import (
    Shard,
    expected_outputs,
    missing_or_broken,
    parse_shard,
    shard_cases,
    shard_of,
)
from autoseg.io import read_labels, write_image
from autoseg.workdir import folder_lock

CASES = [f"scan_{i:02d}" for i in range(6)]
EXACT = ("--preset", "fast", "--precision", "float32", "--threads", "1")  # bit-identical across processes


def _write_cases(folder: Path, names: list[str] = CASES) -> Path:
    generator = np.random.default_rng(7)
    for name in names:
        image, _, geometry = tiny_case(generator, shape=(8, 12, 12))
        write_image(image[0], geometry, folder / f"{name}_0000.nii.gz")
    return folder


def _predict_argv(inputs: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return autoseg_argv("predict", "-i", inputs, "-o", out, "-m", model, "-q", *EXACT, *extra)


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_labels(p)[0] for p in sorted(folder.glob("*.nii.gz"))}


# ---------------------------------------------------------------------------------------------- assignment
@pytest.mark.parametrize(
    ("text", "expected"), [("0/3", Shard(0, 3)), ("2/3", Shard(2, 3)), (" 0 / 1 ", Shard(0, 1))]
)
def test_shard_is_parsed_zero_based(text: str, expected: Shard) -> None:
    assert parse_shard(text, {}) == expected


@pytest.mark.parametrize("text", ["0/0", "4/3", "3/3", "a/b", "-1/3", "1", "1/2/3", ""])
def test_a_bad_shard_is_a_usage_error(text: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        parse_shard(text, {})
    argv = ["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tmp_path), "--shard", text]
    assert main(argv) == 2
    assert "--shard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before the output folder is made


def test_shard_auto_reads_the_slurm_job_array() -> None:
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert parse_shard("auto", slurm) == Shard(1, 3)  # --array=4-6: tasks 4, 5, 6 are shards 0, 1, 2
    assert parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}) == Shard(2, 3)
    with pytest.raises(UsageError, match="not a Slurm job array"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(UsageError, match=r"0\.\.N-1"):
        parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3"})


def test_assignment_is_a_stable_hash_of_the_name_alone() -> None:
    # golden values: SHA-256 of the UTF-8 name, first 8 bytes big-endian, mod N (never Python's hash())
    assert [shard_of(f"case_{i:03d}", 3) for i in range(8)] == [
        shard_of(f"case_{i:03d}", 3) for i in range(8)
    ]
    assert shard_of("case_000", 1000003) == int("78e62a6022efaeff", 16) % 1000003
    names = [f"case_{i:03d}" for i in range(60)]
    shards = [shard_cases(names, Shard(i, 3)) for i in range(3)]
    assert sorted(n for s in shards for n in s) == names and all(
        len(s) >= 10 for s in shards
    )  # a partition, all used
    assert shard_cases(names[:30], Shard(1, 3)) == [
        n for n in shards[1] if n in names[:30]
    ]  # others don't move


# ---------------------------------------------------------------------------------------------- locks
def test_shards_share_the_folder_and_a_plain_predict_is_refused(tmp_path: Path) -> None:
    first, second = Shard(0, 2), Shard(1, 2)
    with folder_lock(tmp_path, "s0", shared=True), folder_lock(tmp_path, "s0", name=first.lock_name):
        with (
            folder_lock(tmp_path, "s1", shared=True),
            folder_lock(tmp_path, "s1", name=second.lock_name),
            pytest.raises(FolderInUseError, match="in use"),
            folder_lock(tmp_path, "predict"),
        ):
            pass
        with pytest.raises(FolderInUseError), folder_lock(tmp_path, "s0 again", name=first.lock_name):
            pass  # the same shard twice
        assert (tmp_path / ".autoseg.lock").is_file()  # shard 0 still holds it
    assert not list(tmp_path.iterdir())  # the last shard removed the lock files
    with (
        folder_lock(tmp_path, "predict"),
        pytest.raises(FolderInUseError),
        folder_lock(tmp_path, "s", shared=True),
    ):
        pass


# ---------------------------------------------------------------------------------------------- resume check
def test_every_output_is_checked_whole(trained_workdir: Path, tmp_path: Path) -> None:
    inputs = _write_cases(tmp_path / "in", CASES[:1])
    extra = ("--save-probabilities", "--instances", "all", "--report")
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "o"), "-m", str(trained_workdir), "-q",
                 "--preset", "fast", *extra]) == 0  # fmt: skip
    options = OutputOptions(save_probabilities=True, instances=("all",), report=True)
    written = sorted(p.name for p in (tmp_path / "o").iterdir() if p.name != "predict.json")
    assert sorted(expected_outputs(CASES[0], options)) == written  # the writer's names, no more, no fewer
    assert missing_or_broken(CASES[0], options, tmp_path / "o") is None
    for name in written:
        path = tmp_path / "o" / name
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) * 2 // 3])
        assert missing_or_broken(CASES[0], options, tmp_path / "o") is not None, name
        path.write_bytes(whole)
    (tmp_path / "o" / f"{CASES[0]}_report.png").unlink()
    assert missing_or_broken(CASES[0], options, tmp_path / "o") == f"{CASES[0]}_report.png missing"


def test_a_nifti_cut_short_or_empty_is_not_whole(tmp_path: Path) -> None:
    image, _, geometry = tiny_case(np.random.default_rng(0))
    path = tmp_path / "a.nii.gz"
    write_image(image[0], geometry, path)
    options = OutputOptions()
    assert missing_or_broken("a", options, tmp_path) is None
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - 100]))  # a whole gzip stream of too few voxels
    assert "truncated" in str(missing_or_broken("a", options, tmp_path))
    path.write_bytes(b"")
    assert missing_or_broken("a", options, tmp_path) == "a.nii.gz: empty"


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # 4 predict processes: 135 s at load 12 on 2 cores
def test_three_shards_in_parallel_write_every_case_once_as_unsharded(
    trained_workdir: Path, tmp_path: Path
) -> None:
    inputs = _write_cases(tmp_path / "in")
    plain = run_to_end(_predict_argv(inputs, tmp_path / "plain", trained_workdir))
    assert plain.returncode == 0, plain.stderr
    out = tmp_path / "sharded"
    processes = [start(_predict_argv(inputs, out, trained_workdir, "--shard", f"{i}/3")) for i in range(3)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    records = [json.loads((out / f"predict.shard-{i}-of-3.json").read_text()) for i in range(3)]
    predicted = [[c["identifier"] for c in r["cases"]] for r in records]
    assert sorted(n for p in predicted for n in p) == CASES  # every case exactly once
    assert predicted == [shard_cases(CASES, Shard(i, 3)) for i in range(3)]
    assert all(r["skipped"] == [] and r["shard"]["count"] == 3 for r in records)
    expected = _labels(tmp_path / "plain")
    result = _labels(out)
    assert list(result) == list(expected)
    assert all(np.array_equal(result[name], expected[name]) for name in expected)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no lock or temporary left
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    again = run_to_end(_predict_argv(inputs, out, trained_workdir, "--shard", "1/3"))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "predict.shard-1-of-3.json").read_text())["skipped"] == predicted[1]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == stamps  # nothing rewritten


@pytest.mark.slow
def test_a_killed_shard_resumes_and_redoes_a_truncated_case(trained_workdir: Path, tmp_path: Path) -> None:
    inputs = _write_cases(tmp_path / "in")
    plain = run_to_end(_predict_argv(inputs, tmp_path / "plain", trained_workdir))
    assert plain.returncode == 0, plain.stderr
    out = tmp_path / "out"
    mine = shard_cases(CASES, Shard(0, 2))
    assert len(mine) >= 3
    killed = run_and_kill(_predict_argv(inputs, out, trained_workdir, "--shard", "0/2"), KillPlan(out, 1))
    assert killed.returncode == -9
    done = [p.name.removesuffix(".nii.gz") for p in final_files(out)]
    assert done and len(done) < len(mine)  # killed half-way: no record yet
    truncated = out / f"{done[0]}.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    resumed = run_to_end(_predict_argv(inputs, out, trained_workdir, "--shard", "0/2"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done[0]}: predicted again" in resumed.stderr
    record = json.loads((out / "predict.shard-0-of-2.json").read_text())
    assert record["skipped"] == sorted(done[1:])
    assert sorted([c["identifier"] for c in record["cases"]] + record["skipped"]) == mine
    expected = _labels(tmp_path / "plain")
    assert all(np.array_equal(read_labels(out / f"{n}.nii.gz")[0], expected[f"{n}.nii.gz"]) for n in mine)


def test_skipping_refuses_a_folder_predicted_with_other_settings(
    trained_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _write_cases(tmp_path / "in", CASES[:2])
    base = ["predict", "-i", str(inputs), "-o", str(tmp_path / "o"), "-m", str(trained_workdir), "-q"]
    assert main([*base, "--preset", "fast"]) == 0
    assert main([*base, "--preset", "fast", "--step", "0.5", "--shard", "0/2"]) == 2
    assert "other step" in capsys.readouterr().err
    assert main([*base, "--preset", "fast", "--skip-existing"]) == 0  # same settings: both skipped
    assert json.loads((tmp_path / "o" / "predict.json").read_text())["skipped"] == CASES[:2]
    assert main([*base, "--shard", "0/1", "--overwrite", "--preset", "fast"]) == 0
    record = json.loads((tmp_path / "o" / "predict.shard-0-of-1.json").read_text())
    assert [c["identifier"] for c in record["cases"]] == CASES[:2] and record["skipped"] == []


def test_a_plain_predict_is_refused_while_a_shard_runs(trained_workdir: Path, tmp_path: Path) -> None:
    inputs = _write_cases(tmp_path / "in", CASES[:1])
    with folder_lock(tmp_path / "o", "predict --shard 0/2", shared=True):
        plain = subprocess.run(_predict_argv(inputs, tmp_path / "o", trained_workdir), capture_output=True,
                               text=True, check=False, timeout=300)  # fmt: skip
        assert plain.returncode == 1 and "in use by another autoseg process" in plain.stderr


def test_a_shard_without_cases_writes_an_empty_record(
    trained_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _write_cases(tmp_path / "in", CASES[:2])
    empty = next(i for i in range(50) if not shard_cases(CASES[:2], Shard(i, 50)))
    argv = ["predict", "-i", str(inputs), "-o", str(tmp_path / "o"), "-m", str(trained_workdir), "-q"]
    assert main([*argv, "--preset", "fast", "--shard", f"{empty}/50"]) == 0
    assert f"0 case(s) predicted into {tmp_path / 'o'} (shard {empty}/50)" in capsys.readouterr().out
    record = json.loads((tmp_path / "o" / f"predict.shard-{empty}-of-50.json").read_text())
    assert (
        record["cases"] == []
        and record["failures"] == []
        and record["shard"] == {"index": empty, "count": 50}
    )
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"predict.shard-{empty}-of-50.json"]
