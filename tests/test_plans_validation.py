"""A hand-edited plans.json is validated completely when read (issue 16, point 3): every value that would
fail later as an internal error, or silently give wrong volumes, is refused with the file and the key path."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_fingerprint

from autoseg.errors import PlansError
from autoseg.planning import get_planner
from autoseg.planning.registry import available_planners
from autoseg.plans import (
    INTERPOLATION_ORDERS,
    json_problems,
    load_plans,
    plans_from_dict,
    save_plans,
    validate_plans,
)

Change = Callable[[dict[str, Any]], None]


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    fingerprint = make_fingerprint([(3.0, 0.8, 0.8)] * 8, [(40, 160, 160)] * 8, channel_names=("CT",))
    path = tmp_path / "plans.json"
    save_plans(get_planner("default").plan(fingerprint), path)
    return path


def _full(data: dict[str, Any]) -> dict[str, Any]:
    configuration: dict[str, Any] = data["configurations"]["3d_fullres"]
    return configuration


def _set_kernels(data: dict[str, Any]) -> None:
    network = _full(data)["network"]
    network["kernel_sizes"] = [[99, 99, 99]] * len(network["kernel_sizes"])


DEFECTS: list[tuple[str, Change, str]] = [
    ("NaN spacing", lambda d: _full(d).update(spacing_mm=[math.nan, 0.8, 0.8]), r"spacing_mm\[0\]: .*finite"),
    ("Inf spacing", lambda d: _full(d).update(spacing_mm=[3.0, math.inf, 0.8]), r"spacing_mm\[1\]: .*finite"),
    ("huge spacing", lambda d: _full(d).update(spacing_mm=[1e30, 0.8, 0.8]), r"spacing_mm\[0\]: 1e\+30"),
    ("NaN mean", lambda d: _full(d)["normalization"][0].update(mean=math.nan), r"normalization\[0\]\.mean"),
    (
        "Inf clip",
        lambda d: _full(d)["normalization"][0].update(clip_high=math.inf),
        r"normalization\[0\]\.clip_high: .*finite",
    ),
    (
        "image_order 9",
        lambda d: _full(d)["resampling"].update(image_order=9),
        r"resampling\.image_order: 9 is not an interpolation order .*\(0, 1, 3\)",
    ),
    ("empty labels", lambda d: d.update(labels={}), r"^labels: empty"),
    ("label -1", lambda d: d["labels"].update(organ=-1), r"^labels\.organ: -1 is outside 0\.\.65535"),
    (
        "1024^3 patch",
        lambda d: _full(d).update(patch_size=[1024, 1024, 1024]),
        r"configurations\.3d_fullres\.patch_size\[0\]: 1024 exceeds 768",
    ),
    ("99^3 kernels", _set_kernels, r"network\.kernel_sizes\[0\]: \[99, 99, 99\] needs 3 entries in 1\.\.7"),
    (
        "batch_size 2.7",
        lambda d: _full(d).update(batch_size=2.7),
        r"configurations\.3d_fullres\.batch_size: must be an integer, got 2\.7",
    ),
    ("batch_size true", lambda d: _full(d).update(batch_size=True), r"batch_size: must be an integer"),
    (
        "unknown norm",
        lambda d: _full(d)["network"].update(norm="batch"),
        r"network\.norm: \"batch\" is not one of 'instance'",
    ),
    (
        "unknown nonlinearity",
        lambda d: _full(d)["network"].update(nonlinearity="gelu"),
        r"network\.nonlinearity: \"gelu\" is not one of 'leaky_relu'",
    ),
    (
        "misspelt key",
        lambda d: _full(d).update(batchsize=4),
        r"configurations\.3d_fullres\.batchsize: unknown key",
    ),
    (
        "missing field",
        lambda d: _full(d).pop("resampling"),
        r"configurations\.3d_fullres\.resampling: missing",
    ),
    ("string spacing", lambda d: _full(d).update(spacing_mm="3 0.8 0.8"), r"spacing_mm: must be a list"),
    (
        "orientation mode",
        lambda d: _full(d)["orientation"].update(mode="sideways"),
        r"orientation\.mode: \"sideways\" is not one of 'canonical', 'as-stored'",
    ),
    (
        "orientation threshold",
        lambda d: _full(d)["orientation"].update(oblique_threshold_deg=math.nan),
        r"orientation\.oblique_threshold_deg: .*finite",
    ),
    ("unknown device", lambda d: d.update(device="tpu"), r"^device: \"tpu\" is not one of"),
    (
        "previous_stage cycle",
        lambda d: _full(d).update(previous_stage="3d_fullres"),
        r"3d_fullres\.previous_stage: a cycle \(3d_fullres -> 3d_fullres\)",
    ),
    ("zero epochs", lambda d: _full(d)["schedule"].update(epochs=0), r"schedule\.epochs: 0 is outside"),
    (
        "zero features",
        lambda d: _full(d)["network"]["features_per_stage"].__setitem__(0, 0),
        r"network\.features_per_stage: \[0, .*must hold integers in 1\.\.4096",
    ),
]


def _edit(path: Path, change: Change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("change", "message"), [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS])
def test_a_hand_edited_plan_is_refused_naming_the_file_and_the_key_path(
    plans_file: Path, change: Change, message: str
) -> None:
    _edit(plans_file, change)
    with pytest.raises(PlansError) as raised:
        load_plans(plans_file)
    assert raised.value.message.startswith(f"{plans_file}: ")
    lines = [raised.value.message.removeprefix(f"{plans_file}: ").removeprefix("malformed plans: ")]
    assert any(re.search(message, line) for line in lines + raised.value.details), (
        lines + raised.value.details
    )


def test_the_first_problem_is_the_message_and_all_are_listed(plans_file: Path) -> None:
    _edit(plans_file, lambda d: _full(d).update(patch_size=[1024, 1024, 1024]))
    with pytest.raises(PlansError) as raised:
        load_plans(plans_file)
    assert "(and 2 more, listed below)" in raised.value.message
    assert [line.split(":")[0] for line in raised.value.details] == [
        f"configurations.3d_fullres.patch_size[{axis}]" for axis in range(3)
    ]


def test_a_negative_patch_gets_no_negative_suggestion(plans_file: Path) -> None:
    _edit(plans_file, lambda d: _full(d).update(patch_size=[-6, 160, 160]))
    with pytest.raises(
        PlansError, match=r"patch_size\[0\]: -6 must be a positive number of voxels"
    ) as raised:
        load_plans(plans_file)
    assert "e.g." not in raised.value.message


def test_a_schema_version_string_is_not_told_to_upgrade(plans_file: Path) -> None:
    _edit(plans_file, lambda d: d.update(schema_version="1"))
    with pytest.raises(
        PlansError, match=r'schema_version: must be an integer from 1 to \d+, got "1"'
    ) as raised:
        load_plans(plans_file)
    assert "Upgrade autoseg" not in raised.value.message


def test_a_plan_inside_another_container_is_validated_the_same_way(plans_file: Path) -> None:
    data = json.loads(plans_file.read_text())
    _full(data)["batch_size"] = 2.7
    with pytest.raises(PlansError, match=r"^model\.zip:plans\.json: malformed plans: .*batch_size"):
        plans_from_dict(data, "model.zip:plans.json")


@pytest.mark.parametrize("planner", available_planners())
@pytest.mark.parametrize(
    ("spacing", "shape"), [((1.0, 0.7, 0.7), (400, 512, 512)), ((3.0, 0.8, 0.8), (40, 160, 160))]
)
def test_every_presets_plan_passes_the_checks(
    planner: str, spacing: tuple[float, float, float], shape: tuple[int, int, int]
) -> None:
    fingerprint = make_fingerprint([spacing] * 8, [shape] * 8, channel_names=("CT",))
    options = {"cpu_gflops": 100.0} if planner == "cpu" else {}
    made = get_planner(planner, **options).plan(fingerprint)
    assert validate_plans(made) == []
    assert json_problems(json.loads(json.dumps(made.to_json()))) == []


def test_the_interpolation_orders_allowed_are_the_ones_resampling_has() -> None:
    from autoseg.preprocessing.resample import resample_volume

    volume = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    for order in INTERPOLATION_ORDERS:
        assert resample_volume(volume, (2, 3, 3), order).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="interpolation order"):
        resample_volume(volume, (2, 3, 3), 2)
