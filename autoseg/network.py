"""The U-Net built from a plan: plain convolution blocks or a residual encoder, with deep supervision.

Topology (as nnU-Net's ``PlainConvUNet`` / ``ResidualEncoderUNet``):

* encoder stage ``s``: ``blocks_per_stage[s]`` conv blocks (plain: conv -> instance norm -> leaky ReLU;
  residual: two such convolutions plus a shortcut), the first one strided by ``strides[s]`` (stage 0 has
  stride 1);
* decoder stage ``s`` (bottom up): transposed convolution by ``strides[s + 1]``, concatenation with the skip,
  then ``decoder_blocks_per_stage[s]`` plain conv blocks;
* a 1x1 segmentation head on every decoder stage. In training mode with deep supervision the network returns
  the logits of every decoder stage, highest resolution first, each at its own resolution (the targets are
  downsampled to them, see ``docs/design.md``); otherwise only the full-resolution logits.

Why not MONAI's ``DynUNet``: its deep-supervision outputs are interpolated up to full resolution (one
full-size tensor per head kept for backward, instead of downsampled targets), and it has one block per stage,
so it cannot express the residual-encoder presets (1, 3, 4, 6, 6, 6 blocks per stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from autoseg.plans import NetworkPlan


def build_network(plan: NetworkPlan, in_channels: int, num_classes: int) -> UNet:
    """The network a plan describes.

    Args:
        plan: the configuration's network plan.
        in_channels: image channels (plus one-hot classes of the previous stage for a cascade).
        num_classes: output channels, background included.
    """
    return UNet(plan, in_channels, num_classes)


class ConvBlock(nn.Sequential):
    """conv -> instance norm (affine) -> leaky ReLU (0.01, in place)."""

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]
    ) -> None:
        super().__init__(
            _conv(dims, in_channels, out_channels, kernel, stride),
            _norm(dims, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two convolutions with a shortcut (average pooling + 1x1 conv when the shape changes), as ResNet-D."""

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]
    ) -> None:
        super().__init__()
        self.first = ConvBlock(dims, in_channels, out_channels, kernel, stride)
        self.second = nn.Sequential(
            _conv(dims, out_channels, out_channels, kernel, [1] * dims), _norm(dims, out_channels)
        )
        self.shortcut: nn.Module = nn.Identity()
        if any(s != 1 for s in stride) or in_channels != out_channels:
            pool: nn.Module = nn.Identity()
            if any(s != 1 for s in stride):
                pooling: Any = nn.AvgPool3d if dims == 3 else nn.AvgPool2d
                pool = pooling(tuple(stride), tuple(stride), ceil_mode=True)
            self.shortcut = nn.Sequential(
                pool,
                _conv(dims, in_channels, out_channels, [1] * dims, [1] * dims),
                _norm(dims, out_channels),
            )
        self.activation = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output, same channels as ``out_channels``, downsampled by ``stride``."""
        out: torch.Tensor = self.activation(self.second(self.first(x)) + self.shortcut(x))
        return out


class UNet(nn.Module):
    """A U-Net whose every size comes from a :class:`NetworkPlan`; input ``(B, C, [Z,] Y, X)``."""

    def __init__(self, plan: NetworkPlan, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.plan = plan
        self.deep_supervision = plan.deep_supervision
        dims, features = plan.dims, plan.features_per_stage
        block = ResidualBlock if plan.architecture == "residual" else ConvBlock
        self.stem: nn.Module = nn.Identity()
        channels = in_channels
        if plan.architecture == "residual":  # a plain conv lifts the input to the first stage's width
            self.stem = ConvBlock(dims, in_channels, features[0], plan.kernel_sizes[0], [1] * dims)
            channels = features[0]
        self.encoder = nn.ModuleList()
        for stage, width in enumerate(features):
            layers = [block(dims, channels, width, plan.kernel_sizes[stage], plan.strides[stage])]
            layers += [
                block(dims, width, width, plan.kernel_sizes[stage], [1] * dims)
                for _ in range(plan.blocks_per_stage[stage] - 1)
            ]
            self.encoder.append(nn.Sequential(*layers))
            channels = width
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for stage in reversed(range(len(features) - 1)):
            width, stride = features[stage], plan.strides[stage + 1]
            transposed: Any = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
            self.upsample.append(transposed(features[stage + 1], width, tuple(stride), tuple(stride)))
            count = plan.decoder_blocks_per_stage[stage]
            layers = [
                ConvBlock(dims, 2 * width if i == 0 else width, width, plan.kernel_sizes[stage], [1] * dims)
                for i in range(count)
            ]
            self.decoder.append(nn.Sequential(*layers))
            self.heads.append(_conv(dims, width, num_classes, [1] * dims, [1] * dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, K, ...)``; in training with deep supervision, a list from full to lowest
        resolution."""
        skips: list[torch.Tensor] = []
        x = self.stem(x)
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs: list[torch.Tensor] = []
        x = skips.pop()
        for upsample, decode, head in zip(self.upsample, self.decoder, self.heads, strict=True):
            x = decode(torch.cat([upsample(x), skips.pop()], dim=1))
            if (self.deep_supervision and self.training) or head is self.heads[-1]:
                outputs.append(head(x))
        if self.deep_supervision and self.training:
            return outputs[::-1]
        return outputs[-1]


def _conv(
    dims: int, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]
) -> nn.Module:
    padding = tuple((k - 1) // 2 for k in kernel)
    layer: Any = nn.Conv3d if dims == 3 else nn.Conv2d
    module: nn.Module = layer(in_channels, out_channels, tuple(kernel), tuple(stride), padding, bias=True)
    return module


def _norm(dims: int, channels: int) -> nn.Module:
    layer: Any = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    module: nn.Module = layer(channels, eps=1e-5, affine=True)
    return module
