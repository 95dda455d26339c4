"""Seconds per training step of the hippocampus 3d_fullres network on this CPU, per arithmetic choice.

The network nnU-Net plans for MSD hippocampus (PlainConvUNet 32..256, 4 stages, deep supervision; patch
40 x 56 x 40) with the loss and optimiser ``autoseg train`` uses (Dice + CE with deep supervision, SGD
Nesterov 0.99,
gradient clipping at 12), on random inputs: the step alone, data loading excluded (``--batch`` 2 and 7).
Variants, each measured alone: ``float32``; ``bfloat16`` (autocast, as ``train --precision bfloat16``);
``float32`` and ``bfloat16`` with channels-last 3D tensors (``--channels-last``); ``float32`` and
``bfloat16`` through ``torch.compile`` (inductor, the default backend, on the CPU: ``--compile``; its
compilation is paid in the warm-up before round 1 and reported apart). Variants are alternated
round by round (A, B, C, D, A, B, ...) so that a change of machine load hits them all; each round times
``--steps`` steps after one warm-up step; the figure is the median over rounds of the round's median.
Run on a quiet machine: ``python benchmarks/bench_train_step.py --rounds 5 --batch 2``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from autoseg.network import build_network
from autoseg.plans import NetworkPlan
from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss
from autoseg.training.parts import as_float32

PATCH = (40, 56, 40)
HIPPOCAMPUS = NetworkPlan(
    architecture="plain",
    dims=3,
    features_per_stage=(32, 64, 128, 256),
    kernel_sizes=((3, 3, 3),) * 4,
    strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
    blocks_per_stage=(2, 2, 2, 2),
    decoder_blocks_per_stage=(2, 2, 2),
)


def make_step(precision: str, channels_last: bool, batch: int, compiled: bool = False) -> Callable[[], float]:
    """One training step of a fresh seeded network; returns a function that runs a step and its seconds."""
    torch.manual_seed(0)
    network: nn.Module = build_network(HIPPOCAMPUS, 1, 3)
    memory = torch.channels_last_3d if channels_last else torch.contiguous_format
    network = network.to(memory_format=memory)  # type: ignore[call-overload]
    forward = torch.compile(network) if compiled else network
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=False))
    image = torch.randn(batch, 1, *PATCH).contiguous(memory_format=memory)
    target = torch.randint(0, 3, (batch, *PATCH))
    dtype = torch.bfloat16 if precision == "bfloat16" else None

    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            outputs = forward(image)
        value = loss(as_float32(outputs), target)
        value.backward()
        nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        return time.perf_counter() - started

    network.train()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="also time channels-last 3D variants")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) variants")
    parser.add_argument("--only-compile", action="store_true", help="time the compiled variants alone")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants: list[tuple[str, bool, bool]] = (
        [] if args.only_compile else [("float32", False, False), ("bfloat16", False, False)]
    )
    if args.channels_last:
        variants += [("float32", True, False), ("bfloat16", True, False)]
    if args.compile or args.only_compile:
        variants += [("float32", False, True), ("bfloat16", False, True)]
    steps = {v: make_step(v[0], v[1], args.batch, v[2]) for v in variants}
    first_call = {}
    for variant, step in steps.items():
        first_call[variant] = step()  # the compiled variants compile here
    rounds: dict[tuple[str, bool, bool], list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant, step in steps.items():
            step()  # warm-up (oneDNN picks its kernels on the first call of a shape)
            rounds[variant].append(statistics.median(step() for _ in range(args.steps)))
    base = statistics.median(next(iter(rounds.values())))
    result = {}
    for (precision, channels_last, compiled), times in rounds.items():
        median = statistics.median(times)
        name = precision + (" + channels-last" if channels_last else "") + (" + compile" if compiled else "")
        result[name] = {
            "median_s": round(median, 3),
            "rounds_s": [round(t, 3) for t in times],
            "first_call_s": round(first_call[(precision, channels_last, compiled)], 1),
        }
        print(f"{name:<28} {median:7.3f} s/step  (x{base / median:.2f} vs the first)  {result[name]}")
    if args.out:
        args.out.write_text(json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), **result}))


if __name__ == "__main__":
    main()
