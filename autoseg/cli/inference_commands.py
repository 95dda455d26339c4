"""CLI commands ``predict`` and ``export-model``.

Each command parses flags, builds the stage's options, calls its entry point and prints the outcome.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.cli.options import (
    CommandSpec,
    positive_int,
    show_progress,
)

if TYPE_CHECKING:
    from autoseg.inference.stage import PredictRequest


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
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    _output_arguments(parser)
    _speed_arguments(parser)


def _predict_shard_arguments(parser: argparse.ArgumentParser) -> None:
    _predict_arguments(parser)
    parser.add_argument(
        "--shard", default=None, metavar="I/N",
        help="predict only shard I of N (0-based, as SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX): the "
        "cases whose name hashes to I (SHA-256 mod N); N workers fill one output folder, each with its "
        "own predict.shard-I-of-N.json; 'auto': the Slurm job array's task (docs/scale.md). A shard skips "
        "the cases already written whole, so a re-run resumes",
    )  # fmt: skip
    _existing_arguments(parser)


def _existing_arguments(parser: argparse.ArgumentParser) -> None:
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--skip-existing", dest="existing", action="store_const", const="skip", default="auto",
        help="skip a case whose outputs are all there and read back whole (a truncated one is predicted "
        "again); the default with --shard",
    )  # fmt: skip
    existing.add_argument(
        "--overwrite", dest="existing", action="store_const", const="overwrite",
        help="predict every case again, replacing its outputs; the default without --shard",
    )  # fmt: skip


def _speed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=("fast", "accurate"), default="accurate",
        help="accurate: all folds, mirroring, step 0.5 (default); fast: one fold, no mirroring, step 0.75",
    )  # fmt: skip
    parser.add_argument("--step", type=float, default=None, help="window step as a fraction of the patch")
    parser.add_argument("--no-tta", dest="mirror", action="store_false", default=None, help="no mirroring")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda if available)")
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


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", dest="formats", nargs="+", default=["nifti"], choices=("nifti", "dicom-seg", "rtstruct"),
        help="output format(s); dicom-seg and rtstruct need a DICOM input series (default: nifti)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-empty-structures", action="store_true",
        help="leave structures without voxels out of the SEG and RTSTRUCT (default: kept, as ROIs without "
        "contours and segments without frames)",
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
        "CASE_structures.json per case (the flags themselves are always computed: predict.json)",
    )  # fmt: skip
    parser.add_argument(
        "--strict", action="store_true",
        help="for unattended use (a DICOM node): refuse a case that does not look like the model's "
        "modality (a DICOM series' Modality tag, or the intensities of an image file: docs/design.md "
        "'Prediction') or has NaN/Inf voxels (reported and skipped, the others go on), and exit 1 when a "
        "predicted case is flagged for review (a structure far outside the training reference: volume, "
        "missing, unexpected, confidence, parts; its outputs are written). Without it these are warnings, "
        "NaN/Inf voxels are replaced by the channel's lowest value, and flagged cases are listed at the end "
        "and in predict.json",
    )  # fmt: skip


def run_predict_command(args: argparse.Namespace) -> int:
    """``autoseg predict -i IN -o OUT``: segment new scans."""
    from autoseg.inference.stage import run_predict

    request = _predict_request(args)
    outputs = run_predict(request, show_progress=show_progress(args))
    flagged = sum(1 for output in outputs if output.review)
    record = request.record_path.name
    review = f"; {flagged} flagged for review ({record} 'flagged')" if flagged else ""
    shard = f" (shard {request.shard.index}/{request.shard.count})" if request.shard else ""
    print(f"{len(outputs)} case(s) predicted into {args.output}{shard}{review}")
    return 0


def _predict_request(args: argparse.Namespace) -> PredictRequest:
    """The :class:`PredictRequest` of ``predict``'s (or ``predict-cluster``'s) flags."""
    from autoseg.inference.outputs import OutputOptions
    from autoseg.inference.sharding import parse_shard
    from autoseg.inference.stage import PredictRequest

    return PredictRequest(
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
        strict=args.strict,
        shard=parse_shard(args.shard, os.environ) if getattr(args, "shard", None) is not None else None,
        existing=args.existing,
        outputs=OutputOptions(
            formats=tuple(dict.fromkeys(args.formats)),
            save_probabilities=args.save_probabilities,
            skip_empty_structures=args.skip_empty_structures,
            instances=tuple(args.instances),
            split_touching=args.split_touching,
            report=args.report,
        ),
    )


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    _predict_arguments(parser)
    _existing_arguments(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--address", default=None, metavar="tcp://HOST:PORT",
        help="the Dask scheduler (dask scheduler; one dask worker --nthreads 1 per GPU or CPU node); the "
        "model, input and output folders must have the same path on every worker",
    )  # fmt: skip
    where.add_argument(
        "--local-workers", type=positive_int, default=None, metavar="N",
        help="start a local cluster of N worker processes instead (one machine), stopped at the end",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=2, metavar="N",
        help="attempts after a case's task failed (a worker error; a data problem is not retried); then the "
        "case is reported as failed and the others go on (default: 2)",
    )  # fmt: skip
    parser.add_argument(
        "--gpus-per-case",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: each case needs one GPU resource (workers started with --resources GPU=1)",
    )


def run_cluster_command(args: argparse.Namespace) -> int:
    """``autoseg predict-cluster -i IN -o OUT --address tcp://HOST:8786``: segment a folder on a cluster."""
    from autoseg.distributed import ClusterOptions, run_predict_cluster

    request = _predict_request(args)
    options = ClusterOptions(
        address=args.address,
        local_workers=args.local_workers or 2,
        retries=max(0, args.retries),
        gpus_per_case=args.gpus_per_case,
    )
    outputs = run_predict_cluster(request, options, show_progress=show_progress(args))
    flagged = sum(1 for output in outputs if output.review)
    review = f"; {flagged} flagged for review (predict.json 'flagged')" if flagged else ""
    print(f"{len(outputs)} case(s) predicted on the cluster into {args.output}{review}")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT.zip", help="the model file to write")
    parser.add_argument(
        "-c", "--configuration", dest="configurations", action="append", default=None, metavar="CONFIG",
        help="the configuration, or the configurations of an ensemble (-c 2d -c 3d_fullres); default: "
        "find_best_configuration's choice, else 3d_fullres. A cascade stage brings its previous stage",
    )  # fmt: skip
    parser.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD", help="folds (default: all)")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    parser.add_argument(
        "--format", dest="network_format", choices=("torch", "onnx"), default="torch",
        help="torch: the folds' weights (default); onnx: each fold's network as an ONNX graph, run by "
        "onnxruntime (pip install 'autoseg[onnx]'; docs/benchmarks.md 'ONNX runtime')",
    )  # fmt: skip


def run_export_command(args: argparse.Namespace) -> int:
    """``autoseg export-model OUT.zip``: one file holding everything predict needs."""
    from autoseg.inference.model_file import export_model

    path = export_model(
        args.workdir,
        args.out,
        configuration=args.configurations,
        folds=args.folds,
        checkpoint=args.checkpoint,
        network_format=args.network_format,
    )
    print(f"model written to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


COMMANDS = [
    CommandSpec(
        "predict",
        "segment NIfTI/NRRD/MHA files or DICOM series with a trained model (NIfTI, DICOM SEG, RTSTRUCT out)",
        _predict_shard_arguments,
        run_predict_command,
    ),
    CommandSpec(
        "predict-cluster",
        "predict a folder on a Dask cluster, one task per case, the outputs in a shared folder "
        "(pip install 'autoseg[distributed]'; docs/scale.md)",
        _cluster_arguments,
        run_cluster_command,
    ),
    CommandSpec(
        "export-model",
        "write a trained configuration or ensemble (plans, weights or ONNX, post-processing, checksums) into "
        "one .zip file",
        _export_arguments,
        run_export_command,
    ),
]
