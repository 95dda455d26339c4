"""``autoseg predict`` against ``nnUNetv2_predict``, side by side, with the same network weights.

Only fold 0 of the hippocampus model (``/work/runs/hippo``) is trained. Its weights are mapped onto nnU-Net's
``PlainConvUNet`` (the same topology) and written as an nnU-Net model folder; both tools then get the weights
replicated as folds 0-4, so a 5-fold ensemble's timing is real while its Dice is the single model's. The
mapping is checked in nnU-Net's own venv: both networks' eval-mode outputs on one random input must agree.

Steps (each a subcommand; every artefact lives under ``--root``, raw results in ``ROOT/results.json``):

* ``setup``: input folders (hippocampus: the first cases of fold 0's validation split; the TotalSegmentator
  example CT), the autoseg model files (``export-model`` fold 0, then a 5-fold copy with fresh checksums), the
  nnU-Net model folders, the weight check, and a timing-only CT model (seeded random weights, a 3 mm CT plan).
* ``compare``: the tools alternate run by run (A, B, C, A, B, C...); wall time (process start included) and
  peak PSS of the process tree per run; Dice per class of the last run's outputs against ``labelsTr``.
* ``choices``: speed choices for the accurate preset, in one process on preprocessed hippocampus cases: every
  round runs the default and each variant (rotating order), so each ratio is default / variant of the same
  round.
* ``profile``: where one autoseg run's time goes (imports, model loading, read, preprocess, network,
  resampling back, write), stage by stage.
* ``report``: Markdown tables from ``results.json``.

nnU-Net is never imported here: it runs through its CLI and a generated helper script in its own venv.

Usage (the 2026-11-22 runs of docs/benchmarks.md, when float32 was the CPU default;
``BF16="bf16=--precision bfloat16"``; the 2026-12-01 re-run is ``benchmarks/run_predict_comparison.sh``)::

    python benchmarks/bench_predict.py setup
    python benchmarks/bench_predict.py choices --cases 5 --rounds 3 --folds 1
    python benchmarks/bench_predict.py choices --cases 3 --folds 1 --only "torch thread" "precision bf"
    python benchmarks/bench_predict.py choices --cases 3 --folds 1 --only "torch thread" "precision bf" \
        --competitor
    python benchmarks/bench_predict.py compare --experiment hippo-accurate-subset --folds 5 \
        --extra-arm "$BF16"
    python benchmarks/bench_predict.py compare --experiment hippo-accurate --folds 1 --repeats 1 \
        --key hippo-accurate-dice-1fold --drop-arm "-npp 1" --extra-arm "$BF16"
    python benchmarks/bench_predict.py compare --experiment hippo-fast --extra-arm "$BF16"
    python benchmarks/bench_predict.py compare --experiment ct-fast --extra-arm "$BF16"
    python benchmarks/bench_predict.py compare --experiment ct-accurate --folds 1 --repeats 1 \
        --drop-arm "nnU-Net default" --extra-arm "$BF16"
    python benchmarks/bench_predict.py profile --experiment fast
    python benchmarks/bench_predict.py profile --experiment accurate --folds 5
    python benchmarks/bench_predict.py report

An extra arm named ``patched...`` runs autoseg with every mirror of a window in one network call
(:func:`batched_mirrored_logits`, monkeypatched through a generated wrapper script).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from measure import run_once

from autoseg.planning.budgets import machine_busy_seconds

HIPPO_WORKDIR = Path("/work/runs/hippo")
HIPPO_DATA = Path("/work/shared/data/hippocampus")
CT_IMAGE = Path("/work/shared/data/totalsegmentator_examples/nifti/example_ct.nii.gz")
NNUNET_VENV = Path("/work/nnunet-venv")
NNUNET_PLANS = Path("/work/nnunet-runs/nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans.json")
NNUNET_RAW = Path("/work/nnunet-runs/nnUNet_raw")
NNUNET_PREPROCESSED = Path("/work/nnunet-runs/nnUNet_preprocessed")
AUTOSEG_BIN = Path(sys.executable).parent / "autoseg"
FOLDS = 5
HIPPO_DATASET = "Dataset004_Hippocampus"
CT_DATASET = "Dataset905_CTTiming"
CT_LABELS = {"background": 0, "structure_1": 1, "structure_2": 2}
CT_NORMALIZATION = {"clip_low": -150.0, "clip_high": 250.0, "mean": 60.0, "std": 70.0}
"""Soft-tissue-like CT normalisation for the timing-only model (clip HU, then z-score)."""
CLASS_NAMES = {1: "Anterior", 2: "Posterior"}
SAMPLE_INTERVAL_S = 0.25
"""Memory sampling period: reading a process tree's PSS every 20 ms costs about 40% of one of the 2 cores."""

# ----------------------------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the benchmark root."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def hippo_inputs(self) -> Path:
        return self.root / "inputs" / "hippo20"

    @property
    def hippo_subset(self) -> Path:
        return self.root / "inputs" / "hippo5"

    @property
    def ct_inputs(self) -> Path:
        return self.root / "inputs" / "ct"

    @property
    def hippo_model(self) -> Path:
        return self.root / "models" / "hippo_5folds.zip"

    @property
    def ct_model(self) -> Path:
        return self.root / "models" / "ct_timing_5folds.zip"

    @property
    def nnunet_results(self) -> Path:
        return self.root / "nnUNet_results"

    def nnunet_model(self, dataset: str) -> Path:
        return self.nnunet_results / dataset / "nnUNetTrainer__autosegPlans__3d_fullres"

    def outputs(self, arm: str) -> Path:
        return self.root / "outputs" / arm


