"""nnU-Net's ignore label: read from dataset.json (its rules), carried fingerprint -> plans -> training, left
out of the loss, foreground sampling, validation and evaluation, never predicted (``docs/dicom.md``, "The
ignore label")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import plan_and_preprocess_argv, tiny_case, tiny_train_config, write_nnunet_dataset

from autoseg.cli.main import main
from autoseg.dataset.layout import load_dataset, read_case, scan_dataset
from autoseg.evaluation.metrics import without_ignored
from autoseg.evaluation.stage import EvaluateRequest, run_evaluate
from autoseg.io import Geometry, read_labels, write_labels
from autoseg.regions import UNKNOWN
from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss, RegionLoss
from autoseg.training.validation import patch_scores
from autoseg.workdir import Workdir

LABELS = {"background": 0, "organ": 1, "core": 2, "ignore": 3}


def _ignored_dataset(root: Path, rng: np.random.Generator, labels: dict[str, object] | None = None) -> Path:
    """Four tiny cases whose two x-columns at the border are of unknown class (value 3)."""
    cases = {}
    for i in range(4):
        image, label, geometry = tiny_case(rng)
        label[:, :, :2] = 3
        cases[f"case_{i:03d}"] = (image, label, geometry)
    return write_nnunet_dataset(root, cases, labels=labels or LABELS)  # type: ignore[arg-type]


def _train_and_predict(dataset: Path, workdir: Path, out: Path) -> tuple[dict[str, Any], np.ndarray]:
    """Train fold 0 of ``workdir`` (tiny schedule), predict the training images; the validation summary and
    case_000's predicted label map."""
    from autoseg.training import train_fold

    result = train_fold(workdir, tiny_train_config(), show_progress=False)
    assert result.summary is not None
    argv = ["predict", "-i", str(dataset / "imagesTr"), "-o", str(out), "-m", str(workdir), "-q"]
    assert main(argv) == 0
    predicted, _ = read_labels(out / "case_000.nii.gz")
    return result.summary, predicted


def _problems(root: Path) -> list[str]:
    _, problems = scan_dataset(root)
    return [p.message for p in problems if p.severity == "error"]


def test_the_ignore_label_is_read_and_is_not_a_class(tmp_path: Path, rng: np.random.Generator) -> None:
    dataset = load_dataset(_ignored_dataset(tmp_path / "Dataset010_Ignore", rng))
    assert dataset.ignore_label == 3
    assert dataset.labels == {"background": 0, "organ": 1, "core": 2}
    assert dataset.label_values == (0, 1, 2, 3)  # label files may hold it: verify accepts them
    assert main(["verify", str(dataset.root), "-q"]) == 0


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"background": 0, "ignore": 1, "organ": 2}, "must be the highest label value (above 2)"),
        ({"background": 0, "organ": 1, "ignore": [2, 3]}, "must be one integer label value"),
        ({"background": 0, "whole": [1, 2], "core": 2, "ignore": 2}, "must be the highest label value"),
    ],
)
def test_the_ignore_label_rules(
    tmp_path: Path, rng: np.random.Generator, labels: dict[str, object], message: str
) -> None:
    root = _ignored_dataset(tmp_path / "Dataset011_Bad", rng, labels)
    assert any(message in line for line in _problems(root)), _problems(root)


def test_the_loss_leaves_ignored_voxels_out(rng: np.random.Generator) -> None:
    """Logits at ignored voxels change nothing and get no gradient; the loss equals the loss on the known
    voxels alone; a batch of ignored voxels only gives zero."""
    target = torch.from_numpy(rng.integers(0, 3, size=(2, 4, 6, 6))).long()
    target[:, :, :, :2] = 3
    logits = torch.from_numpy(rng.normal(size=(2, 3, 4, 6, 6)).astype(np.float32)).requires_grad_()
    loss = DiceCELoss(batch_dice=False, ignore_label=3)
    tensor = loss(logits, target)
    tensor.backward()
    value = float(tensor.detach())
    assert logits.grad is not None and float(logits.grad[..., :2].abs().max()) == 0.0
    assert float(logits.grad[..., 2:].abs().max()) > 0
    changed = logits.detach().clone()
    changed[..., :2] = 50.0
    assert float(loss(changed, target)) == pytest.approx(value, rel=1e-6)
    known = DiceCELoss(batch_dice=False)(logits.detach()[..., 2:], target[..., 2:])
    assert value == pytest.approx(float(known), rel=1e-5)
    assert float(loss(logits.detach(), torch.full_like(target, 3))) == 0.0
    supervised = DeepSupervisionLoss(loss)([logits.detach(), logits.detach()[:, :, ::2, ::2, ::2]], target)
    assert np.isfinite(float(supervised))


