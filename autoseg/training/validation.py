"""End of a fold: predict its validation cases with a sliding window, in their original geometry, and score
them.

This is the simplest correct prediction (Gaussian-weighted sliding window with MONAI, step 0.5, no mirroring);
the predict issue replaces it with the full inference path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers.utils import sliding_window_inference
from torch import nn

from autoseg.dataset import Case
from autoseg.io import read_labels, write_json, write_labels
from autoseg.plans import ConfigurationPlan
from autoseg.preprocess import restore_probabilities
from autoseg.preprocess_stage import load_case

logger = logging.getLogger(__name__)


def predict_preprocessed(
    network: nn.Module, image: np.ndarray, config: ConfigurationPlan, device: torch.device, num_classes: int
) -> np.ndarray:
    """Class probabilities ``(K, Z, Y, X)`` float32 for a preprocessed ``(C, Z, Y, X)`` image."""
    network.eval()
    tensor = torch.from_numpy(np.array(image, dtype=np.float32))  # a writable copy of the memory map
    patch = tuple(config.patch_size)

    def run(window: torch.Tensor) -> torch.Tensor:
        output = network(window)
        assert isinstance(output, torch.Tensor)
        return output.float().softmax(1)

    def slide(volume: torch.Tensor) -> np.ndarray:
        """``(C, *spatial)`` -> probabilities ``(K, *spatial)``; Gaussian-weighted windows, step 0.5."""
        result = sliding_window_inference(
            volume[None].to(device),
            patch,
            1,
            run,
            overlap=0.5,
            mode="gaussian",
            sigma_scale=0.125,
            padding_mode="constant",
        )
        return np.asarray(result[0].cpu().numpy(), dtype=np.float32)

    with torch.inference_mode():
        if config.dims == 3:
            return slide(tensor)
        return np.stack([slide(tensor[:, z]) for z in range(tensor.shape[1])], axis=1)  # 2D: slice by slice


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
