"""CLI commands after training (``predict``, ``export-model``, ``evaluate``, ``find_best_configuration``) and
``convert-dicom``."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.cli.commands import CommandSpec, _num_workers, _progress, positive_int

# ---------------------------------------------------------------------------------------------- predict


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--input", dest="inputs", type=Path, required=True, metavar="IN",
        help="an image file, a folder of image files (CASE_0000.nii.gz... per channel), a DICOM series "
        "folder, or a folder of several DICOM series",
    )  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    parser.add_argument(
        "-m", "--model", type=Path, default=None, metavar="MODEL",
        help="a work directory or an exported model file (.zip); default: --workdir",
    )  # fmt: skip
    parser.add_argument(
        "-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
        help="configuration, or two to ensemble (default: find_best_configuration's choice, else 3d_fullres)",
    )  # fmt: skip
    parser.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD", help="folds to ensemble")
    parser.add_argument(
        "--preset", choices=("fast", "accurate"), default="accurate",
        help="accurate: all folds, mirroring, step 0.5 (default); fast: one fold, no mirroring, step 0.75",
    )  # fmt: skip
    parser.add_argument("--step", type=float, default=None, help="window step as a fraction of the patch")
    parser.add_argument("--no-tta", dest="mirror", action="store_false", default=None, help="no mirroring")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument(
        "--format", dest="formats", nargs="+", default=["nifti"], choices=("nifti", "dicom-seg", "rtstruct"),
        help="output format(s); dicom-seg and rtstruct need a DICOM input series (default: nifti)",
    )  # fmt: skip
    parser.add_argument(
        "--save-probabilities", action="store_true", help="also write CASE_probabilities.npz (float16)"
    )
    parser.add_argument(
        "--instances", nargs="+", default=(), metavar="CLASS",
        help="give each separate object of these classes (names or values, or 'all') its own id: "
        "CASE_instances.nii.gz and CASE_instances.json (volume, centroid per object)",
    )  # fmt: skip
    parser.add_argument(
        "--split-touching", action="store_true", help="with --instances: split touching objects (watershed)"
    )
    parser.add_argument(
        "--report", action="store_true",
        help="CASE_report.png (contours on three orientations, structure table with flags) and "
        "CASE_structures.json per case",
    )  # fmt: skip
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    parser.add_argument(
        "--windows-per-batch", type=positive_int, default=1, help="windows per network call (default: 1)"
    )
    parser.add_argument(
        "--precision", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
        help="network arithmetic; auto: float16 autocast on CUDA, bfloat16 on a CPU with native bfloat16 "
        "(AVX-512 BF16 or AMX), float32 otherwise; float32 for bit-reproducible results",
    )  # fmt: skip
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format (3D)")
    parser.add_argument(
        "--threads", type=positive_int, default=None,
        help="CPU threads for the networks (default: torch's, one per core); 1 is faster on a machine whose "
        "other cores are busy (docs/benchmarks.md)",
    )  # fmt: skip


def run_predict_command(args: argparse.Namespace) -> int:
    """``autoseg predict -i IN -o OUT``: segment new scans."""
    from autoseg.inference.outputs import OutputOptions
    from autoseg.inference.stage import PredictRequest, run_predict

    request = PredictRequest(
        inputs=args.inputs,
        output=args.output,
        model=args.model or args.workdir,
        configurations=tuple(args.configurations) if args.configurations else None,
        folds=tuple(args.folds) if args.folds else None,
        preset=args.preset,
        step=args.step,
        mirror=args.mirror,
        device=args.device,
        windows_per_batch=args.windows_per_batch,
        precision=args.precision,
        channels_last=args.channels_last,
        threads=args.threads,
        checkpoint=args.checkpoint,
        outputs=OutputOptions(
            formats=tuple(dict.fromkeys(args.formats)),
            save_probabilities=args.save_probabilities,
            instances=tuple(args.instances),
            split_touching=args.split_touching,
            report=args.report,
        ),
    )
    outputs = run_predict(request, show_progress=_progress(args))
    print(f"{len(outputs)} case(s) predicted into {args.output}")
    return 0


# ----------------------------------------------------------------------------------------- export-model


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT.zip", help="the model file to write")
    parser.add_argument("-c", "--configuration", default=None, help="configuration (default: the best one)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD", help="folds (default: all)")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")


def run_export_command(args: argparse.Namespace) -> int:
    """``autoseg export-model OUT.zip``: one file holding everything predict needs."""
    from autoseg.inference.model_file import export_model

    path = export_model(
        args.workdir, args.out, configuration=args.configuration, folds=args.folds, checkpoint=args.checkpoint
    )
    print(f"model written to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# --------------------------------------------------------------------------------------------- evaluate


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prediction", type=Path, metavar="PRED", help="predicted label file or folder")
    parser.add_argument("reference", type=Path, metavar="REF", help="reference label file or folder")
    parser.add_argument(
        "--labels", type=Path, default=None, metavar="dataset.json",
        help="names the classes; without it every nonzero value found is a class",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", type=Path, default=None, metavar="OUT",
        help="folder for summary.json, metrics.csv, metrics.png (default: PRED, or PRED's folder for a file)",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance", type=float, default=2.0, metavar="MM", help="surface Dice tolerance (default: 2 mm)"
    )
    parser.add_argument(
        "--ignore-missing", action="store_true", help="evaluate only the references that have a prediction"
    )
    _num_workers(parser)


def run_evaluate_command(args: argparse.Namespace) -> int:
    """``autoseg evaluate PRED REF``: per case and class metrics, a summary, a CSV and box plots."""
    from autoseg.evaluation.stage import EvaluateRequest, run_evaluate

    output = args.output or (args.prediction if args.prediction.is_dir() else args.prediction.parent)
    summary = run_evaluate(
        EvaluateRequest(
            prediction=args.prediction,
            reference=args.reference,
            output=output,
            labels_file=args.labels,
            tolerance_mm=args.tolerance,
            num_workers=args.num_workers,
            progress=_progress(args),
            missing_predictions="ignore" if args.ignore_missing else "error",
        )
    )
    print(f"{len(summary.cases)} case(s); metrics in {output}/summary.json, metrics.csv, metrics.png")
    print(f"{'class':<24} {'Dice':>7} {'IoU':>7} {'HD95 mm':>8} {'ASSD mm':>8} {'NSD':>7}")
    for value, name in summary.labels.items():
        stats = summary.per_class[value]
        row = [stats[m].mean for m in ("dice", "iou", "hd95_mm", "assd_mm", "surface_dice")]
        print(f"{name:<24} " + " ".join(f"{v:>{w}.3f}" for v, w in zip(row, (7, 7, 8, 8, 7), strict=True)))
    return 0


# ------------------------------------------------------------------------------ find_best_configuration


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
    _num_workers(parser)


def run_best_command(args: argparse.Namespace) -> int:
    """``autoseg find_best_configuration``: the configuration or ensemble and post-processing to use."""
    from autoseg.evaluation.best_configuration import format_table, run_find_best_configuration

    result = run_find_best_configuration(
        args.workdir,
        configurations=args.configurations,
        ensembles=args.ensembles,
        num_workers=args.num_workers,
        progress=_progress(args),
    )
    print(format_table(result))
    return 0


# ------------------------------------------------------------------------------------------ convert-dicom


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", type=Path, metavar="SOURCE",
        help="folder of case folders (each: one image series + an RTSTRUCT or a DICOM SEG), or one case "
        "folder",
    )  # fmt: skip
    parser.add_argument("out", type=Path, metavar="OUT", help="dataset folder to write (nnU-Net v2 layout)")
    parser.add_argument(
        "--mapping", type=Path, default=None, metavar="FILE",
        help='JSON: {"labels": {"GTV": {"value": 1, "rois": ["GTV*"]}}}; default: every structure name found',
    )  # fmt: skip


def run_convert_command(args: argparse.Namespace) -> int:
    """``autoseg convert-dicom SOURCE OUT``: DICOM series + RTSTRUCT/SEG -> an autoseg dataset."""
    from autoseg.dicom.convert import ConvertRequest, convert_dicom

    report = convert_dicom(ConvertRequest(args.source, args.out, args.mapping))
    for case in report.cases:
        line = f"{case.case}: {case.status}"
        if case.message:
            line += f" ({case.message})"
        if case.unknown_rois:
            line += f"; structures not in the mapping: {', '.join(case.unknown_rois)}"
        if case.missing_labels:
            line += f"; missing: {', '.join(case.missing_labels)}"
        if case.overlap_voxels:
            line += f"; {case.overlap_voxels} overlapping voxels (higher label kept)"
        print(line)
    print(f"{len(report.written)} case(s) written to {report.output_dir}; labels {report.labels}")
    return 0 if report.written else 1


COMMANDS = [
    CommandSpec(
        "predict",
        "segment NIfTI/NRRD/MHA files or DICOM series with a trained model (NIfTI, DICOM SEG, RTSTRUCT out)",
        _predict_arguments,
        run_predict_command,
    ),
    CommandSpec(
        "export-model",
        "write a trained configuration (plans, weights, post-processing, checksums) into one .zip file",
        _export_arguments,
        run_export_command,
    ),
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
    CommandSpec(
        "convert-dicom",
        "turn DICOM series with RTSTRUCT or DICOM SEG structures into an autoseg (nnU-Net v2) dataset",
        _convert_arguments,
        run_convert_command,
    ),
]
