"""``autoseg find_best_configuration``: which configuration, or ensemble of two, the cross-validation
supports, and its post-processing.

Every trained configuration is scored on the validation predictions of its folds (written by ``train``);
every pair of configurations is scored by averaging the two configurations' validation probabilities case by
case (softmax: the argmax of the mean; a region-based plan, sigmoid per structure: the mean thresholded at
0.5 per structure, :func:`autoseg.inference.ensemble.target_from_probabilities`). The best mean Dice wins (a
single configuration wins a tie: it is cheaper to run). The post-processing is then chosen on the winner's
cross-validation predictions (:mod:`autoseg.postprocessing.choice`, per structure for region targets). Every
score is against the references in the work directory (label maps, or 4D region targets scored per
structure mask); in a partly contoured dataset a structure a case's reference never contoured
(``Workdir.read_reference_annotated``) is left out of that case's score, in the choice of configuration and
of post-processing alike. Written, at the paths of
:class:`autoseg.workdir.Workdir`: the choice with the table and the predict command
(``write_best_configuration``), the training reference, the winner's post-processing
(``postprocessing_path``), and each ensemble's cross-validation label maps (in its ``ensemble_dir``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from autoseg.errors import BestConfigurationError
from autoseg.evaluation.stage import CasePair, contoured_only, evaluate_pairs, match_cases
from autoseg.evaluation.summary import nan_to_none, summarize
from autoseg.fingerprint import Fingerprint
from autoseg.inference.ensemble import target_from_probabilities
from autoseg.io import read_header, read_probabilities, read_target, write_target
from autoseg.postprocessing.choice import run_choose_postprocessing
from autoseg.report.structures import TrainingReference, structure_confidences
from autoseg.workdir import PredictionFolder, Workdir

logger = logging.getLogger(__name__)

"""The folder of an ensemble's cross-validation label maps, inside its ensemble folder."""


@dataclass(frozen=True)
class CandidateScore:
    """A configuration or an ensemble, scored on the cross-validation cases."""

    name: str
    configurations: tuple[str, ...]
    cases: int
    mean_dice: float
    dice_per_class: dict[str, float]


@dataclass(frozen=True)
class BestConfiguration:
    """The outcome: every candidate, the winner, and the post-processing file chosen for it."""

    candidates: tuple[CandidateScore, ...]
    best: CandidateScore
    postprocessing_path: str
    dice_after_postprocessing: float
    predict_command: str


@dataclass(frozen=True)
class BestConfigurationOptions:
    """Which configurations to compare (default: every trained one), whether to score ensembles of two,
    and in how many worker processes."""

    configurations: tuple[str, ...] | None = None
    ensembles: bool = True
    num_workers: int = 1


def run_find_best_configuration(
    workdir: Path, options: BestConfigurationOptions | None = None, *, show_progress: bool = True
) -> BestConfiguration:
    """Score, choose, choose the post-processing, and write ``best_configuration.json`` (see the module).

    The validation predictions are scored against the reference label maps that ``preprocess`` copied into
    the work directory (:attr:`autoseg.workdir.Workdir.reference_labels_dir`), never the raw dataset.
    """
    options = options or BestConfigurationOptions()
    work = Workdir(workdir)
    fingerprint = work.read_fingerprint()
    folders = _candidate_folders(work, options.configurations or work.trained_configurations())
    references = _reference_folder(work)
    annotated = work.read_reference_annotated()
    score = partial(
        _score,
        references=references,
        fingerprint=fingerprint,
        annotated=annotated,
        num_workers=options.num_workers,
        show_progress=show_progress,
    )
    regions = work.read_plans().region_based
    scores = _score_candidates(work, folders, score, ensembles=options.ensembles, regions=regions)
    best = sorted(scores, key=lambda s: (-_finite(s.mean_dice), len(s.configurations)))[0]
    target = work.postprocessing_path(best.configurations)
    best_folders = folders[best.name] if len(best.configurations) == 1 else [_cross_validation(work, best)]
    chosen = run_choose_postprocessing(
        best_folders,
        references,
        fingerprint,
        target,
        num_workers=options.num_workers,
        show_progress=show_progress,
        annotated=annotated,
    )
    after = best.mean_dice
    if chosen.evidence is not None and chosen.evidence.dice_after:
        after = float(np.nanmean(list(chosen.evidence.dice_after.values())))
    work.write_training_reference(_training_reference(fingerprint, folders.get(best.configurations[0], [])))
    command = f"autoseg predict -i INPUT -o OUTPUT --workdir {workdir} -c {' '.join(best.configurations)}"
    result = BestConfiguration(tuple(scores), best, str(target), after, command)
    work.write_best_configuration(nan_to_none(_to_json(result)), format_table(result) + "\n")
    return result


def _candidate_folders(work: Workdir, names: Sequence[str]) -> dict[str, list[Path]]:
    """Configuration -> its folds' validation folders, for the configurations that have any."""
    folders = {c: _validation_folders(work, c) for c in names}
    folders = {c: f for c, f in folders.items() if f}
    if not folders:
        raise BestConfigurationError(
            f"{work.root}: no trained configuration has validation predictions; "
            "run 'autoseg train FOLD' first"
        )
    return folders


def _reference_folder(work: Workdir) -> Path:
    references = work.reference_labels_dir
    if not references.is_dir():
        raise BestConfigurationError(
            f"{references}: missing; this work directory was preprocessed by an older autoseg. "
            "Run 'autoseg preprocess' again (it copies the reference label maps)"
        )
    return references


