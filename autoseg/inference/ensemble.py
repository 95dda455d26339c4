"""Sliding-window inference on a preprocessed image: Gaussian-weighted windows (MONAI's grid and weights,
:mod:`autoseg.inference.sliding_window`), mirroring test-time augmentation, and an ensemble of networks (the
folds) averaged per window.

Every window is cut once and run through every network and every mirror, so an ensemble of five folds with
eight mirrors costs one pass over the image, not forty. Within one network the mirrored logits are averaged;
the networks' softmax probabilities (sigmoid per structure for region-based models) are averaged; the
windows are blended with a Gaussian importance map (sigma 1/8 of the patch, as nnU-Net) in a band of one
patch depth, on the compute device when it fits, otherwise on the CPU; finished slabs go to the CPU.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

from autoseg.inference.sliding_window import blend_slabs
from autoseg.regions import REGION_THRESHOLD
from autoseg.types import FloatVolume, LabelVolume, TargetVolume

logger = logging.getLogger(__name__)

Activation = Literal["softmax", "sigmoid"]

DEVICE_ACCUMULATION_FRACTION = 0.4
"""Blend on the GPU only when the blending band (:func:`band_bytes`) takes at most this fraction of the free
GPU memory; the rest is left to the windows' activations."""


@dataclass(frozen=True)
class InferenceSettings:
    """How to slide.

    Attributes:
        step: distance between windows as a fraction of the patch (0.5: windows overlap by half).
        mirror_axes: spatial axes of the window to mirror for test-time augmentation (``()``: none); every
            combination is run, so 3 axes cost 8 passes.
        windows_per_batch: windows run through a network at once.
        device: where the networks run.
        accumulate: where the blending band lives: ``auto`` (the device when it fits), ``device``,
            ``cpu``.
        precision: ``auto`` (see :func:`resolve_precision`), ``float32``, ``bfloat16``, ``float16``.
        channels_last: run 3D networks in the channels-last memory format.
    """

    step: float = 0.5
    mirror_axes: tuple[int, ...] = ()
    windows_per_batch: int = 1
    device: str = "cpu"
    accumulate: Literal["auto", "device", "cpu"] = "auto"
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    channels_last: bool = False


def predict_probabilities(
    networks: Sequence[nn.Module],
    image: FloatVolume,
    patch_size: Sequence[int],
    num_classes: int,
    settings: InferenceSettings,
    *,
    activation: Activation = "softmax",
    dtype: type[np.floating] = np.float32,
) -> FloatVolume:
    """Class probabilities for a preprocessed image.

    Args:
        networks: trained networks of one configuration (the folds), in eval mode on ``settings.device``.
        image: ``(C, Z, Y, X)`` float32, preprocessed (normalised, at the plan's spacing).
        patch_size: ``(z, y, x)`` for 3D networks, ``(y, x)`` for 2D ones (run slice by slice).
        num_classes: ``K``, background included (the structures, for ``activation="sigmoid"``).
        activation: ``"softmax"`` over the classes, or ``"sigmoid"`` per structure (region-based models).
        dtype: of the returned volume: ``np.float16`` halves it
            (:func:`autoseg.inference.inputs.network_grid_dtype`); blending and renormalisation stay float32,
            slab by slab (:func:`~autoseg.inference.sliding_window.blend_slabs`), so only the stored value
            is rounded.

    Returns:
        ``(K, Z, Y, X)`` probabilities, summing to 1 over ``K`` (softmax), or each in [0, 1].
    """
    if not networks:
        raise ValueError("no network to predict with")
    device = torch.device(settings.device)
    roi = tuple(patch_size) if len(patch_size) == 3 else (1, *patch_size)
    predictor = _EnsemblePredictor(networks, len(patch_size), settings, device, activation)
    output_device = _accumulation_device(image.shape[1:], roi[0], num_classes, settings, device)
    # windows are copied out of the input, so a read-only memory map is fine; torch needs a writable array.
    tensor = torch.from_numpy(np.require(image, np.float32, ["C", "W"]))[None]
    probabilities = np.empty((num_classes, *image.shape[1:]), dtype)
    with torch.inference_mode():
        for first, slab in blend_slabs(
            tensor.to(device),
            roi,
            predictor,
            step=settings.step,
            windows_per_batch=settings.windows_per_batch,
            sigma_scale=0.125,
            compute_device=device,
            output_device=output_device,
        ):
            if slab.shape[0] != num_classes:
                raise ValueError(
                    f"the networks give {slab.shape[0]} output channels, while {num_classes} were asked for "
                    "(a model whose plans and weights disagree?)"
                )
            values = np.asarray(slab.cpu().numpy(), dtype=np.float32)
            if activation == "sigmoid":
                np.clip(values, 0.0, 1.0, out=values)
            else:
                # Gaussian blending keeps a convex combination per voxel, but float error and the zero weight
                # far outside a window's centre can leave sums a hair away from 1; renormalise so argmax and
                # saved maps agree.
                values /= np.maximum(values.sum(0, keepdims=True), 1e-8)
            probabilities[:, first : first + values.shape[1]] = values
    return probabilities


def labels_from_probabilities(probabilities: FloatVolume) -> LabelVolume:
    """The label map of class probabilities: the one probabilities -> labels conversion of autoseg (predict,
    fold validation, the ensembles of ``find_best_configuration``).

    Args:
        probabilities: ``(K, Z, Y, X)`` float, channel ``k`` = label value ``k`` (background ``0`` first);
            probabilities, or any per-class score that orders the classes the same way (e.g. a sum).

    Returns:
        ``(Z, Y, X)`` label map, the channel with the highest value per voxel (the lowest one on a tie). The
        dtype follows the class count, as every label map of autoseg (``shared/STYLE.md``): uint8 for up to
        256 classes (label values 0..255), uint16 above (up to 65536 classes).
    """
    classes = probabilities.shape[0]
    if classes > 65536:
        raise ValueError(f"{classes} classes do not fit a uint16 label map")
    labels: LabelVolume = probabilities.argmax(0).astype(np.uint8 if classes <= 256 else np.uint16)
    return labels


