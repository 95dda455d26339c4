"""Validation, as two callbacks of the training loop.

:class:`PatchValidation`, every epoch: the loss and pseudo-Dice per class on validation patches (TP/FP/FN
summed over all patches) and the moving average of the mean pseudo-Dice, which chooses the best checkpoint.

:class:`FinalValidation`, at the end of a fold: predict its validation cases as ``autoseg predict --preset
accurate`` does for one fold (Gaussian sliding window, step 0.5, mirroring over every axis), in their original
geometry, and score them against the reference label maps of the work directory
(``WORKDIR/reference_labels/<case>.nii.gz``, stored by ``preprocess``). Each case leaves ``<case>.nii.gz``
(the label map) and ``<case>.npz`` (``probabilities`` ``(K, Z, Y, X)`` float16 on the original grid), which
``find_best_configuration`` averages to score ensembles and on which the post-processing is chosen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.errors import WorkdirError
from autoseg.evaluation.metrics import dice_per_label, without_ignored
from autoseg.inference.ensemble import (
    Activation,
    InferenceSettings,
    predict_probabilities,
    target_from_probabilities,
)
from autoseg.io import read_target, write_json, write_probabilities, write_target
from autoseg.plans import ConfigurationPlan
from autoseg.preprocessing.case import restore_probabilities
from autoseg.preprocessing.store import load_case
from autoseg.regions import UNKNOWN
from autoseg.training.callbacks import Callback, TrainingRun
from autoseg.training.cascade import PreviousStage, with_previous_stage
from autoseg.training.data import loss_extras
from autoseg.training.distributed import unwrap
from autoseg.training.parts import autocast_dtype
from autoseg.workdir import PredictionFolder, RunFolder, Workdir

logger = logging.getLogger(__name__)

EMA_WEIGHT = 0.9
"""Weight of the previous moving average of the pseudo-Dice."""


class PatchValidation(Callback):
    """Every epoch: ``val_loss``, ``pseudo_dice`` (per foreground class, ``None`` where undefined) and
    ``ema_pseudo_dice`` in the epoch's record, the moving average also in the run's state."""

    def __init__(self, num_classes: int, *, regions: bool = False, ignore_label: int | None = None) -> None:
        self.num_classes = num_classes
        self.regions = regions
        self.ignore_label = ignore_label

    def on_validation(self, run: TrainingRun) -> None:
        parts, state = run.parts, run.state
        batches = parts.batches.validation_batches(state.epoch)
        val_loss, dice = patch_scores(
            parts.network,
            parts.loss,
            batches,
            run.validation_iterations,
            run.device,
            self.num_classes,
            regions=self.regions,
            ignore_label=self.ignore_label,
            dtype=autocast_dtype(run.config.precision),
        )
        mean_dice = float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else 0.0
        state.ema_pseudo_dice = (
            mean_dice
            if state.ema_pseudo_dice is None
            else (EMA_WEIGHT * state.ema_pseudo_dice + (1 - EMA_WEIGHT) * mean_dice)
        )
        run.record["val_loss"] = val_loss
        run.record["pseudo_dice"] = [None if math.isnan(d) else d for d in dice]
        run.record["ema_pseudo_dice"] = state.ema_pseudo_dice


def patch_scores(
    network: nn.Module,
    loss_function: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    iterations: int,
    device: torch.device,
    num_classes: int,
    *,
    regions: bool = False,
    ignore_label: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[float, list[float]]:
    """Validation loss and pseudo-Dice per foreground class (TP/FP/FN summed over all validation patches;
    NaN for a class absent from both); with ``regions``, per structure of a ``num_classes``-structure
    sigmoid output (logit >= 0 is probability >= 0.5), each structure over the samples it is annotated in.
    Voxels of ``ignore_label`` (the plan's ignore label) are not counted. The network runs in autocast to
    ``dtype`` when given (the run's training precision, so that validating costs what the planner charges
    for it), the loss and the scores on float32 outputs."""
    network.eval()
    losses, counts = [], np.zeros((3, num_classes if regions else num_classes - 1))
    with torch.no_grad():
        for _ in range(iterations):
            batch = next(batches)
            image, target = batch["image"].to(device), batch["target"].to(device)
            extras = loss_extras(batch, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                outputs = network(image)
            logits = outputs.float()
            losses.append(float(loss_function(logits, target, **extras)))
            predicted = logits >= 0 if regions else logits.argmax(1)
            if ignore_label is not None and not regions:
                predicted = torch.where(target == ignore_label, 0, predicted)  # unknown class: not scored
            for k in range(1, num_classes + (1 if regions else 0)):
                hit, truth = _patch_masks(predicted, target, k, regions, extras.get("annotated"))
                counts[:, k - 1] += [
                    float((hit & truth).sum()),
                    float((hit & ~truth).sum()),
                    float((~hit & truth).sum()),
                ]
    tp, fp, fn = counts
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * tp / (2 * tp + fp + fn)
    return float(np.mean(losses)), [float(d) for d in dice]


def _patch_masks(
    predicted: torch.Tensor,
    target: torch.Tensor,
    k: int,
    regions: bool,
    annotated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true masks of class ``k`` (structure ``k``: channel ``k - 1`` with ``regions``, of the
    samples where it is ``annotated``; its voxels of unknown class, :data:`autoseg.regions.UNKNOWN`, in
    neither mask)."""
    if regions:
        keep = slice(None) if annotated is None else annotated[:, k - 1] > 0
        truth = target[keep, k - 1]
        return predicted[keep, k - 1] & (truth != UNKNOWN), truth == 1
    return predicted == k, target == k


class FinalValidation(Callback):
    """After the last epoch (rank 0): :func:`validate_fold` on the fold's validation cases into the run
    folder's ``validation/``; the summary goes to ``run.summary``."""

    def __init__(
        self,
        workdir: Workdir,
        plan: ConfigurationPlan,
        labels: dict[str, int],
        *,
        regions: bool = False,
        ignore_label: int | None = None,
        previous_stage: PreviousStage | None = None,
    ) -> None:
        self.workdir, self.plan, self.labels, self.regions = workdir, plan, labels, regions
        self.ignore_label = ignore_label
        self.previous_stage = previous_stage

    def on_train_end(self, run: TrainingRun) -> None:
        cases = run.parts.batches.validation
        run.summary = validate_fold(
            unwrap(run.parts.network),
            cases.identifiers,
            workdir=self.workdir,
            data_dir=cases.folder,
            plan=self.plan,
            labels=self.labels,
            run=run.folder,
            device=run.device,
            regions=self.regions,
            ignore_label=self.ignore_label,
            previous_stage=self.previous_stage,
        )
        logger.info("fold %s validation: mean Dice %s", run.config.fold, run.summary["mean_dice_per_class"])


def predict_preprocessed(
    network: nn.Module,
    image: np.ndarray,
    config: ConfigurationPlan,
    device: torch.device,
    num_classes: int,
    *,
    direction: Sequence[float] | None = None,
    regions: bool = False,
) -> np.ndarray:
    """Class probabilities ``(K, Z, Y, X)`` float32 for a preprocessed ``(C, Z, Y, X)`` image (sigmoid per
    structure with ``regions``), with mirroring over every spatial axis the plan allows for an image of
    ``direction`` (the canonical array's: ``CaseProperties.network_geometry``)."""
    network.eval()
    axes = config.mirroring.axes(config.dims, direction)
    settings = InferenceSettings(mirror_axes=axes, device=str(device))
    activation: Activation = "sigmoid" if regions else "softmax"
    return predict_probabilities(
        [network], image, config.patch_size, num_classes, settings, activation=activation
    )


def dice_per_class(
    prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]
) -> dict[str, float | None]:
    """Dice per label value (:func:`autoseg.evaluation.metrics.dice_per_label`); ``None`` where both
    prediction and reference are empty (undefined)."""
    dice = dice_per_label(prediction, reference, labels)
    return {str(k): None if math.isnan(d) else d for k, d in dice.items()}


