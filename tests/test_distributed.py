"""``autoseg predict-cluster`` on a local Dask cluster of 2 worker processes started by the test (loopback):
the outputs equal plain ``predict``'s, an injected failure is retried, a case that keeps failing is reported
after its retries while the others are written."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import tiny_case

from autoseg.cli.main import main
from autoseg.io import read_labels, write_image

distributed = pytest.importorskip("distributed", reason="the 'distributed' extra (Dask) is not installed")
cloudpickle = pytest.importorskip("cloudpickle")

CASES = [f"scan_{i}" for i in range(4)]
EXACT = ("--preset", "fast", "--precision", "float32", "--threads", "1")


class FailOnce:
    """Fails a case's first attempt when its marker file exists (removed by that attempt; a marker that says
    ``crash`` ends the worker process itself, as the out-of-memory killer would), and every attempt of
    ``always``."""

    def __init__(self, markers: Path, always: str | None = None) -> None:
        self.markers = markers
        self.always = always

    def __call__(self, identifier: str) -> None:
        marker = self.markers / identifier
        if identifier == self.always:
            raise RuntimeError(f"injected failure of {identifier}, every attempt")
        if marker.exists():
            crash = marker.read_text() == "crash"
            marker.unlink()
            if crash:
                os._exit(1)
            raise RuntimeError(f"injected failure of {identifier}, first attempt")


@pytest.fixture
def cluster() -> Iterator[str]:
    """A local cluster: scheduler and 2 single-thread worker processes on 127.0.0.1, stopped at the end."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FailOnce travels to the workers by value
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        env={"OMP_NUM_THREADS": "1"},
    ) as local:  # fmt: skip
        yield str(local.scheduler_address)


def _inputs(folder: Path) -> Path:
    generator = np.random.default_rng(3)
    for name in CASES:
        image, _, geometry = tiny_case(generator, shape=(8, 12, 12))
        write_image(image[0], geometry, folder / f"{name}_0000.nii.gz")
    return folder


@pytest.mark.slow
def test_cluster_outputs_equal_plain_predict_and_failures_are_retried(
    trained_workdir: Path,
    tmp_path: Path,
    cluster: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from autoseg.distributed import ClusterOptions, run_predict_cluster
    from autoseg.inference.outputs import OutputOptions
    from autoseg.inference.stage import PredictRequest

    inputs = _inputs(tmp_path / "in")
    plain_argv = ["predict", "-i", str(inputs), "-o", str(tmp_path / "plain"), "-m", str(trained_workdir)]
    assert main([*plain_argv, "-q", *EXACT]) == 0
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / CASES[1]).touch()
    (markers / CASES[3]).write_text("crash")
    request = PredictRequest(
        inputs, tmp_path / "cluster", trained_workdir, preset="fast", precision="float32", threads=1,
        outputs=OutputOptions(),
    )  # fmt: skip
    outputs = run_predict_cluster(
        request,
        ClusterOptions(address=cluster, retries=1),
        show_progress=False,
        before_case=FailOnce(markers),
    )
    assert [o.identifier for o in outputs] == CASES
    assert not (markers / CASES[1]).exists()  # its first attempt failed, the retry wrote it
    assert not (markers / CASES[3]).exists()  # its worker died; the case moved to a (restarted) worker
    record: dict[str, Any] = json.loads((tmp_path / "cluster" / "predict.json").read_text())
    assert record["failures"] == [] and [c["identifier"] for c in record["cases"]] == CASES
    assert sum(len(v) for v in record["cluster"]["cases_by_worker"].values()) == len(CASES)
    for name in CASES:
        plain = read_labels(tmp_path / "plain" / f"{name}.nii.gz")[0]
        assert np.array_equal(read_labels(tmp_path / "cluster" / f"{name}.nii.gz")[0], plain), name
    assert not [p.name for p in (tmp_path / "cluster").iterdir() if p.name.startswith(".")]

    argv = ["predict-cluster", "-i", str(inputs), "-o", str(tmp_path / "failing"), "-m", str(trained_workdir),
            "-q", *EXACT, "--address", cluster, "--retries", "1"]  # fmt: skip
    from autoseg.distributed import cluster as cluster_module

    def with_hook(*args: Any, **kwargs: Any) -> Any:  # the CLI, with a case that fails every attempt
        return run_predict_cluster(*args, **kwargs, before_case=FailOnce(markers, always=CASES[2]))

    monkeypatch.setattr(cluster_module, "run_predict_cluster", with_hook)
    assert main(argv) == 1  # one case failed after 2 attempts; the other three are written
    error = capsys.readouterr().err
    assert f"{CASES[2]}: failed on the cluster after 2 attempt(s) (RuntimeError: injected failure" in error
    written = sorted(p.name for p in (tmp_path / "failing").glob("*.nii.gz"))
    assert written == [f"{n}.nii.gz" for n in CASES if n != CASES[2]]
    assert json.loads((tmp_path / "failing" / "predict.json").read_text())["failures"][0].startswith(CASES[2])

    if not torch.cuda.is_available():  # a worker that cannot load the model: one clear error, no traceback
        assert main([*argv[:-4], "--address", cluster, "--device", "cuda"]) == 2
        assert "a worker could not load the model: --device cuda: PyTorch sees no CUDA GPU" in (
            capsys.readouterr().err
        )


def test_predict_cluster_needs_an_address_or_local_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict-cluster", "-i", "in", "-o", "out"]) == 2
    assert "--address" in capsys.readouterr().err


def test_an_unreachable_scheduler_is_a_usage_error(trained_workdir: Path, tmp_path: Path) -> None:
    from autoseg.distributed import ClusterOptions, run_predict_cluster
    from autoseg.errors import UsageError
    from autoseg.inference.stage import PredictRequest

    request = PredictRequest(_inputs(tmp_path / "in"), tmp_path / "o", trained_workdir, preset="fast")
    options = ClusterOptions(address="tcp://127.0.0.1:9", connect_timeout_s=2)
    with pytest.raises(UsageError, match="no Dask scheduler answers"):
        run_predict_cluster(request, options, show_progress=False)
