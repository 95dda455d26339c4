"""End of a fold: predict its validation cases as ``autoseg predict --preset accurate`` does for one fold
(Gaussian sliding window, step 0.5, mirroring over every axis), in their original geometry, and score them.

Each case leaves ``<case>.nii.gz`` (the label map) and ``<case>.npz`` (``probabilities`` ``(K, Z, Y, X)``
float16 on the original grid), which ``find_best_configuration`` averages to score ensembles and on which
the post-processing is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.dataset.layout import Case
from autoseg.inference.ensemble import InferenceSettings, predict_probabilities
from autoseg.io import read_labels, write_json, write_labels, write_probabilities
from autoseg.plans import ConfigurationPlan
from autoseg.preprocessing.case import restore_probabilities
from autoseg.preprocessing.store import load_case

logger = logging.getLogger(__name__)


def predict_preprocessed(
    network: nn.Module, image: np.ndarray, config: ConfigurationPlan, device: torch.device, num_classes: int
) -> np.ndarray:
    """Class probabilities ``(K, Z, Y, X)`` float32 for a preprocessed ``(C, Z, Y, X)`` image, with
    mirroring over every spatial axis."""
    network.eval()
    settings = InferenceSettings(mirror_axes=tuple(range(config.dims)), device=str(device))
    return predict_probabilities([network], image, config.patch_size, num_classes, settings)


def dice_per_class(
    prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]
) -> dict[str, float | None]:
    """Dice per label value; ``None`` where both prediction and reference are empty (undefined)."""
    scores: dict[str, float | None] = {}
    for value in labels:
        predicted, actual = prediction == value, reference == value
        total = int(predicted.sum()) + int(actual.sum())
        scores[str(value)] = (
            None if total == 0 else 2.0 * int(np.logical_and(predicted, actual).sum()) / total
        )
    return scores


def validate_fold(
    network: nn.Module,
    cases: Sequence[Case],
    folder: Path,
    config: ConfigurationPlan,
    labels: dict[str, int],
    out: Path,
    device: torch.device,
) -> dict[str, Any]:
    """Predict every validation case into ``out/<case>.nii.gz`` (original geometry) and write
    ``out/summary.json`` with Dice per class per case and the mean per class."""
    foreground = sorted(v for v in labels.values() if v)
    per_case: dict[str, dict[str, float | None]] = {}
    for case in cases:
        stored = load_case(folder, case.identifier)
        probabilities = predict_preprocessed(network, stored.image, config, device, len(labels))
        restored = restore_probabilities(probabilities, stored.properties)
        prediction = restored.argmax(0).astype(np.uint8 if max(labels.values()) < 256 else np.uint16)
        write_labels(prediction, stored.properties.original_geometry, out / f"{case.identifier}.nii.gz")
        write_probabilities(restored, out / f"{case.identifier}.npz")
        assert case.label_path is not None
        reference, _ = read_labels(case.label_path)
        per_case[case.identifier] = dice_per_class(prediction, reference, foreground)
        logger.info(
            "validation %s: Dice %s",
            case.identifier,
            ", ".join(
                f"{k}={v:.3f}" if v is not None else f"{k}=n/a" for k, v in per_case[case.identifier].items()
            ),
        )
    names = {str(v): n for n, v in labels.items()}
    mean: dict[str, float | None] = {}
    for value in foreground:
        scores = [v for s in per_case.values() if (v := s[str(value)]) is not None]
        mean[names[str(value)]] = float(np.mean(scores)) if scores else None
    summary = {
        "mean_dice_per_class": mean,
        "mean_dice": float(np.mean([m for m in mean.values() if m is not None]))
        if any(m is not None for m in mean.values())
        else None,
        "cases": per_case,
    }
    write_json(summary, out / "summary.json")
    return summary
