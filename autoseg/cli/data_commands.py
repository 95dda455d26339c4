"""CLI commands ``verify``, ``fingerprint``, ``synth`` and ``convert-dicom``: datasets in.

Each command parses flags, builds the stage's options, calls its entry point and prints the outcome.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.cli.options import (
    CommandSpec,
    add_dataset_argument,
    add_num_workers,
    catalogue_path,
    dataset_folder,
    show_progress,
)
from autoseg.dataset.catalogue import load_catalogue
from autoseg.errors import UsageError

if TYPE_CHECKING:
    from autoseg.dicom.convert import CaseReport


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_argument(parser)
    add_num_workers(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")


def run_verify_command(args: argparse.Namespace) -> int:
    """``autoseg verify DATASET``: print every problem; exit 1 when there is an error."""
    from autoseg.dataset.verify import verify_dataset
    from autoseg.io import write_json

    report = verify_dataset(
        dataset_folder(args), num_workers=args.num_workers, show_progress=show_progress(args)
    )
    for line in report.lines():
        print(line)
    if args.json is not None:
        write_json(report.to_json(), args.json)
    return 0 if report.ok else 1


def _fingerprint_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_argument(parser)
    add_num_workers(parser)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the foreground voxel sample (default: 0)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="recompute even if fingerprint.json is up to date, or belongs to another dataset",
    )


def run_fingerprint_command(args: argparse.Namespace) -> int:
    """``autoseg fingerprint DATASET``: write WORKDIR/fingerprint.json."""
    from autoseg.dataset.layout import load_dataset
    from autoseg.fingerprint import FingerprintOptions, run_fingerprint

    options = FingerprintOptions(num_workers=args.num_workers, seed=args.seed, force=args.force)
    path = run_fingerprint(
        args.workdir, load_dataset(dataset_folder(args)), options, show_progress=show_progress(args)
    )
    print(path)
    return 0


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    from autoseg.dataset.synthetic import SynthConfig

    default = SynthConfig()
    parser.add_argument(
        "out", metavar="OUT", type=Path,
        help="folder to create (nnU-Net v2 layout; with --preset rt, DICOM case folders for convert-dicom)",
    )  # fmt: skip
    parser.add_argument(
        "--preset", default=None,
        help="rt: DICOM CT series with clinic-style RTSTRUCTs (8 cases of 40x64x64 voxels unless --cases, "
        "--shape); or a synthetic entry of datasets.json, e.g. synthetic-ct, synthetic-rt; flags override it",
    )  # fmt: skip
    parser.add_argument("--cases", type=int, default=None, help=f"number of cases (default: {default.cases})")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=None,
        help=f"median case shape in voxels (default: {' '.join(map(str, default.shape))})",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=None,
        help=f"voxel spacing in mm (default: {' '.join(map(str, default.spacing_mm))})",
    )
    parser.add_argument(
        "--classes", type=int, default=None, help=f"foreground classes, 1-8 (default: {default.classes})"
    )
    parser.add_argument(
        "--channels", type=int, default=None, help=f"image channels (default: {default.channels})"
    )
    parser.add_argument(
        "--modality",
        choices=("CT", "MR"),
        default=None,
        help=f"intensity model (default: {default.modality})",
    )
    parser.add_argument("--seed", type=int, default=None, help=f"random seed (default: {default.seed})")
    parser.add_argument("--file-ending", default=None, help=f"file ending (default: {default.file_ending})")
    add_num_workers(parser)


_RT_FLAGS = {"cases": "cases", "shape": "shape", "spacing_mm": "spacing", "seed": "seed"}
"""Config key -> flag (dest) of the options the rt preset takes; the others are refused for it."""


def run_synth_command(args: argparse.Namespace) -> int:
    """``autoseg synth OUT``: write a synthetic dataset (or, ``--preset rt``, DICOM structure sets)."""
    from autoseg.dataset.synthetic import SynthConfig, write_synthetic_dataset

    base, rt = _synth_base(args)
    if rt is not None:
        return _run_rt_synth(args, rt)
    overrides = {
        "cases": args.cases,
        "shape": args.shape,
        "spacing_mm": args.spacing,
        "classes": args.classes,
        "channels": args.channels,
        "modality": args.modality,
        "seed": args.seed,
        "file_ending": args.file_ending,
    }
    config = SynthConfig.from_json({**base, **{k: v for k, v in overrides.items() if v is not None}})
    print(
        write_synthetic_dataset(
            config, args.out, num_workers=args.num_workers, show_progress=show_progress(args)
        )
    )
    return 0


def _run_rt_synth(args: argparse.Namespace, base: dict[str, object]) -> int:
    """``autoseg synth OUT --preset rt``: the structure-set archive; refuse flags it does not take."""
    from autoseg.dataset.rt_synthetic import RtSynthConfig, write_rt_dataset

    refused = {"--classes": args.classes, "--channels": args.channels, "--modality": args.modality}
    given = [flag for flag, v in {**refused, "--file-ending": args.file_ending}.items() if v is not None]
    if given:
        raise UsageError(
            f"--preset {args.preset}: structure sets take --cases, --shape, --spacing and --seed, "
            f"not {', '.join(given)}"
        )
    values = {key: getattr(args, dest) for key, dest in _RT_FLAGS.items()}
    config = RtSynthConfig.from_json({**base, **{k: v for k, v in values.items() if v is not None}})
    print(write_rt_dataset(config, args.out, num_workers=args.num_workers, show_progress=show_progress(args)))
    return 0


def _synth_base(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object] | None]:
    """The preset's config as JSON: ``(synth config, None)``, or ``({}, rt config)`` for structure sets."""
    from autoseg.dataset.rt_synthetic import RtSynthConfig
    from autoseg.dataset.synthetic import SynthConfig

    if args.preset is None:
        return SynthConfig().to_json(), None
    if args.preset == "rt":
        return {}, RtSynthConfig().to_json()
    entry = load_catalogue(catalogue_path(args)).entry(args.preset)
    if entry.rt_generator is not None:
        return {}, entry.rt_generator.to_json()
    if entry.generator is None:
        raise UsageError(f"--preset {args.preset}: not a synthetic catalogue entry")
    return entry.generator.to_json(), None


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", type=Path, metavar="SOURCE",
        help="folder of case folders (each: one image series + an RTSTRUCT or a DICOM SEG), or one case "
        "folder",
    )  # fmt: skip
    parser.add_argument("out", type=Path, metavar="OUT", help="dataset folder to write (nnU-Net v2 layout)")
    parser.add_argument(
        "--mapping", type=Path, default=None, metavar="FILE",
        help='JSON: {"labels": {"GTV": {"value": 1, "rois": ["GTV*"], "type": "GTV"}}}; default: every '
        "structure name found (or, with --names tg263, its TG-263 name); with --names tg263 the mapping "
        "names what it lists and TG-263 the rest",
    )  # fmt: skip
    parser.add_argument(
        "--names", choices=("as-is", "tg263"), default="as-is",
        help="as-is: keep the structure names; tg263: map each to its AAPM TG-263 standard name (Lt Lung -> "
        "Lung_L) and report the unmatched ones with the nearest standard names",
    )  # fmt: skip