def validate_fold(
    network: nn.Module,
    identifiers: Sequence[str],
    *,
    workdir: Workdir,
    data_dir: Path,
    plan: ConfigurationPlan,
    labels: dict[str, int],
    run: RunFolder,
    device: torch.device,
    regions: bool = False,
    ignore_label: int | None = None,
    previous_stage: PreviousStage | None = None,
) -> dict[str, Any]:
    """Predict every validation case of ``data_dir`` into the run folder's ``validation/<case>.nii.gz``
    (original geometry) and ``<case>.npz``, score it against ``workdir``'s reference label map, and write
    ``validation/summary.json`` with Dice per class per case and the mean per class. With ``regions``
    (region-based plan) predictions and references are ``(K, Z, Y, X)`` region targets, scored per structure.
    A structure the case's reference never contoured (``Workdir.read_reference_annotated``) is not scored
    there (``None``, like an undefined Dice: left out of the means). Voxels of ``ignore_label`` in the
    reference (unknown class) are not scored (:func:`autoseg.evaluation.metrics.without_ignored`). A cascade
    stage (``previous_stage``) sees each case's previous-stage cross-validation prediction as extra channels.

    Raises:
        WorkdirError: a case has no reference label map in the work directory.
    """
    foreground = sorted(v for v in labels.values() if v)
    annotated = workdir.read_reference_annotated()
    per_case: dict[str, dict[str, float | None]] = {}
    for identifier in identifiers:
        prediction = _predict_case(
            network,
            identifier,
            data_dir,
            plan,
            labels,
            run.validation,
            device,
            regions=regions,
            previous_stage=previous_stage,
        )
        scored = [v for v in foreground if identifier not in annotated or v in annotated[identifier]]
        known = without_ignored(prediction, _reference(workdir, identifier), ignore_label)
        dice = dice_per_class(*known, scored)
        per_case[identifier] = {str(v): dice.get(str(v)) for v in foreground}  # unannotated: None, not 0
        logger.info(
            "validation %s: Dice %s",
            identifier,
            ", ".join(
                f"{k}={v:.3f}" if v is not None else f"{k}=n/a" for k, v in per_case[identifier].items()
            ),
        )
    summary = _summary(per_case, labels)
    write_json(summary, run.validation_summary_path)
    return summary


