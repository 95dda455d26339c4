"""Planning rules on hand-made fingerprints, and the determinism of plans.json."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fingerprint

from autoseg.fingerprint import Fingerprint
from autoseg.planning import get_planner
from autoseg.planning.budgets import MemoryBudget
from autoseg.planning.cost import estimate_training_memory
from autoseg.planning.rules import Architecture, make_plans, target_spacing, topology
from autoseg.plans import save_plans


def _hippocampus_like(cases: int = 195) -> Fingerprint:
    rng = np.random.default_rng(0)
    shapes = [
        (int(rng.integers(31, 43)), int(rng.integers(40, 60)), int(rng.integers(24, 48)))
        for _ in range(cases)
    ]
    shapes[0] = (36, 50, 35)
    return make_fingerprint([(1.0, 1.0, 1.0)] * cases, shapes)


def _abdominal_ct_like() -> Fingerprint:
    z_spacings = [2.5] * 12 + [3.0] * 10 + [5.0] * 8  # median 3.0, 10th percentile 2.5
    shapes = [(round(500 / z), 512, 512) for z in z_spacings]
    return make_fingerprint([(z, 0.8, 0.8) for z in z_spacings], shapes, channel_names=("CT",))


def test_hippocampus_like_plans_a_full_resolution_unet_near_nnunet() -> None:
    plans = get_planner("default").plan(_hippocampus_like())
    config = plans.configuration("3d_fullres")
    assert config.spacing_mm == (1.0, 1.0, 1.0)
    assert config.patch_size == (40, 56, 40)
    net = config.network
    assert net.num_stages == 4  # 3 poolings per axis: 40 -> 20 -> 10 -> 5 stays >= 4 voxels, a 4th would not
    assert net.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert net.kernel_sizes == ((3, 3, 3),) * 4
    assert net.features_per_stage == (32, 64, 128, 256)
    assert net.blocks_per_stage == (2, 2, 2, 2) and net.decoder_blocks_per_stage == (2, 2, 2)
    assert "3d_lowres" not in plans.configurations
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    assert config.normalization[0].scheme == "zscore"
    assert config.resampling.separate_axis is None
    assert config.batch_size >= 2
    assert "median spacing per axis" in config.why["spacing_mm"]


def test_abdominal_ct_like_gets_anisotropic_kernels_z_rule_and_lowres_stage() -> None:
    fingerprint = _abdominal_ct_like()
    spacing, why = target_spacing(fingerprint)
    assert spacing == (2.5, 0.8, 0.8)  # z from the 10th percentile (2.5), not the median (3.0)
    assert "z/finest spacing ratio 3.75 > 3: target z spacing from the 10th percentile" in why
    plans = get_planner("default").plan(fingerprint)
    full = plans.configuration("3d_fullres")
    assert full.network.kernel_sizes[0] == (1, 3, 3)
    assert full.network.strides[1] == (1, 2, 2)  # z not pooled while its spacing is > 2x the finest
    assert full.resampling.separate_axis == 0
    assert {"3d_lowres", "3d_cascade_fullres", "2d"} <= set(plans.configurations)
    low = plans.configuration("3d_lowres")
    assert all(lo > fu for lo, fu in zip(low.spacing_mm[1:], full.spacing_mm[1:], strict=True))
    assert math.prod(low.patch_size) / math.prod(low.median_shape) >= 0.25
    assert plans.configuration("3d_cascade_fullres").previous_stage == "3d_lowres"
    norm = full.normalization[0]
    assert norm.scheme == "ct" and (norm.clip_low, norm.clip_high) == (40.0, 180.0)
    assert full.estimated_memory_gb <= 8.0 * 0.85


def test_single_slice_data_is_planned_2d_only() -> None:
    plans = get_planner("default").plan(make_fingerprint([(1.0, 0.5, 0.5)] * 10, [(1, 256, 256)] * 10))
    assert set(plans.configurations) == {"2d"}
    assert plans.configuration("2d").patch_size == (256, 256)
    assert "one slice: 2d only" in plans.why["configurations"]


def test_tiny_dataset_caps_the_batch_at_five_percent_of_its_voxels() -> None:
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 3, [(32, 32, 32)] * 3)
    config = get_planner("default").plan(fingerprint).configuration("3d_fullres")
    assert config.patch_size == (32, 32, 32)
    assert config.batch_size == 2  # 5% of 3 x 32^3 voxels is 0.15 patches: the minimum of 2 applies
    assert (
        "allows 0 -> 2 (minimum 2)" in config.why["batch_size"] or "allows 1 -> 2" in config.why["batch_size"]
    )
    big = make_fingerprint([(1.0, 1.0, 1.0)] * 400, [(32, 32, 32)] * 400)
    capped = get_planner("default").plan(big).configuration("3d_fullres")
    assert capped.batch_size == 20  # 5% of 400 images of one patch each
    assert MemoryBudget(8.0).largest_batch(capped.network, capped.patch_size, 1, 3) > 20


def test_patch_shrinks_until_the_memory_estimate_fits() -> None:
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 20, [(256, 256, 256)] * 20)
    for budget_gb in (2.0, 8.0, 24.0):
        config = get_planner("default", gpu_memory_gb=budget_gb).plan(fingerprint).configuration("3d_fullres")
        estimate = estimate_training_memory(
            config.network, config.patch_size, config.batch_size, 1, 3, activation_bytes=2
        )
        assert estimate.total <= budget_gb * 2**30 * 0.85
        # isotropic data stays (nearly) cubic: axes differ by at most one shrinking step
        assert max(config.patch_size) - min(config.patch_size) <= max(config.network.total_stride())
    small = get_planner("default", gpu_memory_gb=2.0).plan(fingerprint).configuration("3d_fullres")
    large = get_planner("default", gpu_memory_gb=24.0).plan(fingerprint).configuration("3d_fullres")
    assert math.prod(small.patch_size) < math.prod(large.patch_size)


def test_topology_follows_the_pooling_rules() -> None:
    net = topology((20, 160, 160), (4.0, 1.0, 1.0), 3, Architecture())
    # z spacing 4x the finest: kernel 1 and no pooling while y/x are pooled twice (spacing 1 -> 2 -> 4);
    # at a ratio of exactly 2, z still waits ("within 2x" is strict); then z pools while it stays >= 4 voxels
    assert net.kernel_sizes[:3] == ((1, 3, 3), (1, 3, 3), (3, 3, 3))
    assert [s[0] for s in net.strides] == [1, 1, 1, 2, 2, 1]
    assert [s[1] for s in net.strides] == [1, 2, 2, 2, 2, 2]
    assert net.features_per_stage[-1] == 320
    assert all(size // stride >= 4 for size, stride in zip((20, 160, 160), net.total_stride(), strict=True))


def test_same_fingerprint_gives_byte_identical_plans(tmp_path: Path) -> None:
    fingerprint = _abdominal_ct_like()
    for name, options in (("default", {}), ("resenc-m", {}), ("cpu", {"cpu_gflops": 50.0})):
        first, second = tmp_path / f"{name}-1.json", tmp_path / f"{name}-2.json"
        save_plans(get_planner(name, **options).plan(fingerprint), first)
        save_plans(get_planner(name, **options).plan(fingerprint), second)
        assert first.read_bytes() == second.read_bytes()


def test_residual_presets_use_more_blocks_and_scale_with_memory() -> None:
    fingerprint = _abdominal_ct_like()
    m = get_planner("resenc-m").plan(fingerprint).configuration("3d_fullres")
    big = get_planner("resenc-l").plan(fingerprint).configuration("3d_fullres")
    assert m.network.architecture == "residual"
    assert m.network.blocks_per_stage[:4] == (1, 3, 4, 6)
    assert set(m.network.decoder_blocks_per_stage) == {1}
    assert math.prod(big.patch_size) * big.batch_size > math.prod(m.patch_size) * m.batch_size
    assert m.estimated_memory_gb <= 8 * 0.85 and big.estimated_memory_gb <= 24 * 0.85


def test_cpu_preset_fits_the_time_budget() -> None:
    fingerprint = _hippocampus_like()
    for budget in ("1h", "4h"):
        plans = get_planner("cpu", time_budget=budget, cpu_gflops=50.0).plan(fingerprint)
        config = plans.configuration("3d_fullres")
        seconds = config.schedule.estimated_seconds_per_iteration
        assert seconds is not None
        total = seconds * config.schedule.epochs * config.schedule.iterations_per_epoch
        budget_s = 3600 if budget == "1h" else 4 * 3600
        assert 0.7 * budget_s <= total <= budget_s
        assert plans.planner_options["cpu_gflops"] == 50.0
    slow = get_planner("cpu", time_budget="1h", cpu_gflops=50.0).plan(fingerprint).configuration("3d_fullres")
    fast = (
        get_planner("cpu", time_budget="1h", cpu_gflops=400.0).plan(fingerprint).configuration("3d_fullres")
    )
    work = [
        math.prod(c.patch_size) * c.batch_size * c.network.features_per_stage[0] ** 2 for c in (slow, fast)
    ]
    assert work[0] < work[1]  # a faster machine gets a bigger configuration in the same time


def test_cpu_preset_prefers_a_whole_image_patch_then_enough_coverage_then_the_narrowest() -> None:
    """Widths 32, 24, 16 are all planned; the widest whose patch is the whole median image wins, else the
    widest covering half of it, else the narrowest; the schedule holds the minimum iterations."""
    fingerprint = _hippocampus_like()
    plans = get_planner("cpu", time_budget="1h", cpu_gflops=200.0).plan(fingerprint)
    config = plans.configuration("3d_fullres")
    assert plans.planner_options["minimum_iterations"] == 8000
    assert config.schedule.epochs * config.schedule.iterations_per_epoch >= 8000
    assert config.patch_size == (40, 56, 40) and config.network.features_per_stage[0] == 16
    assert "whole median image" in plans.why["cpu"]
    # with 4000 iterations wider networks fit the whole image too: the widest of them is kept
    roomy = get_planner("cpu", time_budget="1h", cpu_gflops=200.0, minimum_iterations=4000).plan(fingerprint)
    assert roomy.configuration("3d_fullres").patch_size == (40, 56, 40)
    assert roomy.configuration("3d_fullres").network.features_per_stage[0] == 24

    from planners.cpu import _choose_width

    a, b, c = (object(), "a", 0.3), (object(), "b", 0.6), (object(), "c", 0.9)
    assert _choose_width([a, b, c]) is b  # type: ignore[list-item]  # none whole: the widest with half
    assert _choose_width([a, (object(), "d", 0.4)]) is not a  # type: ignore[list-item]  # the narrowest
    assert _choose_width([b, (object(), "e", 1.0)])[1] == "e"  # type: ignore[list-item]  # whole image


def test_cpu_preset_validates_nnunets_share_of_an_epoch_and_charges_it() -> None:
    """20 validation batches per 100 training iterations (nnU-Net's 50 per 250), counted in the budget;
    the GPU presets keep nnU-Net's 50 per 250."""
    fingerprint = _hippocampus_like()
    config = (
        get_planner("cpu", time_budget="1h", cpu_gflops=200.0).plan(fingerprint).configuration("3d_fullres")
    )
    schedule = config.schedule
    assert (schedule.iterations_per_epoch, schedule.validation_iterations) == (100, 20)
    seconds = schedule.estimated_seconds_per_iteration
    assert seconds is not None
    epoch = seconds * schedule.iterations_per_epoch * (1 + 0.3 * 20 / 100)
    assert 3600 - epoch < schedule.epochs * epoch <= 3600
    default = get_planner("default").plan(fingerprint).configuration("3d_fullres").schedule
    assert (default.iterations_per_epoch, default.validation_iterations) == (250, 50)


def test_options_a_preset_does_not_take_are_refused() -> None:
    from autoseg.errors import UsageError

    with pytest.raises(UsageError, match="planner 'cpu' does not take gpu_memory_gb"):
        get_planner("cpu", gpu_memory_gb=8.0)
    with pytest.raises(UsageError, match="unknown planner 'fancy'; known: cpu, default, resenc-l, resenc-m"):
        get_planner("fancy")


def test_make_plans_records_budget_and_reasons() -> None:
    plans = make_plans(
        _hippocampus_like(20),
        MemoryBudget(4.0),
        Architecture(),
        planner="custom",
        options={"gpu_memory_gb": 4.0},
    )
    assert plans.planner == "custom" and plans.planner_options == {"gpu_memory_gb": 4.0}
    for config in plans.configurations.values():
        assert {
            "spacing_mm",
            "patch_size",
            "batch_size",
            "network",
            "normalization",
            "resampling",
            "cost",
        } <= set(config.why)
        assert "4 GB cuda budget" in config.why["cost"]


def test_throughput_measurement_warns_when_the_machine_is_busy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from autoseg.planning import budgets

    readings = iter([0.0, 1e6])  # others kept every core busy for the whole measurement
    monkeypatch.setattr(budgets, "machine_busy_seconds", lambda: next(readings))
    with caplog.at_level("WARNING", logger="autoseg.planning.budgets"):
        assert budgets.measure_conv_throughput(repeats=1) > 0
    assert "other processes used" in caplog.text and "--cpu-gflops" in caplog.text
    caplog.clear()
    monkeypatch.setattr(budgets, "machine_busy_seconds", lambda: None)  # no /proc/stat: no judgement
    with caplog.at_level("WARNING", logger="autoseg.planning.budgets"):
        budgets.measure_conv_throughput(repeats=1)
    assert "other processes used" not in caplog.text
    real = budgets.machine_busy_seconds()
    assert real is None or real > 0


@pytest.mark.parametrize(
    ("labels", "left_right"),
    [
        ({"background": 0, "Lung_L": 1, "Lung_R": 2, "Heart": 3}, False),
        ({"background": 0, "Lt Parotid": 1, "PAROTID_R": 2}, False),
        ({"background": 0, "kidney_left": 1, "kidney_right": 2}, False),
        ({"background": 0, "Lens_L": 1}, False),  # one side only: mirroring would put it on the other
        ({"background": 0, "Anterior": 1, "Posterior": 2}, True),
        ({"background": 0, "Vertebra_L5": 1, "Liver": 2}, True),  # L5 is a vertebra, not a side
    ],
)
def test_structures_with_a_side_turn_off_left_right_mirroring(
    labels: dict[str, int], left_right: bool
) -> None:
    fingerprint = make_fingerprint([(3.0, 0.8, 0.8)] * 4, [(40, 160, 160)] * 4, labels=labels)
    plans = get_planner("default").plan(fingerprint)
    for config in plans.configurations.values():
        assert config.mirroring.left_right is left_right
        reason = config.why["mirroring"]
        if left_right:
            assert config.mirroring.lateral_structures == ()
            assert "every axis mirrored" in reason
        else:
            assert "no mirroring along the patient's left-right axis" in reason
            assert set(config.mirroring.lateral_structures) == set(labels) - {"background", "Heart"}
    if labels.get("Lung_L"):
        assert "(Lung_L/Lung_R)" in plans.configurations["3d_fullres"].why["mirroring"]


def test_plans_record_each_channels_modality_and_foreground_range() -> None:
    fingerprint = make_fingerprint([(3.0, 0.8, 0.8)] * 4, [(40, 160, 160)] * 4, channel_names=("CT", "T2"))
    channels = get_planner("default").plan(fingerprint).channels
    assert [(c.name, c.modality) for c in channels] == [("CT", "CT"), ("T2", "MR")]
    assert (channels[0].foreground_percentile_00_5, channels[0].foreground_percentile_99_5) == (40.0, 180.0)
