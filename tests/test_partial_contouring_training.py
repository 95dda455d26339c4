"""Issue 13: a structure missing from half the training cases, trained twice on the same files: with its
loss masked where it was never contoured (``"annotated"`` in dataset.json) and treated as background there.
The masked model's Dice on fully contoured test cases must be higher (figures in ``docs/dicom.md``, "Partly
contoured cases"; ``python -m pytest tests/test_partial_contouring_training.py -m slow -s`` prints them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import plan_and_preprocess_argv, tiny_train_config

from autoseg.cli.main import main
from autoseg.evaluation.metrics import dice_per_label
from autoseg.io import Geometry, read_target, write_image, write_masks

GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
SHAPE = (16, 20, 20)
TRAINING_CASES = 8
TEST_CASES = 3


def two_structure_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(Z, Y, X)`` and ``(2, Z, Y, X)`` masks: structure A a bright box on one side, B a brighter
    smaller box on the other, both shifted a little per case."""
    masks = np.zeros((2, *SHAPE), np.uint8)
    dz, dy, dx = (int(v) for v in rng.integers(-2, 3, size=3))
    masks[0, 4 + dz : 11 + dz, 4 + dy : 11 + dy, 3 + dx : 9 + dx] = 1  # A
    masks[1, 5 + dz : 10 + dz, 8 + dy : 13 + dy, 12 + dx : 17 + dx] = 1  # B
    image = rng.normal(size=SHAPE).astype(np.float32)
    image += 2.5 * masks[0] + 4.0 * masks[1]
    return image, masks


def write_partial_dataset(root: Path, rng: np.random.Generator, *, masked: bool) -> dict[str, np.ndarray]:
    """Training cases whose odd ones lack B (its channel empty); ``masked``: dataset.json says so
    (``annotated``), else B is background there. Returns the test cases' full truth by name."""
    annotated = {}
    for index in range(TRAINING_CASES):
        image, masks = two_structure_case(rng)
        case = f"case_{index:03d}"
        if index % 2:
            masks[1] = 0
            annotated[case] = ["A"]
        write_image(image, GEOMETRY, root / "imagesTr" / f"{case}_0000.nii.gz")
        write_masks(masks, GEOMETRY, root / "labelsTr" / f"{case}.nii.gz")
    truth = {}
    for index in range(TEST_CASES):
        image, masks = two_structure_case(rng)
        write_image(image, GEOMETRY, root / "imagesTs" / f"test_{index:03d}_0000.nii.gz")
        truth[f"test_{index:03d}"] = masks
    meta = {
        "channel_names": {"0": "CT"},
        "structures": ["A", "B"],
        "numTraining": TRAINING_CASES,
        "file_ending": ".nii.gz",
        **({"annotated": annotated} if masked else {}),
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return truth


def dice_of_b(tmp_path: Path, *, masked: bool, iterations: int = 10, epochs: int = 4) -> float:
    """Train on the partial dataset (same seed, same files) and return B's mean Dice on the test cases."""
    from autoseg.training import train_fold

    name = "masked" if masked else "background"
    root = tmp_path / f"Dataset020_{name}"
    truth = write_partial_dataset(root, np.random.default_rng(7), masked=masked)
    workdir = tmp_path / f"work_{name}"
    assert main(plan_and_preprocess_argv(root, workdir, "3d_fullres")) == 0
    config = tiny_train_config(epochs=epochs, iterations_per_epoch=iterations, seed=3)
    train_fold(workdir, config, show_progress=False)
    out = tmp_path / f"predicted_{name}"
    argv = ["predict", "-i", str(root / "imagesTs"), "-o", str(out), "-m", str(workdir), "-q"]
    assert main([*argv, "--no-tta"]) == 0
    scores = []
    for case, masks in truth.items():
        predicted, _ = read_target(out / f"{case}.nii.gz")  # disjoint structures: a label map, B = 2
        b = predicted[1] if predicted.ndim == 4 else (predicted == 2)
        scores.append(dice_per_label(b.astype(np.uint8), masks[1], [1])[1])
    return float(np.mean(scores))


@pytest.mark.slow
def test_masking_an_unannotated_structure_beats_treating_it_as_background(tmp_path: Path) -> None:
    masked = dice_of_b(tmp_path, masked=True)
    background = dice_of_b(tmp_path, masked=False)
    print(f"\nstructure B (contoured in 4 of 8 training cases), Dice on 3 test cases: masked {masked:.3f}, "
          f"as background {background:.3f}")  # fmt: skip
    assert masked > background + 0.1
