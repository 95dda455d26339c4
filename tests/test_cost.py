"""The memory model is checked, not assumed: estimate vs PyTorch's own record of what backward keeps."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.nn.functional as F

from autoseg.network import build_network
from autoseg.planning.cost import estimate_training_memory, training_gflops
from autoseg.plans import NetworkPlan


def _net(
    dims: int,
    kernels: list[tuple[int, ...]],
    strides: list[tuple[int, ...]],
    architecture: Literal["plain", "residual"] = "plain",
) -> NetworkPlan:
    stages = len(kernels)
    blocks = (1, 2, 2, 2)[:stages] if architecture == "residual" else (2,) * stages
    decoder = 1 if architecture == "residual" else 2
    return NetworkPlan(
        architecture,
        dims,
        tuple(8 * 2**s for s in range(stages)),
        tuple(kernels),
        tuple(strides),
        blocks,
        (decoder,) * (stages - 1),
    )


CASES = {
    "2d": (_net(2, [(3, 3)] * 4, [(1, 1), (2, 2), (2, 2), (2, 2)]), (64, 64), 4),
    "3d isotropic": (_net(3, [(3, 3, 3)] * 4, [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]), (32, 32, 32), 2),
    "3d anisotropic": (
        _net(3, [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)], [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)]),
        (16, 48, 40),
        2,
    ),
    "3d residual": (
        _net(3, [(3, 3, 3)] * 4, [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)], "residual"),
        (32, 32, 24),
        2,
    ),
}


def measure_training_memory(net: NetworkPlan, patch: tuple[int, ...], batch: int, classes: int = 3) -> int:
    """Bytes of saved activations (unique storages, parameters excluded) + 12 bytes per parameter."""
    model = build_network(net, 1, classes).train()
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(batch, 1, *patch)
    target = torch.randint(0, classes, (batch, *patch))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = model(x)
        assert isinstance(outputs, list)
        loss = torch.zeros(())
        for logits in outputs:  # Dice + cross-entropy on every deep-supervision output
            small = F.interpolate(target[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
            probabilities = logits.softmax(1)
            one_hot = F.one_hot(small, classes).movedim(-1, 1).float()
            dice = (2 * (probabilities * one_hot).sum() + 1) / (probabilities.sum() + one_hot.sum() + 1)
            loss = loss + F.cross_entropy(logits, small) + 1 - dice
    loss.backward()
    parameters = sum(p.numel() for p in model.parameters())
    return sum(kept.values()) + 12 * parameters


@pytest.mark.parametrize("name", sorted(CASES))
def test_estimate_is_within_25_percent_of_the_measurement(name: str) -> None:
    net, patch, batch = CASES[name]
    measured = measure_training_memory(net, patch, batch)
    estimate = estimate_training_memory(net, patch, batch, 1, 3)
    assert abs(estimate.kept - measured) / measured < 0.25, (estimate, measured)


def test_memory_grows_linearly_with_batch_and_patch() -> None:
    net, patch, _ = CASES["3d isotropic"]
    one = estimate_training_memory(net, patch, 1, 1, 3)
    four = estimate_training_memory(net, patch, 4, 1, 3)
    assert four.activations == 4 * one.activations
    assert four.parameters == one.parameters
    half = estimate_training_memory(net, patch, 1, 1, 3, activation_bytes=2)
    assert half.activations < one.activations


def test_flops_count_matches_a_hand_count() -> None:
    net = NetworkPlan(
        "plain", 2, (4, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)), (1, 1), (1,), deep_supervision=False
    )
    # encoder: 1->4 at 8x8, 4->8 at 4x4; up 8->4 at 8x8 (1 tap); decoder 8->4 at 8x8; head 4->2 at 8x8
    forward = 2 * (9 * 1 * 4 * 64 + 9 * 4 * 8 * 16 + 1 * 8 * 4 * 64 + 9 * 8 * 4 * 64 + 1 * 4 * 2 * 64)
    assert training_gflops(net, (8, 8), 1, 1, 2) == pytest.approx(3 * forward / 1e9)
