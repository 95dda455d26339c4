"""Shared fixtures: a seeded generator, a tiny nnU-Net dataset, and the real-data root (skips when absent)."""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_case, write_nnunet_dataset


@pytest.fixture(autouse=True)
def _collect_leaked_sockets(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each DICOM-network test, collect the sockets pynetdicom 3.0.4 leaves unclosed after a refused
    connection or a failed TLS handshake, with their ResourceWarning silenced: collected later, they would
    fail whichever unrelated test happens to be running (``filterwarnings = error``)."""
    yield
    if request.module.__name__.startswith("test_serve"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.fixture
def rng() -> np.random.Generator:
    """The tests' only source of randomness."""
    return np.random.default_rng(0)


@pytest.fixture
def tiny_dataset(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Four tiny two-class cases in the nnU-Net v2 layout."""
    cases = {f"case_{i:03d}": tiny_case(rng) for i in range(4)}
    return write_nnunet_dataset(tmp_path / "Dataset001_Tiny", cases)


def real_data_root() -> Path | None:
    """``$AUTOSEG_DATA`` or ``../shared/data`` next to the project, if it exists."""
    candidates = [
        os.environ.get("AUTOSEG_DATA"),
        str(Path(__file__).resolve().parents[2] / "shared" / "data"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def data_root() -> Path:
    """The real-data folder; the test is skipped cleanly when it is absent."""
    root = real_data_root()
    if root is None:
        pytest.skip("real data not found: set AUTOSEG_DATA or provide ../shared/data")
    return root


@pytest.fixture
def prepared(tmp_path: Path, tiny_dataset: Path) -> Path:
    """A work directory with the tiny dataset planned (fixed CPU throughput) and preprocessed for
    3d_fullres."""
    from helpers import plan_and_preprocess_argv

    from autoseg.cli.main import main

    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(tiny_dataset, workdir, "3d_fullres")) == 0
    return workdir


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory with folds 0 and 1 of the tiny dataset's 3d_fullres and 2d configurations, trained a
    few iterations (shared: copy it before writing into it)."""
    from helpers import plan_and_preprocess_argv

    from autoseg.cli.main import main
    from autoseg.training import TrainConfig, train_fold

    root = tmp_path_factory.mktemp("trained")
    generator = np.random.default_rng(0)
    dataset = write_nnunet_dataset(
        root / "Dataset001_Tiny", {f"case_{i:03d}": tiny_case(generator) for i in range(5)}
    )
    workdir = root / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres", "2d")) == 0
    for configuration in ("3d_fullres", "2d"):
        for fold in ("0", "1"):
            config = TrainConfig(
                configuration=configuration,
                fold=fold,
                epochs=1,
                iterations_per_epoch=2,
                validation_iterations=1,
                num_workers=0,
                deterministic=True,
            )
            train_fold(workdir, config, show_progress=False)
    return workdir
