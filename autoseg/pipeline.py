"""Stages chained: what ``autoseg plan_and_preprocess`` and the demo run."""

from __future__ import annotations

import logging
from pathlib import Path

from autoseg.dataset.layout import load_dataset
from autoseg.dataset.verify import VerifyReport, verify_dataset
from autoseg.errors import DatasetError
from autoseg.fingerprint import FingerprintOptions, run_fingerprint
from autoseg.planning.stage import PlanOptions, run_plan
from autoseg.preprocessing.stage import PreprocessOptions, run_preprocess

logger = logging.getLogger(__name__)


def plan_and_preprocess(
    dataset_folder: Path,
    workdir: Path,
    plan_options: PlanOptions,
    options: PreprocessOptions,
    *,
    show_progress: bool = True,
) -> tuple[VerifyReport, dict[str, Path]]:
    """Verify (stop on any error), fingerprint, plan and preprocess; each stage skips work that is up to date.

    ``options.num_workers`` worker processes run every stage.

    Returns:
        The verification report and, per configuration, its preprocessed data folder.
    """
    report = verify_dataset(dataset_folder, num_workers=options.num_workers, show_progress=show_progress)
    if not report.ok:
        raise DatasetError(
            f"{dataset_folder}: verification found {len(report.errors)} error(s); fix them first",
            details=[p.line() for p in report.errors],
        )
    for warning in report.warnings:
        logger.warning("%s", warning.line())
    fingerprint_options = FingerprintOptions(num_workers=options.num_workers)
    run_fingerprint(workdir, load_dataset(dataset_folder), fingerprint_options, show_progress=show_progress)
    run_plan(workdir, plan_options)
    folders = run_preprocess(workdir, options, show_progress=show_progress)
    return report, folders