def regions_from_probabilities(probabilities: FloatVolume) -> TargetVolume:
    """The region target of per-structure sigmoid probabilities: the one probabilities -> structures
    conversion of autoseg (as :func:`labels_from_probabilities` is for softmax classes).

    Args:
        probabilities: ``(K, Z, Y, X)`` float, channel ``k`` structure ``k``.

    Returns:
        ``(K, Z, Y, X)`` uint8, 1 where the probability is at least
        :data:`autoseg.regions.REGION_THRESHOLD` (0.5); structures may overlap.
    """
    masks: TargetVolume = (probabilities >= REGION_THRESHOLD).astype(np.uint8)
    return masks


def target_from_probabilities(probabilities: FloatVolume, *, regions: bool) -> TargetVolume:
    """:func:`regions_from_probabilities` for a region-based model, else :func:`labels_from_probabilities`."""
    return regions_from_probabilities(probabilities) if regions else labels_from_probabilities(probabilities)


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): the flips test-time augmentation runs."""
    return [combo for count in range(len(axes) + 1) for combo in itertools.combinations(axes, count)]


class _EnsemblePredictor:
    """Sliding-window predictor: ``(B, C, *roi)`` windows -> ``(B, K, *roi)`` ensemble probabilities."""

    def __init__(
        self,
        networks: Sequence[nn.Module],
        dims: int,
        settings: InferenceSettings,
        device: torch.device,
        activation: Activation = "softmax",
    ) -> None:
        self.activation = activation
        self.networks = list(networks)
        self.dims = dims
        self.device = device
        self.flips = mirror_combinations(settings.mirror_axes)
        self.dtype = _autocast_dtype(settings.precision, device)
        self.channels_last = settings.channels_last and dims == 3

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        batch = windows[:, :, 0] if self.dims == 2 else windows  # 2D: the roi is (1, Y, X)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        total: torch.Tensor | None = None
        for network in self.networks:
            logits = self._mirrored_logits(network, batch)
            probabilities = logits.sigmoid() if self.activation == "sigmoid" else logits.softmax(1)
            total = probabilities if total is None else total + probabilities
        assert total is not None
        result = total / len(self.networks)
        return result[:, :, None] if self.dims == 2 else result

    def _mirrored_logits(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Mean logits over the mirrors; spatial axis ``a`` of the window is tensor dim ``a + 2``."""
        total: torch.Tensor | None = None
        for flip in self.flips:
            dims = [axis + 2 for axis in flip]
            inputs = torch.flip(batch, dims) if dims else batch
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = network(inputs)
            assert isinstance(logits, torch.Tensor), "networks must be in eval mode (one output)"
            logits = logits.float()
            logits = torch.flip(logits, dims) if dims else logits
            total = logits if total is None else total + logits
        assert total is not None
        return total / len(self.flips)


Precision = Literal["float32", "bfloat16", "float16"]


def native_bfloat16_cpu() -> bool:
    """Whether this CPU has bfloat16 arithmetic units (AVX-512 BF16 or AMX), which oneDNN's convolutions use.

    Without them oneDNN emulates bfloat16 and gains nothing; the two probes are private torch helpers, so a
    torch without them counts as no support.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The arithmetic ``precision`` means on ``device``.

    An explicit choice stays; ``auto`` is float16 autocast on CUDA, bfloat16 autocast on a CPU with native
    bfloat16 (2.2-2.7x faster networks, Dice within 0.0003 on hippocampus: docs/benchmarks.md), float32
    elsewhere. Softmax, mirror averaging, blending and argmax stay float32 in every case.
    """
    if precision in ("float32", "bfloat16", "float16"):
        return cast(Precision, precision)
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}")
    if device.type == "cuda":
        return "float16"
    if device.type == "cpu" and native_bfloat16_cpu():
        return "bfloat16"
    return "float32"


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    resolved = resolve_precision(precision, device)
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[resolved]


def _accumulation_device(
    shape: Sequence[int], depth: int, num_classes: int, settings: InferenceSettings, device: torch.device
) -> torch.device:
    """The device for the blending band: ``depth`` slices of the ``(K, Z, Y, X)`` output and of its
    weights (:func:`~autoseg.inference.sliding_window.blend_slabs`)."""
    if settings.accumulate == "cpu" or device.type == "cpu":
        return torch.device("cpu")
    if settings.accumulate == "device":
        return device
    needed = band_bytes(shape, depth, num_classes)
    free, _ = torch.cuda.mem_get_info(device)
    chosen = device if needed <= DEVICE_ACCUMULATION_FRACTION * free else torch.device("cpu")
    logger.debug("blending band of %.2f GiB on %s", needed / 2**30, chosen)
    return chosen


def band_bytes(shape: Sequence[int], depth: int, num_classes: int) -> int:
    """Bytes of the blending band of a ``shape`` (Z, Y, X) grid: ``min(depth, Z)`` slices of the ``K``
    float32 sums and the weights, and one finished slab of ``K`` as it is divided."""
    rows = min(int(depth), int(shape[0]))
    return 4 * (2 * num_classes + 1) * rows * math.prod(int(n) for n in shape[1:])
