"""CLI commands ``evaluate`` and ``find_best_configuration``.

Each command parses flags, builds the stage's options, calls its entry point and prints the outcome.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.cli.options import (
    CommandSpec,
    add_num_workers,
    positive_float,
    show_progress,
)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prediction", type=Path, metavar="PRED", help="predicted label file or folder")
    parser.add_argument("reference", type=Path, metavar="REF", help="reference label file or folder")
    parser.add_argument(
        "--labels", type=Path, default=None, metavar="dataset.json",
        help="names the classes (its 'ignore' label is not scored; its 'annotated' says which structures "
        "each case contoured); without it every nonzero value found is a class",
    )  # fmt: skip
    parser.add_argument(
        "--contoured", type=Path, default=None, metavar="FILE",
        help='partly contoured references: JSON {"CASE": ["GTV", ...]} (or a dataset.json\'s "annotated"); '
        "a structure a case did not contour is not scored there",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", type=Path, default=None, metavar="OUT",
        help="folder for summary.json, metrics.csv, metrics.png (default: PRED, or PRED's folder for a file)",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance",
        type=positive_float,
        default=2.0,
        metavar="MM",
        help="surface Dice tolerance (default: 2 mm)",
    )
    parser.add_argument(
        "--ignore-missing", action="store_true", help="evaluate only the references that have a prediction"
    )
    add_num_workers(parser)


def run_evaluate_command(args: argparse.Namespace) -> int:
    """``autoseg evaluate PRED REF``: per case and class metrics, a summary, a CSV and box plots."""
    from autoseg.evaluation.stage import EvaluateRequest, output_folder, run_evaluate

    request = EvaluateRequest(
        prediction=args.prediction,
        reference=args.reference,
        output=args.output,
        labels_file=args.labels,
        contoured_file=args.contoured,
        tolerance_mm=args.tolerance,
        num_workers=args.num_workers,
        missing_predictions="ignore" if args.ignore_missing else "error",
    )
    summary = run_evaluate(request, show_progress=show_progress(args))
    folder = output_folder(request)
    print(f"{len(summary.cases)} case(s); metrics in {folder}/summary.json, metrics.csv, metrics.png")
    print(f"{'class':<24} {'Dice':>7} {'IoU':>7} {'HD95 mm':>8} {'ASSD mm':>8} {'NSD':>7}")
    for value, name in summary.labels.items():
        stats = summary.per_class[value]
        row = [stats[m].mean for m in ("dice", "iou", "hd95_mm", "assd_mm", "surface_dice")]
        print(f"{name:<24} " + " ".join(f"{v:>{w}.3f}" for v, w in zip(row, (7, 7, 8, 8, 7), strict=True)))
    return 0


def _best_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        default=None,
        help="configurations to compare (default: all trained)",
    )
    parser.add_argument(
        "--no-ensembles", dest="ensembles", action="store_false", help="skip ensembles of two"
    )
    add_num_workers(parser)


def run_best_command(args: argparse.Namespace) -> int:
    """``autoseg find_best_configuration``: the configuration or ensemble and post-processing to use."""
    from autoseg.evaluation.best_configuration import (
        BestConfigurationOptions,
        format_table,
        run_find_best_configuration,
    )
    from autoseg.workdir import Workdir

    configurations = tuple(args.configurations) if args.configurations else None
    if configurations:  # an unknown -c is a usage error (exit 2), as in every command
        plans = Workdir(args.workdir).read_plans()
        for name in configurations:
            plans.configuration(name)
    options = BestConfigurationOptions(configurations, ensembles=args.ensembles, num_workers=args.num_workers)
    result = run_find_best_configuration(args.workdir, options, show_progress=show_progress(args))
    print(format_table(result))
    return 0


COMMANDS = [
    CommandSpec(
        "evaluate",
        "score predicted label maps against references: Dice, IoU, HD95, ASSD, surface Dice, volumes",
        _evaluate_arguments,
        run_evaluate_command,
    ),
    CommandSpec(
        "find_best_configuration",
        "score every trained configuration and ensemble of two on the cross-validation; choose "
        "post-processing",
        _best_arguments,
        run_best_command,
    ),
]