def _predict_case(
    network: nn.Module,
    identifier: str,
    data_dir: Path,
    plan: ConfigurationPlan,
    labels: dict[str, int],
    out: PredictionFolder,
    device: torch.device,
    *,
    regions: bool = False,
    previous_stage: PreviousStage | None = None,
) -> np.ndarray:
    """The case's label map (region target) in its original geometry; writes it and its probabilities into
    ``out``."""
    stored = load_case(data_dir, identifier)
    direction = stored.properties.network_geometry.direction
    outputs = len(labels) - 1 if regions else len(labels)
    image = stored.image
    if previous_stage is not None:
        previous = previous_stage.load(identifier)
        image = with_previous_stage(image, previous, previous_stage.channels, regions=regions)
    probabilities = predict_preprocessed(
        network, image, plan, device, outputs, direction=direction, regions=regions
    )
    restored = restore_probabilities(probabilities, stored.properties, regions=regions)
    prediction: np.ndarray = target_from_probabilities(restored, regions=regions)
    write_target(prediction, stored.properties.original_geometry, out.labels_path(identifier))
    write_probabilities(restored, out.probabilities_path(identifier))
    return prediction


def _reference(workdir: Workdir, identifier: str) -> np.ndarray:
    path = workdir.reference_labels_path(identifier)
    if not path.is_file():
        raise WorkdirError(
            f"{path}: no reference label map for validation case '{identifier}'; run 'autoseg preprocess' "
            "again (it stores them in the work directory)"
        )
    return read_target(path)[0]


def _summary(per_case: dict[str, dict[str, float | None]], labels: dict[str, int]) -> dict[str, Any]:
    names = {str(v): n for n, v in labels.items()}
    mean: dict[str, float | None] = {}
    for value in sorted(v for v in labels.values() if v):
        scores = [v for s in per_case.values() if (v := s[str(value)]) is not None]
        mean[names[str(value)]] = float(np.mean(scores)) if scores else None
    known = [m for m in mean.values() if m is not None]
    return {
        "mean_dice_per_class": mean,
        "mean_dice": float(np.mean(known)) if known else None,
        "cases": per_case,
    }
