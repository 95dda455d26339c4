"""Mixed-precision training: what ``--precision`` resolves to, what runs in reduced precision, and what never
does (weights, optimiser state, the loss)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_config

from autoseg.errors import UsageError
from autoseg.inference.ensemble import native_bfloat16_cpu
from autoseg.training import train_fold
from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss
from autoseg.training.parts import as_float32, autocast_dtype, resolve_training_precision
from autoseg.workdir import Workdir

CPU = torch.device("cpu")


def run_dir_of(workdir: Path, config: object) -> Path:
    return Workdir(workdir).run(getattr(config, "configuration", None) or "3d_fullres", "all").path


def test_auto_follows_the_hardware_and_determinism() -> None:
    expected = "bfloat16" if native_bfloat16_cpu() else "float32"
    assert resolve_training_precision("auto", CPU, deterministic=False) == expected
    assert resolve_training_precision("auto", CPU, deterministic=True) == "float32"
    assert resolve_training_precision("bfloat16", CPU, deterministic=True) == "bfloat16"  # asked for
    assert resolve_training_precision("auto", torch.device("cuda"), deterministic=False) == "float16"
    with pytest.raises(UsageError, match="float16 needs a CUDA device"):
        resolve_training_precision("float16", CPU, deterministic=False)
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_training_precision("half", CPU, deterministic=False)
    assert autocast_dtype("float32") is None and autocast_dtype("bfloat16") is torch.bfloat16


def test_outputs_reach_the_loss_in_float32() -> None:
    outputs = [torch.zeros(1, 2, 4, 4, 4, dtype=torch.bfloat16), torch.zeros(1, 2, 2, 2, 2)]
    converted = as_float32(outputs)
    assert isinstance(converted, list) and all(o.dtype == torch.float32 for o in converted)
    single = torch.zeros(2, dtype=torch.float32)
    assert as_float32(single) is single  # no copy when already float32


class _RecordingLoss(DeepSupervisionLoss):
    """Deep-supervised Dice + CE that records the dtype of what it is given."""

    def __init__(self) -> None:
        super().__init__(DiceCELoss(batch_dice=False))
        self.dtypes: set[torch.dtype] = set()

    def forward(self, outputs, target, **extras):  # type: ignore[no-untyped-def,override]
        for output in outputs if isinstance(outputs, list) else [outputs]:
            self.dtypes.add(output.dtype)
        return super().forward(outputs, target, **extras)


def test_bfloat16_training_keeps_weights_optimiser_and_loss_float32(prepared: Path) -> None:
    from autoseg.training.parts import default_parts, fold_batches

    work = Workdir(prepared)
    plans = work.read_plans()
    config = tiny_train_config(precision="bfloat16", configuration="3d_fullres")
    plan = plans.configuration("3d_fullres")
    batches = fold_batches(work, plan, config)
    parts = default_parts(
        plan, config, num_channels=len(plans.channel_names), num_classes=plans.num_outputs, batches=batches
    )
    loss = _RecordingLoss()
    parts = replace(parts, loss=loss)
    convolved: set[torch.dtype] = set()
    first_conv = next(m for m in parts.network.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda _m, _i, out: convolved.add(out.dtype))
    network = train_fold(prepared, config, parts=parts, show_progress=False).network
    assert torch.bfloat16 in convolved  # the training passes ran in bfloat16...
    assert loss.dtypes == {torch.float32}  # ...the loss saw float32
    assert all(p.dtype == torch.float32 for p in network.parameters())
    for state in parts.optimizer.state.values():
        assert all(v.dtype == torch.float32 for v in state.values() if isinstance(v, torch.Tensor))
    assert not parts.scaler.is_enabled()  # bfloat16 needs no loss scaling
    recorded = json.loads((run_dir_of(prepared, config) / "train_config.json").read_text())
    assert recorded["precision"] == "bfloat16"


@pytest.mark.skipif(not native_bfloat16_cpu(), reason="this CPU has no native bfloat16: auto is float32")
def test_auto_is_recorded_resolved(prepared: Path) -> None:
    config = tiny_train_config(deterministic=False)
    train_fold(prepared, config, show_progress=False)
    recorded = json.loads((run_dir_of(prepared, config) / "train_config.json").read_text())
    assert recorded["precision"] == "bfloat16"
