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

DICE_SMOOTH = 1e-5


def soft_dice(
    logits: torch.Tensor, target: torch.Tensor, *, batch_dice: bool, smooth: float = DICE_SMOOTH
) -> torch.Tensor:
    """Mean soft Dice over the foreground classes.

    Args:
        logits: ``(B, K, ...)`` raw network output.
        target: ``(B, ...)`` int64 class indices.
        batch_dice: sum over the batch before dividing (one Dice per class) instead of one per sample.
    """
    probabilities = logits.float().softmax(1)[:, 1:]
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probabilities.dtype)
    axes = tuple(range(2, logits.ndim))
    if batch_dice:
        axes = (0, *axes)
    intersection = (probabilities * one_hot).sum(axes)
    total = probabilities.sum(axes) + one_hot.sum(axes)
    return ((2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)).mean()


def soft_dice_sigmoid(
    logits: torch.Tensor, target: torch.Tensor, *, batch_dice: bool, smooth: float = DICE_SMOOTH
) -> torch.Tensor:
    """Mean soft Dice over the structures of a region-based output.

    Args:
        logits: ``(B, K, ...)`` raw network output, one sigmoid per structure.
        target: ``(B, K, ...)`` 0/1 (any dtype), channel ``k`` the mask of structure ``k``.
        batch_dice: sum over the batch before dividing (one Dice per structure) instead of one per sample.
    """
    probabilities = logits.float().sigmoid()
    truth = target.to(probabilities.dtype)
    axes = tuple(range(2, logits.ndim))
    if batch_dice:
        axes = (0, *axes)
    intersection = (probabilities * truth).sum(axes)
    total = probabilities.sum(axes) + truth.sum(axes)
    return ((2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)).mean()


class RegionLoss(nn.Module):
    """``binary_cross_entropy + (1 - soft_dice)`` on one sigmoid per structure (structures may overlap)."""

    def __init__(self, *, batch_dice: bool) -> None:
        super().__init__()
        self.batch_dice = batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, K, ...)`` logits against ``(B, K, ...)`` 0/1 targets."""
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return bce + 1 - soft_dice_sigmoid(logits, target, batch_dice=self.batch_dice)


class DiceCELoss(nn.Module):
    """``cross_entropy + (1 - soft_dice)`` on one output."""

    def __init__(self, *, batch_dice: bool) -> None:
        super().__init__()
        self.batch_dice = batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, K, ...)`` logits against ``(B, ...)`` int64 targets."""
        cross_entropy = F.cross_entropy(logits.float(), target)
        return cross_entropy + 1 - soft_dice(logits, target, batch_dice=self.batch_dice)


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
    """Weighted sum of ``loss`` over every output, each against the target downsampled to its resolution."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``outputs``: logits, or a list of them from full to coarsest resolution; ``target``: ``(B,
        ...)``."""
        if isinstance(outputs, torch.Tensor):
            result: torch.Tensor = self.loss(outputs, target)
            return result
        weights = deep_supervision_weights(len(outputs))
        total = torch.zeros((), device=target.device)
        for weight, logits in zip(weights, outputs, strict=True):
            if weight:
                total = total + weight * self.loss(logits, downsample_target(target, logits.shape[2:]))
            else:  # keep the coarsest head in the graph with zero gradient (DDP expects every parameter used)
                total = total + 0.0 * logits.sum()
        return total
