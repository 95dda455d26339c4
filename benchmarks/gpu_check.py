"""The GPU checks of issue 15 (point 7) in one process: memory model, training step, prediction vs nnU-Net.

(a) ``memory``: plan each fingerprint with the ``default`` preset for the GPU's memory, run ``--iterations``
    training iterations of the planned 3d_fullres configuration as ``autoseg train`` does (float16 autocast,
    gradient scaler, Dice + CE with deep supervision, clipping, SGD; random data of the planned patch and
    batch) and compare ``torch.cuda.max_memory_allocated`` with the planned budget (memory x 0.85): issue 15
    asks for 60-100 %.
(b) ``train``: seconds per training step, autoseg against nnU-Net v2.6's step (``nnUNetTrainer.train_step``:
    its ``PlainConvUNet`` from the same plan through ``get_network_from_plans``, ``DC_and_CE_loss`` in its
    ``DeepSupervisionWrapper``, float16 autocast and ``GradScaler``, clipping at 12, SGD Nesterov), same
    patch and batch, alternating rounds, medians. Data loading is excluded from both.
(c) ``predict``: seconds for the sliding-window prediction of one image (the median image of the
    fingerprint, random values): autoseg's :func:`autoseg.inference.sliding_window.sliding_window` with
    mirroring against ``nnUNetPredictor.predict_sliding_window_return_logits`` (the engine of
    ``nnUNetv2_predict``), both with mirroring on every axis, step 0.5, Gaussian weighting, on the GPU.
(d) ``export`` (issue 17, point 2): one channel of a 117-class prediction brought from a 2 mm network grid
    to a 600 x 512 x 512 CT's grid, the way ``predict`` does on a GPU
    (:func:`autoseg.inference.export.resample_linear_torch`) against SimpleITK on the CPU (the CPU path):
    seconds per channel (medians), the largest difference, and the labels of a 4-class running argmax.

Without nnunetv2 importable, (b) and (c) print a SKIP line and time autoseg alone. ``--dry-run`` runs on the
CPU: it plans for ``--gpu-memory-gb`` (a fake GPU) and prints the budget, then runs one iteration of each part
on a tiny configuration (patch 16^3, batch 1). Results go to ``--out`` as JSON (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoseg.fingerprint import Fingerprint, load_fingerprint
from autoseg.network import build_network
from autoseg.planning import get_planner
from autoseg.planning.budgets import GIB, MemoryBudget
from autoseg.plans import ConfigurationPlan
from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss

TINY_PATCH = (16, 16, 16)


def has_nnunet() -> bool:
    """Whether nnunetv2 (and its network library) can be imported here."""
    return importlib.util.find_spec("nnunetv2") is not None


def plan_for(fingerprint: Fingerprint, gpu_memory_gb: float, dry_run: bool) -> ConfigurationPlan:
    """The default preset's 3d_fullres (else 2d) plan for a GPU of ``gpu_memory_gb``; tiny in a dry run."""
    plans = get_planner("default", gpu_memory_gb=gpu_memory_gb, device="cuda").plan(fingerprint)
    config = plans.configuration("3d_fullres" if "3d_fullres" in plans.configurations else "2d")
    if dry_run:
        config = replace(config, patch_size=TINY_PATCH[: config.dims], batch_size=1)
    return config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_timer(
    network: nn.Module,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    classes: int,
    *,
    loss_in_autocast: bool,
) -> Callable[[], float]:
    """A function running one training step (as both tools' trainers) and returning its seconds: the loss
    inside the autocast region (nnU-Net) or after it on float32 outputs (autoseg)."""
    device = next(network.parameters()).device
    optimizer = torch.optim.SGD(
        network.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5
    )
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    generator = torch.Generator(device="cpu").manual_seed(0)
    image = torch.randn(shape, generator=generator).to(device)
    target = torch.randint(0, classes, (shape[0], *shape[2:]), generator=generator).to(device)
    network.train()

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            outputs = network(image)
            loss = loss_fn(outputs, target) if loss_in_autocast else None
        if loss is None:
            loss = loss_fn(outputs, target)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        _sync(device)
        return time.perf_counter() - start

    return step


