"""The cascade (issue 17.1): 3d_lowres cross-validation predictions as extra channels of 3d_cascade_fullres,
in training (refusal, projection, augmentation), prediction in one call, find_best_configuration and
export."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import plan_and_preprocess_argv, tiny_case, tiny_train_config, write_nnunet_dataset
from scipy import ndimage
from test_regions import write_multi_label_dataset

from autoseg.cli.main import main
from autoseg.errors import WorkdirError
from autoseg.evaluation.best_configuration import BestConfigurationOptions, run_find_best_configuration
from autoseg.inference.cascade import previous_stage_target
from autoseg.io import Geometry, read_header, read_labels, read_target
from autoseg.planning.registry import get_planner
from autoseg.preprocessing.case import preprocess_case, restore_probabilities, target_to_preprocessed
from autoseg.training import train_fold
from autoseg.training.augment import (
    binary_morphology,
    perturb_previous_stage,
    remove_random_component,
    training_transforms,
)
from autoseg.training.cascade import PreviousStage, move_previous_stage_to_data, one_hot_channels
from autoseg.workdir import Workdir

CASES = 4
FOLDS = 2
LOWRES_SPACING = (3.0, 1.6, 1.6)


def _cascade_workdir(root: Path, *, regions: bool = False) -> Path:
    """The tiny dataset (``regions``: nested GTV/CTV/PTV structures) planned for 3d_fullres, with a hand-made
    3d_lowres (twice the in-plane spacing) and 3d_cascade_fullres, small networks, preprocessed, and two
    folds in splits.json."""
    generator = np.random.default_rng(0)
    dataset = (
        write_multi_label_dataset(root / "Dataset001_Tiny", generator, CASES)
        if regions
        else write_nnunet_dataset(
            root / "Dataset001_Tiny", {f"case_{i:03d}": tiny_case(generator) for i in range(CASES)}
        )
    )
    workdir = root / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    work = Workdir(workdir)
    plans = work.read_plans()
    full = plans.configuration("3d_fullres")
    small = dataclasses.replace(full.network, features_per_stage=(8, 16, 32))
    full = dataclasses.replace(full, network=small)
    low = dataclasses.replace(full, spacing_mm=LOWRES_SPACING, median_shape=(12.0, 8.0, 8.0))
    cascade = dataclasses.replace(full, previous_stage="3d_lowres")
    configurations = {"3d_fullres": full, "3d_lowres": low, "3d_cascade_fullres": cascade}
    work.write_plans(dataclasses.replace(plans, configurations=configurations))
    argv = ["preprocess", "--workdir", str(workdir), "-c", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    assert main([*argv, "-q"]) == 0
    identifiers = [f"case_{i:03d}" for i in range(CASES)]
    folds = [identifiers[k::FOLDS] for k in range(FOLDS)]
    work.write_splits([{"train": [c for c in identifiers if c not in val], "val": val} for val in folds])
    return workdir


def _train(workdir: Path, configuration: str, fold: int) -> dict[str, object]:
    config = tiny_train_config(configuration=configuration, fold=str(fold), epochs=1, iterations_per_epoch=3)
    summary = train_fold(workdir, config, show_progress=False).summary
    assert summary is not None
    return summary


@pytest.fixture(scope="module")
def planned_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cascade planned and preprocessed, nothing trained (read only)."""
    return _cascade_workdir(tmp_path_factory.mktemp("planned"))


