"""Training from parts and callbacks: a variant is a new part, extra callbacks see every epoch, the stage
entry point resolves and records the configuration, and importing the package stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_train_config

from autoseg.training import (
    Callback,
    TrainingRun,
    default_parts,
    fold_batches,
    run_train,
    train_fold,
)
from autoseg.training.loss import DeepSupervisionLoss
from autoseg.workdir import Workdir


class PlainCrossEntropy(torch.nn.Module):
    """A variant's loss: cross-entropy alone."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)


class StepLosses(Callback):
    """Records every training iteration's loss and the epochs it saw end."""

    def __init__(self) -> None:
        self.losses: list[list[float]] = []
        self.ended: list[int] = []

    def on_epoch_start(self, run: TrainingRun) -> None:
        self.losses.append([])

    def on_step(self, run: TrainingRun) -> None:
        self.losses[-1].append(run.step_loss)

    def on_epoch_end(self, run: TrainingRun) -> None:
        self.ended.append(run.records[-1]["epoch"])


def test_a_different_loss_is_a_new_part(prepared: Path) -> None:
    workdir = Workdir(prepared)
    plans = workdir.read_plans()
    config = tiny_train_config(configuration="3d_fullres")
    plan = plans.configuration("3d_fullres")
    parts = default_parts(
        plan,
        config,
        num_channels=len(plans.channel_names),
        num_classes=len(plans.labels),
        batches=fold_batches(workdir, plan, config),
    )
    variant = replace(parts, loss=DeepSupervisionLoss(PlainCrossEntropy()))
    steps = StepLosses()
    result = train_fold(prepared, config, show_progress=False, parts=variant, callbacks=[steps])
    assert result.network is variant.network and result.summary is not None
    run = workdir.run("3d_fullres", "all")
    records = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    assert steps.ended == [0, 1] == [r["epoch"] for r in records]
    for record, losses in zip(records, steps.losses, strict=True):
        assert len(losses) == 2 and record["train_loss"] == pytest.approx(float(np.mean(losses)))
    assert "loss DeepSupervisionLoss(PlainCrossEntropy)" in run.text_log_path.read_text()
    assert run.checkpoint("final").is_file()


def test_run_train_resolves_and_records_the_default_configuration(prepared: Path) -> None:
    summary = run_train(prepared, tiny_train_config(epochs=1), show_progress=False)
    run = Workdir(prepared).run("3d_fullres", "all")
    assert summary == run.read_validation_summary()
    assert json.loads(run.train_config_path.read_text())["configuration"] == "3d_fullres"
    assert "loss DeepSupervisionLoss(DiceCELoss)" in run.text_log_path.read_text()


def test_importing_training_does_not_import_torch() -> None:
    code = "import sys, autoseg.training as t; assert 'torch' not in sys.modules; t.TrainConfig; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
