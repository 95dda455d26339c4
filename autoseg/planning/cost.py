"""Cost model of one training iteration: memory kept for backward and convolution work.

The model walks the same topology :mod:`autoseg.network` builds and counts, per sample, every activation that
autograd keeps for the backward pass:

* a plain block (conv -> instance norm -> in-place leaky ReLU) keeps the conv output (for the norm) and the
  activated output (for the ReLU and the next conv): 2 tensors of the block's output size;
* a residual block keeps 4 (two convs, the second norm's input, the activated sum), plus the shortcut's pooled
  input and 1x1-conv output when it projects;
* a decoder stage keeps the concatenation of upsampled features and skip (twice the stage's width), then its
  blocks; the first convolution also keeps the network input;
* every supervised head keeps its logits plus what Dice + cross-entropy keep (softmax, log-softmax):
  ``LOSS_TENSORS_PER_HEAD`` tensors of ``classes`` channels.

Parameters cost 12 bytes each in training (fp32 weight, gradient, SGD momentum). ``tests/test_cost.py`` checks
the estimate against PyTorch's own record of saved tensors (``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from autoseg.plans import NetworkPlan

LOSS_TENSORS_PER_HEAD = 3
"""Logits-sized tensors a Dice + cross-entropy loss keeps per supervised output (logits, softmax,
log-softmax)."""

PARAMETER_BYTES_IN_TRAINING = 12
"""fp32 weight + gradient + SGD momentum buffer."""


@dataclass(frozen=True)
class LayerCost:
    """One convolution (or the loss of one head): work and the activations it adds, per sample."""

    name: str
    forward_flops: float
    kept_elements: int
    parameters: int
    full_precision: bool = False  # kept in float32 even under mixed precision (softmax, log-softmax)


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory in bytes for a batch: kept activations, parameters with gradients and optimizer state,
    and a transient allowance for the largest tensors alive during backward."""

    activations: int
    parameters: int
    transient: int

    @property
    def kept(self) -> int:
        """Activations plus parameter state: what the saved-tensor measurement sees."""
        return self.activations + self.parameters

    @property
    def total(self) -> int:
        """What the planner compares with the memory budget."""
        return self.activations + self.parameters + self.transient


def stage_shapes(net: NetworkPlan, patch_size: Sequence[int]) -> list[tuple[int, ...]]:
    """Feature-map shape of every encoder stage: the patch divided (rounding up) by the cumulative strides."""
    shapes = []
    shape = tuple(patch_size)
    for stride in net.strides:
        shape = tuple(-(-size // s) for size, s in zip(shape, stride, strict=True))
        shapes.append(shape)
    return shapes


def network_layers(
    net: NetworkPlan, patch_size: Sequence[int], in_channels: int, num_classes: int
) -> list[LayerCost]:
    """Every convolution of the network built from ``net`` with its cost, per sample, in forward order."""
    shapes = stage_shapes(net, patch_size)
    voxels = [math.prod(s) for s in shapes]
    layers = [LayerCost("input", 0.0, in_channels * math.prod(patch_size), 0)]
    channels = in_channels
    if net.architecture == "residual":
        layers.append(_conv("stem", channels, net.features_per_stage[0], net.kernel_sizes[0], voxels[0], 2))
        channels = net.features_per_stage[0]
    for stage, width in enumerate(net.features_per_stage):
        for block in range(net.blocks_per_stage[stage]):
            name = f"encoder{stage}.{block}"
            strided = block == 0 and any(s != 1 for s in net.strides[stage])
            layers.extend(_encoder_block(net, name, channels, width, stage, voxels[stage], strided))
            channels = width
    for stage in reversed(range(net.num_stages - 1)):
        width = net.features_per_stage[stage]
        up_kernel = net.strides[stage + 1]
        taps, in_width = math.prod(up_kernel), net.features_per_stage[stage + 1]
        # a transposed convolution with kernel == stride touches each output voxel with one tap
        layers.append(
            LayerCost(
                f"up{stage}", 2.0 * in_width * width * voxels[stage], 0, taps * in_width * width + width
            )
        )
        layers.append(LayerCost(f"concat{stage}", 0.0, 2 * width * voxels[stage], 0))
        for block in range(net.decoder_blocks_per_stage[stage]):
            in_width = 2 * width if block == 0 else width
            layers.append(
                _conv(f"decoder{stage}.{block}", in_width, width, net.kernel_sizes[stage], voxels[stage], 2)
            )
        supervised = net.deep_supervision or stage == 0
        if supervised:
            layers.append(_conv(f"head{stage}", width, num_classes, (1,) * net.dims, voxels[stage], 0))
            kept = LOSS_TENSORS_PER_HEAD * num_classes * voxels[stage]
            layers.append(LayerCost(f"loss{stage}", 0.0, kept, 0, full_precision=True))
    return layers


def estimate_training_memory(
    net: NetworkPlan,
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    num_classes: int,
    *,
    activation_bytes: int = 4,
) -> MemoryEstimate:
    """Training memory of one iteration in bytes.

    Args:
        activation_bytes: 4 for float32 (CPU), 2 for mixed precision on CUDA.
    """
    layers = network_layers(net, patch_size, in_channels, num_classes)
    kept = sum(layer.kept_elements * (4 if layer.full_precision else activation_bytes) for layer in layers)
    largest = max(layer.kept_elements for layer in layers)
    parameters = sum(layer.parameters for layer in layers)
    return MemoryEstimate(
        activations=kept * batch_size,
        parameters=parameters * PARAMETER_BYTES_IN_TRAINING,
        transient=2 * largest * batch_size * activation_bytes,
    )


def training_gflops(
    net: NetworkPlan, patch_size: Sequence[int], batch_size: int, in_channels: int, num_classes: int
) -> float:
    """Convolution work of one training iteration (forward + backward = 3 x forward), in GFLOP."""
    layers = network_layers(net, patch_size, in_channels, num_classes)
    return 3.0 * batch_size * sum(layer.forward_flops for layer in layers) / 1e9


def _encoder_block(
    net: NetworkPlan, name: str, in_channels: int, width: int, stage: int, voxels: int, strided: bool
) -> list[LayerCost]:
    kernel = net.kernel_sizes[stage]
    if net.architecture == "plain":
        return [_conv(name, in_channels, width, kernel, voxels, 2)]
    layers = [
        _conv(f"{name}.conv1", in_channels, width, kernel, voxels, 2),
        _conv(f"{name}.conv2", width, width, kernel, voxels, 2),
    ]
    if strided or in_channels != width:
        pooled = in_channels * voxels if strided else 0
        layers.append(_conv(f"{name}.shortcut", in_channels, width, (1,) * net.dims, voxels, 1))
        layers.append(LayerCost(f"{name}.pool", 0.0, pooled, 0))
    return layers


def _conv(
    name: str, in_channels: int, out_channels: int, kernel: Sequence[int], out_voxels: int, kept_outputs: int
) -> LayerCost:
    """A convolution whose output (and normalised output) count ``kept_outputs`` times towards memory."""
    taps = math.prod(kernel)
    return LayerCost(
        name=name,
        forward_flops=2.0 * taps * in_channels * out_channels * out_voxels,
        kept_elements=kept_outputs * out_channels * out_voxels,
        parameters=taps * in_channels * out_channels
        + out_channels
        + (2 * out_channels if kept_outputs else 0),
    )