@pytest.fixture(scope="module")
def cascade_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3d_lowres, 3d_fullres and 3d_cascade_fullres trained on both folds (a few iterations each); shared:
    copy it before writing into it."""
    workdir = _cascade_workdir(tmp_path_factory.mktemp("cascade"))
    for configuration in ("3d_lowres", "3d_fullres", "3d_cascade_fullres"):
        for fold in range(FOLDS):
            _train(workdir, configuration, fold)
    return workdir


# ---------------------------------------------------------------------------------- refusing the cascade


def test_cascade_refuses_without_every_lowres_fold(tmp_path: Path) -> None:
    workdir = _cascade_workdir(tmp_path)
    with pytest.raises(WorkdirError) as refused:
        _train(workdir, "3d_cascade_fullres", 0)
    assert "fold(s) 0, 1 of 3d_lowres are missing" in refused.value.message
    assert "autoseg train 1 -c 3d_lowres" in refused.value.message
    assert not Workdir(workdir).run("3d_cascade_fullres", 0).checkpoint("latest").exists()
    _train(workdir, "3d_lowres", 0)
    with pytest.raises(WorkdirError) as refused:
        _train(workdir, "3d_cascade_fullres", 0)
    message = refused.value.message
    assert "fold(s) 1 of 3d_lowres are missing" in message and "2 of 4 case(s) have none" in message
    assert any("fold_1/validation/summary.json: missing" in line for line in refused.value.details)
    # the CLI says it in one line, exit 1, no traceback
    assert main(["train", "0", "-c", "3d_cascade_fullres", "--workdir", str(workdir), "-q"]) == 1


# ---------------------------------------------------------------------------------- end to end


@pytest.mark.slow  # trains three configurations on two folds: about a minute
def test_cascade_trains_on_lowres_cross_validation(cascade_workdir: Path) -> None:
    work = Workdir(cascade_workdir)
    plans = work.read_plans()
    splits = work.read_splits()
    assert splits is not None
    for k, split in enumerate(splits):
        for case in split["val"]:
            stored = np.load(work.previous_stage_path("3d_cascade_fullres", case))
            image = np.load(work.data_dir("3d_cascade_fullres") / case / "image.npy", mmap_mode="r")
            assert stored.shape == image.shape[1:]
            # the fold's own lowres validation prediction of the case, on the cascade grid
            source = read_labels(work.run("3d_lowres", k).validation.labels_path(case))[0]
            assert set(np.unique(stored)) <= set(np.unique(source)) | {0}
    assert plans.input_channels("3d_cascade_fullres") == 1 + 2
    for fold in range(FOLDS):
        run = work.run("3d_cascade_fullres", fold)
        assert run.is_validated()
        for case in splits[fold]["val"]:
            assert (
                run.validation.labels_path(case).is_file()
                and run.validation.probabilities_path(case).is_file()
            )


@pytest.mark.slow  # trains three configurations on two folds: about a minute
def test_predict_cascade_runs_both_stages_in_input_geometry(cascade_workdir: Path, tmp_path: Path) -> None:
    images = cascade_workdir.parent / "Dataset001_Tiny" / "imagesTr"
    out = tmp_path / "out"
    argv = ["predict", "-i", str(images), "-o", str(out), "-m", str(cascade_workdir)]
    assert main([*argv, "-c", "3d_cascade_fullres", "--save-probabilities", "-q"]) == 0
    record = json.loads((out / "predict.json").read_text())
    assert record["configurations"] == ["3d_cascade_fullres"]
    for index in range(CASES):
        case = f"case_{index:03d}"
        written, source = read_header(out / f"{case}.nii.gz"), read_header(images / f"{case}_0000.nii.gz")
        assert written.shape == source.shape
        for field in ("spacing_mm", "origin_mm", "direction"):
            assert np.allclose(getattr(written.geometry, field), getattr(source.geometry, field))
    assert (out / "case_000_probabilities.npz").is_file()
    # the cascade + 3d_fullres ensemble predicts too
    both = tmp_path / "both"
    argv = ["predict", "-i", str(images), "-o", str(both), "-m", str(cascade_workdir), "--preset", "fast"]
    assert main([*argv, "-c", "3d_cascade_fullres", "3d_fullres", "-q"]) == 0
    assert (both / "case_000.nii.gz").is_file()


@pytest.mark.slow  # trains three configurations on two folds: about a minute
def test_find_best_configuration_scores_the_cascade(cascade_workdir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(cascade_workdir, workdir)
    result = run_find_best_configuration(workdir, BestConfigurationOptions(), show_progress=False)
    names = {c.name for c in result.candidates}
    assert {"3d_cascade_fullres", "3d_fullres", "3d_lowres", "3d_cascade_fullres+3d_fullres"} <= names
    assert all(c.cases == CASES for c in result.candidates)
    table = Workdir(workdir).best_configuration_table_path.read_text()
    assert "3d_cascade_fullres+3d_fullres" in table


@pytest.mark.slow  # trains three configurations on two folds: about a minute
def test_export_cascade_and_predict_with_the_file(cascade_workdir: Path, tmp_path: Path) -> None:
    model = tmp_path / "cascade.zip"
    argv = ["export-model", str(model), "--workdir", str(cascade_workdir), "-c", "3d_cascade_fullres"]
    assert main([*argv, "-q"]) == 0
    images = cascade_workdir.parent / "Dataset001_Tiny" / "imagesTr"
    from_file, from_workdir = tmp_path / "file", tmp_path / "workdir"
    common = [
        "-i",
        str(images),
        "-c",
        "3d_cascade_fullres",
        "--preset",
        "fast",
        "--precision",
        "float32",
        "-q",
    ]
    assert main(["predict", "-o", str(from_file), "-m", str(model), *common]) == 0
    assert main(["predict", "-o", str(from_workdir), "-m", str(cascade_workdir), *common]) == 0
    for index in range(CASES):
        name = f"case_{index:03d}.nii.gz"
        assert np.array_equal(read_labels(from_file / name)[0], read_labels(from_workdir / name)[0])


@pytest.mark.slow  # trains 3d_lowres on two folds and the cascade on one: about a minute
def test_region_based_cascade_one_channel_per_structure(tmp_path: Path) -> None:
    workdir = _cascade_workdir(tmp_path, regions=True)
    work = Workdir(workdir)
    plans = work.read_plans()
    assert plans.region_based and plans.input_channels("3d_cascade_fullres") == 1 + 3
    for fold in range(FOLDS):
        _train(workdir, "3d_lowres", fold)
    summary = _train(workdir, "3d_cascade_fullres", 0)
    per_class = summary["mean_dice_per_class"]
    assert isinstance(per_class, dict) and set(per_class) == {"GTV", "CTV", "PTV"}
    stored = np.load(work.previous_stage_path("3d_cascade_fullres", "case_000"))
    assert stored.shape[0] == 3 and stored.dtype == np.uint8
    images = tmp_path / "Dataset001_Tiny" / "imagesTr"
    out = tmp_path / "out"
    argv = ["predict", "-i", str(images), "-o", str(out), "-m", str(workdir), "-c", "3d_cascade_fullres"]
    assert main([*argv, "-f", "0", "--preset", "fast", "-q"]) == 0
    assert (
        read_target(out / "case_001.nii.gz")[0].shape[-3:]
        == read_header(images / "case_001_0000.nii.gz").shape
    )


def test_cascade_preset_plans_the_cascade() -> None:
    """The synthetic-ct-cascade preset (datasets.json) makes the cpu planner of bench_cascade.py plan the
    cascade: its 3d_fullres patch covers < 25% of the median image."""
    import math

    from helpers import make_fingerprint

    from autoseg.dataset.catalogue import default_catalogue_path, load_catalogue

    generator = load_catalogue(default_catalogue_path()).entry("synthetic-ct-cascade").generator
    assert generator is not None
    fingerprint = make_fingerprint(
        [generator.spacing_mm] * generator.cases, [generator.shape] * generator.cases, channel_names=("CT",)
    )
    plans = get_planner("cpu", time_budget="20m", cpu_gflops=100).plan(fingerprint)
    full = plans.configuration("3d_fullres")
    assert math.prod(full.patch_size) / math.prod(full.median_shape) < 0.25
    assert plans.configuration("3d_cascade_fullres").previous_stage == "3d_lowres"
    low = plans.configuration("3d_lowres")
    assert math.prod(low.patch_size) / math.prod(low.median_shape) >= 0.25


# ---------------------------------------------------------------------------------- the grids


def test_target_to_preprocessed_is_what_preprocessing_does_to_labels(planned_workdir: Path) -> None:
    plan = Workdir(planned_workdir).read_plans().configuration("3d_cascade_fullres")
    rng = np.random.default_rng(3)
    image, labels, _ = tiny_case(rng, (10, 14, 12))
    image[:, :2] = 0  # a crop box that is not the whole image
    flipped = Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))  # not canonical
    for geometry in (Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0)), flipped):
        prepared = preprocess_case(image.copy(), labels, geometry, plan)
        assert prepared.labels is not None
        projected = target_to_preprocessed(labels, prepared.properties, plan)
        assert np.array_equal(projected, prepared.labels)


def test_predict_case_refuses_a_cascade_stage_alone(planned_workdir: Path) -> None:
    from autoseg.errors import UsageError
    from autoseg.inference.ensemble import InferenceSettings
    from autoseg.inference.stage import predict_case

    plan = Workdir(planned_workdir).read_plans().configuration("3d_cascade_fullres")
    image, _, geometry = tiny_case(np.random.default_rng(5))
    with pytest.raises(UsageError, match="needs its previous stage's prediction"):
        predict_case(image, geometry, [], plan, 3, InferenceSettings())


def test_previous_stage_target_restores_class_by_class(planned_workdir: Path) -> None:
    plan = Workdir(planned_workdir).read_plans().configuration("3d_lowres")
    rng = np.random.default_rng(4)
    image, labels, geometry = tiny_case(rng, (10, 14, 12))
    image[:, :, :2] = 0
    properties = preprocess_case(image, labels, geometry, plan).properties
    probabilities = rng.dirichlet(np.ones(3), size=properties.preprocessed_shape).astype(np.float32)
    probabilities = np.moveaxis(probabilities, -1, 0)
    whole = restore_probabilities(probabilities, properties).argmax(0)
    assert np.array_equal(previous_stage_target(probabilities, properties, regions=False), whole)
    regions = previous_stage_target(probabilities[1:], properties, regions=True)
    expected = restore_probabilities(probabilities[1:], properties, regions=True) >= 0.5
    assert regions.dtype == np.uint8 and np.array_equal(regions, expected)


# ---------------------------------------------------------------------------------- augmentation


def test_binary_morphology_matches_scipy_with_a_ball() -> None:
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.uniform(size=(20, 24, 24)) > 0.6, iterations=1)
    grid = np.indices((7, 7, 7)) - 3
    ball = (grid**2).sum(0) <= 3**2
    padded = np.pad(mask, 8)  # scipy treats the border as background; ours does not: compare inside
    inside = (slice(8, -8),) * 3
    assert np.array_equal(binary_morphology(mask, "dilation", 3), ndimage.binary_dilation(mask, ball))
    expected = ndimage.binary_erosion(padded, ball, border_value=1)[inside]
    assert np.array_equal(binary_morphology(mask, "erosion", 3), expected)
    closed = binary_morphology(mask, "closing", 2)
    assert closed.sum() >= mask.sum() and np.all(closed[mask])
    opened = binary_morphology(mask, "opening", 2)
    assert opened.sum() <= mask.sum() and not np.any(opened & ~mask)


def test_remove_random_component_removes_one_small_component() -> None:
    channel = np.zeros((16, 16, 16), np.float32)
    channel[1:3, 1:3, 1:3] = 1  # 8 voxels
    channel[8:10, 8:10, 8:10] = 1
    channel[:, 12:, :] = 1  # 1024 voxels: 25 % of the patch, never removed
    before = channel.copy()
    assert remove_random_component(channel, np.random.default_rng(0), max_fraction=0.15)
    removed = before.sum() - channel.sum()
    assert removed == 8 and channel[:, 12:, :].all()
    big = np.zeros((8, 8, 8), np.float32)
    big[:4] = 1
    assert not remove_random_component(big, np.random.default_rng(0), max_fraction=0.15)


def test_perturbation_keeps_one_class_per_voxel_and_changes_something() -> None:
    labels = np.zeros((4, 24, 24, 24), np.uint8)
    labels[:, 6:18, 6:18, 6:18] = 1
    labels[:, 10:14, 10:14, 10:14] = 2
    channels = np.stack([one_hot_channels(t, 2, regions=False) for t in labels])
    original = channels.copy()
    for seed in range(6):
        perturb_previous_stage(channels, np.random.default_rng(seed), exclusive=True)
        assert channels.sum(1).max() <= 1  # never two classes on one voxel
    assert not np.array_equal(channels, original)
    regions = np.stack([labels > 0, labels > 1], axis=1).astype(np.float32)
    overlapping = regions.copy()
    for seed in range(6):
        perturb_previous_stage(overlapping, np.random.default_rng(seed), exclusive=False)
    assert not np.array_equal(overlapping, regions)


@pytest.mark.parametrize("regions", [False, True])
def test_spatial_augmentation_moves_previous_stage_with_the_target(regions: bool) -> None:
    """With the previous stage equal to the target, the channels that reach the network after rotation,
    scaling and mirroring are exactly the augmented target one-hot: both went through the same transform."""
    rng = np.random.default_rng(1)
    patch = (16, 20, 20)
    labels = np.zeros((2, 24, 30, 30), np.float32)
    labels[:, 6:18, 5:20, 8:26] = 1
    labels[:, 9:14, 9:16, 12:20] = 2
    masks = np.stack([labels > 0, labels > 1], axis=1).astype(np.float32)
    target = masks if regions else labels[:, None]
    seg = np.concatenate([target, target], axis=1)
    data = rng.normal(size=(2, 1, *labels.shape[1:])).astype(np.float32)
    transform = training_transforms(patch, in_plane_only=False)
    state = np.random.get_state()  # noqa: NPY002 (batchgenerators draws from the global generator)
    np.random.seed(5)  # noqa: NPY002
    try:
        batch = transform(data=data, seg=seg)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    stage = PreviousStage("3d_cascade_fullres", "3d_lowres", Path(), 2, regions)
    moved = move_previous_stage_to_data(batch, stage, rng=None)
    assert moved["data"].shape == (2, 1 + 2, *patch)
    assert moved["seg"].shape == (2, 2 if regions else 1, *patch)
    augmented = np.rint(moved["seg"])
    for b in range(2):
        expected = one_hot_channels(augmented[b] if regions else augmented[b, 0], 2, regions=regions)
        assert np.array_equal(moved["data"][b, 1:], expected)
    assert augmented.any()
