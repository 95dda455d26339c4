"""``autoseg demo``: the whole pipeline on a small built-in synthetic dataset.

Synthesise the dataset (``WORKDIR/raw``), verify, fingerprint, plan, preprocess, train fold 0 for a short
schedule and validate it, choose the configuration and post-processing, then predict two held-out synthetic
cases (``WORKDIR/heldout``) as NIfTI with a reviewer report each, predict one of them again from a DICOM
series as NIfTI + RTSTRUCT, and evaluate the NIfTI predictions against their labels.

The dataset is the catalogue's ``synthetic-demo`` entry, an *easy* synthetic preset (``difficulty: easy``:
a larger lesion, always 70 HU darker than its organ, a neighbour 60 HU brighter, half the noise) so that the
short CPU training segments every class of the held-out cases (the aim: Dice >= 0.7 each,
``tests/test_demo.py``); with the standard preset's contrasts (lesion 25-45 HU from the organ, brighter in a
quarter of the cases) a few minutes of training learnt the organ only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

from autoseg.dataset.catalogue import default_catalogue_path, load_catalogue
from autoseg.dataset.synthetic import SynthConfig, write_synthetic_dataset
from autoseg.dicom.export import write_image_series
from autoseg.errors import CatalogueError
from autoseg.evaluation.best_configuration import run_find_best_configuration
from autoseg.evaluation.stage import EvaluateRequest, run_evaluate
from autoseg.fingerprint import Fingerprint
from autoseg.inference.outputs import OutputOptions
from autoseg.inference.stage import PredictRequest, run_predict
from autoseg.io import read_image, read_json
from autoseg.pipeline import plan_and_preprocess
from autoseg.planning.stage import PlanOptions, default_device
from autoseg.plans import Plans
from autoseg.preprocessing.stage import PreprocessOptions
from autoseg.training.config import TrainConfig
from autoseg.training.loop import train_fold
from autoseg.workdir import CaseFolder, Workdir

logger = logging.getLogger(__name__)

DEMO_DATASET = "synthetic-demo"
"""The catalogue entry (``datasets.json``) whose generator parameters make the demo dataset."""

DEMO_EPOCHS = 40
DEMO_ITERATIONS = 50
"""A short schedule: 2000 iterations. With 800 (16 x 50) the validation Dice after the last epoch was
organ 0.87, lesion 0.00, neighbour 0.91 (2026-12-02, an AMX Xeon, quiet): the organ is learnt first, and the
lesion (as dark as the clipped fat and air around the body once normalised: -2.0 against -2.2 z) and the
neighbour only from epochs 12-18 of a 40-epoch schedule; with 40 epochs fold 0's final validation gave organ
0.90, lesion 0.90, neighbour 0.92 (3.2 minutes for ``autoseg train`` there, on 2 cores; about three times
that on an AVX2-only CPU, which trains in float32)."""

HELDOUT_CASES = 2
"""Held-out synthetic cases (another seed) that the demo predicts and evaluates."""

DEMO_TIME_BUDGET = "10m"
"""On a CPU the demo plans with the ``cpu`` preset for this training time..."""

DEMO_MINIMUM_ITERATIONS = 4000
"""...for this many iterations (the preset's default is 8000; the demo's fixed 2000-iteration schedule was
tuned on the patch that 4000 give, 20x32x32, where 8000 would plan 12x20x20)..."""

DEMO_CPU_GFLOPS = 200.0
"""...at this fixed throughput rather than a measured one, so that the demo plans the same network on every
machine and at any load (a measurement on a busy machine planned a 10 x 12 x 16 patch that learnt nothing)."""


def demo_dataset_config(catalogue_path: Path | None = None) -> SynthConfig:
    """The generator parameters of the :data:`DEMO_DATASET` entry of the catalogue (default: the project's
    ``datasets.json``).

    Raises:
        CatalogueError: the catalogue is missing or malformed, or the entry is not a synthetic dataset.
    """
    catalogue = load_catalogue(catalogue_path or default_catalogue_path())
    generator = catalogue.entry(DEMO_DATASET).generator
    if generator is None:
        raise CatalogueError(f"{catalogue.path}: '{DEMO_DATASET}' must be a synthetic entry")
    return generator


def run_demo(
    workdir: Path, *, catalogue_path: Path | None = None, num_workers: int = 1, show_progress: bool = True
) -> list[str]:
    """Run every available stage on the demo dataset in ``workdir``; return a summary, one line per stage.

    Re-running is cheap: each stage skips work that is up to date.

    Args:
        catalogue_path: the catalogue holding the :data:`DEMO_DATASET` entry (default: ``datasets.json``).
    """
    dataset = demo_dataset_config(catalogue_path)
    work = Workdir(workdir)
    raw = write_synthetic_dataset(
        dataset, work.demo_dir("raw"), num_workers=num_workers, show_progress=show_progress
    )
    plan_options = (
        PlanOptions(
            time_budget=DEMO_TIME_BUDGET,
            cpu_gflops=DEMO_CPU_GFLOPS,
            minimum_iterations=DEMO_MINIMUM_ITERATIONS,
        )
        if default_device() == "cpu"
        else PlanOptions()
    )
    options = PreprocessOptions(num_workers=num_workers)
    report, folders = plan_and_preprocess(raw, workdir, plan_options, options, show_progress=show_progress)
    lines = [
        f"synth:       {dataset.cases} synthetic CT cases in {raw}",
        f"verify:      {report.cases_checked} cases, 0 errors, {len(report.warnings)} warning(s)",
    ]
    lines += _fingerprint_lines(work.read_fingerprint(), work.fingerprint_path)
    lines += _plan_lines(work.read_plans(), folders)
    lines += _train_lines(work, show_progress)
    lines += _after_training_lines(workdir, dataset, show_progress)
    return lines


def _plan_lines(plans: Plans, folders: dict[str, Path]) -> list[str]:
    lines = [
        f"plan:        {name:<11} patch {'x'.join(map(str, plan.patch_size))}, batch "
        f"{plan.batch_size}, {plan.network.num_stages} stages, features "
        f"{list(plan.network.features_per_stage)}"
        for name, plan in plans.configurations.items()
    ]
    for folder in sorted(set(folders.values())):
        names = ", ".join(sorted(n for n, f in folders.items() if f == folder))
        cases = sum(1 for p in folder.iterdir() if CaseFolder(p).properties_path.is_file())
        lines.append(f"preprocess:  {cases} cases for {names} -> {folder}")
    return lines


def _train_lines(work: Workdir, show_progress: bool) -> list[str]:
    """Train fold 0 of the default configuration (:meth:`Workdir.default_configuration`) for a short
    schedule, resuming an interrupted run."""
    configuration = work.default_configuration(list(work.read_plans().configurations))
    train_config = TrainConfig(
        configuration=configuration,
        fold="0",
        epochs=DEMO_EPOCHS,
        iterations_per_epoch=DEMO_ITERATIONS,
        validation_iterations=5,
        device=default_device(),
    )
    run = work.run(configuration, train_config.fold)
    resume = run.checkpoint("latest").is_file()
    summary = train_fold(work.root, train_config, resume=resume, show_progress=show_progress).summary
    assert summary is not None  # a single process is rank 0
    dice = ", ".join(
        f"{name} {value:.3f}" if value is not None else f"{name} n/a"
        for name, value in summary["mean_dice_per_class"].items()
    )
    return [
        f"train:       {configuration} fold 0, {DEMO_EPOCHS} x {DEMO_ITERATIONS} iterations -> {run.path}",
        f"             validation Dice per class: {dice}",
    ]


def _after_training_lines(workdir: Path, config: SynthConfig, show_progress: bool) -> list[str]:
    """find_best_configuration, predict (NIfTI + report, DICOM -> RTSTRUCT) and evaluate held-out cases."""
    work = Workdir(workdir)
    best = run_find_best_configuration(workdir, show_progress=show_progress)
    lines = [
        f"best:        {best.best.name}, cross-validation Dice {best.best.mean_dice:.3f} "
        f"({best.dice_after_postprocessing:.3f} with post-processing {best.postprocessing_path})"
    ]
    heldout_config = replace(config, cases=HELDOUT_CASES, seed=config.seed + 1000)
    heldout = write_synthetic_dataset(heldout_config, work.demo_dir("heldout"), show_progress=show_progress)
    predicted, report = _predict_heldout(work, heldout, show_progress)
    lines += predicted
    summary = run_evaluate(
        EvaluateRequest(
            work.demo_dir("predictions"),
            heldout / "labelsTr",
            work.demo_dir("evaluation"),
            heldout / "dataset.json",
        ),
        show_progress=show_progress,
    )
    lines.append(f"evaluate:    {len(summary.cases)} held-out cases -> {work.demo_dir('evaluation')}")
    width = max(len(name) for name in summary.labels.values())
    lines.append(f"{'':13}{'class':<{width}} {'Dice':>6} {'HD95 mm':>8} {'surface Dice':>13}")
    for value, name in summary.labels.items():
        stats = summary.per_class[value]
        hd95 = stats["hd95_mm"].mean
        lines.append(
            f"{'':13}{name:<{width}} {stats['dice'].mean:6.3f} "
            f"{'n/a' if math.isnan(hd95) else f'{hd95:.2f}':>8} {stats['surface_dice'].mean:13.3f}"
        )
    return [*lines, *_flag_lines(work.demo_dir("predictions"), report)]


def _flag_lines(predictions: Path, report: Path) -> list[str]:
    """The first report's path, then the flags of every held-out case's structure table (or 'no flags')."""
    lines = [f"report:      {report}"]
    for table in sorted(predictions.glob("*_structures.json")):
        data = read_json(table)
        rows = data.get("structures", []) if isinstance(data, dict) else []
        flags = [f"{row['name']}: {flag['reason']}" for row in rows for flag in row.get("flags", [])]
        case = table.name.removesuffix("_structures.json")
        lines.append(f"{'':13}{case} flags: {'; '.join(flags) if flags else 'none'}")
    return lines


def _predict_heldout(work: Workdir, heldout: Path, show_progress: bool) -> tuple[list[str], Path]:
    """Predict the held-out cases (NIfTI + report), and the first one again as a DICOM series (RTSTRUCT);
    the summary lines and the first case's report."""
    predictions = work.demo_dir("predictions")
    outputs = run_predict(
        PredictRequest(heldout / "imagesTr", predictions, work.root, outputs=OutputOptions(report=True)),
        show_progress=show_progress,
    )
    first = sorted((heldout / "imagesTr").iterdir())[0]
    series = work.demo_dir("heldout_dicom") / first.name.removesuffix("_0000.nii.gz")
    if not series.is_dir():
        image, geometry = read_image([first])
        write_image_series(image[0], geometry, series)
    written = run_predict(
        PredictRequest(
            series,
            work.demo_dir("predictions_dicom"),
            work.root,
            outputs=OutputOptions(formats=("nifti", "rtstruct")),
        ),
        show_progress=show_progress,
    )
    report = next(p for p in outputs[0].files if p.name.endswith("_report.png"))
    return [
        f"predict:     {len(outputs)} held-out cases -> {predictions} (NIfTI + report PNG each)",
        f"predict:     DICOM series {series} -> " + ", ".join(str(p) for o in written for p in o.files),
    ], report


def _fingerprint_lines(fingerprint: Fingerprint, path: Path) -> list[str]:
    spacing = " x ".join(f"{s:.2f}" for s in fingerprint.median_spacing_mm)
    shape = " x ".join(f"{s:.0f}" for s in fingerprint.median_shape)
    lines = [f"fingerprint: median spacing {spacing} mm, median shape {shape} voxels -> {path}"]
    width = max(len(c.name) for c in fingerprint.classes)
    for cls in fingerprint.classes:
        lines.append(
            f"{'':13}class {cls.value} {cls.name:<{width}}  {100 * cls.voxel_fraction:5.2f}% of voxels, "
            f"in {100 * cls.case_fraction:3.0f}% of cases, "
            f"{cls.components_per_case.median:.0f} component(s) per case"
        )
    return lines
