"""CLI commands ``train FOLD``.

Each command parses flags, builds the stage's options, calls its entry point and prints the outcome.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.cli.options import (
    CommandSpec,
    positive_duration,
    positive_float,
    positive_int,
    show_progress,
)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fold", metavar="FOLD", help="fold 0-4 of splits.json, or 'all'")
    parser.add_argument(
        "-c",
        "--configuration",
        default=None,
        help="configuration (default: find_best_configuration's choice, else 3d_fullres, or 2d where that is "
        "all that was planned)",
    )
    _schedule_arguments(parser)
    _machine_arguments(parser)


def _schedule_arguments(parser: argparse.ArgumentParser) -> None:
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
        default=None,
        help="validation batches per epoch for the pseudo-Dice (default: the plan's schedule, 50 unless the "
        "cpu preset planned fewer)",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        metavar="LR",
        help="initial learning rate of SGD (Nesterov momentum 0.99), decayed by the poly schedule to 0 "
        "(default: 0.01, nnU-Net's); recorded in train_config.json",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation and sampling (default: 0)"
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (slower; bitwise-repeatable on the CPU; with --precision auto "
        "it trains in float32, which the exact-resume guarantee is tested with)",
    )
    parser.add_argument(
        "--time-limit",
        type=positive_duration,
        default=None,
        metavar="DURATION",
        help="shorten the schedule to end within this time, e.g. 45m (the lr follows; the final validation "
        "comes after it); default: the plan's --time-budget when it has one and --epochs is not given",
    )
    parser.add_argument(
        "--groups",
        type=Path,
        default=None,
        metavar="FILE",
        help="case -> patient mapping (JSON or CSV) used when splits.json is first made, so "
        "that one patient never sits in two folds",
    )


def _machine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="augmentation worker processes (default: CPU count - 1, at most 8; 0: none)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="arithmetic of the network's passes (default: auto = bfloat16 on a CPU with native bfloat16, "
        "float16 with loss scaling on CUDA, float32 elsewhere and with --deterministic); weights, "
        "optimiser and loss stay float32; recorded in train_config.json",
    )
    parser.add_argument(
        "--num-gpus",
        type=positive_int,
        default=1,
        help="data-parallel training on this many GPUs (DDP; or start autoseg under torchrun)",
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
        **({} if args.lr is None else {"initial_lr": args.lr}),
        seed=args.seed,
        deterministic=args.deterministic,
        time_limit_s=parse_duration(args.time_limit) if args.time_limit else None,
        num_workers=args.num_workers,
        device=args.device or default_device(),
        groups_file=str(args.groups) if args.groups else None,
        precision=args.precision,
    )
    summary = run_train(
        args.workdir, config, num_gpus=args.num_gpus, resume=args.resume, show_progress=show_progress(args)
    )
    print(f"fold {args.fold}: validation mean Dice per class {summary['mean_dice_per_class']}")
    return 0


COMMANDS = [
    CommandSpec(
        "train",
        "train one fold of a configuration (resumable), then validate it",
        _train_arguments,
        run_train_command,
    ),
]
