"""Shared by the ``bench_predict_*.py`` scripts: where everything lives under the benchmark root, what
``bench_predict_setup.py`` was given (so the later steps need only ``--root``), and ``ROOT/results.json``."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CONFIGURATION = "3d_fullres"
FOLDS = 5
"""Fold 0's weights are copied as this many folds, so a 5-fold ensemble's timing is real."""
HIPPO_DATASET = "Dataset004_Hippocampus"
CT_DATASET = "Dataset905_CTTiming"
ModelName = Literal["hippo", "ct"]
InputsName = Literal["hippo", "hippo_subset", "ct"]


def autoseg_command() -> list[str]:
    """The installed ``autoseg`` console script beside this interpreter (no pyenv shim), else ``-m``."""
    script = Path(sys.executable).parent / "autoseg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "autoseg"]


@dataclass(frozen=True)
class Sources:
    """What setup read: the trained work directory, its raw dataset, the CT image, nnU-Net's venv."""

    workdir: Path
    dataset: Path
    ct_image: Path
    nnunet_venv: Path | None

    def to_json(self) -> dict[str, str | None]:
        return {
            "workdir": str(self.workdir),
            "dataset": str(self.dataset),
            "ct_image": str(self.ct_image),
            "nnunet_venv": None if self.nnunet_venv is None else str(self.nnunet_venv),
        }


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the benchmark root."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def sources_path(self) -> Path:
        return self.root / "sources.json"

    def inputs(self, name: InputsName) -> Path:
        """``hippo``: the first validation cases of the fold; ``hippo_subset``: the first 5 of them."""
        return self.root / "inputs" / name

    def model(self, name: ModelName) -> Path:
        """The autoseg model file, ``FOLDS`` folds."""
        return self.root / "models" / f"{name}_{FOLDS}folds.zip"

    def staging(self, name: ModelName) -> Path:
        """The work directory a model file is exported from."""
        return self.root / "models" / f"{name}_workdir"

    @property
    def nnunet_results(self) -> Path:
        return self.root / "nnUNet_results"

    def nnunet_model(self, dataset: str) -> Path:
        return self.nnunet_results / dataset / f"nnUNetTrainer__autosegPlans__{CONFIGURATION}"

    def outputs(self, arm: str) -> Path:
        return self.root / "outputs" / arm

    def write_sources(self, sources: Sources) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sources_path.write_text(json.dumps(sources.to_json(), indent=2) + "\n")

    def read_sources(self) -> Sources:
        if not self.sources_path.is_file():
            raise SystemExit(f"{self.sources_path}: missing; run bench_predict_setup.py --root {self.root}")
        data = json.loads(self.sources_path.read_text())
        venv = data.get("nnunet_venv")
        return Sources(
            Path(data["workdir"]), Path(data["dataset"]), Path(data["ct_image"]), Path(venv) if venv else None
        )

    def load_results(self) -> dict[str, Any]:
        """``results.json`` so far (empty on the first run)."""
        if self.results.is_file():
            data: dict[str, Any] = json.loads(self.results.read_text())
            return data
        return {}

    def save_results(self, results: Mapping[str, Any]) -> None:
        """Write ``results.json`` atomically."""
        temporary = self.results.with_suffix(".tmp")
        temporary.write_text(json.dumps(results, indent=2))
        temporary.replace(self.results)

    def record(self, key: str, entry: Any) -> None:
        """Store one step's entry under ``key`` in ``results.json``."""
        results = self.load_results()
        results[key] = entry
        self.save_results(results)


def fresh_folder(folder: Path) -> Path:
    """``folder``, emptied (created if missing)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
