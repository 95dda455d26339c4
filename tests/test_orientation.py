"""Canonical orientation: every image is brought to one orientation before the network sees it, and back."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import make_fingerprint

from autoseg.planning import get_planner
from autoseg.plans import OrientationPlan, load_plans, migrate_v3, save_plans


def test_schema_3_plans_keep_the_stored_array_order(tmp_path: Path) -> None:
    path = tmp_path / "plans.json"
    save_plans(get_planner("default").plan(make_fingerprint([(3.0, 0.8, 0.8)] * 4, [(40, 96, 96)] * 4)), path)
    data = json.loads(path.read_text())
    assert all(c["orientation"]["mode"] == "canonical" for c in data["configurations"].values())
    data["schema_version"] = 3
    for config in data["configurations"].values():
        del config["orientation"]
    path.write_text(json.dumps(data))
    plans = load_plans(path)
    assert all(c.orientation == OrientationPlan(mode="as-stored") for c in plans.configurations.values())
    assert migrate_v3({"schema_version": 3, "configurations": [1]})["schema_version"] == 4
