"""Dice + cross-entropy, 1:1, with deep supervision (nnU-Net's loss); for region-based training
(:class:`RegionLoss`) Dice + binary cross-entropy on one sigmoid per structure (nnU-Net's
``DC_and_BCE_loss``).

Soft Dice excludes the background and is computed per sample or over the whole batch (``batch_dice``, from the
plan), with a small smoothing term. Deep supervision weighs the decoder outputs 1, 1/2, 1/4, ... from the
highest resolution down, drops the coarsest (weight 0) and normalises the weights to sum to 1; the target is
downsampled to each output's resolution (nearest), never the logits upsampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.regions import UNKNOWN

DICE_SMOOTH = 1e-5


def soft_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_dice: bool,
    smooth: float = DICE_SMOOTH,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean soft Dice over the foreground classes.

    Args:
        logits: ``(B, K, ...)`` raw network output.
        target: ``(B, ...)`` int64 class indices (``0 .. K - 1`` where ``known``).
        batch_dice: sum over the batch before dividing (one Dice per class) instead of one per sample.
        known: ``(B, ...)`` bool, the voxels of known class (not nnU-Net's ignore label): the others count in
            neither the predicted nor the true sums (nnU-Net's loss mask); ``None``: all.
    """
    probabilities = logits.float().softmax(1)[:, 1:]
    if known is not None:
        target = torch.where(known, target, 0)
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probabilities.dtype)
    if known is not None:
        weight = known[:, None].to(probabilities.dtype)
        probabilities, one_hot = probabilities * weight, one_hot * weight
    axes = tuple(range(2, logits.ndim))
    if batch_dice:
        axes = (0, *axes)
    intersection = (probabilities * one_hot).sum(axes)
    total = probabilities.sum(axes) + one_hot.sum(axes)
    return ((2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)).mean()


