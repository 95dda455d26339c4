"""Overlapping structures, end to end: region targets (GTV in CTV in PTV) through plan, preprocess,
train, predict (NIfTI, RTSTRUCT, SEG), post-processing and evaluation; nnU-Net v2 region datasets; the
region loss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import plan_and_preprocess_argv, tiny_train_config

from autoseg.cli.main import main
from autoseg.dataset.layout import load_dataset, read_case
from autoseg.dataset.verify import verify_dataset
from autoseg.evaluation.metrics import dice_per_label, evaluate_case
from autoseg.io import Geometry, read_target, write_image, write_labels, write_masks
from autoseg.postprocessing.components import keep_largest_component
from autoseg.training.loss import DeepSupervisionLoss, RegionLoss, soft_dice_sigmoid
from autoseg.workdir import Workdir

STRUCTURES = ["GTV", "CTV", "PTV"]
GEOMETRY = Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0))


def nested_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (12, 16, 16)
) -> tuple[np.ndarray, ...]:
    """Image (1, Z, Y, X) and (3, Z, Y, X) uint8 masks: GTV inside CTV inside PTV, brighter inward."""
    masks = np.zeros((3, *shape), np.uint8)
    masks[2, 2:10, 3:13, 3:13] = 1  # PTV
    masks[1, 3:9, 4:12, 4:12] = 1  # CTV
    masks[0, 4:8, 6:10, 6:10] = 1  # GTV
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    image[0] += 2.0 * masks.sum(0)
    return image, masks


def write_multi_label_dataset(root: Path, rng: np.random.Generator, cases: int = 4) -> Path:
    for index in range(cases):
        image, masks = nested_case(rng)
        write_image(image[0], GEOMETRY, root / "imagesTr" / f"case_{index:03d}_0000.nii.gz")
        write_masks(masks, GEOMETRY, root / "labelsTr" / f"case_{index:03d}.nii.gz")
    meta = {
        "name": root.name,
        "channel_names": {"0": "CT"},
        "structures": STRUCTURES,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_region_dataset_json_is_read_unchanged(tmp_path: Path, rng: np.random.Generator) -> None:
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1:5, 1:7, 1:7], labels[2:4, 2:6, 2:6], labels[2:4, 3:5, 3:5] = 1, 2, 3
    root = tmp_path / "Dataset002_Brats"
    write_image(
        rng.normal(size=labels.shape).astype(np.float32), GEOMETRY, root / "imagesTr" / "a_0000.nii.gz"
    )
    write_labels(labels, GEOMETRY, root / "labelsTr" / "a.nii.gz")
    meta = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing": 3},
        "regions_class_order": [1, 2, 3],
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    dataset = load_dataset(root)
    assert [(r.name, r.label_values) for r in dataset.regions] == [
        ("whole_tumor", (1, 2, 3)),
        ("tumor_core", (2, 3)),
        ("enhancing", (3,)),
    ]
    assert dataset.regions_class_order == (1, 2, 3) and dataset.label_values == (0, 1, 2, 3)
    assert dataset.labels == {"background": 0, "whole_tumor": 1, "tumor_core": 2, "enhancing": 3}
    _, target, _ = read_case(dataset.cases[0])
    assert target is not None
    np.testing.assert_array_equal(target, np.stack([labels > 0, labels >= 2, labels == 3]).astype(np.uint8))
    assert verify_dataset(root, show_progress=False).ok


def test_multi_label_layout_is_verified(tmp_path: Path, rng: np.random.Generator) -> None:
    root = write_multi_label_dataset(tmp_path / "Dataset003_Nested", rng, cases=2)
    assert verify_dataset(root, show_progress=False).ok
    write_masks(np.zeros((2, 12, 16, 16), np.uint8), GEOMETRY, root / "labelsTr" / "case_001.nii.gz")
    report = verify_dataset(root, show_progress=False)
    assert not report.ok and any("one binary channel per structure (3" in p.message for p in report.errors)


def test_region_loss_on_known_inputs() -> None:
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, :2] = 1  # structure 0: top half; structure 1 empty
    perfect = (target * 2 - 1) * 40  # logits +-40: sigmoid ~ 1 / ~ 0
    assert float(soft_dice_sigmoid(perfect, target, batch_dice=False)) == pytest.approx(1.0, abs=1e-4)
    zero = torch.zeros(1, 2, 4, 4)  # sigmoid 0.5 everywhere
    # BCE = ln 2; Dice: structure 0 2*4/(8+8) = 0.5, structure 1 (smooth) ~ 0 -> mean 0.25
    loss = float(RegionLoss(batch_dice=False)(zero, target))
    assert loss == pytest.approx(np.log(2) + 1 - 0.25, abs=1e-3)
    overlap = torch.ones(1, 2, 4, 4)  # both structures everywhere: overlapping targets are fine
    assert float(RegionLoss(batch_dice=True)(overlap * 20, overlap)) == pytest.approx(0.0, abs=1e-4)
    outputs = [zero, torch.zeros(1, 2, 2, 2)]  # deep supervision: target downsampled per output
    assert float(DeepSupervisionLoss(RegionLoss(batch_dice=False))(outputs, target)) == pytest.approx(loss)


def test_post_processing_and_dice_per_structure() -> None:
    target = np.zeros((2, 6, 6, 6), np.uint8)
    target[0, 1:4, 1:4, 1:4] = 1
    target[0, 5, 5, 5] = 1  # a stray voxel of structure 1
    target[1, 0:5, 0:5, 0:5] = 1  # structure 2 contains structure 1
    kept = keep_largest_component(target, [1, 2])
    assert kept[0, 5, 5, 5] == 0 and kept[0].sum() == 27 and np.array_equal(kept[1], target[1])
    dice = dice_per_label(kept, target, [1, 2])
    assert dice[1] == pytest.approx(2 * 27 / (27 + 28)) and dice[2] == 1.0
    metrics = evaluate_case(kept, target, (1.0, 1.0, 1.0), [1, 2])  # surface metrics per structure mask
    assert metrics[2].hd95_mm == 0.0 and metrics[1].recall == pytest.approx(27 / 28)


def test_nested_dataset_plan_preprocess_train_predict(tmp_path: Path, rng: np.random.Generator) -> None:
    dataset = write_multi_label_dataset(tmp_path / "Dataset004_Nested", rng)
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    work = Workdir(workdir)
    plans = work.read_plans()
    assert plans.region_based and plans.num_outputs == 3
    assert plans.why["target"].startswith("region-based: sigmoid per structure (GTV, CTV, PTV)")
    assert "GTV+CTV in 4 case(s)" in plans.why["target"]
    from autoseg.planning.budgets import GIB
    from autoseg.planning.cost import estimate_training_memory

    plan = plans.configurations["3d_fullres"]  # the memory estimate counts 3 outputs, no background channel
    memory = estimate_training_memory(plan.network, plan.patch_size, plan.batch_size, 1, 3).total / GIB
    assert plan.estimated_memory_gb == round(memory, 3)
    reference, _ = read_target(work.reference_labels_path("case_000"))
    assert reference.shape == (3, 12, 16, 16)
    from autoseg.preprocessing.store import load_case

    stored = load_case(work.data_dir("3d_fullres"), "case_000")
    assert (
        stored.labels is not None and stored.labels.shape[0] == 3 and sorted(stored.foreground) == [1, 2, 3]
    )
    from autoseg.training import train_fold

    result = train_fold(workdir, tiny_train_config(), show_progress=False)
    assert result.summary is not None and set(result.summary["mean_dice_per_class"]) == set(STRUCTURES)
    validation = work.run("3d_fullres", "all").validation
    assert read_target(validation.labels_path("case_000"))[0].shape == (3, 12, 16, 16)
    _predict_dicom(tmp_path, workdir, rng)


def _predict_dicom(tmp_path: Path, workdir: Path, rng: np.random.Generator) -> None:
    """predict --format nifti rtstruct dicom-seg on a DICOM series: one ROI / one segment per structure."""
    from autoseg.dicom.export import write_image_series
    from autoseg.dicom.rtstruct import read_rtstruct
    from autoseg.dicom.seg import read_dicom_seg_masks
    from autoseg.dicom.series import single_series

    image, _ = nested_case(rng)
    write_image_series(image[0] * 100, GEOMETRY, tmp_path / "series" / "scan")
    out = tmp_path / "out"
    argv = ["predict", "-i", str(tmp_path / "series" / "scan"), "-o", str(out), "-m", str(workdir)]
    assert main([*argv, "--format", "nifti", "rtstruct", "dicom-seg", "-q"]) == 0
    series = single_series(tmp_path / "series" / "scan")
    assert set(read_rtstruct(out / "scan_rtstruct.dcm", series)) == set(STRUCTURES)
    assert set(read_dicom_seg_masks(out / "scan_seg.dcm", series)) == set(STRUCTURES)
    assert read_target(out / "scan.nii.gz")[0].shape[-3:] == (12, 16, 16)


def test_overlapping_prediction_goes_to_rtstruct_seg_and_nifti(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Known sigmoid probabilities of nested structures through write_case_outputs: overlapping ROIs and
    segments, a 4D NIfTI; disjoint ones give a label map; both objects pass dciodvfy when it is installed."""
    from autoseg.dicom.export import write_image_series
    from autoseg.dicom.rtstruct import read_rtstruct
    from autoseg.dicom.seg import read_dicom_seg_masks
    from autoseg.inference.inputs import find_input_cases, read_input_case
    from autoseg.inference.outputs import OutputContext, OutputOptions, write_case_outputs

    image, masks = nested_case(rng)
    write_image_series(image[0] * 100, GEOMETRY, tmp_path / "series" / "scan")
    (case,) = find_input_cases(tmp_path / "series" / "scan", 1)
    _, geometry = read_input_case(case)
    assert case.series is not None
    context = OutputContext({"background": 0, **{n: k + 1 for k, n in enumerate(STRUCTURES)}}, regions=True)
    options = OutputOptions(formats=("nifti", "dicom-seg", "rtstruct"))
    probabilities = np.where(masks > 0, 0.9, 0.1).astype(np.float32)
    write_case_outputs(case, probabilities, geometry, None, context, options, tmp_path / "out")
    contours = read_rtstruct(tmp_path / "out" / "scan_rtstruct.dcm", case.series)
    segments = read_dicom_seg_masks(tmp_path / "out" / "scan_seg.dcm", case.series)
    for k, name in enumerate(STRUCTURES):
        assert np.array_equal(contours[name], masks[k] > 0) and np.array_equal(segments[name], masks[k] > 0)
    assert (contours["GTV"] & contours["PTV"]).sum() == masks[0].sum()  # overlapping ROIs
    nifti, _ = read_target(tmp_path / "out" / "scan.nii.gz")
    np.testing.assert_array_equal(nifti, masks)
    disjoint = masks.copy()
    disjoint[1:] = 0
    disjoint[2, 0, 0:2, 0:2] = 1
    apart = np.where(disjoint > 0, 0.9, 0.1).astype(np.float32)
    write_case_outputs(case, apart, geometry, None, context, OutputOptions(), tmp_path / "apart")
    labels, _ = read_target(tmp_path / "apart" / "scan.nii.gz")
    assert labels.ndim == 3 and set(np.unique(labels)) == {0, 1, 3}
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian dicom3tools)")
    from test_dicom_conformance import dciodvfy_errors

    assert dciodvfy_errors(tmp_path / "out" / "scan_rtstruct.dcm") == []
    assert dciodvfy_errors(tmp_path / "out" / "scan_seg.dcm") == []


def test_structure_types_go_from_dataset_json_to_the_plan(tmp_path: Path, rng: np.random.Generator) -> None:
    """``structure_types`` in dataset.json (convert-dicom writes it) is checked when read, kept by the
    fingerprint and carried by the plan's target into the model, where predicted RTSTRUCTs use it."""
    import json

    from helpers import plan_and_preprocess_argv

    from autoseg.cli.main import main
    from autoseg.dataset.layout import load_dataset
    from autoseg.workdir import Workdir

    dataset = write_multi_label_dataset(tmp_path / "Dataset006_Types", rng)
    meta_path = dataset / "dataset.json"
    meta = json.loads(meta_path.read_text())
    structures = meta["structures"]
    meta["structure_types"] = {structures[0]: "AVOIDANCE", "not_a_structure": "ORGAN"}
    meta_path.write_text(json.dumps(meta))
    assert load_dataset(dataset).structure_types == {structures[0]: "AVOIDANCE"}
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    assert Workdir(workdir).read_plans().target.structure_types == {structures[0]: "AVOIDANCE"}
    meta["structure_types"] = {structures[0]: "TUMOUR"}
    meta_path.write_text(json.dumps(meta))
    assert main(["verify", str(dataset), "-q"]) == 1
