"""The cpu preset's time model against measured training iterations on this machine.

For each time budget, plan hippocampus with the ``cpu`` preset (one throughput measurement shared by all),
then time real training iterations of the planned 3d_fullres network: forward, Dice + cross-entropy on every
deep-supervision output, backward, SGD step, on random data of the planned patch and batch size (data loading
excluded: it runs in background workers during training). Prints a Markdown table for ``docs/planning.md``.

Usage: ``python benchmarks/bench_cpu_planner.py [FINGERPRINT_JSON] [--iterations 6]``. Without a fingerprint
it fingerprints the catalogue's ``hippocampus`` dataset into a temporary work directory.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoseg.fingerprint import load_fingerprint
from autoseg.network import build_network
from autoseg.planning import get_planner
from autoseg.planning.budgets import measure_conv_throughput
from autoseg.planning.cost import training_gflops
from autoseg.plans import ConfigurationPlan

BUDGETS = ("30m", "1h", "2h", "4h", "8h")


def time_iterations(
    config: ConfigurationPlan, in_channels: int, classes: int, iterations: int
) -> list[float]:
    """Seconds of each of ``iterations`` training steps (after one warm-up step)."""
    model = build_network(config.network, in_channels, classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(config.batch_size, in_channels, *config.patch_size)
    target = torch.randint(0, classes, (config.batch_size, *config.patch_size))
    times = []
    for step in range(iterations + 1):
        start = time.perf_counter()
        outputs = model(x)
        assert isinstance(outputs, list)
        loss = torch.zeros(())
        for logits in outputs:
            small = F.interpolate(target[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
            probabilities = logits.softmax(1)
            one_hot = F.one_hot(small, classes).movedim(-1, 1).float()
            dice = (2 * (probabilities * one_hot).sum() + 1) / (probabilities.sum() + one_hot.sum() + 1)
            loss = loss + F.cross_entropy(logits, small) + 1 - dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    """Plan for each budget, time the plans, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("fingerprint", nargs="?", type=Path)
    parser.add_argument("--iterations", type=int, default=6)
    args = parser.parse_args()
    path = args.fingerprint
    if path is None:
        workdir = Path(tempfile.mkdtemp())
        subprocess.run(
            [sys.executable, "-m", "autoseg", "fingerprint", "hippocampus", "-q", "--workdir", str(workdir)],
            check=True,
        )
        path = workdir / "fingerprint.json"
    fingerprint = load_fingerprint(path)
    gflops = measure_conv_throughput()
    print(f"measured throughput {gflops:.1f} GFLOP/s, {torch.get_num_threads()} threads")
    print(
        "| budget | features | patch | batch | GFLOP/iter | estimated s/iter | measured s/iter (median) | "
        "ratio | planned iterations |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for budget in BUDGETS:
        plans = get_planner("cpu", time_budget=budget, cpu_gflops=round(gflops, 2)).plan(fingerprint)
        config = plans.configuration("3d_fullres")
        estimated = config.schedule.estimated_seconds_per_iteration or 0.0
        measured = statistics.median(
            time_iterations(config, len(plans.channel_names), len(plans.labels), args.iterations)
        )
        work = training_gflops(config.network, config.patch_size, config.batch_size, 1, len(plans.labels))
        iterations = config.schedule.epochs * config.schedule.iterations_per_epoch
        patch = "x".join(map(str, config.patch_size))
        print(
            f"| {budget} | {list(config.network.features_per_stage)} | {patch} | {config.batch_size} "
            f"| {work:.1f} | {estimated:.2f} | {measured:.2f} | {measured / estimated:.2f} | {iterations} |"
        )


if __name__ == "__main__":
    main()
