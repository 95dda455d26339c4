"""Multi-node data-parallel training: two ``torchrun --nnodes 2`` processes ("nodes") on loopback, gloo,
rendezvous on a host:port (c10d), ``autoseg train`` as the program; every rank ends with the same weights,
only rank 0 writes, the time limit's schedule is rank 0's on every rank."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoseg.training.checkpoint import load_checkpoint
from autoseg.training.distributed import weights_digest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _node(port: int, workdir: Path, *train: str) -> subprocess.Popen[str]:
    """One "node": ``torchrun --nnodes 2 --nproc-per-node 1`` running ``autoseg train all``."""
    argv = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "autoseg-test",
        "-m", "autoseg", "train", "all", "--workdir", str(workdir), "--device", "cpu",
        "--epochs", "2", "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0",
        "--precision", "float32", *train,
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )


def _run_two_nodes(workdir: Path, *train: str) -> list[str]:
    port = _free_port()
    nodes = [_node(port, workdir, *train) for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            output, _ = node.communicate(timeout=240)
            outputs.append(output)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    return outputs


@pytest.mark.slow
def test_two_torchrun_nodes_train_identical_weights_and_only_rank_0_writes(prepared: Path) -> None:
    outputs = _run_two_nodes(prepared, "--time-limit", "1h")
    text = "\n".join(outputs)
    digests = dict(re.findall(r"rank (\d) of 2: final weights sha256 ([0-9a-f]{64})", text))
    assert sorted(digests) == ["0", "1"], text[-3000:]
    assert digests["0"] == digests["1"]  # every rank holds the same weights
    run = prepared / "trained" / "3d_fullres" / "fold_all"
    saved = load_checkpoint(run / "checkpoint_final.pt")["network"]
    assert weights_digest(saved) == digests["0"]  # and rank 0 wrote them
    from autoseg.network import build_network
    from autoseg.plans import load_plans

    initial = build_network(load_plans(prepared / "plans.json").configuration("3d_fullres").network, 1, 3)
    assert weights_digest(initial.state_dict()) != digests["0"]  # it did train
    assert (run / "validation" / "summary.json").is_file()
    assert sum("validation mean Dice per class" in output for output in outputs) == 2  # both ranks finished
    assert not list(run.glob(".autoseg.lock*"))  # rank 0's fold lock released, rank 1 took none


def agreement_rank(index: int, count: int, out: Path) -> None:
    """One rank of :func:`test_ranks_take_rank_0s_value_and_different_weights_fail`: its own value and its own
    weights (different on every rank); records what it got."""
    from autoseg.errors import AutosegError
    from autoseg.training.distributed import first_rank_value, require_same_weights

    value = first_rank_value(100 + index)
    torch.manual_seed(index)
    try:
        require_same_weights(torch.nn.Linear(2, 1))
        outcome = "same"
    except AutosegError as error:
        outcome = "; ".join([error.message, *error.details])
    (out / f"rank{index}.txt").write_text(f"{value}\n{outcome}")


def test_ranks_take_rank_0s_value_and_different_weights_fail(tmp_path: Path) -> None:
    from autoseg.training.distributed import launch

    launch(2, agreement_rank, tmp_path)
    for index in range(2):
        value, outcome = (tmp_path / f"rank{index}.txt").read_text().split("\n")
        assert value == "100"  # rank 0's decision on every rank (the time limit's new schedule)
        assert outcome.startswith("the ranks ended with different weights; rank 0: ")
        assert "rank 1: " in outcome


def test_first_rank_value_and_digest_without_a_process_group() -> None:
    from autoseg.training.distributed import first_rank_value, local_device, require_same_weights

    assert first_rank_value(7) == 7
    network = torch.nn.Linear(2, 1)
    assert require_same_weights(network) == weights_digest(network.state_dict())
    changed = {k: v.clone() for k, v in network.state_dict().items()}
    changed["bias"] += 1
    assert weights_digest(changed) != weights_digest(network.state_dict())
    assert local_device("cpu") == "cpu"
