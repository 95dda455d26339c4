"""The cpu preset's time model: the fit's arithmetic, its record in plans.json, its reuse, the calibration."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from helpers import make_fingerprint

from autoseg.errors import PlansError
from autoseg.planning import get_planner
from autoseg.planning import time_model as tm
from autoseg.planning.budgets import TimeBudget
from autoseg.planning.cost import training_gflops
from autoseg.planning.stage import PlanOptions, planner_kwargs
from autoseg.planning.time_model import CalibrationPoint, TimeModel, fit_time_model, training_melements
from autoseg.plans import NetworkPlan, save_plans
from autoseg.workdir import Workdir

NET = NetworkPlan(
    "plain", 3, (8, 16), ((3, 3, 3),) * 2, ((1, 1, 1), (2, 2, 2)), (2, 2), (2,), deep_supervision=True
)


def _points(overhead: float, per_gflop: float, per_melement: float) -> list[CalibrationPoint]:
    shapes = [(1.0, 2.0), (40.0, 30.0), (60.0, 15.0), (10.0, 25.0)]
    return [
        CalibrationPoint(f"p{i}", g, e, overhead + per_gflop * g + per_melement * e)
        for i, (g, e) in enumerate(shapes)
    ]


def test_fit_recovers_the_coefficients_of_exact_measurements() -> None:
    model = fit_time_model(_points(0.04, 0.005, 0.002), "bfloat16")
    assert model.overhead_s == pytest.approx(0.04, rel=1e-6)
    assert model.seconds_per_gflop == pytest.approx(0.005, rel=1e-6)
    assert model.seconds_per_melement == pytest.approx(0.002, rel=1e-6)
    assert model.precision == "bfloat16" and len(model.points) == 4
    assert model.seconds(100.0, 50.0) == pytest.approx(0.04 + 0.5 + 0.1)


def test_two_points_give_the_line_through_them() -> None:
    small, large = CalibrationPoint("a", 10.0, 5.0, 0.15), CalibrationPoint("b", 110.0, 40.0, 0.65)
    model = fit_time_model([small, large])
    assert model.seconds_per_melement == 0.0
    assert model.seconds_per_gflop == pytest.approx(0.005)
    assert model.overhead_s == pytest.approx(0.1)
    assert model.seconds(10.0, 5.0) == pytest.approx(0.15) and model.seconds(110.0, 40.0) == pytest.approx(
        0.65
    )


def test_fit_keeps_coefficients_non_negative_and_the_work_term_positive() -> None:
    # time falls with work: an unconstrained fit would take a negative slope
    points = [CalibrationPoint("a", 10.0, 1.0, 0.5), CalibrationPoint("b", 20.0, 2.0, 0.4)]
    model = fit_time_model(points)
    assert model.overhead_s >= 0 and model.seconds_per_gflop > 0 and model.seconds_per_melement >= 0
    noisy = [
        CalibrationPoint(p.name, p.gflop, p.melements, p.seconds * f)
        for p, f in zip(_points(0.05, 0.004, 0.003), (1.05, 0.95, 1.02, 0.98), strict=True)
    ]
    fitted = fit_time_model(noisy)
    for point in noisy:  # least squares on relative error: every point within a few percent
        assert fitted.seconds(point.gflop, point.melements) == pytest.approx(point.seconds, rel=0.08)


def test_fit_refuses_too_few_or_empty_points() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        fit_time_model([CalibrationPoint("a", 1.0, 1.0, 1.0)])
    with pytest.raises(ValueError, match="positive"):
        fit_time_model([CalibrationPoint("a", 1.0, 1.0, 0.0), CalibrationPoint("b", 2.0, 1.0, 1.0)])


def test_model_round_trips_through_json_and_bad_records_are_refused() -> None:
    model = fit_time_model(_points(0.04, 0.005, 0.002))
    again = TimeModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again.seconds(50.0, 20.0) == pytest.approx(model.seconds(50.0, 20.0), rel=1e-5)
    assert [p.name for p in again.points] == ["p0", "p1", "p2", "p3"]
    with pytest.raises(PlansError, match="malformed"):
        TimeModel.from_json({"overhead_s": 0.1})
    with pytest.raises(PlansError, match="negative or zero"):
        TimeModel.from_json({"overhead_s": 0.1, "seconds_per_gflop": -1.0})


def test_time_budget_uses_every_term_of_the_model() -> None:
    model = TimeModel(0.05, 0.004, 0.003)
    budget = TimeBudget(3600.0, model, minimum_iterations=1000)
    gflop = training_gflops(NET, (16, 16, 16), 2, 1, 3)
    melements = training_melements(NET, (16, 16, 16), 2, 1, 3)
    assert melements > 0
    seconds = budget.seconds_per_iteration(NET, (16, 16, 16), 2, 1, 3)
    assert seconds == pytest.approx(0.05 + 0.004 * gflop + 0.003 * melements)
    batch = budget.largest_batch(NET, (16, 16, 16), 1, 3)
    assert batch >= 1
    per_iteration = 3.6 / (1 + 0.3 * 50 / 100)  # 1000 iterations in the hour, each epoch's validation too
    assert budget.epoch_factor == pytest.approx(1.15)
    assert budget.seconds_per_iteration(NET, (16, 16, 16), batch, 1, 3) <= per_iteration + 1e-9
    assert budget.seconds_per_iteration(NET, (16, 16, 16), batch + 1, 1, 3) > per_iteration
    seconds = budget.seconds_per_iteration(NET, (16, 16, 16), batch, 1, 3)
    schedule = budget.schedule(NET, (16, 16, 16), batch, 1, 3)
    assert schedule.epochs == int(3600 // (seconds * 100 * 1.15))  # validation is charged to the budget
    _, why = budget.describe(NET, (16, 16, 16), 2, 1, 3)
    assert "million kept activations" in why and "ms/GFLOP" in why


def _hippocampus_like() -> object:
    return make_fingerprint([(1.0, 1.0, 1.0)] * 20, [(36, 50, 35)] * 20)


def test_cpu_plans_record_the_measured_model_and_a_replan_reuses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fitted = fit_time_model(_points(0.05, 0.004, 0.003), "float32")
    calls: list[str] = []

    def fake_measure(*, precision: str = "auto", repeats: int = 3) -> TimeModel:
        calls.append(precision)
        return fitted

    monkeypatch.setattr("planners.cpu.measure_time_model", fake_measure)
    monkeypatch.setattr("planners.cpu.check_plan", lambda *args, **kwargs: None)  # the estimate holds
    plans = get_planner("cpu", time_budget="1h").plan(_hippocampus_like())  # type: ignore[arg-type]
    assert calls == ["auto"]
    recorded = plans.planner_options["time_model"]
    assert "cpu_gflops" not in plans.planner_options
    assert recorded == fitted.to_json() and len(recorded["points"]) == 4
    config = plans.configuration("3d_fullres")
    gflop = training_gflops(config.network, config.patch_size, config.batch_size, 1, len(plans.labels))
    melements = training_melements(config.network, config.patch_size, config.batch_size, 1, len(plans.labels))
    assert config.schedule.estimated_seconds_per_iteration == pytest.approx(
        fitted.seconds(gflop, melements), abs=1e-4
    )
    assert "ms/GFLOP" in plans.why["cpu"]
    work = Workdir(tmp_path)
    save_plans(plans, work.plans_path)
    kwargs = planner_kwargs(PlanOptions(), "cpu", "cpu", tmp_path)
    assert kwargs == {"time_model": recorded}
    replanned = get_planner("cpu", time_budget="1h", **kwargs).plan(_hippocampus_like())  # type: ignore[arg-type]
    assert calls == ["auto"]  # not measured again
    assert replanned.configuration("3d_fullres") == config
    assert planner_kwargs(PlanOptions(cpu_gflops=80.0), "cpu", "cpu", tmp_path) == {"cpu_gflops": 80.0}


def test_a_replan_keeps_the_width_with_the_minimum_it_was_chosen_for(tmp_path: Path) -> None:
    """A re-plan with the same budget and no --min-iterations keeps the previous plan's width *and* its
    minimum (the width was chosen for that minimum; the preset's default next to it would be a plan nobody
    asked for); naming another minimum chooses the width again."""
    plans = get_planner("cpu", time_budget="1h", cpu_gflops=50.0).plan(_hippocampus_like())  # type: ignore[arg-type]
    model = fit_time_model(_points(0.05, 0.004, 0.003), "float32").to_json()
    options = {"time_model": model, "width": 16, "time_budget_s": 3600.0, "minimum_iterations": 2000}
    save_plans(dataclasses.replace(plans, planner_options=options), Workdir(tmp_path).plans_path)
    kept = planner_kwargs(PlanOptions(time_budget="1h"), "cpu", "cpu", tmp_path)
    assert kept == {"time_budget": "1h", "time_model": model, "width": 16, "minimum_iterations": 2000}
    same = planner_kwargs(PlanOptions(time_budget="1h", minimum_iterations=2000), "cpu", "cpu", tmp_path)
    assert same == {"time_budget": "1h", "minimum_iterations": 2000, "time_model": model, "width": 16}
    other = planner_kwargs(PlanOptions(time_budget="1h", minimum_iterations=3000), "cpu", "cpu", tmp_path)
    assert other == {"time_budget": "1h", "minimum_iterations": 3000, "time_model": model}
    assert planner_kwargs(PlanOptions(time_budget="2h"), "cpu", "cpu", tmp_path) == {
        "time_budget": "2h",
        "time_model": model,
    }


def test_a_given_throughput_is_the_one_parameter_model() -> None:
    plans = get_planner("cpu", time_budget="1h", cpu_gflops=50.0).plan(_hippocampus_like())  # type: ignore[arg-type]
    assert plans.planner_options["cpu_gflops"] == 50.0 and "time_model" not in plans.planner_options
    config = plans.configuration("3d_fullres")
    gflop = training_gflops(config.network, config.patch_size, config.batch_size, 1, len(plans.labels))
    assert config.schedule.estimated_seconds_per_iteration == pytest.approx(gflop / 50.0 + 0.05, abs=1e-4)


def test_calibration_times_real_steps_in_the_training_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = (
        ("a", NET, (8, 8, 8), 1),
        ("b", NET, (16, 16, 16), 1),
        (
            "c",
            NetworkPlan("plain", 3, (16, 32), ((3, 3, 3),) * 2, ((1, 1, 1), (2, 2, 2)), (2, 2), (2,)),
            (16, 16, 16),
            2,
        ),
    )
    monkeypatch.setattr(tm, "CALIBRATION_NETWORKS", tiny)
    model = tm.measure_time_model(precision="float32", repeats=1)
    assert model.precision == "float32"
    assert [p.name for p in model.points] == ["a", "b", "c"]
    assert all(p.seconds > 0 and p.gflop > 0 and p.melements > 0 for p in model.points)
    assert model.seconds_per_gflop > 0
    assert tm.training_precision_on_cpu("bfloat16") == "bfloat16"
    assert tm.training_precision_on_cpu("auto") in ("float32", "bfloat16")
    steps = tm.time_training_step(NET, (8, 8, 8), 1, precision="bfloat16", repeats=2)
    assert len(steps) == 2 and all(math.isfinite(s) and s > 0 for s in steps)


def _slow_steps(factor: float) -> object:
    """A time_training_step that reports ``factor`` x the fitted model's estimate for every configuration."""
    fitted = fit_time_model(_points(0.05, 0.004, 0.003), "float32")

    def fake(net, patch, batch, *, in_channels=1, num_classes=3, precision="float32", repeats=3):  # type: ignore[no-untyped-def]
        gflop = training_gflops(net, patch, batch, in_channels, num_classes)
        melements = training_melements(net, patch, batch, in_channels, num_classes)
        return [factor * fitted.seconds(gflop, melements)] * repeats

    return fake