def test_evaluation_does_not_score_ignored_voxels(tmp_path: Path) -> None:
    reference = np.zeros((8, 8, 8), np.uint8)
    reference[2:6, 2:6, 2:6] = 1
    reference[:, :, 6:] = 3
    prediction = np.where(reference == 3, 1, reference).astype(np.uint8)  # "wrong" only where unknown
    masked = without_ignored(prediction, reference, 3)
    assert int((masked[0] != masked[1]).sum()) == 0 and 3 not in masked[1]
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_labels(prediction, geometry, tmp_path / "pred" / "a.nii.gz")
    write_labels(reference, geometry, tmp_path / "ref" / "a.nii.gz")
    meta = tmp_path / "dataset.json"
    meta.write_text(json.dumps({"labels": {"background": 0, "organ": 1, "ignore": 3}}))
    request = EvaluateRequest(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", labels_file=meta)
    summary = run_evaluate(request, show_progress=False)
    assert list(summary.labels) == [1]  # the ignore label is not a class
    assert summary.per_class[1]["dice"].mean == 1.0
    unmasked = run_evaluate(
        EvaluateRequest(tmp_path / "pred", tmp_path / "ref", tmp_path / "out2"), show_progress=False
    )
    assert unmasked.per_class[1]["dice"].mean < 0.7  # without the labels file value 3 is a class


def test_ignore_label_plan_train_predict(tmp_path: Path, rng: np.random.Generator) -> None:
    """Carried into plans.json (not a class, target.ignore_label, the reason), never sampled as foreground
    and never predicted: the network has 3 outputs and the prediction holds no 3."""
    from autoseg.preprocessing.store import load_case

    dataset = _ignored_dataset(tmp_path / "Dataset012_Ignore", rng)
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    work = Workdir(workdir)
    plans = work.read_plans()
    assert plans.labels == {"background": 0, "organ": 1, "core": 2} and plans.num_outputs == 3
    assert plans.target.ignore_label == 3 and "ignore label" in plans.why["target"]
    saved = json.loads((workdir / "plans.json").read_text())
    assert saved["target"]["ignore_label"] == 3
    fingerprint = json.loads((workdir / "fingerprint.json").read_text())
    assert fingerprint["ignore_label"] == 3
    assert all("3" not in case["class_voxels"] for case in fingerprint["cases"])
    stored = load_case(work.data_dir("3d_fullres"), "case_000")
    assert stored.labels is not None and 3 in stored.labels  # kept in the store, masked in the loss
    summary, predicted = _train_and_predict(dataset, workdir, tmp_path / "predicted")
    assert set(summary["mean_dice_per_class"]) == {"organ", "core"}
    assert predicted.max() <= 2


def test_the_postprocessing_choice_does_not_score_ignored_voxels(tmp_path: Path) -> None:
    """A stray blob predicted where the reference is unknown is no false positive: without the ignore label
    keeping the largest object would be chosen to remove it, with it nothing is gained."""
    from dataclasses import replace

    from helpers import make_fingerprint

    from autoseg.postprocessing.choice import run_choose_postprocessing

    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    for case in ("a", "b"):
        reference = np.zeros((16, 16, 16), np.uint8)
        reference[2:7, 2:7, 2:7] = 1
        reference[:, :, 10:] = 3
        prediction = np.where(reference == 1, 1, 0).astype(np.uint8)
        prediction[2:4, 2:4, 12:14] = 1  # inside the unknown region
        write_labels(prediction, geometry, tmp_path / "validation" / f"{case}.nii.gz")
        write_labels(reference, geometry, tmp_path / "reference" / f"{case}.nii.gz")
    labels = {"background": 0, "a": 1}
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 2, [(16, 16, 16)] * 2, labels=labels)
    folders = [tmp_path / "validation"]
    plain = run_choose_postprocessing(
        folders, tmp_path / "reference", fingerprint, tmp_path / "p1.json", show_progress=False
    )
    ignored = run_choose_postprocessing(
        folders,
        tmp_path / "reference",
        replace(fingerprint, ignore_label=3),
        tmp_path / "p2.json",
        show_progress=False,
    )
    assert plain.steps and not ignored.steps


REGION_LABELS = {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}


