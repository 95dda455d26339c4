"""Where one ``autoseg predict`` run's time goes, stage by stage (after ``bench_predict_setup.py``).

Start-up: ``python -c "import <predict's modules>"`` (interpreter start and exit included), alternating with
the same imports plus ``monai.inferers.utils`` (what predict imported before it slid its own windows), 3 runs
each; ``autoseg --version``. Then, in this process, with the preset's own settings and fold selection
(:func:`autoseg.inference.stage.inference_settings`, :func:`~autoseg.inference.stage.fold_selection`):
loading the model file, building the networks, and per case reading, preprocessing, the network (sliding
window, folds, mirrors), restoring to the original grid, argmax + write, one after another (the CLI overlaps
reading and writing with the network in two threads). ``fast`` runs on the 20 hippocampus inputs,
``accurate`` on the 5. Recorded in ``ROOT/results.json`` under ``profile/<preset>``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from predict_layout import CONFIGURATION, Layout, autoseg_command, fresh_folder

from autoseg.inference.ensemble import labels_from_probabilities, predict_probabilities
from autoseg.inference.inputs import find_input_cases, read_input_case
from autoseg.inference.model_file import load_model
from autoseg.inference.sliding_window import window_starts
from autoseg.inference.stage import PredictRequest, fold_selection, inference_settings
from autoseg.io import write_labels
from autoseg.preprocessing.case import preprocess_case, restore_probabilities

PREDICT_MODULES = "autoseg.cli.main, autoseg.inference.stage, autoseg.cli.inference_commands"


def import_seconds(repeats: int) -> dict[str, Any]:
    """Seconds to start Python and import predict's modules, without and with MONAI's sliding window."""
    imports: list[float] = []
    with_monai: list[float] = []
    for _ in range(repeats):
        for code, times in (
            (PREDICT_MODULES, imports),
            (f"{PREDICT_MODULES}, monai.inferers.utils", with_monai),
        ):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {code}"], check=True)
            times.append(time.perf_counter() - started)
    started = time.perf_counter()
    subprocess.run([*autoseg_command(), "--version"], check=True, capture_output=True)
    return {
        "python_imports_s": imports,
        "python_imports_with_monai_s": with_monai,
        "autoseg_version_cli_s": time.perf_counter() - started,
    }


def window_count(shape: Sequence[int], patch: Sequence[int], step: float) -> int:
    """Windows the sliding window visits over ``shape`` (axes shorter than the patch are padded to it)."""
    return math.prod(len(window_starts(max(s, p), p, step)) for s, p in zip(shape, patch, strict=True))


class StageTimer:
    """Seconds per stage, summed over the cases."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        begun = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - begun


def stage_seconds(request: PredictRequest) -> dict[str, Any]:
    """Each stage's seconds for every case of ``request.inputs``, the stages run one after another."""
    timed = StageTimer()
    chosen, limit = fold_selection(request)
    with timed("load model file (read, checksums, unpickle weights)"):
        model = load_model(request.model, configuration=CONFIGURATION, folds=chosen, fold_limit=limit)
    with timed("build networks"):
        networks = model.networks("cpu")
    plan = model.plans.configuration(CONFIGURATION)
    settings = inference_settings(request, plan, "cpu")
    cases = find_input_cases(request.inputs, len(model.plans.channel_names))
    windows = 0
    for case in cases:
        with timed("read"):
            image, geometry = read_input_case(case)
        with timed("preprocess"):
            prepared = preprocess_case(image, None, geometry, plan, in_place=True)
        windows += window_count(prepared.image.shape[1:], plan.patch_size, settings.step)
        with timed("network (sliding window, folds, mirrors)"):
            probabilities = predict_probabilities(
                networks, prepared.image, plan.patch_size, len(model.plans.labels), settings
            )
        with timed("restore to the original grid"):
            restored = restore_probabilities(probabilities, prepared.properties)
        with timed("argmax + write"):
            labels = labels_from_probabilities(restored)
            write_labels(labels, geometry, request.output / f"{case.identifier}.nii.gz")
    return {"cases": len(cases), "folds": len(model.folds), "windows": windows, "stages_s": timed.seconds}


def main(argv: Sequence[str] | None = None) -> None:
    """Profile one preset and record it."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="the folder bench_predict_setup.py filled")
    parser.add_argument("--preset", choices=("fast", "accurate"), required=True)
    parser.add_argument("--folds", type=int, help="use folds 0..N-1 (default: the preset's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="start-up timings")
    args = parser.parse_args(argv)
    layout = Layout(args.root)
    inputs = layout.inputs("hippo_subset" if args.preset == "accurate" else "hippo")
    out = fresh_folder(layout.outputs(f"profile-{args.preset}"))
    entry = import_seconds(args.repeats)
    folds = None if args.folds is None else tuple(str(f) for f in range(args.folds))
    request = PredictRequest(
        inputs, out, layout.model("hippo"), preset=args.preset, device="cpu", folds=folds
    )
    entry |= stage_seconds(request)
    layout.record(f"profile/{args.preset}", entry)
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