def soft_dice_sigmoid(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_dice: bool,
    smooth: float = DICE_SMOOTH,
    annotated: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean soft Dice over the structures of a region-based output.

    Args:
        logits: ``(B, K, ...)`` raw network output, one sigmoid per structure.
        target: ``(B, K, ...)`` 0/1 (any dtype), channel ``k`` the mask of structure ``k``; 1 is inside.
        batch_dice: sum over the batch before dividing (one Dice per structure) instead of one per sample.
        annotated: ``(B, K)`` 0/1, structure ``k`` contoured in sample ``b``: the mean is over the annotated
            ``(sample, structure)`` pairs (``batch_dice``: each structure's sums over its annotated samples,
            the mean over structures annotated in some sample); ``None``: all.
        known: ``(B, K, ...)`` bool, the voxels of known class (not nnU-Net's ignore label, whose voxels the
            region target marks :data:`autoseg.regions.UNKNOWN`): the others count in neither sum.
    """
    probabilities = logits.float().sigmoid()
    truth = (target == 1).to(probabilities.dtype)
    if known is not None:
        probabilities = probabilities * known.to(probabilities.dtype)
    axes = tuple(range(2, logits.ndim))
    if annotated is None:
        if batch_dice:
            axes = (0, *axes)
        intersection = (probabilities * truth).sum(axes)
        total = probabilities.sum(axes) + truth.sum(axes)
        return ((2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)).mean()
    weight = annotated.to(probabilities.dtype)
    intersection, total = (probabilities * truth).sum(axes), probabilities.sum(axes) + truth.sum(axes)
    if batch_dice:
        intersection, total, weight = (
            (intersection * weight).sum(0), (total * weight).sum(0), (weight.sum(0) > 0).to(weight.dtype),
        )  # fmt: skip
    dice = (2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)
    return (dice * weight).sum() / weight.sum().clamp_min(1.0)


class RegionLoss(nn.Module):
    """``binary_cross_entropy + (1 - soft_dice)`` on one sigmoid per structure (structures may overlap).

    With ``annotated`` (``(B, K)`` 0/1; ``docs/dicom.md``, "Partly contoured cases") structure ``k`` of sample
    ``b`` counts only where annotated: the cross-entropy is the mean over the annotated channels' voxels, the
    Dice that of :func:`soft_dice_sigmoid`; an unannotated channel's logits get no gradient. Voxels the target
    marks :data:`autoseg.regions.UNKNOWN` (nnU-Net's ignore label) are left out of both terms, as nnU-Net's
    region loss masks them: no gradient there.
    """

    def __init__(self, *, batch_dice: bool) -> None:
        super().__init__()
        self.batch_dice = batch_dice

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of ``(B, K, ...)`` logits against ``(B, K, ...)`` 0/1 targets (``UNKNOWN``: not scored)."""
        unknown = target == UNKNOWN
        known = ~unknown if bool(unknown.any()) else None
        truth = (target == 1).float()
        if annotated is None and known is None:
            bce = F.binary_cross_entropy_with_logits(logits.float(), truth)
        else:
            each = F.binary_cross_entropy_with_logits(logits.float(), truth, reduction="none")
            voxels = known.to(each.dtype) if known is not None else torch.ones_like(each)
            weight = (
                annotated.to(each.dtype)
                if annotated is not None
                else torch.ones(each.shape[:2], dtype=each.dtype, device=each.device)
            )
            per_channel = (each * voxels).flatten(2).sum(2) / voxels.flatten(2).sum(2).clamp_min(1.0)
            weight = weight * (voxels.flatten(2).sum(2) > 0).to(weight.dtype)  # a channel all unknown: none
            bce = (per_channel * weight).sum() / weight.sum().clamp_min(1.0)
        dice = soft_dice_sigmoid(logits, target, batch_dice=self.batch_dice, annotated=annotated, known=known)
        return bce + 1 - dice


class DiceCELoss(nn.Module):
    """``cross_entropy + (1 - soft_dice)`` on one output.

    With ``ignore_label`` (nnU-Net's ignore label, a value above the ``K`` classes; ``docs/dicom.md``, "The
    ignore label") its voxels are left out of both terms, as nnU-Net's ``DC_and_CE_loss`` does: the
    cross-entropy is the mean over the other voxels (0 when a batch has none), the Dice masked
    (:func:`soft_dice` ``known``); they get no gradient.
    """

    def __init__(self, *, batch_dice: bool, ignore_label: int | None = None) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, K, ...)`` logits against ``(B, ...)`` int64 targets."""
        if self.ignore_label is None:
            cross_entropy = F.cross_entropy(logits.float(), target)
            return cross_entropy + 1 - soft_dice(logits, target, batch_dice=self.batch_dice)
        known = target != self.ignore_label
        if not bool(known.any()):
            return 0.0 * logits.sum()  # nothing known in this output: no gradient, graph kept
        cross_entropy = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_label)
        return cross_entropy + 1 - soft_dice(logits, target, batch_dice=self.batch_dice, known=known)


def deep_supervision_weights(outputs: int) -> list[float]:
    """1, 1/2, 1/4, ... for ``outputs`` outputs (highest resolution first), the coarsest 0, normalised."""
    if outputs == 1:
        return [1.0]
    weights = [0.5**i for i in range(outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour ``(B, ...)`` int64 target (or ``(B, K, ...)`` region target, dtype kept) at ``size``
    (same grid convention as the network's strides)."""
    if tuple(target.shape[-len(size) :]) == tuple(size):
        return target
    if target.ndim == len(size) + 2:  # region channels
        return F.interpolate(target.float(), size=tuple(size), mode="nearest-exact").to(target.dtype)
    small = F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest-exact")
    return small[:, 0].long()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over every output, each against the target downsampled to its resolution;
    ``annotated`` (region targets, ``(B, K)``), when given, is passed on to ``loss`` unchanged."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        annotated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``outputs``: logits, or a list of them from full to coarsest resolution; ``target``: ``(B,
        ...)``."""
        extra = {} if annotated is None else {"annotated": annotated}
        if isinstance(outputs, torch.Tensor):
            result: torch.Tensor = self.loss(outputs, target, **extra)
            return result
        weights = deep_supervision_weights(len(outputs))
        total = torch.zeros((), device=target.device)
        for weight, logits in zip(weights, outputs, strict=True):
            if weight:
                small = downsample_target(target, logits.shape[2:])
                total = total + weight * self.loss(logits, small, **extra)
            else:  # keep the coarsest head in the graph with zero gradient (DDP expects every parameter used)
                total = total + 0.0 * logits.sum()
        return total