def run_convert_command(args: argparse.Namespace) -> int:
    """``autoseg convert-dicom SOURCE OUT``: DICOM series + RTSTRUCT/SEG -> an autoseg dataset."""
    from autoseg.dicom.convert import ConvertRequest, convert_dicom

    report = convert_dicom(ConvertRequest(args.source, args.out, args.mapping, args.names))
    for warning in report.warnings:
        print(f"warning: {warning}")
    for match in report.matches:
        if match.standard is not None and match.standard != match.name:
            print(f"TG-263: {match.name!r} -> {match.standard} ({match.method})")
    for case in report.cases:
        line = f"{case.case}: {case.status}"
        if case.message:
            line += f" ({case.message})"
        if case.unknown_rois:
            line += f"; structures not in the mapping: {', '.join(_with_nearest(case))}"
        if case.missing_labels:
            line += f"; missing: {', '.join(case.missing_labels)}"
        if case.overlap_voxels:
            pairs = ", ".join(f"{pair} {voxels}" for pair, voxels in case.overlaps.items())
            line += f"; overlapping structures kept ({pairs} voxels)"
        print(line)
    print(f"{len(report.written)} case(s) written to {report.output_dir}; labels {report.labels}")
    return 0 if report.written else 1


def _with_nearest(case: CaseReport) -> list[str]:
    """'Nodes (nearest: LN_IMN_L, ...)' for each unknown structure name of a case."""
    nearest = case.suggestions
    return [
        f"{name} (nearest: {', '.join(nearest[name])})" if nearest.get(name) else name
        for name in case.unknown_rois
    ]


COMMANDS = [
    CommandSpec(
        "verify",
        "check a dataset and report every problem, naming the file",
        _verify_arguments,
        run_verify_command,
    ),
    CommandSpec(
        "fingerprint",
        "record spacings, shapes, intensities and class statistics in WORKDIR/fingerprint.json",
        _fingerprint_arguments,
        run_fingerprint_command,
    ),
    CommandSpec(
        "synth",
        "write an anatomy-like synthetic dataset (nnU-Net v2 layout), or (--preset rt) DICOM CT series with "
        "clinic-style RTSTRUCTs",
        _synth_arguments,
        run_synth_command,
    ),
    CommandSpec(
        "convert-dicom",
        "turn DICOM series with RTSTRUCT or DICOM SEG structures into an autoseg (nnU-Net v2) dataset",
        _convert_arguments,
        run_convert_command,
    ),
]