def _score_candidates(
    work: Workdir,
    folders: dict[str, list[Path]],
    score: Callable[[str, tuple[str, ...], Sequence[Path]], CandidateScore],
    *,
    ensembles: bool,
    regions: bool,
) -> list[CandidateScore]:
    """Every configuration, then (with ``ensembles``) every pair with common validation cases (``regions``:
    the plan is region-based)."""
    scores = [score(name, (name,), found) for name, found in folders.items()]
    if ensembles:
        for pair in itertools.combinations(sorted(folders), 2):
            folder = _ensemble_cross_validation(work, pair, folders, regions=regions)
            if folder is not None:
                scores.append(score("+".join(pair), pair, [folder]))
    return scores


def _training_reference(fingerprint: Fingerprint, folders: Sequence[Path]) -> TrainingReference:
    """The training volumes per structure, and the mean confidence of each structure in the cross-validation
    predictions (what the reviewer report compares predictions to)."""
    values = sorted(v for v in fingerprint.labels.values() if v != 0)
    confidences: dict[int, list[float]] = {v: [] for v in values}
    for folder in folders:
        predictions = PredictionFolder(folder)
        for case, npz in predictions.probability_files().items():
            labels_path = predictions.labels_path(case)
            if not labels_path.is_file():
                continue
            found = structure_confidences(read_target(labels_path)[0], read_probabilities(npz), values)
            for value, confidence in found.items():
                confidences[value].append(confidence)
    reference = TrainingReference.from_fingerprint(fingerprint)
    known = {v: c for v, c in confidences.items() if c}
    return reference.with_confidences(known) if known else reference


def _validation_folders(work: Workdir, configuration: str) -> list[Path]:
    found = [run.validation_dir for run in work.runs(configuration) if run.is_validated()]
    splits = work.read_splits()
    expected = len(splits) if splits is not None else len(found)
    if found and len(found) < expected:
        logger.warning(
            "%s: %d of %d folds validated; its cross-validation covers only those folds' cases",
            configuration,
            len(found),
            expected,
        )
    return found


def _score(
    name: str,
    configurations: tuple[str, ...],
    folders: Sequence[Path],
    *,
    references: Path,
    fingerprint: Fingerprint,
    annotated: Mapping[str, Sequence[int]],
    num_workers: int,
    show_progress: bool,
) -> CandidateScore:
    pairs: list[CasePair] = []
    for folder in folders:
        pairs += match_cases(folder, references, missing_predictions="ignore")
    labels = {v: n for n, v in fingerprint.labels.items() if v != 0}
    cases = evaluate_pairs(
        pairs,
        sorted(labels),
        num_workers=num_workers,
        show_progress=show_progress,
        ignore_label=fingerprint.ignore_label,
    )
    cases = {case: contoured_only(metrics, annotated.get(case)) for case, metrics in cases.items()}
    summary = summarize(cases, labels, 2.0)
    per_class = {labels[k]: summary.per_class[k]["dice"].mean for k in labels}
    logger.info("%s: mean Dice %.4f on %d case(s)", name, summary.mean_dice, len(cases))
    return CandidateScore(name, configurations, len(cases), summary.mean_dice, per_class)


def _ensemble_cross_validation(
    work: Workdir, pair: tuple[str, str], folders: dict[str, list[Path]], *, regions: bool
) -> Path | None:
    """Average the two configurations' validation probabilities per case and take the argmax (softmax) or
    threshold each structure (``regions``: sigmoids); ``None`` when they do not cover the same cases with
    probabilities."""
    members = [
        {case: p for p in map(PredictionFolder, folders[c]) for case in p.probability_files()} for c in pair
    ]
    common = sorted(set(members[0]) & set(members[1]))
    if not common:
        logger.warning("%s: no common validation case with probabilities; ensemble skipped", "+".join(pair))
        return None
    out = work.ensemble_cross_validation(pair)
    for case in common:
        target = out.labels_path(case)
        if target.is_file():
            continue
        first, second = members[0][case], members[1][case]
        total = read_probabilities(first.probabilities_path(case)) + read_probabilities(
            second.probabilities_path(case)
        )
        probabilities = (total / 2).astype(np.float32, copy=False)  # the mean: sigmoids are thresholded
        geometry = read_header(first.labels_path(case)).geometry
        write_target(target_from_probabilities(probabilities, regions=regions), geometry, target)
    return out.path


def _cross_validation(work: Workdir, candidate: CandidateScore) -> Path:
    return work.ensemble_cross_validation(candidate.configurations).path


def _finite(value: float) -> float:
    return value if not math.isnan(value) else -1.0


def _to_json(result: BestConfiguration) -> dict[str, object]:
    best = result.best
    return {
        "configuration": best.configurations[0] if len(best.configurations) == 1 else None,
        "ensemble": list(best.configurations) if len(best.configurations) > 1 else None,
        "mean_dice": best.mean_dice,
        "mean_dice_after_postprocessing": result.dice_after_postprocessing,
        "postprocessing": result.postprocessing_path,
        "predict_command": result.predict_command,
        "candidates": [asdict(c) for c in result.candidates],
    }


def format_table(result: BestConfiguration) -> str:
    """A markdown table of the candidates, the winner marked, and the predict command."""
    classes = list(result.best.dice_per_class)
    lines = [
        "| candidate | cases | mean Dice | " + " | ".join(classes) + " |",
        "|---|---|---|" + "---|" * len(classes),
    ]
    for c in sorted(result.candidates, key=lambda s: -_finite(s.mean_dice)):
        mark = " (best)" if c is result.best else ""
        values = " | ".join(f"{c.dice_per_class.get(k, math.nan):.4f}" for k in classes)
        lines.append(f"| {c.name}{mark} | {c.cases} | {c.mean_dice:.4f} | {values} |")
    lines += [
        "",
        f"Post-processing: {result.postprocessing_path} "
        f"(mean Dice {result.dice_after_postprocessing:.4f} after)",
        f"Predict with: {result.predict_command}",
    ]
    return "\n".join(lines)
