"""plans.json: round trip, schema versions, and clear errors for a user-edited plan."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import make_fingerprint

from autoseg.errors import PlansError
from autoseg.planning import get_planner
from autoseg.plans import (
    PLANS_SCHEMA_VERSION,
    MirroringPlan,
    channel_modality,
    left_right_axis,
    load_plans,
    migrate_v1,
    save_plans,
)


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    fingerprint = make_fingerprint([(3.0, 0.8, 0.8)] * 8, [(40, 160, 160)] * 8, channel_names=("CT", "PET"))
    path = tmp_path / "plans.json"
    save_plans(get_planner("default").plan(fingerprint), path)
    return path


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip_and_readable_json(plans_file: Path) -> None:
    plans = load_plans(plans_file)
    assert plans.schema_version == PLANS_SCHEMA_VERSION
    assert plans.channel_names == ("CT", "PET")
    again = plans_file.with_name("again.json")
    save_plans(plans, again)
    assert again.read_bytes() == plans_file.read_bytes()
    text = plans_file.read_text()
    assert text.startswith(f'{{\n  "schema_version": {PLANS_SCHEMA_VERSION},')
    assert '"why"' in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["configurations"]["3d_fullres"].update(patch_size=[40, 150, 160]),
            r"configurations\.3d_fullres\.patch_size\[1\]: 150 is not divisible by the total stride 32 "
            r"along y; "
            r"use a multiple of 32 \(e\.g\. 128 or 160\)",
        ),
        (
            lambda d: d["configurations"]["3d_fullres"]["network"]["strides"].pop(),
            r"network\.strides: \d+ entries for \d+ stage\(s\)",
        ),
        (
            lambda d: d["configurations"]["3d_fullres"]["network"]["kernel_sizes"].__setitem__(0, [3, 3]),
            r"network\.kernel_sizes\[0\]: \[3, 3\] needs 3 entries",
        ),
        (
            lambda d: d["configurations"]["2d"].update(batch_size=0),
            r"configurations\.2d\.batch_size: 0 is outside 1\.\.4096",
        ),
        (
            lambda d: d["configurations"]["2d"]["normalization"].pop(),
            "normalization: 1 entries for 2 channel",
        ),
        (lambda d: d["configurations"]["2d"]["normalization"][0].update(std=-1.0), "std > 0"),
        (lambda d: d["configurations"]["2d"].update(previous_stage="3d_nope"), "previous_stage: '3d_nope'"),
        (
            lambda d: d["configurations"]["2d"]["network"].update(architecture="transformer"),
            r"network\.architecture: .transformer. is not one of 'plain', 'residual'",
        ),
    ],
)
def test_edited_plans_are_validated_with_clear_errors(plans_file: Path, change: Any, message: str) -> None:
    _edit(plans_file, change)
    with pytest.raises(PlansError) as raised:
        load_plans(plans_file)
    assert str(plans_file) in raised.value.message
    lines = [raised.value.message, *raised.value.details]
    assert any(re.search(message, line) for line in lines), lines


def test_schema_versions_and_malformed_files(plans_file: Path, tmp_path: Path) -> None:
    _edit(plans_file, lambda d: d.update(schema_version=PLANS_SCHEMA_VERSION + 1))
    with pytest.raises(PlansError, match=r"this autoseg reads up to 4\. Upgrade autoseg or re-plan"):
        load_plans(plans_file)
    _edit(plans_file, lambda d: d.update(schema_version=1, configurations={"2d": {"dims": 2}}))
    with pytest.raises(PlansError, match="malformed plans"):
        load_plans(plans_file)
    with pytest.raises(PlansError, match="run 'autoseg plan' first"):
        load_plans(tmp_path / "missing.json")


def _as_schema_1(data: dict[str, Any]) -> None:
    """What a schema-1 plans.json held: no channel records, no mirroring plan."""
    data.update(schema_version=1)
    del data["channels"]
    for config in data["configurations"].values():
        del config["mirroring"]
        del config["why"]["mirroring"]


def test_schema_1_plans_load_with_left_right_mirroring_kept(plans_file: Path) -> None:
    _edit(plans_file, _as_schema_1)
    plans = load_plans(plans_file)
    assert plans.schema_version == PLANS_SCHEMA_VERSION
    assert all(c.mirroring == MirroringPlan(left_right=True) for c in plans.configurations.values())
    assert [(c.name, c.modality, c.foreground_median) for c in plans.channels] == [
        ("CT", "CT", None),
        ("PET", "other", None),
    ]


def test_migrate_v1_adds_only_the_new_fields() -> None:
    old = {"schema_version": 1, "channel_names": ["MRI"], "configurations": {"2d": {"dims": 2}}}
    new = migrate_v1(json.loads(json.dumps(old)))
    assert new["schema_version"] == 2
    kept = {"left_right": True, "lateral_structures": []}
    assert new["configurations"]["2d"] == {"dims": 2, "mirroring": kept}
    assert new["channels"] == [{"name": "MRI", "modality": "MR"}]
    malformed = migrate_v1({"schema_version": 1, "configurations": [1]})  # left for validation to report
    assert malformed["channels"] == []


def test_migrate_v1_keeps_a_ct_channels_range_and_leaves_its_input_alone() -> None:
    ct = {"scheme": "ct", "clip_low": -980.0, "clip_high": 900.0, "mean": 40.0, "std": 300.0}
    old = {
        "schema_version": 1,
        "channel_names": ["CT"],
        "configurations": {"3d_fullres": {"normalization": [ct]}},
    }
    before = json.dumps(old, sort_keys=True)
    new = migrate_v1(old)
    assert json.dumps(old, sort_keys=True) == before
    assert new["channels"] == [
        {
            "name": "CT",
            "modality": "CT",
            "foreground_percentile_00_5": -980.0,
            "foreground_percentile_99_5": 900.0,
        }
    ]


@pytest.mark.parametrize(
    ("name", "modality"),
    [("CT", "CT"), ("ct_arterial", "CT"), ("MRI", "MR"), ("T2", "MR"), ("t1gd", "MR"), ("FLAIR", "MR"),
     ("ADC", "MR"), ("PET", "other"), ("noNorm", "other")],
)  # fmt: skip
def test_channel_modality_from_the_name(name: str, modality: str) -> None:
    assert channel_modality(name) == modality


@pytest.mark.parametrize(
    ("direction", "axis"),
    [
        ((1, 0, 0, 0, 1, 0, 0, 0, 1), 2),  # LPS, (z, y, x) arrays: x is left-right
        ((1, 0, 0, 0, -1, 0, 0, 0, -1), 2),  # RAS: x flipped, still axis 2
        ((0, 0, 1, 0, 1, 0, 1, 0, 0), 0),  # sagittal-first file: array axis 0 runs left-right
        ((0, 1, 0, 0, 0, 1, -1, 0, 0), 0),  # permuted and flipped
        ((1, 0, 0, 0, 0.94, -0.34, 0, 0.34, 0.94), 2),  # oblique about z: largest |x| component
        ((1, 0, 0, 0, 0.34, -0.94, 0, 0.94, 0.34), 1),  # rotated past 45 degrees: axis 1 is closest to x
    ],
)
def test_left_right_axis_follows_the_direction(direction: tuple[float, ...], axis: int) -> None:
    assert left_right_axis(direction) == axis
    kept = MirroringPlan(left_right=False).axes(3, direction)
    assert axis not in kept and len(kept) == 2
    assert MirroringPlan().axes(3, direction) == (0, 1, 2)
    assert MirroringPlan(left_right=False).axes(2, direction) == tuple(a for a in (0, 1) if a != axis - 1)