def _region_dataset(root: Path, rng: np.random.Generator) -> Path:
    """The ignored dataset with nnU-Net regions (whole = organ + core, core) and regions_class_order."""
    root = _ignored_dataset(root, rng, REGION_LABELS)
    meta = json.loads((root / "dataset.json").read_text())
    meta["regions_class_order"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_an_ignore_label_with_nnunet_regions_is_unknown_in_every_structure(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    dataset = load_dataset(_region_dataset(tmp_path / "Dataset013_RegionsIgnore", rng))
    assert dataset.ignore_label == 3 and [r.label_values for r in dataset.regions] == [(1, 2), (2,)]
    assert main(["verify", str(dataset.root), "-q"]) == 0
    _, target, _ = read_case(dataset.cases[0])
    labels, _ = read_labels(dataset.cases[0].label_path)  # type: ignore[arg-type]
    assert target is not None and target.shape == (2, *labels.shape)
    np.testing.assert_array_equal(target[:, labels == 3], UNKNOWN)  # unknown in both structures
    np.testing.assert_array_equal(target[0][labels != 3], np.isin(labels, (1, 2))[labels != 3])
    np.testing.assert_array_equal(target[1][labels != 3], (labels == 2)[labels != 3])


def test_the_region_loss_leaves_unknown_voxels_out(rng: np.random.Generator) -> None:
    """As for a label map: logits at unknown voxels get no gradient and change nothing; the loss equals the
    loss on the known voxels alone; with the partly contoured mask too."""
    target = torch.from_numpy(rng.integers(0, 2, size=(2, 2, 4, 6, 6)).astype(np.uint8))
    target[..., :2] = UNKNOWN
    logits = torch.from_numpy(rng.normal(size=(2, 2, 4, 6, 6)).astype(np.float32)).requires_grad_()
    for annotated in (None, torch.tensor([[1, 1], [1, 0]], dtype=torch.uint8)):
        loss = RegionLoss(batch_dice=False)
        logits.grad = None
        tensor = loss(logits, target, annotated)
        tensor.backward()
        value = float(tensor.detach())
        assert logits.grad is not None and float(logits.grad[..., :2].abs().max()) == 0.0
        assert float(logits.grad[..., 2:].abs().max()) > 0
        changed = logits.detach().clone()
        changed[..., :2] = 50.0
        assert float(loss(changed, target, annotated)) == pytest.approx(value, rel=1e-6)
        known = loss(logits.detach()[..., 2:], target[..., 2:], annotated)
        assert value == pytest.approx(float(known), rel=1e-5)
    masked = float(RegionLoss(batch_dice=False)(logits.detach(), target))
    as_background = torch.where(target == UNKNOWN, 0, target)
    assert float(RegionLoss(batch_dice=False)(logits.detach(), as_background)) != pytest.approx(
        masked, rel=1e-3
    )


def test_patch_validation_and_evaluation_skip_unknown_region_voxels() -> None:
    target = torch.zeros(1, 2, 4, 4, 4, dtype=torch.uint8)
    target[0, 0, :2] = 1
    target[..., 3] = UNKNOWN
    logits = torch.where(target == 1, 10.0, -10.0)
    logits[..., 3] = 10.0  # "wrong" only where unknown

    class Fixed(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return logits

    batches = iter([{"image": torch.zeros(1, 1, 4, 4, 4), "target": target}])
    _, dice = patch_scores(
        Fixed(), RegionLoss(batch_dice=False), batches, 1, torch.device("cpu"), 2, regions=True
    )
    assert dice[0] == 1.0 and np.isnan(dice[1])  # structure 2: nowhere known to be, nowhere predicted
    prediction = (logits[0] > 0).numpy().astype(np.uint8)
    masked_prediction, masked_reference = without_ignored(prediction, target[0].numpy(), None)
    assert UNKNOWN not in masked_reference and not masked_prediction[..., 3].any()
    np.testing.assert_array_equal(masked_prediction, masked_reference)


def test_ignore_label_with_regions_plan_train_predict(tmp_path: Path, rng: np.random.Generator) -> None:
    """A region dataset with an ignore label trains (region-based, the unknown voxels in the store) and
    predicts structures that never hold the unknown value."""
    from autoseg.preprocessing.store import load_case

    dataset = _region_dataset(tmp_path / "Dataset014_RegionsIgnore", rng)
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    work = Workdir(workdir)
    plans = work.read_plans()
    assert plans.region_based and plans.num_outputs == 2 and plans.target.ignore_label == 3
    fingerprint = json.loads((workdir / "fingerprint.json").read_text())
    case = fingerprint["cases"][0]
    labels, _ = read_labels(dataset / "labelsTr" / "case_000.nii.gz")
    assert case["class_voxels"]["1"] == int(np.isin(labels, (1, 2)).sum())  # unknown voxels not counted
    stored = load_case(work.data_dir("3d_fullres"), "case_000")
    assert stored.labels is not None and stored.labels.ndim == 4 and UNKNOWN in stored.labels
    summary, predicted = _train_and_predict(dataset, workdir, tmp_path / "predicted")
    assert set(summary["mean_dice_per_class"]) == {"whole", "core"}
    assert predicted.max() <= 2  # regions_class_order's label map: whole 1, core 2, never the unknown 3
