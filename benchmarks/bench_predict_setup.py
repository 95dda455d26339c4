"""Set up ``autoseg predict`` against ``nnUNetv2_predict``, side by side, with the same network weights.

Only fold 0 of the trained work directory (``--workdir``) is needed. Its weights are mapped onto nnU-Net's
``PlainConvUNet`` (the same topology) and written as an nnU-Net model folder; both tools get the weights
replicated as folds 0-4, so a 5-fold ensemble's timing is real while its Dice is the single model's. The
mapping is checked in nnU-Net's own venv: both networks' eval-mode outputs on one random input must agree.

Writes under ``--root``: the input folders (the first ``--cases`` validation cases of the fold, and the first
5 of them; the CT image), the autoseg model files (exported by ``autoseg.inference.model_file.export_model``
from a work directory holding fold 0 as folds 0-4; and a timing-only CT model: the same plan at 3 mm with CT
normalisation and seeded random weights), the nnU-Net model folders, ``sources.json`` (what the later steps
read) and the weight checks in ``results.json``. Without ``--nnunet-venv`` only autoseg's side is set up.
Then: ``bench_predict_compare.py``, ``bench_predict_profile.py``, ``bench_predict_report.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from nnunet_folder import (
    check_weights,
    ct_timing_plans,
    plain_conv_unet_arguments,
    renamed_plans,
    write_nnunet_model,
)
from predict_layout import (
    CONFIGURATION,
    CT_DATASET,
    FOLDS,
    HIPPO_DATASET,
    Layout,
    ModelName,
    Sources,
    fresh_folder,
)

from autoseg.dataset.layout import load_dataset
from autoseg.inference.model_file import export_model, load_model
from autoseg.io import split_ending
from autoseg.network import build_network
from autoseg.plans import ChannelNormalization, Plans
from autoseg.training.checkpoint import save_checkpoint
from autoseg.workdir import Workdir

CT_LABELS = {"background": 0, "structure_1": 1, "structure_2": 2}
CT_SPACING_MM = (3.0, 3.0, 3.0)
CT_NORMALIZATION = ChannelNormalization("ct", False, clip_low=-150.0, clip_high=250.0, mean=60.0, std=70.0)
"""Soft-tissue-like CT normalisation for the timing-only model (clip HU, then z-score)."""


def copy_inputs(sources: Sources, fold: int, count: int, layout: Layout) -> list[str]:
    """The first ``count`` validation cases of ``fold`` (``splits.json`` order), and the first 5, copied with
    their channel file names; the CT image as ``CASE_0000``."""
    splits = Workdir(sources.workdir).read_splits()
    if not splits:
        raise SystemExit(f"{sources.workdir}: no splits.json; train fold {fold} first")
    names = splits[fold]["val"][:count]
    cases = {case.identifier: case for case in load_dataset(sources.dataset).cases}
    for folder, chosen in ((layout.inputs("hippo"), names), (layout.inputs("hippo_subset"), names[:5])):
        fresh_folder(folder)
        for name in chosen:
            for path in cases[name].image_paths:
                shutil.copy(path, folder / path.name)
    stem, ending = split_ending(sources.ct_image)
    shutil.copy(sources.ct_image, fresh_folder(layout.inputs("ct")) / f"{stem}_0000{ending}")
    return names


def export_replicated(source: Workdir, fold: int, staging: Workdir, out: Path) -> None:
    """``out``: fold ``fold`` of ``source`` (with its plan, post-processing and training reference) as folds
    0..FOLDS-1, exported from ``staging``, a work directory whose checkpoints link to the one trained."""
    shutil.rmtree(staging.root, ignore_errors=True)
    staging.write_plans(source.read_plans())
    reference = source.read_training_reference()
    if reference is not None:
        staging.write_training_reference(reference)
    postprocessing = source.postprocessing_path([CONFIGURATION])
    if postprocessing.is_file():
        staging.configuration_dir(CONFIGURATION).mkdir(parents=True)
        shutil.copy(postprocessing, staging.postprocessing_path([CONFIGURATION]))
    trained = source.run(CONFIGURATION, fold).checkpoint("final").resolve()
    for copy in range(FOLDS):
        target = staging.run(CONFIGURATION, copy).checkpoint("final")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(trained)
    export_model(staging.root, out, configuration=CONFIGURATION, folds=[str(f) for f in range(FOLDS)])


def ct_timing_model(hippo: Plans, staging: Workdir, out: Path) -> dict[str, torch.Tensor]:
    """``out``: the hippocampus plan and network at 3 mm with CT normalisation, 3 classes, seeded random
    weights (the same in every fold); returns the weights."""
    config = dataclasses.replace(
        hippo.configuration(CONFIGURATION), spacing_mm=CT_SPACING_MM, normalization=(CT_NORMALIZATION,)
    )
    plans = dataclasses.replace(
        hippo,
        dataset_name=CT_DATASET,
        channel_names=("CT",),
        labels=CT_LABELS,
        configurations={CONFIGURATION: config},
    )
    shutil.rmtree(staging.root, ignore_errors=True)
    staging.write_plans(plans)
    torch.manual_seed(0)
    network = build_network(config.network, 1, len(CT_LABELS))
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    for fold in range(FOLDS):
        save_checkpoint({"network": state}, staging.run(CONFIGURATION, fold).checkpoint("final"))
    export_model(staging.root, out, configuration=CONFIGURATION, folds=[str(f) for f in range(FOLDS)])
    return state


def nnunet_side(layout: Layout, venv: Path, nnunet_plans: Path) -> dict[str, Any]:
    """nnU-Net model folders for both models (its own plan for the dataset, renamed, with autoseg's patch),
    and the weight checks."""
    checks: dict[str, Any] = {}
    own_plans = json.loads(nnunet_plans.read_text())
    hippo_dataset_json = json.loads((nnunet_plans.parent / "dataset.json").read_text())
    ct_dataset_json = {
        "name": CT_DATASET,
        "channel_names": {"0": "CT"},
        "labels": CT_LABELS,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    models: Sequence[tuple[ModelName, str]] = (("hippo", HIPPO_DATASET), ("ct", CT_DATASET))
    for name, dataset in models:
        model = load_model(layout.model(name), folds=["0"])
        plan = model.plans.configuration(CONFIGURATION)
        plans = renamed_plans(own_plans, plan)
        if name == "ct":
            plans = ct_timing_plans(plans, CT_DATASET, CT_SPACING_MM, CT_NORMALIZATION)
        folder = layout.nnunet_model(dataset)
        write_nnunet_model(
            folder,
            plans,
            hippo_dataset_json if name == "hippo" else ct_dataset_json,
            model.weights["0"],
            FOLDS,
        )
        arguments = plain_conv_unet_arguments(
            plan.network, len(model.plans.channel_names), len(model.plans.labels)
        )
        network = model.networks("cpu", ["0"])[0]
        checkpoint = folder / "fold_0" / "checkpoint_final.pth"
        checks[dataset] = check_weights(
            venv / "bin" / "python",
            checkpoint,
            network,
            arguments,
            plan.patch_size,
            layout.root / f"check_{name}",
        )
    return checks


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and set everything up."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="benchmark folder (created)")
    parser.add_argument("--workdir", type=Path, required=True, help="work directory with fold --fold trained")
    parser.add_argument("--dataset", type=Path, required=True, help="its raw dataset folder (images, labels)")
    parser.add_argument(
        "--ct-image", type=Path, required=True, help="a CT image, e.g. TotalSegmentator's example"
    )
    parser.add_argument(
        "--nnunet-venv", type=Path, help="nnU-Net v2's own venv (its bin/python, bin/nnUNetv2_*)"
    )
    parser.add_argument(
        "--nnunet-plans",
        type=Path,
        help="nnU-Net's nnUNetPlans.json for the dataset (dataset.json beside it)",
    )
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--cases", type=int, default=20)
    args = parser.parse_args(argv)
    if (args.nnunet_venv is None) != (args.nnunet_plans is None):
        parser.error("--nnunet-venv and --nnunet-plans go together")
    layout = Layout(args.root)
    sources = Sources(args.workdir, args.dataset, args.ct_image, args.nnunet_venv)
    layout.write_sources(sources)
    names = copy_inputs(sources, args.fold, args.cases, layout)
    source = Workdir(args.workdir)
    export_replicated(source, args.fold, Workdir(layout.staging("hippo")), layout.model("hippo"))
    ct_timing_model(source.read_plans(), Workdir(layout.staging("ct")), layout.model("ct"))
    checks = {} if args.nnunet_venv is None else nnunet_side(layout, args.nnunet_venv, args.nnunet_plans)
    layout.record("setup", {"cases": names, "weight_checks": checks, "torch": torch.__version__})
    print(json.dumps(checks, indent=2))


if __name__ == "__main__":
    main()
