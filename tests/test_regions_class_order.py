"""nnU-Net's ``regions_class_order``: region predictions written to NIfTI as the label map nnU-Net writes
(BraTS whole tumour / tumour core / enhancing -> labels 1, 2, 3), from a dataset.json read unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import plan_and_preprocess_argv, tiny_train_config

from autoseg.cli.main import main
from autoseg.inference.inputs import find_input_cases, read_input_case
from autoseg.inference.outputs import OutputContext, OutputOptions, write_case_outputs
from autoseg.io import Geometry, read_target, write_image, write_labels
from autoseg.regions import Region, label_map_in_class_order, regions_from_labels
from autoseg.workdir import Workdir

GEOMETRY = Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0))
BRATS = (Region("whole_tumor", (1, 2, 3)), Region("tumor_core", (2, 3)), Region("enhancing", (3,)))
LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing": 3}


def brats_labels(shape: tuple[int, int, int] = (12, 16, 16)) -> np.ndarray:
    """Edema (1) around a non-enhancing core (2) around an enhancing part (3)."""
    labels = np.zeros(shape, np.uint8)
    labels[2:10, 3:13, 3:13] = 1
    labels[3:9, 5:11, 5:11] = 2
    labels[4:8, 7:10, 6:9] = 3
    return labels


def test_nested_regions_give_back_their_label_values() -> None:
    labels = brats_labels()
    regions = regions_from_labels(labels, BRATS)
    np.testing.assert_array_equal(label_map_in_class_order(regions, (1, 2, 3)), labels)
    # region k takes value order[k], painted in region order, a later region over an earlier one
    swapped = np.array([0, 3, 2, 1], np.uint8)[labels]
    np.testing.assert_array_equal(label_map_in_class_order(regions, (3, 2, 1)), swapped)
    overlapping = regions[::-1]  # enhancing first, whole tumour last: the whole tumour covers the rest
    np.testing.assert_array_equal(label_map_in_class_order(overlapping, (3, 2, 1)), (labels > 0) * 1)
    assert label_map_in_class_order(regions, (1, 2, 300)).dtype == np.uint16
    with pytest.raises(ValueError, match="2 values for 3 regions"):
        label_map_in_class_order(regions, (1, 2))


def test_region_predictions_go_to_nifti_in_class_order(tmp_path: Path) -> None:
    labels = brats_labels()
    write_image(labels.astype(np.float32), GEOMETRY, tmp_path / "in" / "scan_0000.nii.gz")
    (case,) = find_input_cases(tmp_path / "in", 1)
    _, geometry = read_input_case(case)
    probabilities = np.where(regions_from_labels(labels, BRATS) > 0, 0.9, 0.1).astype(np.float32)
    names = {"background": 0, "whole_tumor": 1, "tumor_core": 2, "enhancing": 3}
    options = OutputOptions(formats=("nifti",))
    ordered = OutputContext(names, regions=True, regions_class_order=(1, 2, 3))
    write_case_outputs(case, probabilities, geometry, None, ordered, options, tmp_path / "ordered")
    np.testing.assert_array_equal(read_target(tmp_path / "ordered" / "scan.nii.gz")[0], labels)
    plain = OutputContext(names, regions=True)  # no order: overlapping structures stay one mask each
    write_case_outputs(case, probabilities, geometry, None, plain, options, tmp_path / "plain")
    assert read_target(tmp_path / "plain" / "scan.nii.gz")[0].shape == (3, 12, 16, 16)


def test_brats_style_dataset_json_plans_and_predicts_a_label_map(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    root = tmp_path / "Dataset013_Brats"
    labels = brats_labels()
    for index in range(4):
        image = rng.normal(size=labels.shape).astype(np.float32) + labels
        write_image(image, GEOMETRY, root / "imagesTr" / f"case_{index:03d}_0000.nii.gz")
        write_labels(labels, GEOMETRY, root / "labelsTr" / f"case_{index:03d}.nii.gz")
    meta = {"channel_names": {"0": "T1"}, "labels": LABELS, "regions_class_order": [1, 2, 3]}
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 4, "file_ending": ".nii.gz"}))
    workdir = tmp_path / "work"
    assert main(plan_and_preprocess_argv(root, workdir, "3d_fullres")) == 0
    plans = Workdir(workdir).read_plans()
    assert plans.region_based and plans.target.regions_class_order == (1, 2, 3)
    from autoseg.training import train_fold

    train_fold(workdir, tiny_train_config(), show_progress=False)
    out = tmp_path / "predicted"
    argv = ["predict", "-i", str(root / "imagesTr"), "-o", str(out), "-m", str(workdir), "-q"]
    assert main(argv) == 0
    predicted, _ = read_target(out / "case_000.nii.gz")
    assert predicted.shape == labels.shape and set(np.unique(predicted)) <= {0, 1, 2, 3}


def test_evaluate_scores_label_maps_per_region_as_nnunet(tmp_path: Path) -> None:
    """With a region dataset.json as --labels, label maps are scored per region: enhancing predicted as core
    is right for the whole tumour and the core, wrong for the enhancing part."""
    from autoseg.evaluation.stage import EvaluateRequest, run_evaluate

    reference = brats_labels()
    prediction = np.where(reference == 3, 2, reference).astype(np.uint8)
    write_labels(prediction, GEOMETRY, tmp_path / "pred" / "a.nii.gz")
    write_labels(reference, GEOMETRY, tmp_path / "ref" / "a.nii.gz")
    meta = tmp_path / "dataset.json"
    meta.write_text(json.dumps({"labels": LABELS, "regions_class_order": [1, 2, 3]}))
    request = EvaluateRequest(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", labels_file=meta)
    summary = run_evaluate(request, show_progress=False)
    assert summary.labels == {1: "whole_tumor", 2: "tumor_core", 3: "enhancing"}
    dice = {k: summary.cases["a"][k].dice for k in (1, 2, 3)}
    assert dice == {1: 1.0, 2: 1.0, 3: 0.0}
