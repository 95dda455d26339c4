"""``benchmarks/gpu_check.sh --dry-run``: the GPU check's CPU side runs end to end and writes its results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_plans_runs_one_iteration_and_writes_results(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SYNTH_CT": "synthetic-demo",  # the tiny preset stands in for the synthetic CT
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "hippocampus @ 80 GB: planned patch [40, 56, 40], batch 7" in out
    assert "of a 68.0 GB budget (dry run: patch 16^3, batch 1)" in out
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["device"] == "cpu (dry run)"
    assert [c["dataset"] for c in results["checks"]] == ["hippocampus", "synthetic-demo"]
    for check in results["checks"]:
        assert check["memory"]["patch"] == [16, 16, 16] and check["memory"]["batch"] == 1
        assert check["memory"]["budget_gb"] == 68.0 and check["memory"]["peak_allocated_gb"] is None
        assert check["train_s_per_iteration"]["autoseg"] > 0 and check["predict_s"]["autoseg"] > 0
        assert ("nnunet" in check["train_s_per_iteration"]) == results["nnunet"]
    export = results["export"]
    assert export["max_abs_difference"] < 1e-5 and export["labels_differ_fraction"] < 1e-3
    assert export["s_per_channel"]["torch_cpu"] > 0 and export["s_per_channel"]["simpleitk_cpu"] > 0
    assert "(d) export resampling" in out
    if not results["nnunet"]:
        assert "SKIP (b)/(c)" in out
    assert (tmp_path / "gpu_check.log").is_file()
