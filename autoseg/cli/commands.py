"""One function per CLI command: read flags, call the stage, print the outcome. Registered in ``COMMANDS``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.dataset.catalogue import default_catalogue_path, load_catalogue, resolve_dataset
from autoseg.errors import UsageError

if TYPE_CHECKING:
    from autoseg.planning.stage import PlanRequest
    from autoseg.preprocessing.stage import PreprocessOptions

logger = logging.getLogger(__name__)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars on an interactive terminal, unless --quiet (piped output and CI logs stay clean)."""
    return not args.quiet and sys.stderr.isatty()


def _num_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-np",
        "--num-processes",
        dest="num_workers",
        type=positive_int,
        default=1,
        help="worker processes over cases (default: 1)",
    )


def _dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help="dataset folder (nnU-Net v2 or MSD layout) or a name from datasets.json",
    )


def _catalogue_path(args: argparse.Namespace) -> Path:
    path: Path | None = args.datasets_file
    return path if path is not None else default_catalogue_path()


def _dataset_folder(args: argparse.Namespace) -> Path:
    return resolve_dataset(
        args.dataset,
        catalogue_path=_catalogue_path(args),
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        num_workers=args.num_workers,
        show_progress=_progress(args),
    )


# ------------------------------------------------------------------------------------------- verify


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    _dataset_argument(parser)
    _num_workers(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")


def run_verify_command(args: argparse.Namespace) -> int:
    """``autoseg verify DATASET``: print every problem; exit 1 when there is an error."""
    from autoseg.dataset.verify import verify_dataset
    from autoseg.io import write_json

    report = verify_dataset(
        _dataset_folder(args), num_workers=args.num_workers, show_progress=_progress(args)
    )
    for line in report.lines():
        print(line)
    if args.json is not None:
        write_json(
            {
                "root": str(report.root),
                "cases_checked": report.cases_checked,
                "ok": report.ok,
                "problems": [
                    {
                        "severity": p.severity,
                        "path": str(p.path) if p.path else None,
                        "case": p.case,
                        "message": p.message,
                    }
                    for p in report.problems
                ],
            },
            args.json,
        )
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------------- fingerprint


def _fingerprint_arguments(parser: argparse.ArgumentParser) -> None:
    _dataset_argument(parser)
    _num_workers(parser)
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
        args.workdir, load_dataset(_dataset_folder(args)), options, show_progress=_progress(args)
    )
    print(path)
    return 0


# ------------------------------------------------------------------------------------------- synth


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    from autoseg.dataset.synthetic import SynthConfig

    default = SynthConfig()
    parser.add_argument("out", metavar="OUT", type=Path, help="folder to create (nnU-Net v2 layout)")
    parser.add_argument(
        "--preset",
        default=None,
        help="start from a synthetic entry of datasets.json, e.g. synthetic-ct; flags override it",
    )
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
    _num_workers(parser)


def run_synth_command(args: argparse.Namespace) -> int:
    """``autoseg synth OUT``: write a synthetic dataset."""
    from autoseg.dataset.synthetic import SynthConfig, write_synthetic_dataset

    base = SynthConfig().to_json()
    if args.preset is not None:
        entry = load_catalogue(_catalogue_path(args)).entry(args.preset)
        if entry.generator is None:
            raise UsageError(f"--preset {args.preset}: not a synthetic catalogue entry")
        base = entry.generator.to_json()
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
        write_synthetic_dataset(config, args.out, num_workers=args.num_workers, show_progress=_progress(args))
    )
    return 0


# ------------------------------------------------------------------------------------------- plan


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--planner",
        default=None,
        help="planner preset (see 'autoseg planners'; default: 'default' with a GPU, else 'cpu')",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device training will run on (default: cuda if a GPU is visible, else cpu)",
    )
    parser.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GB",
        help="GPU memory to plan for (default: the preset's reference, e.g. 8)",
    )
    parser.add_argument(
        "--time-budget",
        default=None,
        metavar="DURATION",
        help="cpu preset: training time to plan for, e.g. 2h, 90m (default: 2h)",
    )
    parser.add_argument(
        "--cpu-gflops",
        type=float,
        default=None,
        help="cpu preset: convolution throughput to assume instead of measuring it",
    )


def _plan_request(args: argparse.Namespace) -> PlanRequest:
    from autoseg.planning.stage import PlanRequest

    return PlanRequest(
        planner=args.planner,
        device=args.device,
        gpu_memory_gb=args.gpu_memory,
        time_budget=args.time_budget,
        cpu_gflops=args.cpu_gflops,
    )


def run_plan_command(args: argparse.Namespace) -> int:
    """``autoseg plan``: WORKDIR/fingerprint.json -> WORKDIR/plans.json."""
    from autoseg.planning.stage import run_plan

    print(run_plan(args.workdir, _plan_request(args)))
    return 0


def _preprocess_options(args: argparse.Namespace) -> PreprocessOptions:
    from autoseg.preprocessing.stage import PreprocessOptions

    configurations = tuple(args.configurations) if args.configurations else None
    return PreprocessOptions(configurations, num_workers=args.num_workers, seed=args.seed)


def _preprocess_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        default=None,
        metavar="CONFIG",
        help="configurations to preprocess (default: every planned one)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the stored foreground samples (default: 0)"
    )


def _preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    _preprocess_flags(parser)
    _num_workers(parser)