def autoseg_step(
    config: ConfigurationPlan, channels: int, classes: int, device: torch.device
) -> Callable[[], float]:
    """autoseg's training step for ``config``."""
    network = build_network(config.network, channels, classes).to(device)
    inner = DiceCELoss(batch_dice=config.batch_dice)
    loss = DeepSupervisionLoss(inner)
    shape = (config.batch_size, channels, *config.patch_size)
    return _step_timer(
        network,
        lambda outputs, target: loss([o.float() for o in outputs], target),
        shape,
        classes,
        loss_in_autocast=False,
    )


def nnunet_architecture(config: ConfigurationPlan, channels: int, classes: int) -> dict[str, Any]:
    """nnU-Net v2's ``architecture`` entry (PlainConvUNet) for the same topology as ``config.network``."""
    net, dims = config.network, config.dims
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": net.num_stages,
            "features_per_stage": list(net.features_per_stage),
            "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
            "kernel_sizes": [list(k) for k in net.kernel_sizes],
            "strides": [list(s) for s in net.strides],
            "n_conv_per_stage": list(net.blocks_per_stage),
            "n_conv_per_stage_decoder": list(net.decoder_blocks_per_stage),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def nnunet_network(
    config: ConfigurationPlan, channels: int, classes: int, deep_supervision: bool
) -> nn.Module:
    """nnU-Net's network for ``config``, built as its trainer builds it."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # type: ignore[import-not-found, unused-ignore]

    arch = nnunet_architecture(config, channels, classes)
    network: nn.Module = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        channels,
        classes,
        deep_supervision=deep_supervision,
    )
    return network


def nnunet_step(
    config: ConfigurationPlan, channels: int, classes: int, device: torch.device
) -> Callable[[], float]:
    """nnU-Net v2.6's training step (``nnUNetTrainer.train_step``) on the same plan."""
    import numpy as np
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss  # type: ignore[import-not-found, unused-ignore]
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # type: ignore[import-not-found, unused-ignore]
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # type: ignore[import-not-found, unused-ignore]

    network = nnunet_network(config, channels, classes, True).to(device)
    loss = DC_and_CE_loss(
        {"batch_dice": config.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    weights = np.array([1 / (2**i) for i in range(config.network.num_stages - 1)])
    weights[-1] = 0
    wrapped = DeepSupervisionWrapper(loss, weights / weights.sum())
    shape = (config.batch_size, channels, *config.patch_size)

    def deep_targets(target: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            nn.functional.interpolate(target[:, None].float(), size=o.shape[2:], mode="nearest-exact")
            for o in outputs
        ]

    return _step_timer(
        network,
        lambda outputs, target: wrapped(outputs, deep_targets(target, outputs)),
        shape,
        classes,
        loss_in_autocast=True,
    )


def check_memory(
    config: ConfigurationPlan,
    gpu_memory_gb: float,
    channels: int,
    classes: int,
    iterations: int,
    device: torch.device,
) -> dict[str, Any]:
    """(a) Peak allocated memory of ``iterations`` training steps against the planned budget."""
    budget_gb = gpu_memory_gb * MemoryBudget(gpu_memory_gb).usable_fraction
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = autoseg_step(config, channels, classes, device)
    seconds = [step() for _ in range(iterations)]
    peak_gb = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {
        "patch": list(config.patch_size),
        "batch": config.batch_size,
        "features": list(config.network.features_per_stage),
        "estimated_gb": config.estimated_memory_gb,
        "budget_gb": round(budget_gb, 3),
        "peak_allocated_gb": None if peak_gb is None else round(peak_gb, 3),
        "peak_of_budget": None if peak_gb is None else round(peak_gb / budget_gb, 3),
        "seconds_per_iteration": round(statistics.median(seconds), 4),
    }


def time_alternating(steps: dict[str, Callable[[], float]], rounds: int, per_round: int) -> dict[str, float]:
    """Median over rounds of each round's median seconds; the variants alternate, one warm-up step each."""
    for step in steps.values():
        step()
    results: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            results[name].append(statistics.median(step() for _ in range(per_round)))
    return {name: round(statistics.median(values), 4) for name, values in results.items()}


def predict_timers(
    config: ConfigurationPlan,
    shape: tuple[int, ...],
    channels: int,
    classes: int,
    device: torch.device,
    nnunet: bool,
) -> dict[str, Callable[[], float]]:
    """(c) One sliding-window prediction of a ``shape`` image per call, for each tool."""
    from autoseg.inference.sliding_window import sliding_window

    image = torch.randn((1, channels, *shape), generator=torch.Generator().manual_seed(0))
    dims = tuple(range(2, 2 + config.dims))
    network = (
        build_network(replace(config.network, deep_supervision=False), channels, classes).to(device).eval()
    )

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            total = network(batch).float()
            for axis in dims:  # mirroring along each axis, as nnU-Net's default (one flip at a time)
                total += torch.flip(network(torch.flip(batch, (axis,))), (axis,)).float()
        averaged: torch.Tensor = total / (1 + len(dims))
        return averaged

    def run_autoseg() -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            sliding_window(image.to(device), config.patch_size, predictor, step=0.5).argmax(1).cpu()
        _sync(device)
        return time.perf_counter() - start

    timers = {"autoseg": run_autoseg}
    if nnunet:
        timers["nnunet"] = _nnunet_predict_timer(config, image, channels, classes, device)
    return timers


def _nnunet_predict_timer(
    config: ConfigurationPlan, image: torch.Tensor, channels: int, classes: int, device: torch.device
) -> Callable[[], float]:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # type: ignore[import-not-found, unused-ignore]
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager  # type: ignore[import-not-found, unused-ignore]

    network = nnunet_network(config, channels, classes, False).to(device)
    configuration = {
        "patch_size": list(config.patch_size),
        "architecture": nnunet_architecture(config, channels, classes),
    }
    plans = PlansManager({"dataset_name": "gpu_check", "plans_name": "gpu_check", "configurations": {}})
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        allow_tqdm=False,
    )
    labels = {"background": 0, **{f"class{k}": k for k in range(1, classes)}}
    predictor.manual_initialization(
        network,
        plans,
        ConfigurationManager(configuration),
        None,
        {"labels": labels},
        "nnUNetTrainer",
        tuple(range(config.dims)),
    )

    def run() -> float:
        _sync(device)
        start = time.perf_counter()
        predictor.predict_sliding_window_return_logits(image[0]).argmax(0).cpu()
        _sync(device)
        return time.perf_counter() - start

    return run


def check_dataset(
    name: str, fingerprint: Fingerprint, memory_gb: float, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """(a), (b) and (c) for one fingerprint planned for ``memory_gb``; prints a line per part."""
    dry = device.type == "cpu"
    nnunet = has_nnunet()
    iterations, rounds, per_round = (1, 1, 1) if dry else (args.iterations, args.rounds, 3)
    channels, classes = len(fingerprint.channel_names), len(fingerprint.classes) + 1
    full = plan_for(fingerprint, memory_gb, False)
    config = plan_for(fingerprint, memory_gb, dry)
    label = f"{name} @ {memory_gb:g} GB"
    print(
        f"{label}: planned patch {list(full.patch_size)}, batch {full.batch_size}, features "
        f"{list(full.network.features_per_stage)}, estimated {full.estimated_memory_gb:.2f} GB of a "
        f"{0.85 * memory_gb:.1f} GB budget{' (dry run: patch 16^3, batch 1)' if dry else ''}"
    )
    row: dict[str, Any] = {
        "gpu_memory_gb": memory_gb,
        "planned": {
            "patch": list(full.patch_size),
            "batch": full.batch_size,
            "estimated_gb": full.estimated_memory_gb,
        },
    }
    row["memory"] = check_memory(config, memory_gb, channels, classes, iterations, device)
    peak = row["memory"]["peak_allocated_gb"]
    row["memory"]["peak_of_estimate"] = None if peak is None else round(peak / full.estimated_memory_gb, 3)
    print(f"{label}: (a) {json.dumps(row['memory'])}")
    steps = {"autoseg": autoseg_step(config, channels, classes, device)}
    if nnunet:
        steps["nnunet"] = nnunet_step(config, channels, classes, device)
    row["train_s_per_iteration"] = time_alternating(steps, rounds, per_round)
    print(f"{label}: (b) s/iteration {row['train_s_per_iteration']}")
    del steps
    shape = TINY_PATCH[: config.dims] if dry else tuple(round(s) for s in full.median_shape[-config.dims :])
    row["predict_image"] = list(shape)
    timers = predict_timers(config, shape, channels, classes, device, nnunet)
    row["predict_s"] = time_alternating(timers, rounds, 1)
    print(f"{label}: (c) predict s {row['predict_s']} for an image of {list(shape)}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def check_export(device: torch.device, rounds: int) -> dict[str, Any]:
    """(d): linear resampling of network-grid channels to the input's grid on ``device`` against SimpleITK;
    the dry run uses a small grid and the CPU device (the same torch code)."""
    import numpy as np

    from autoseg.inference.export import resample_linear_torch
    from autoseg.preprocessing.resample import resample_volume

    dry = device.type == "cpu"
    source, target = ((20, 26, 26), (40, 51, 51)) if dry else ((300, 205, 205), (600, 512, 512))
    rng = np.random.default_rng(0)
    channels = [rng.random(source, dtype=np.float32) for _ in range(4)]
    name = str(device)
    resample_linear_torch(channels[0], target, name)  # warm-up (CUDA context, kernels)

    def on_device() -> float:
        _sync(device)
        start = time.perf_counter()
        resample_linear_torch(channels[0], target, name)
        _sync(device)
        return time.perf_counter() - start

    def on_cpu() -> float:
        start = time.perf_counter()
        resample_volume(channels[0], target, 1)
        return time.perf_counter() - start

    seconds = time_alternating({"torch_" + device.type: on_device, "simpleitk_cpu": on_cpu}, rounds, 1)
    ours = [resample_linear_torch(c, target, name) for c in channels]
    theirs = [resample_volume(c, target, 1) for c in channels]
    difference = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    labels = [np.argmax(np.stack(group), axis=0) for group in (ours, theirs)]
    return {
        "network_grid": list(source),
        "input_grid": list(target),
        "s_per_channel": seconds,
        "max_abs_difference": difference,
        "labels_differ_fraction": float(np.mean(labels[0] != labels[1])),
    }


def main() -> int:
    """Run the checks for every fingerprint and memory size; write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerprint", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--gpu-memory-gb", type=float, action="append", help="default: the GPU's memory")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="CPU only: tiny configurations, one iteration")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    sizes = args.gpu_memory_gb or [
        torch.cuda.get_device_properties(0).total_memory / GIB if not dry else 80.0
    ]
    results: dict[str, Any] = {
        "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "nnunet": has_nnunet(),
        "checks": [],
    }
    if not results["nnunet"]:
        print("SKIP (b)/(c) nnU-Net: nnunetv2 is not importable here; autoseg is timed alone")
    for entry in args.fingerprint:
        name, _, path = str(entry).partition("=")
        fingerprint = load_fingerprint(Path(path))
        for memory_gb in sizes:
            row = check_dataset(name, fingerprint, round(memory_gb, 1), args, device)
            results["checks"].append({"dataset": name, **row})
    results["export"] = check_export(device, 1 if dry else args.rounds)
    print(f"(d) export resampling {json.dumps(results['export'])}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
