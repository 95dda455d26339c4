"""The commands the fault tests kill, each on tiny inputs: how to build the inputs, the argv, the folder to
watch and compare, and how to decode the files that embed a time. Shared by ``tests/test_faults.py``,
``tests/test_signals.py`` and ``benchmarks/kill_nine.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from faults import Scenario, autoseg_argv, checkpoint_contents, json_without
from helpers import tiny_case, write_nnunet_dataset

from autoseg.cli.main import main


def tiny_nnunet(root: Path, cases: int, *, seed: int = 0) -> Path:
    generator = np.random.default_rng(seed)
    return write_nnunet_dataset(root, {f"case_{i:03d}": tiny_case(generator) for i in range(cases)})


def _fresh(root: Path, source: Path, name: str) -> None:
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def preprocess_scenario(inputs: Path, *, workers: int = 2) -> Scenario:
    """``preprocess -np N`` of 8 tiny cases, 3d_fullres and 2d (planned once into ``inputs/planned``)."""
    planned = inputs / "planned"
    if not planned.is_dir():
        dataset = tiny_nnunet(inputs / "Dataset001_Tiny", 8)
        assert main(["fingerprint", str(dataset), "--workdir", str(planned), "-q"]) == 0
        assert main(["plan", "--workdir", str(planned), "--planner", "cpu", "--cpu-gflops", "100", "-q"]) == 0
    return Scenario(
        name=f"preprocess -np {workers}",
        reset=lambda root: _fresh(root, planned, "work"),
        argv=lambda root: autoseg_argv(
            "preprocess", "--workdir", root / "work", "-c", "3d_fullres", "2d", "-np", str(workers), "-q"
        ),
        output=lambda root: root / "work",
    )


def train_scenario(inputs: Path) -> Scenario:
    """``train 0`` of 3d_fullres, 4 epochs of 2 iterations, deterministic on the CPU; a re-run after a kill
    passes ``--resume`` once a checkpoint exists."""
    prepared = inputs / "prepared"
    if not prepared.is_dir():
        from helpers import plan_and_preprocess_argv

        dataset = tiny_nnunet(inputs / "Dataset003_Train", 5)
        assert main(plan_and_preprocess_argv(dataset, prepared, "3d_fullres")) == 0
    base = ["--epochs", "4", "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0"]

    def argv(root: Path) -> list[str]:
        return autoseg_argv(
            "train", "0", "--workdir", root / "work", "-c", "3d_fullres", *base,
            "--deterministic", "--device", "cpu", "-q",
        )  # fmt: skip

    def resume(root: Path) -> list[str]:
        latest = root / "work" / "trained" / "3d_fullres" / "fold_0" / "checkpoint_latest.pt"
        return ["--resume"] if latest.is_file() else []

    return Scenario(
        name="train",
        reset=lambda root: _fresh(root, prepared, "work"),
        argv=argv,
        output=lambda root: root / "work" / "trained",
        decoders={".pt": checkpoint_contents, "log.jsonl": _log_without_times},
        ignore=("training.log", "progress.png"),
        kill_by_files=False,
        resume_argv=resume,
    )


def _log_without_times(path: Path) -> object:
    import json

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in r.items() if "second" not in k and k != "time"} for r in records]


def predict_scenario(inputs: Path, model: Path) -> Scenario:
    """``predict`` of 4 tiny images with fold 0 of a trained work directory, one output folder."""
    images = inputs / "predict_in"
    if not images.is_dir():
        generator = np.random.default_rng(7)
        from autoseg.io import write_image

        for index in range(4):
            image, _, geometry = tiny_case(generator)
            write_image(image[0], geometry, images / f"new_{index:03d}_0000.nii.gz")

    def reset(root: Path) -> None:
        _remove(root / "out")

    return Scenario(
        name="predict",
        reset=reset,
        argv=lambda root: autoseg_argv(
            "predict",
            "-i",
            images,
            "-o",
            root / "out",
            "-m",
            model,
            "-c",
            "3d_fullres",
            "-f",
            "0",
            "--no-tta",
            "--device",
            "cpu",
            "--precision",
            "float32",
            "--threads",
            "1",
            "-q",
        ),
        output=lambda root: root / "out",
        decoders={"predict.json": json_without("predict_seconds")},
    )


def convert_dicom_scenario(inputs: Path) -> Scenario:
    """``convert-dicom`` of 4 synthetic RT cases (CT series + RTSTRUCT) into a dataset folder."""
    source = inputs / "rt"
    if not source.is_dir():
        argv = ["synth", str(source), "--preset", "rt", "--cases", "4", "--shape", "16", "24", "24", "-q"]
        assert main(argv) == 0
    return Scenario(
        name="convert-dicom",
        reset=lambda root: _remove(root / "converted"),
        argv=lambda root: autoseg_argv("convert-dicom", source, root / "converted", "-q"),
        output=lambda root: root / "converted",
    )


def evaluate_scenario(inputs: Path, *, workers: int = 2) -> Scenario:
    """``evaluate -np N`` of 4 predicted label maps against their references."""
    pairs = inputs / "evaluate_in"
    if not pairs.is_dir():
        from autoseg.io import write_labels

        generator = np.random.default_rng(3)
        for index in range(4):
            _, labels, geometry = tiny_case(generator)
            write_labels(labels, geometry, pairs / "ref" / f"case_{index:03d}.nii.gz")
            predicted = np.roll(labels, int(generator.integers(-2, 3)), axis=2)
            write_labels(predicted, geometry, pairs / "pred" / f"case_{index:03d}.nii.gz")
    return Scenario(
        name=f"evaluate -np {workers}",
        reset=lambda root: _remove(root / "scores"),
        argv=lambda root: autoseg_argv(
            "evaluate", pairs / "pred", pairs / "ref", "-o", root / "scores", "-np", str(workers), "-q"
        ),
        output=lambda root: root / "scores",
        kill_by_files=False,
    )


def trained_model(inputs: Path) -> Path:
    """A work directory with fold 0 of 3d_fullres trained a few iterations (for predict outside pytest)."""
    workdir = inputs / "model"
    if not (workdir / "trained" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file():
        from helpers import plan_and_preprocess_argv, tiny_train_config

        from autoseg.training import train_fold

        dataset = tiny_nnunet(inputs / "Dataset002_Model", 5)
        assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
        config = tiny_train_config(fold="0", configuration="3d_fullres", epochs=1)
        train_fold(workdir, config, show_progress=False)
    return workdir