def run_preprocess_command(args: argparse.Namespace) -> int:
    """``autoseg preprocess``: plans.json -> WORKDIR/preprocessed."""
    from autoseg.preprocessing.stage import run_preprocess

    _print_folders(run_preprocess(args.workdir, _preprocess_options(args), show_progress=_progress(args)))
    return 0


def _print_folders(folders: dict[str, Path]) -> None:
    for name, folder in folders.items():
        print(f"{name}: {folder}")


def _plan_and_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    _dataset_argument(parser)
    _plan_arguments(parser)
    _preprocess_flags(parser)
    _num_workers(parser)


def run_plan_and_preprocess_command(args: argparse.Namespace) -> int:
    """``autoseg plan_and_preprocess DATASET``: verify, fingerprint, plan, preprocess."""
    from autoseg.pipeline import plan_and_preprocess

    _, folders = plan_and_preprocess(
        _dataset_folder(args),
        args.workdir,
        _plan_request(args),
        _preprocess_options(args),
        show_progress=_progress(args),
    )
    _print_folders(folders)
    return 0


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fold", metavar="FOLD", help="fold 0-4 of splits.json, or 'all'")
    parser.add_argument(
        "-c",
        "--configuration",
        default=None,
        help="configuration (default: 3d_fullres, or 2d where that is all that was planned)",
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help="epochs (default: the plan's schedule)"
    )
    parser.add_argument(
        "--iters-per-epoch",
        type=positive_int,
        default=None,
        help="training iterations per epoch (default: the plan's schedule)",
    )
    parser.add_argument(
        "--val-iters",
        type=positive_int,
        default=50,
        help="validation batches per epoch for the pseudo-Dice (default: 50)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation and sampling (default: 0)"
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (slower; bitwise-repeatable on the CPU)",
    )
    parser.add_argument(
        "--time-limit",
        default=None,
        metavar="DURATION",
        help="shorten the schedule to end within this time, e.g. 45m (the lr follows)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="augmentation worker processes (default: CPU count - 1, at most 8; 0: none)",
    )
    parser.add_argument(
        "--num-gpus",
        type=positive_int,
        default=1,
        help="data-parallel training on this many GPUs (DDP; or start autoseg under torchrun)",
    )
    parser.add_argument(
        "--groups",
        type=Path,
        default=None,
        metavar="FILE",
        help="case -> patient mapping (JSON or CSV) used when splits.json is first made, so "
        "that one patient never sits in two folds",
    )


def run_train_command(args: argparse.Namespace) -> int:
    """``autoseg train FOLD``: train one fold, then predict and score its validation cases."""
    from autoseg.planning.budgets import parse_duration
    from autoseg.planning.stage import default_device
    from autoseg.training import TrainConfig, run_train

    config = TrainConfig(
        configuration=args.configuration,
        fold=args.fold,
        epochs=args.epochs,
        iterations_per_epoch=args.iters_per_epoch,
        validation_iterations=args.val_iters,
        seed=args.seed,
        deterministic=args.deterministic,
        time_limit_s=parse_duration(args.time_limit) if args.time_limit else None,
        num_workers=args.num_workers,
        device=args.device or default_device(),
        groups_file=str(args.groups) if args.groups else None,
    )
    summary = run_train(
        args.workdir, config, num_gpus=args.num_gpus, resume=args.resume, show_progress=_progress(args)
    )
    print(f"fold {args.fold}: validation mean Dice per class {summary['mean_dice_per_class']}")
    return 0


def _planners_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options of its own


def run_planners_command(args: argparse.Namespace) -> int:
    """``autoseg planners``: list the presets."""
    from autoseg.planning.registry import available_planners, describe

    names = available_planners()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


# ------------------------------------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    _num_workers(parser)


def run_demo_command(args: argparse.Namespace) -> int:
    """``autoseg demo``: the pipeline end to end on the built-in synthetic dataset."""
    from autoseg.demo import run_demo

    for line in run_demo(args.workdir, num_workers=args.num_workers, show_progress=_progress(args)):
        print(line)
    return 0


@dataclass(frozen=True)
class CommandSpec:
    """One sub-command: its name, one-line help, how to add its flags, and what runs it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


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
        "plan",
        "derive the configurations (spacing, topology, patch, batch) from "
        "WORKDIR/fingerprint.json into WORKDIR/plans.json",
        _plan_arguments,
        run_plan_command,
    ),
    CommandSpec(
        "preprocess",
        "crop, normalise, resample and store every case of the planned configurations",
        _preprocess_arguments,
        run_preprocess_command,
    ),
    CommandSpec(
        "plan_and_preprocess",
        "verify, fingerprint, plan and preprocess a dataset in one command",
        _plan_and_preprocess_arguments,
        run_plan_and_preprocess_command,
    ),
    CommandSpec(
        "train",
        "train one fold of a configuration (resumable), then validate it",
        _train_arguments,
        run_train_command,
    ),
    CommandSpec("planners", "list the planner presets", _planners_arguments, run_planners_command),
    CommandSpec(
        "synth",
        "write an anatomy-like synthetic dataset (nnU-Net v2 layout)",
        _synth_arguments,
        run_synth_command,
    ),
    CommandSpec(
        "demo",
        "run the pipeline end to end on a built-in synthetic dataset",
        _demo_arguments,
        run_demo_command,
    ),
]
