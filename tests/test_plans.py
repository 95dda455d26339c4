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
from autoseg.plans import PLANS_SCHEMA_VERSION, load_plans, save_plans


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
    assert text.startswith('{\n  "schema_version": 1,')
    assert '"why"' in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["configurations"]["3d_fullres"].update(patch_size=[40, 150, 160]),
            r"configuration '3d_fullres': patch_size\[1\] = 150 is not divisible by the total stride 32 "
            r"along y; "
            r"use a multiple of 32 \(e\.g\. 128 or 160\)",
        ),
        (
            lambda d: d["configurations"]["3d_fullres"]["network"]["strides"].pop(),
            r"network\.strides has \d+ entries for \d+ stage\(s\)",
        ),
        (
            lambda d: d["configurations"]["3d_fullres"]["network"]["kernel_sizes"].__setitem__(0, [3, 3]),
            r"network\.kernel_sizes\[0\] = \[3, 3\] needs 3 positive entries",
        ),
        (
            lambda d: d["configurations"]["2d"].update(batch_size=0),
            r"'2d': batch_size 0 is outside 1\.\.4096",
        ),
        (
            lambda d: d["configurations"]["2d"]["normalization"].pop(),
            "normalization has 1 entries for 2 channel",
        ),
        (lambda d: d["configurations"]["2d"]["normalization"][0].update(std=-1.0), "std > 0"),
        (lambda d: d["configurations"]["2d"].update(previous_stage="3d_nope"), "previous_stage '3d_nope'"),
        (
            lambda d: d["configurations"]["2d"]["network"].update(architecture="transformer"),
            "architecture 'transformer'",
        ),
    ],
)
def test_edited_plans_are_validated_with_clear_errors(plans_file: Path, change: Any, message: str) -> None:
    _edit(plans_file, change)
    with pytest.raises(PlansError) as raised:
        load_plans(plans_file)
    assert str(plans_file) in raised.value.message
    assert any(re.search(message, line) for line in raised.value.details), raised.value.details


def test_schema_versions_and_malformed_files(plans_file: Path, tmp_path: Path) -> None:
    _edit(plans_file, lambda d: d.update(schema_version=PLANS_SCHEMA_VERSION + 1))
    with pytest.raises(PlansError, match=r"this autoseg reads up to 1\. Upgrade autoseg or re-plan"):
        load_plans(plans_file)
    _edit(plans_file, lambda d: d.update(schema_version=1, configurations={"2d": {"dims": 2}}))
    with pytest.raises(PlansError, match="malformed plans"):
        load_plans(plans_file)
    with pytest.raises(PlansError, match="run 'autoseg plan' first"):
        load_plans(tmp_path / "missing.json")