# --------------------------------------------------------------------------------------------- setup


def validation_cases(count: int) -> list[str]:
    """The first ``count`` validation cases of fold 0 (``splits.json`` order)."""
    splits = json.loads((HIPPO_WORKDIR / "splits.json").read_text())
    cases = [str(c) for c in splits[0]["val"]]
    return cases[:count]


def copy_inputs(cases: Sequence[str], folder: Path) -> None:
    """Copy the cases' images as ``CASE_0000.nii.gz`` (both tools' naming)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in cases:
        shutil.copy(HIPPO_DATA / "imagesTr" / f"{case}_0000.nii.gz", folder / f"{case}_0000.nii.gz")


def json_bytes(data: object) -> bytes:
    """JSON as autoseg's model files hold it."""
    return (json.dumps(data, indent=2) + "\n").encode()


def weights_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """A fold entry of an autoseg model file."""
    buffer = io.BytesIO()
    torch.save({"network": dict(state)}, buffer)
    return buffer.getvalue()


def write_model_zip(
    path: Path, entries: Mapping[str, bytes], configuration: str, folds: Sequence[str]
) -> None:
    """An autoseg model file (format 1): manifest with a SHA-256 per entry, then the entries."""
    from autoseg import __version__
    from autoseg.inference.model_file import MANIFEST, MODEL_FORMAT_VERSION

    manifest = {
        "format_version": MODEL_FORMAT_VERSION,
        "autoseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "configuration": configuration,
        "folds": list(folds),
        "checkpoint": "final",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json_bytes(manifest))
        for name, data in entries.items():
            archive.writestr(name, data)


def replicate_folds(single: Path, out: Path, folds: int) -> None:
    """A model file holding fold 0 of ``single`` as folds ``0..folds-1`` (checksums recomputed)."""
    with zipfile.ZipFile(single) as archive:
        manifest = json.loads(archive.read("autoseg_model.json"))
        entries = {name: archive.read(name) for name in manifest["files"]}
    fold0 = entries.pop("folds/fold_0.pt")
    for name in [n for n in entries if n.startswith("folds/")]:
        del entries[name]
    for fold in range(folds):
        entries[f"folds/fold_{fold}.pt"] = fold0
    write_model_zip(out, entries, str(manifest["configuration"]), [str(f) for f in range(folds)])


def nnunet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """autoseg's plain U-Net keys -> dynamic_network_architectures' ``PlainConvUNet`` keys.

    ``PlainConvUNet`` registers each conv block's conv and norm twice (``conv``/``norm`` and
    ``all_modules.0/1``) and its decoder holds the encoder again (``decoder.encoder.*``): every copy is
    filled.
    """
    mapped: dict[str, torch.Tensor] = {}
    role = {"0": "conv", "1": "norm"}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "encoder" and len(parts) == 5:
            stage, block, layer, param = parts[1:]
            for prefix in ("encoder.stages", "decoder.encoder.stages"):
                base = f"{prefix}.{stage}.0.convs.{block}"
                mapped[f"{base}.{role[layer]}.{param}"] = value
                mapped[f"{base}.all_modules.{layer}.{param}"] = value
        elif parts[0] == "decoder" and len(parts) == 5:
            stage, block, layer, param = parts[1:]
            base = f"decoder.stages.{stage}.convs.{block}"
            mapped[f"{base}.{role[layer]}.{param}"] = value
            mapped[f"{base}.all_modules.{layer}.{param}"] = value
        elif parts[0] == "upsample" and len(parts) == 3:
            mapped[f"decoder.transpconvs.{parts[1]}.{parts[2]}"] = value
        elif parts[0] == "heads" and len(parts) == 3:
            mapped[f"decoder.seg_layers.{parts[1]}.{parts[2]}"] = value
        else:
            raise ValueError(f"no nnU-Net counterpart for autoseg key {key}")
    return mapped


def write_nnunet_model(
    folder: Path, plans: dict[str, Any], dataset_json: dict[str, Any], state: Mapping[str, torch.Tensor]
) -> None:
    """An nnU-Net v2 trained-model folder: ``dataset.json``, ``plans.json``, ``fold_k/checkpoint_final.pth``
    with the same mapped weights in every fold (the keys ``initialize_from_trained_model_folder`` reads)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    mapped = nnunet_state_dict(state)
    for fold in range(FOLDS):
        (folder / f"fold_{fold}").mkdir()
        checkpoint = {
            "network_weights": mapped,
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": fold,
                "dataset_json": dataset_json,
                "device": "cpu",
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")


CHECK_SCRIPT = '''"""Generated by benchmarks/bench_predict.py: run in nnU-Net's venv."""
import json, sys
import torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet

checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
data = torch.load(sys.argv[2], map_location="cpu")
network = PlainConvUNet(1, 4, [32, 64, 128, 256], nn.Conv3d, [[3, 3, 3]] * 4,
                        [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [2, 2, 2, 2], 3, [2, 2, 2], True,
                        nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
                        {"inplace": True}, deep_supervision=False)
network.load_state_dict(checkpoint["network_weights"], strict=True)
network.eval()
with torch.inference_mode():
    output = network(data["input"])
difference = (output - data["output"]).abs()
print(json.dumps({"max_abs_difference": float(difference.max()),
                  "max_abs_output": float(data["output"].abs().max()),
                  "argmax_agreement": float((output.argmax(1) == data["output"].argmax(1)).float().mean())}))
'''


def check_weights(layout: Layout, dataset: str, patch: Sequence[int]) -> Any:
    """Eval-mode outputs of autoseg's network (loaded from its model file) and of nnU-Net's ``PlainConvUNet``
    (strict load of fold 0's checkpoint, in nnU-Net's venv) on one seeded random input."""
    from autoseg.inference.model_file import load_model

    model = load_model(layout.hippo_model if dataset == HIPPO_DATASET else layout.ct_model, folds=["0"])
    network = model.networks("cpu", ["0"])[0]
    generator = torch.Generator().manual_seed(0)
    data = torch.randn((1, 1, *patch), generator=generator)
    with torch.inference_mode():
        output = network(data)
    assert isinstance(output, torch.Tensor)
    tensors = layout.root / f"check_{dataset}.pt"
    torch.save({"input": data, "output": output}, tensors)
    script = layout.root / "check_weights.py"
    script.write_text(CHECK_SCRIPT)
    checkpoint = layout.nnunet_model(dataset) / "fold_0" / "checkpoint_final.pth"
    completed = subprocess.run(
        [str(NNUNET_VENV / "bin" / "python"), str(script), str(checkpoint), str(tensors)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def setup(layout: Layout, cases: int) -> None:
    """Inputs, models (autoseg and nnU-Net, hippocampus and CT timing), and the weight checks."""
    from autoseg.inference.model_file import load_model
    from autoseg.network import build_network
    from autoseg.plans import plans_from_json

    layout.root.mkdir(parents=True, exist_ok=True)
    names = validation_cases(cases)
    copy_inputs(names, layout.hippo_inputs)
    copy_inputs(names[:5], layout.hippo_subset)
    shutil.rmtree(layout.ct_inputs, ignore_errors=True)
    layout.ct_inputs.mkdir(parents=True)
    shutil.copy(CT_IMAGE, layout.ct_inputs / "example_ct_0000.nii.gz")

    # autoseg: export fold 0 with the real command, then the same entries as folds 0-4.
    single = layout.root / "models" / "hippo_fold0.zip"
    single.parent.mkdir(parents=True, exist_ok=True)
    export = [str(AUTOSEG_BIN), "export-model", str(single), "--workdir", str(HIPPO_WORKDIR), "-f", "0", "-q"]
    subprocess.run(export, check=True)
    replicate_folds(single, layout.hippo_model, FOLDS)
    state = load_model(single).weights["0"]

    # nnU-Net: its own hippocampus plan, renamed, with autoseg's 40^3 patch so both slide the same windows.
    nnunet_plans = json.loads(NNUNET_PLANS.read_text())
    nnunet_plans["plans_name"] = "autosegPlans"
    nnunet_plans["configurations"]["3d_fullres"]["patch_size"] = [40, 40, 40]
    dataset_json = json.loads((NNUNET_PLANS.parent / "dataset.json").read_text())
    write_nnunet_model(layout.nnunet_model(HIPPO_DATASET), nnunet_plans, dataset_json, state)

    # CT timing model: the hippocampus plan at 3 mm with CT normalisation, seeded random weights.
    plans_json = json.loads((HIPPO_WORKDIR / "plans.json").read_text())
    plans_json["dataset_name"] = CT_DATASET
    plans_json["channel_names"] = ["CT"]
    plans_json["labels"] = CT_LABELS
    config = plans_json["configurations"]["3d_fullres"]
    config["spacing_mm"] = [3.0, 3.0, 3.0]
    config["normalization"] = [{"scheme": "ct", "use_nonzero_mask": False, **CT_NORMALIZATION}]
    plans_json["configurations"] = {"3d_fullres": config}
    plans = plans_from_json(plans_json)
    torch.manual_seed(0)
    network = build_network(plans.configuration("3d_fullres").network, 1, len(CT_LABELS))
    ct_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    entries = {
        "plans.json": json_bytes(plans.to_json()),
        "dataset.json": json_bytes({"name": CT_DATASET, "labels": CT_LABELS, "channel_names": {"0": "CT"}}),
    }
    blob = weights_bytes(ct_state)
    entries |= {f"folds/fold_{f}.pt": blob for f in range(FOLDS)}
    write_model_zip(layout.ct_model, entries, "3d_fullres", [str(f) for f in range(FOLDS)])

    ct_plans = json.loads(json.dumps(nnunet_plans))
    ct_plans["dataset_name"] = CT_DATASET
    ct_plans["original_median_spacing_after_transp"] = [3.0, 3.0, 3.0]
    ct_config = ct_plans["configurations"]["3d_fullres"]
    ct_config["spacing"] = [3.0, 3.0, 3.0]
    ct_config["normalization_schemes"] = ["CTNormalization"]
    ct_config["use_mask_for_norm"] = [False]
    ct_plans["configurations"] = {"3d_fullres": ct_config}
    ct_plans["foreground_intensity_properties_per_channel"] = {
        "0": {
            "mean": CT_NORMALIZATION["mean"],
            "std": CT_NORMALIZATION["std"],
            "percentile_00_5": CT_NORMALIZATION["clip_low"],
            "percentile_99_5": CT_NORMALIZATION["clip_high"],
            "median": CT_NORMALIZATION["mean"],
            "min": -1024.0,
            "max": 3000.0,
        }
    }
    ct_dataset_json = {
        "name": CT_DATASET,
        "channel_names": {"0": "CT"},
        "labels": CT_LABELS,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    write_nnunet_model(layout.nnunet_model(CT_DATASET), ct_plans, ct_dataset_json, ct_state)

    checks = {
        HIPPO_DATASET: check_weights(layout, HIPPO_DATASET, (40, 40, 40)),
        CT_DATASET: check_weights(layout, CT_DATASET, (40, 40, 40)),
    }
    results = load_results(layout)
    results["setup"] = {"cases": names, "weight_checks": checks, "torch": torch.__version__}
    save_results(layout, results)
    print(json.dumps(checks, indent=2))


# ------------------------------------------------------------------------------------------- results


def load_results(layout: Layout) -> dict[str, Any]:
    """``results.json`` so far (empty on the first run)."""
    if layout.results.is_file():
        data: dict[str, Any] = json.loads(layout.results.read_text())
        return data
    return {}


def save_results(layout: Layout, results: Mapping[str, Any]) -> None:
    """Write ``results.json`` atomically."""
    temporary = layout.results.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2))
    temporary.replace(layout.results)


# ------------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class Arm:
    """One tool and setting of a comparison."""

    name: str
    command: list[str]
    env: dict[str, str]


def autoseg_arm(name: str, inputs: Path, model: Path, out: Path, extra: Sequence[str]) -> Arm:
    """``autoseg predict`` (the installed console script, no pyenv shim) on the CPU."""
    command = [str(AUTOSEG_BIN), "predict", "-i", str(inputs), "-o", str(out), "-m", str(model)]
    return Arm(name, [*command, "--device", "cpu", "-q", *extra], dict(os.environ))


def nnunet_arm(name: str, layout: Layout, dataset: str, inputs: Path, out: Path, extra: Sequence[str]) -> Arm:
    """``nnUNetv2_predict`` from its own venv, on the CPU, with the mapped weights."""
    env = dict(os.environ)
    env |= {
        "nnUNet_raw": str(NNUNET_RAW),
        "nnUNet_preprocessed": str(NNUNET_PREPROCESSED),
        "nnUNet_results": str(layout.nnunet_results),
    }
    command = [str(NNUNET_VENV / "bin" / "nnUNetv2_predict"), "-i", str(inputs), "-o", str(out)]
    command += ["-d", dataset, "-p", "autosegPlans", "-c", "3d_fullres", "-device", "cpu"]
    command += ["--disable_progress_bar", *extra]
    return Arm(name, command, env)


def experiment_arms(
    layout: Layout, experiment: str, folds: int, inputs_override: Path | None
) -> tuple[list[Arm], Path, int]:
    """The arms of one comparison, their input folder and case count."""
    fold_args = [str(f) for f in range(folds)]
    if experiment in ("hippo-fast", "hippo-accurate", "hippo-accurate-subset"):
        inputs = layout.hippo_subset if experiment.endswith("subset") else layout.hippo_inputs
        model, dataset = layout.hippo_model, HIPPO_DATASET
    elif experiment in ("ct-fast", "ct-accurate"):
        inputs, model, dataset = layout.ct_inputs, layout.ct_model, CT_DATASET
    else:
        raise SystemExit(f"unknown experiment {experiment}")
    inputs = inputs_override or inputs
    cases = len(list(inputs.glob("*_0000.nii.gz")))
    tag = experiment
    if experiment.endswith("fast"):
        arms = [
            autoseg_arm(
                f"{tag}/autoseg fast", inputs, model, layout.outputs(f"{tag}-autoseg"), ["--preset", "fast"]
            ),
            nnunet_arm(
                f"{tag}/nnU-Net -f 0 --disable_tta -step_size 0.75",
                layout,
                dataset,
                inputs,
                layout.outputs(f"{tag}-nnunet"),
                ["-f", "0", "--disable_tta", "-step_size", "0.75"],
            ),
            nnunet_arm(
                f"{tag}/nnU-Net -f 0 --disable_tta -step_size 0.75 -npp 1 -nps 1",
                layout,
                dataset,
                inputs,
                layout.outputs(f"{tag}-nnunet-np1"),
                ["-f", "0", "--disable_tta", "-step_size", "0.75", "-npp", "1", "-nps", "1"],
            ),
        ]
        return arms, inputs, cases
    autoseg_extra = ["--preset", "accurate", "-f", *fold_args]
    arms = [
        autoseg_arm(
            f"{tag}/autoseg accurate", inputs, model, layout.outputs(f"{tag}-autoseg"), autoseg_extra
        ),
        nnunet_arm(
            f"{tag}/nnU-Net default",
            layout,
            dataset,
            inputs,
            layout.outputs(f"{tag}-nnunet"),
            ["-f", *fold_args],
        ),
        nnunet_arm(
            f"{tag}/nnU-Net default -npp 1 -nps 1",
            layout,
            dataset,
            inputs,
            layout.outputs(f"{tag}-nnunet-np1"),
            ["-f", *fold_args, "-npp", "1", "-nps", "1"],
        ),
    ]
    return arms, inputs, cases


def load_average() -> float:
    """The 1-minute load average (other people's work on the shared machine shows here)."""
    return os.getloadavg()[0]


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, ``/proc/stat``; Linux only)."""
    busy = machine_busy_seconds()
    if busy is None:
        raise SystemExit("this benchmark reads /proc/stat (Linux)")
    return busy


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class OthersMeter:
    """CPU that other people's processes used while a measurement ran, in cores."""

    def __init__(self) -> None:
        self.busy, self.own, self.wall = machine_busy_s(), own_cpu_s(), time.perf_counter()

    def cores(self) -> float:
        """Average cores used by others since construction."""
        elapsed = max(time.perf_counter() - self.wall, 1e-6)
        return max((machine_busy_s() - self.busy) - (own_cpu_s() - self.own), 0.0) / elapsed


def wait_for_quiet(max_wait_s: float = 30.0, threshold_cores: float = 0.25) -> float:
    """Wait (up to ``max_wait_s``) for a second in which others use under ``threshold_cores``; the wait."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_wait_s:
        meter = OthersMeter()
        time.sleep(1.0)
        if meter.cores() < threshold_cores:
            break
    return time.perf_counter() - started


def compare(
    layout: Layout,
    experiment: str,
    repeats: int,
    folds: int,
    extra_arms: Sequence[str],
    inputs: Path | None = None,
    key: str | None = None,
    drop: Sequence[str] = (),
) -> None:
    """Alternate the arms run by run; record wall, peak memory, load; Dice of the last outputs."""
    arms, _, cases = experiment_arms(layout, experiment, folds, inputs)
    arms = [arm for arm in arms if not any(_names(arm, text) for text in drop)]
    for spec in extra_arms:  # "NAME=FLAGS": another autoseg arm, e.g. "bf16=--precision bfloat16"
        label, flags = spec.split("=", 1)
        base = arms[0]
        out = layout.outputs(f"{experiment}-{label}")
        command = [*base.command, *flags.split()]
        command[command.index("-o") + 1] = str(out)
        name = f"{base.name} {flags}"
        if label.startswith("patched"):  # every mirror of a window in one network call
            command = [sys.executable, str(patched_cli(layout)), *command[1:]]
            name = f"{base.name} + batched mirrors (patched) {flags}"
        arms.append(Arm(name, command, base.env))
    runs: dict[str, list[dict[str, float]]] = {arm.name: [] for arm in arms}
    for repeat in range(repeats):
        order = arms[repeat % len(arms) :] + arms[: repeat % len(arms)]
        for arm in order:
            out = Path(arm.command[arm.command.index("-o") + 1])
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            waited = wait_for_quiet()
            meter = OthersMeter()
            wall, peak = run_once(arm.command, env=arm.env, interval_s=SAMPLE_INTERVAL_S)
            others = meter.cores()
            produced = len(list(out.glob("*.nii.gz")))
            if produced != cases:
                raise RuntimeError(f"{arm.name}: {produced} of {cases} outputs")
            record = {"wall_s": wall, "peak_mib": peak, "others_cores": others, "waited_s": waited}
            runs[arm.name].append(record)
            print(f"{arm.name}: {wall:.1f} s, {peak:.0f} MiB (others {others:.2f} cores)", flush=True)
    results = load_results(layout)
    entry: dict[str, Any] = {
        "cases": cases,
        "folds": folds,
        "repeats": repeats,
        "sample_interval_s": SAMPLE_INTERVAL_S,
        "arms": {},
    }
    for arm in arms:
        out = Path(arm.command[arm.command.index("-o") + 1])
        entry["arms"][arm.name] = {
            "command": " ".join(arm.command),
            "runs": runs[arm.name],
            "output": str(out),
        }
    if experiment.startswith("hippo"):
        entry["quality"] = quality(layout, [Path(a["output"]) for a in entry["arms"].values()])
    results[f"compare/{key or experiment}"] = entry
    save_results(layout, results)


def _names(arm: Arm, text: str) -> bool:
    """Whether ``text`` is the arm's name (after the experiment) or, starting with '-', a flag it passes."""
    if text.startswith("-"):
        return text in " ".join(arm.command)
    return arm.name.split("/", 1)[1] == text


# ------------------------------------------------------------------------------------------- quality


def read_zyx(path: Path) -> np.ndarray[Any, np.dtype[np.int16]]:
    """A label file as ``(Z, Y, X)`` (the array order of SimpleITK, nnU-Net and autoseg)."""
    image: Any = nib.load(str(path))
    data = np.asarray(image.dataobj)
    return np.ascontiguousarray(data.T).astype(np.int16)


def dice(prediction: np.ndarray[Any, Any], reference: np.ndarray[Any, Any], label: int) -> float:
    """Dice of one label; 1.0 when both are empty."""
    a, b = prediction == label, reference == label
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def quality(layout: Layout, outputs: Sequence[Path]) -> dict[str, Any]:
    """Mean Dice per class of each output folder against ``labelsTr``, and the largest per-case fraction of
    voxels on which any folder disagrees with the first."""
    per_folder: dict[str, dict[str, float]] = {}
    cases = sorted(p.name.removesuffix(".nii.gz") for p in outputs[0].glob("*.nii.gz"))
    worst: dict[str, Any] = {"case": "", "voxels": 0, "fraction": 0.0}
    for folder in outputs:
        scores: dict[int, list[float]] = {label: [] for label in CLASS_NAMES}
        for case in cases:
            prediction = read_zyx(folder / f"{case}.nii.gz")
            reference = read_zyx(HIPPO_DATA / "labelsTr" / f"{case}.nii.gz")
            for label in CLASS_NAMES:
                scores[label].append(dice(prediction, reference, label))
            if folder != outputs[0]:
                first = read_zyx(outputs[0] / f"{case}.nii.gz")
                differing = int((first != prediction).sum())
                if differing / first.size > float(worst["fraction"]) or not worst["case"]:
                    worst = {"case": case, "voxels": differing, "fraction": differing / first.size}
        per_folder[str(folder)] = {CLASS_NAMES[k]: float(np.mean(v)) for k, v in scores.items()}
    return {"dice": per_folder, "max_disagreement_vs_first": worst, "cases": len(cases)}


# ------------------------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class Variant:
    """A speed choice: settings on top of the default, an optional patch, a thread count."""

    name: str
    settings: Mapping[str, Any]
    patch: str | None = None
    threads: int = 2


VARIANTS = [
    Variant("default (1 window/batch, float32, 2 threads)", {}),
    Variant("--windows-per-batch 2", {"windows_per_batch": 2}),
    Variant("--windows-per-batch 4", {"windows_per_batch": 4}),
    Variant("--windows-per-batch 8", {"windows_per_batch": 8}),
    Variant("--channels-last (input only, as shipped)", {"channels_last": True}),
    Variant(
        "channels-last input + network (patched)", {"channels_last": True}, patch="network_channels_last"
    ),
    Variant("--precision bfloat16", {"precision": "bfloat16"}),
    Variant(
        "bfloat16 + channels-last input + network (patched)",
        {"precision": "bfloat16", "channels_last": True},
        patch="network_channels_last",
    ),
    Variant("1 torch thread", {}, threads=1),
    Variant("bfloat16 + 1 torch thread", {"precision": "bfloat16"}, threads=1),
    Variant("8 mirrors as one batch (patched)", {}, patch="batched_mirrors"),
    Variant(
        "8 mirrors as one batch + bfloat16 (patched)", {"precision": "bfloat16"}, patch="batched_mirrors"
    ),
]

PATCHED_CLI = '''"""Generated by benchmarks/bench_predict.py: ``autoseg``, all mirrors in one network call."""
import sys

sys.path.insert(0, {benchmarks!r})
from bench_predict import batched_mirrored_logits  # noqa: E402

from autoseg.inference import ensemble as inference  # noqa: E402
from autoseg.cli.main import main  # noqa: E402

inference._EnsemblePredictor._mirrored_logits = batched_mirrored_logits
sys.exit(main())
'''


def patched_cli(layout: Layout) -> Path:
    """A script that runs the ``autoseg`` CLI with :func:`batched_mirrored_logits` patched in."""
    script = layout.root / "autoseg_batched_mirrors.py"
    script.write_text(PATCHED_CLI.format(benchmarks=str(Path(__file__).resolve().parent)))
    return script


def batched_mirrored_logits(self: Any, network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Drop-in for ``_EnsemblePredictor._mirrored_logits``: all mirrors of the windows in one network call."""
    flips: list[tuple[int, ...]] = self.flips
    dims = [[axis + 2 for axis in flip] for flip in flips]
    inputs = torch.cat([torch.flip(batch, d) if d else batch for d in dims])
    with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
        logits = network(inputs)
    assert isinstance(logits, torch.Tensor)
    parts = logits.float().split(batch.shape[0])
    total = sum((torch.flip(p, d) if d else p for p, d in zip(parts, dims, strict=True)), torch.zeros(()))
    return total / len(flips)


@contextmanager
def patched(name: str | None, networks: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Apply a monkeypatch of ``autoseg.inference.ensemble`` (or of the networks) for the duration."""
    from autoseg.inference import ensemble as inference

    if name is None:
        yield
        return
    if name == "batched_mirrors":
        original = inference._EnsemblePredictor._mirrored_logits
        inference._EnsemblePredictor._mirrored_logits = batched_mirrored_logits  # type: ignore[method-assign]
        try:
            yield
        finally:
            inference._EnsemblePredictor._mirrored_logits = original  # type: ignore[method-assign]
        return
    if name == "network_channels_last":
        for network in networks:
            network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        try:
            yield
        finally:
            for network in networks:
                network.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        return
    raise ValueError(name)


def choices(
    layout: Layout, cases: int, rounds: int, folds: int, only: Sequence[str] = (), competitor: bool = False
) -> None:
    """Every variant against the default, round-robin within each round, on preprocessed cases in memory.

    Args:
        only: run the default and the variants whose name holds one of these texts (default: all).
        competitor: keep one core busy with another process (a spinning Python) meanwhile, as a shared
            machine or autoseg's own read-ahead and export threads would.
    """
    from autoseg.inference.ensemble import InferenceSettings, predict_probabilities
    from autoseg.inference.inputs import find_input_cases, read_input_case
    from autoseg.inference.model_file import load_model
    from autoseg.preprocessing.case import preprocess_case, restore_probabilities

    variants = [v for i, v in enumerate(VARIANTS) if i == 0 or not only or any(t in v.name for t in only)]
    model = load_model(layout.hippo_model, folds=[str(f) for f in range(folds)])
    plan = model.plans.configuration(model.configuration)
    networks = model.networks("cpu")
    prepared = []
    for found in find_input_cases(layout.hippo_inputs, 1)[:cases]:
        image, geometry = read_input_case(found)
        prepared.append((found.identifier, preprocess_case(image, None, geometry, plan, in_place=True)))
    base = InferenceSettings(step=0.5, mirror_axes=(0, 1, 2), device="cpu")
    seconds: dict[str, list[float]] = {v.name: [0.0] * rounds for v in variants}
    others: dict[str, list[float]] = {v.name: [] for v in variants}
    labels: dict[str, dict[str, np.ndarray[Any, Any]]] = {v.name: {} for v in variants}
    for variant in variants:  # warm-up: oneDNN builds its kernels per shape and precision on first use
        torch.set_num_threads(variant.threads)
        with patched(variant.patch, networks):
            _, first = prepared[0]
            settings = replace(base, **variant.settings)
            predict_probabilities(
                networks[:1], first.image, plan.patch_size, len(model.plans.labels), settings
            )
        torch.set_num_threads(2)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competitor else None
    try:
        for round_index in range(rounds):
            if spinner is None:
                wait_for_quiet()
            for case_index, (name, case) in enumerate(prepared):
                shift = (round_index * len(prepared) + case_index) % len(variants)
                for variant in variants[shift:] + variants[:shift]:  # interleaved case by case
                    settings = replace(base, **variant.settings)
                    torch.set_num_threads(variant.threads)
                    with patched(variant.patch, networks):
                        meter = OthersMeter()
                        started = time.perf_counter()
                        probabilities = predict_probabilities(
                            networks, case.image, plan.patch_size, len(model.plans.labels), settings
                        )
                        seconds[variant.name][round_index] += time.perf_counter() - started
                        others[variant.name].append(meter.cores())
                    torch.set_num_threads(2)
                    if round_index == 0:
                        labels[variant.name][name] = restore_probabilities(
                            probabilities, case.properties
                        ).argmax(0)
            print(
                f"round {round_index}: "
                + ", ".join(f"{v.name} {seconds[v.name][round_index]:.1f}" for v in variants)
            )
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    references = {name: read_zyx(HIPPO_DATA / "labelsTr" / f"{name}.nii.gz") for name, _ in prepared}
    scores = {
        variant.name: {
            CLASS_NAMES[k]: float(
                np.mean([dice(labels[variant.name][n], references[n], k) for n, _ in prepared])
            )
            for k in CLASS_NAMES
        }
        for variant in variants
    }
    default = variants[0].name
    entry: dict[str, Any] = {
        "cases": len(prepared),
        "folds": folds,
        "rounds": rounds,
        "competitor": competitor,
        "variants": {},
    }
    for variant in variants:
        ratios = [d / s for d, s in zip(seconds[default], seconds[variant.name], strict=True)]
        changed = max(int((labels[default][n] != labels[variant.name][n]).sum()) for n, _ in prepared)
        entry["variants"][variant.name] = {
            "seconds": seconds[variant.name],
            "speedup_vs_default": ratios,
            "dice": scores[variant.name],
            "max_voxels_changed_vs_default": changed,
            "others_cores_mean": float(np.mean(others[variant.name])),
        }
    results_json = load_results(layout)
    key = "choices" if not only and not competitor else f"choices/{'competitor' if competitor else 'quiet'}"
    results_json[key] = entry
    save_results(layout, results_json)


# ------------------------------------------------------------------------------------------- profile


def profile(layout: Layout, experiment: str, folds: int) -> None:
    """Stage timers for one autoseg run, the stages run one after another (no read-ahead/export overlap)."""
    from autoseg.inference.model_file import load_model

    inputs = layout.hippo_subset if experiment == "accurate" else layout.hippo_inputs
    env = dict(os.environ)
    imports: list[float] = []
    imports_with_monai: list[float] = []
    code = "import autoseg.cli.main, autoseg.inference.stage, autoseg.cli.inference_commands"
    # alternating: the predict modules' imports as they are, and with the MONAI module predict imported
    # until it slid its own windows (what autoseg/sliding_window.py saves at every start)
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        imports.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code + ", monai.inferers.utils"], check=True, env=env)
        imports_with_monai.append(time.perf_counter() - started)
    started = time.perf_counter()
    subprocess.run([str(AUTOSEG_BIN), "--version"], check=True, capture_output=True)
    cli_version = time.perf_counter() - started

    from autoseg.inference.ensemble import InferenceSettings, predict_probabilities
    from autoseg.inference.inputs import find_input_cases, read_input_case
    from autoseg.inference.outputs import labels_from_probabilities
    from autoseg.io import write_labels
    from autoseg.preprocessing.case import preprocess_case, restore_probabilities

    stages: dict[str, float] = {}

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        begun = time.perf_counter()
        yield
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - begun

    fold_names = [str(f) for f in range(folds if experiment == "accurate" else 1)]
    with timed("load model file (read, checksums, unpickle weights)"):
        model = load_model(layout.hippo_model, folds=fold_names)  # as predict: only the folds it uses
    with timed("build networks"):
        networks = model.networks("cpu", fold_names)
    plan = model.plans.configuration(model.configuration)
    if experiment == "accurate":
        settings = InferenceSettings(step=0.5, mirror_axes=(0, 1, 2), device="cpu")
    else:
        settings = InferenceSettings(step=0.75, mirror_axes=(), device="cpu")
    out = layout.outputs(f"profile-{experiment}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cases = find_input_cases(inputs, 1)
    windows = 0
    for case in cases:
        with timed("read"):
            image, geometry = read_input_case(case)
        with timed("preprocess"):
            prepared = preprocess_case(image, None, geometry, plan, in_place=True)
        windows += _window_count(prepared.image.shape[1:], plan.patch_size, settings.step)
        with timed("network (sliding window, folds, mirrors)"):
            probabilities = predict_probabilities(
                networks, prepared.image, plan.patch_size, len(model.plans.labels), settings
            )
        with timed("restore to the original grid"):
            restored = restore_probabilities(probabilities, prepared.properties)
        with timed("argmax + write"):
            write_labels(labels_from_probabilities(restored), geometry, out / f"{case.identifier}.nii.gz")
    results = load_results(layout)
    results[f"profile/{experiment}"] = {
        "cases": len(cases),
        "folds": len(fold_names),
        "windows": windows,
        "python_imports_s": imports,
        "python_imports_with_monai_s": imports_with_monai,
        "autoseg_version_cli_s": cli_version,
        "stages_s": stages,
    }
    save_results(layout, results)
    print(json.dumps(results[f"profile/{experiment}"], indent=2))


def _window_count(shape: Sequence[int], patch: Sequence[int], step: float) -> int:
    """Windows slid over ``shape`` (padded up to the patch) at ``step`` (MONAI's grid, autoseg's too)."""
    count = 1
    for size, window in zip(shape, patch, strict=True):
        size = max(size, window)
        interval = max(int(window * step), 1)
        count *= -(-(size - window) // interval) + 1
    return count


# -------------------------------------------------------------------------------------------- report


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def report(layout: Layout) -> None:
    """Markdown tables of everything in ``results.json``."""
    results = load_results(layout)
    for key, entry in results.items():
        if key.startswith("compare/"):
            print(f"\n### {key} ({entry['cases']} cases, {entry['repeats']} repeats)\n")
            print("| tool / setting | s/case | total s (runs) | peak MiB | ratio to first (per repeat) |")
            print("|---|---|---|---|---|")
            arms = entry["arms"]
            first = next(iter(arms.values()))["runs"]
            for name, arm in arms.items():
                walls = [r["wall_s"] for r in arm["runs"]]
                peaks = [r["peak_mib"] for r in arm["runs"]]
                ratios = [w / f["wall_s"] for w, f in zip(walls, first, strict=True)]
                print(
                    f"| {name} | {_median(walls) / entry['cases']:.2f} | {_median(walls):.1f} "
                    f"({', '.join(f'{w:.1f}' for w in walls)}) | {_median(peaks):.0f} | "
                    f"{_median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
                )
            if "quality" in entry:
                print("\n| output | Anterior | Posterior |\n|---|---|---|")
                for folder, scores in entry["quality"]["dice"].items():
                    print(f"| {Path(folder).name} | {scores['Anterior']:.4f} | {scores['Posterior']:.4f} |")
                print(f"\nmax disagreement: {entry['quality']['max_disagreement_vs_first']}")
        elif key.startswith("choices"):
            print(
                f"\n### {key} ({entry['cases']} cases, {entry['folds']} fold(s), {entry['rounds']} rounds)\n"
            )
            print(
                "| variant | median s | speed-up vs default (range) | Anterior | Posterior "
                "| max voxels changed |"
            )
            print("|---|---|---|---|---|---|")
            for name, variant in entry["variants"].items():
                ratios = variant["speedup_vs_default"]
                print(
                    f"| {name} | {_median(variant['seconds']):.1f} | {_median(ratios):.2f} "
                    f"({min(ratios):.2f}-{max(ratios):.2f}) | {variant['dice']['Anterior']:.4f} | "
                    f"{variant['dice']['Posterior']:.4f} | {variant['max_voxels_changed_vs_default']} |"
                )
        elif key.startswith("profile/") or key == "setup":
            print(f"\n### {key}\n\n```\n{json.dumps(entry, indent=1)}\n```")


def main() -> None:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=("setup", "compare", "choices", "profile", "report"))
    parser.add_argument("--root", type=Path, default=Path("/work/predbench"))
    parser.add_argument("--experiment", default="hippo-fast")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--extra-arm", action="append", default=[], metavar="NAME=FLAGS")
    parser.add_argument("--inputs", type=Path, default=None, help="another input folder (smoke tests)")
    parser.add_argument("--key", default=None, help="results key (default: the experiment)")
    parser.add_argument(
        "--drop-arm",
        action="append",
        default=[],
        metavar="TEXT",
        help="skip an arm: its name, or a flag it passes",
    )
    parser.add_argument("--only", nargs="*", default=[], help="choices: variants whose name holds TEXT")
    parser.add_argument("--competitor", action="store_true", help="choices: keep one core busy meanwhile")
    args = parser.parse_args()
    layout = Layout(args.root)
    if args.step == "setup":
        setup(layout, args.cases)
    elif args.step == "compare":
        compare(
            layout,
            args.experiment,
            args.repeats,
            args.folds,
            args.extra_arm,
            args.inputs,
            args.key,
            args.drop_arm,
        )
    elif args.step == "choices":
        choices(layout, args.cases, args.rounds, args.folds, args.only, args.competitor)
    elif args.step == "profile":
        profile(layout, args.experiment, args.folds)
    report(layout)


if __name__ == "__main__":
    main()
