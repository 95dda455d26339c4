"""The U-Net follows its plan: stages, strides, deep-supervision outputs at their own resolutions."""

from __future__ import annotations

import torch

from autoseg.network import ResidualBlock, build_network
from autoseg.plans import NetworkPlan

PLAIN_3D = NetworkPlan(
    "plain",
    3,
    (4, 8, 16),
    ((1, 3, 3), (3, 3, 3), (3, 3, 3)),
    ((1, 1, 1), (1, 2, 2), (2, 2, 2)),
    (2, 2, 2),
    (2, 2),
)


def test_deep_supervision_outputs_follow_the_strides() -> None:
    model = build_network(PLAIN_3D, 2, 3).train()
    outputs = model(torch.randn(2, 2, 8, 16, 24))
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 16, 24), (2, 3, 8, 8, 12)]
    model.eval()
    with torch.no_grad():
        single = model(torch.randn(1, 2, 8, 16, 24))
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, 8, 16, 24)


def test_blocks_per_stage_are_built() -> None:
    plan = NetworkPlan(
        "residual", 3, (4, 8, 16), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), (1, 3, 2), (1, 1)
    )
    model = build_network(plan, 1, 2)
    blocks = [[m for m in stage.children() if isinstance(m, ResidualBlock)] for stage in model.encoder]
    assert [len(b) for b in blocks] == [1, 3, 2]
    assert all(len(list(stage.children())) == 1 for stage in model.decoder)
    out = model.train()(torch.randn(1, 1, 12, 16, 16))
    assert isinstance(out, list) and out[0].shape == (1, 2, 12, 16, 16)


def test_2d_network_and_no_deep_supervision() -> None:
    plan = NetworkPlan(
        "plain",
        2,
        (4, 8, 16, 32),
        ((3, 3),) * 4,
        ((1, 1), (2, 2), (2, 2), (2, 2)),
        (2,) * 4,
        (2,) * 3,
        deep_supervision=False,
    )
    out = build_network(plan, 1, 4).train()(torch.randn(3, 1, 32, 24))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4, 32, 24)
    assert len(build_network(plan, 1, 4).heads) == 3