def test_a_check_within_ten_percent_keeps_the_model_and_beyond_it_rescales(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fitted = fit_time_model(_points(0.05, 0.004, 0.003), "float32")
    monkeypatch.setattr(tm, "time_training_step", _slow_steps(1.08))
    assert tm.check_plan(fitted, "3d_fullres", NET, (16, 16, 16), 2, 1, 3) is None
    monkeypatch.setattr(tm, "time_training_step", _slow_steps(1.5))
    rescaled = tm.check_plan(fitted, "3d_fullres", NET, (16, 16, 16), 2, 1, 3)
    assert rescaled is not None and len(rescaled.checks) == 1
    check = rescaled.checks[0]
    assert rescaled.seconds(check.gflop, check.melements) == pytest.approx(check.seconds, rel=1e-9)
    assert check.seconds == pytest.approx(1.5 * fitted.seconds(check.gflop, check.melements), rel=1e-9)
    assert rescaled.overhead_s == pytest.approx(1.5 * fitted.overhead_s)
    assert TimeModel.from_json(json.loads(json.dumps(rescaled.to_json()))) == TimeModel.from_json(
        rescaled.to_json()
    )
    assert "rescaled on 1 timed plan" in rescaled.describe()


def test_the_cpu_planner_times_its_plan_and_replans_when_the_estimate_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fitted model is 2x optimistic: the planner times its choice, rescales, re-plans a cheaper
    configuration, whose check then holds; the plan's estimate is what was measured, and a re-plan from the
    recorded model gives the same plan without timing anything."""
    fitted = fit_time_model(_points(0.05, 0.004, 0.003), "float32")
    monkeypatch.setattr("planners.cpu.measure_time_model", lambda **kwargs: fitted)
    monkeypatch.setattr(tm, "time_training_step", _slow_steps(2.0))
    optimistic = get_planner("cpu", time_budget="1h", time_model=fitted.to_json()).plan(_hippocampus_like())  # type: ignore[arg-type]
    plans = get_planner("cpu", time_budget="1h").plan(_hippocampus_like())  # type: ignore[arg-type]
    recorded = plans.planner_options["time_model"]
    assert len(recorded["checks"]) >= 1
    config, before = plans.configuration("3d_fullres"), optimistic.configuration("3d_fullres")
    gflop = training_gflops(config.network, config.patch_size, config.batch_size, 1, len(plans.labels))
    melements = training_melements(config.network, config.patch_size, config.batch_size, 1, len(plans.labels))
    truth = 2.0 * fitted.seconds(gflop, melements)
    assert config.schedule.estimated_seconds_per_iteration == pytest.approx(truth, rel=0.1)
    cost = training_gflops(before.network, before.patch_size, before.batch_size, 1, len(plans.labels))
    assert gflop < cost  # a cheaper plan for the same budget
    assert "rescaled on" in plans.why["cpu"]

    def no_timing(*args: object, **kwargs: object) -> list[float]:
        raise AssertionError("a re-plan from the recorded model must not time anything")

    monkeypatch.setattr(tm, "time_training_step", no_timing)
    again = get_planner("cpu", time_budget="1h", time_model=recorded).plan(_hippocampus_like())  # type: ignore[arg-type]
    assert again.configuration("3d_fullres") == config
