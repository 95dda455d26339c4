"""Builders of tiny datasets for the tests (written through autoseg.io, so they exercise it too)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autoseg.io import Geometry, write_image, write_labels

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
