"""Per-epoch records of a training run: ``log.jsonl`` (one JSON object per epoch) and ``progress.png``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoseg.io import atomic_target, write_text_atomically


def read_log(path: Path, *, before_epoch: int | None = None) -> list[dict[str, Any]]:
    """Epoch records of ``log.jsonl``; with ``before_epoch``, only those of earlier epochs (for a resume)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if before_epoch is None or r["epoch"] < before_epoch]


def write_log(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Rewrite ``log.jsonl`` atomically."""
    write_text_atomically("".join(json.dumps(r) + "\n" for r in records), path)


def plot_progress(records: Sequence[dict[str, Any]], class_names: Sequence[str], path: Path) -> None:
    """Loss curves, pseudo-Dice per class and its moving average, learning rate and epoch time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    figure, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(epochs, [r["train_loss"] for r in records], label="training loss")
    axes[0].plot(epochs, [r["val_loss"] for r in records], label="validation loss")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for index, name in enumerate(class_names):
        axes[1].plot(epochs, [r["pseudo_dice"][index] for r in records], label=f"{name}", alpha=0.7)
    axes[1].plot(
        epochs, [r["ema_pseudo_dice"] for r in records], "k-", linewidth=2, label="moving average (mean)"
    )
    axes[1].set_ylabel("pseudo-Dice (validation patches)")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=8)
    axes[2].plot(epochs, [r["lr"] for r in records], "g-", label="learning rate")
    axes[2].set_ylabel("learning rate")
    twin = axes[2].twinx()
    twin.plot(epochs, [r["epoch_seconds"] for r in records], "r.", label="epoch time")
    twin.set_ylabel("epoch time (s)")
    axes[2].set_xlabel("epoch")
    figure.tight_layout()
    with atomic_target(path) as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)
