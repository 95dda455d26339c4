"""Peak memory of ``autoseg predict`` on a 600 x 512 x 512 CT (the issue's bound: within 16 GB of RAM).

Builds, in a scratch folder: a synthetic CT of that size (int16 HU, 0.8 x 0.8 x 1.0 mm), and a work directory
holding a randomly initialised 3-class model planned at the CT's own spacing (so nothing is resampled away),
with a small network and a 64 x 128 x 128 patch so that the run takes minutes on a CPU, not hours. Memory is
what is measured; the weights do not matter for it. Then runs ``autoseg predict`` (``fast`` and ``accurate``
with one fold) and reports the wall time and the peak memory of the process tree.

Run by hand: ``python benchmarks/bench_predict_memory.py --scratch SCRATCH --template WORKDIR`` (a planned
work directory, e.g. ``runs/hippo``; SCRATCH needs about 1 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from measure import run_once

from autoseg.io import Geometry, write_image
from autoseg.network import build_network
from autoseg.plans import ChannelNormalization
from autoseg.training.checkpoint import save_checkpoint
from autoseg.workdir import Workdir

SHAPE = (600, 512, 512)
SPACING_MM = (1.0, 0.8, 0.8)


def make_ct(path: Path) -> None:
    """A body-like ellipse of soft tissue in air with a few denser blobs, int16 HU."""
    if path.is_file():
        return
    z, y, x = (np.arange(n, dtype=np.float32) for n in SHAPE)
    inside = ((y[:, None] - 256) / 200) ** 2 + ((x[None, :] - 256) / 230) ** 2 < 1
    volume = np.full(SHAPE, -1000, np.int16)
    volume[:, inside] = 40
    volume[150:450, 200:300, 150:250] = 300
    del z
    write_image(volume, Geometry(SPACING_MM, (0.0, 0.0, 0.0)), path)


def make_workdir(template: Workdir, workdir: Workdir) -> None:
    """A work directory with a random-weight model planned at the CT's spacing (from a planned template)."""
    plans = template.read_plans()
    config = plans.configurations["3d_fullres"]
    network = dataclasses.replace(config.network, features_per_stage=(8, 16, 32, 64, 64))
    network = dataclasses.replace(
        network,
        kernel_sizes=((3, 3, 3),) * 5,
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
        blocks_per_stage=(2,) * 5,
        decoder_blocks_per_stage=(2,) * 4,
    )
    ct = ChannelNormalization("ct", False, -1000.0, 1000.0, 0.0, 300.0)
    config = dataclasses.replace(
        config, spacing_mm=SPACING_MM, patch_size=(64, 128, 128), network=network, normalization=(ct,)
    )
    plans = dataclasses.replace(
        plans,
        configurations={"3d_fullres": config},
        labels={"background": 0, "body": 1, "dense": 2},
        channel_names=("CT",),
    )
    workdir.write_plans(plans)
    torch.manual_seed(0)
    model = build_network(network, 1, 3)
    save_checkpoint({"network": model.state_dict()}, workdir.run("3d_fullres", 0).checkpoint("final"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument(
        "--template", type=Path, required=True, help="a planned work directory (e.g. runs/hippo, or a demo's)"
    )
    parser.add_argument("--presets", nargs="+", default=["fast", "accurate"])
    args = parser.parse_args()
    make_ct(args.scratch / "in" / "ct_0000.nii.gz")
    make_workdir(Workdir(args.template), Workdir(args.scratch / "work"))
    results = {}
    for preset in args.presets:
        out = args.scratch / f"out_{preset}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "autoseg", "predict", "-i", str(args.scratch / "in"), "-o", str(out)]
        command += ["-m", str(args.scratch / "work"), "--preset", preset, "-q"]
        wall, peak = run_once(command, interval_s=0.2)
        results[preset] = {"wall_s": round(wall, 1), "peak_tree_mib": round(peak)}
        print(f"{preset}: {wall:.0f} s, peak {peak / 1024:.2f} GiB", flush=True)
    (args.scratch / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
