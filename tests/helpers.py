"""Builders of tiny datasets for the tests (written through autoseg.io, so they exercise it too)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autoseg.fingerprint import Fingerprint
from autoseg.io import Geometry, write_image, write_labels
from autoseg.plans import (
    ChannelNormalization,
    ConfigurationPlan,
    NetworkPlan,
    ResamplingPlan,
    TrainingSchedule,
)
from autoseg.training.config import TrainConfig

TinyCase = tuple[np.ndarray, np.ndarray, Geometry]


def tiny_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (12, 16, 16), channels: int = 1
) -> TinyCase:
    """A box the network can learn: image (C, Z, Y, X) float32, labels (Z, Y, X) uint8, classes 1 and 2."""
    labels = np.zeros(shape, np.uint8)
    labels[4:8, 5:11, 5:11] = 1
    labels[5:7, 7:9, 7:9] = 2
    image = rng.normal(size=(channels, *shape)).astype(np.float32)
    image[:, labels > 0] += 3.0
    return image, labels, Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0))


def write_nnunet_dataset(
    root: Path,
    cases: Mapping[str, TinyCase],
    *,
    labels: Mapping[str, int] | None = None,
    channel_names: Sequence[str] = ("CT",),
    ending: str = ".nii.gz",
    num_training: int | None = None,
) -> Path:
    """Write an nnU-Net v2 raw dataset: dataset.json, imagesTr/CASE_XXXX, labelsTr/CASE."""
    for identifier, (image, label, geometry) in cases.items():
        for channel in range(image.shape[0]):
            write_image(image[channel], geometry, root / "imagesTr" / f"{identifier}_{channel:04d}{ending}")
        write_labels(label, geometry, root / "labelsTr" / f"{identifier}{ending}")
    meta = {
        "name": root.name,
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": dict(labels or {"background": 0, "organ": 1, "core": 2}),
        "numTraining": len(cases) if num_training is None else num_training,
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def tree_digest(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under root with its size, mtime and content, to prove a command changed nothing."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_fingerprint(
    spacings: Sequence[tuple[float, float, float]],
    shapes: Sequence[tuple[int, int, int]],
    *,
    channel_names: Sequence[str] = ("MRI",),
    labels: Mapping[str, int] | None = None,
    cropped_fraction: float = 1.0,
) -> Fingerprint:
    """A hand-made fingerprint: a case per (spacing, shape) pair; crops keep ``cropped_fraction`` per axis."""
    from autoseg.fingerprint import (
        FINGERPRINT_SCHEMA_VERSION,
        CaseFingerprint,
        Distribution,
        IntensityStats,
    )

    labels = dict(labels or {"background": 0, "a": 1, "b": 2})
    stats = IntensityStats(1000, 100.0, 20.0, 98.0, 10.0, 300.0, 40.0, 180.0)
    cases = []
    for index, (spacing, shape) in enumerate(zip(spacings, shapes, strict=True)):
        cropped = tuple(max(1, round(s * cropped_fraction)) for s in shape)
        cases.append(
            CaseFingerprint(
                identifier=f"case_{index:03d}",
                shape=shape,
                spacing_mm=spacing,
                orientation="LPS",
                cropped_shape=(cropped[0], cropped[1], cropped[2]),
                crop_box=tuple((0, c) for c in cropped),
                intensity=(stats,) * len(channel_names),
                class_voxels={str(v): 100 for v in labels.values() if v},
                component_sizes={},
            )
        )
    median = np.median(np.array(shapes, dtype=float), axis=0)
    empty = Distribution(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    from autoseg.fingerprint import ClassFingerprint

    classes = tuple(ClassFingerprint(n, v, 0.01, 1.0, empty, empty, empty) for n, v in labels.items() if v)
    return Fingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION,
        autoseg_version="test",
        dataset_name="handmade",
        dataset_root="/nowhere",
        signature="0" * 64,
        channel_names=tuple(channel_names),
        labels=labels,
        num_cases=len(cases),
        median_spacing_mm=tuple(np.median(np.array(spacings), axis=0).tolist()),
        median_shape=(float(median[0]), float(median[1]), float(median[2])),
        median_cropped_shape=(float(median[0]), float(median[1]), float(median[2])),
        orientations={"LPS": len(cases)},
        orientation_consistent=True,
        intensity=(stats,) * len(channel_names),
        classes=classes,
        cases=tuple(cases),
        seed=0,
    )


def distributed_train(index: int, count: int, workdir: Path, out: Path) -> None:
    """One rank of a two-process CPU (gloo) training; saves the rank's final weights to
    ``out/rank<index>.pt``."""
    import torch

    from autoseg.training import TrainConfig, train_fold

    config = TrainConfig(fold="all", epochs=1, iterations_per_epoch=3, validation_iterations=1, num_workers=0)
    result = train_fold(workdir, config, show_progress=False)
    torch.save(result.network.state_dict(), out / f"rank{index}.pt")


def plan_and_preprocess_argv(
    dataset: Path, workdir: Path, *configurations: str, gflops: str = "100"
) -> list[str]:
    """``autoseg plan_and_preprocess`` argv: cpu preset at a fixed throughput (deterministic plans), quiet."""
    argv = [
        "plan_and_preprocess",
        str(dataset),
        "--workdir",
        str(workdir),
        "--planner",
        "cpu",
        "--cpu-gflops",
        gflops,
        "-q",
    ]
    return [*argv, "-c", *configurations] if configurations else argv


def tiny_train_config(**changes: object) -> TrainConfig:
    """A training run of seconds on the tiny dataset: fold ``all``, 2 epochs of 2 iterations, no workers,
    deterministic; ``changes`` override any field."""
    base = {
        "fold": "all",
        "epochs": 2,
        "iterations_per_epoch": 2,
        "validation_iterations": 1,
        "num_workers": 0,
        "deterministic": True,
    }
    return TrainConfig(**{**base, **changes})  # type: ignore[arg-type]


def tiny_configuration(
    spacing: tuple[float, float, float],
    *,
    separate: int | None = None,
    normalization: tuple[ChannelNormalization, ...] = (ChannelNormalization("zscore"),),
) -> ConfigurationPlan:
    """A 3D configuration with a 2-stage 4..8 U-Net, patch 16^3, batch 2, at ``spacing`` (``separate``: the
    axis resampled on its own)."""
    net = NetworkPlan("plain", 3, (4, 8), ((3, 3, 3),) * 2, ((1, 1, 1), (2, 2, 2)), (2, 2), (2,))
    return ConfigurationPlan(
        3,
        spacing,
        (1.0, 1.0, 1.0),
        (16, 16, 16),
        2,
        net,
        normalization,
        ResamplingPlan(3, 1, separate, 0, 0),
        True,
        TrainingSchedule(),
        0.1,
    )
