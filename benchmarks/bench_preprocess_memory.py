"""Peak memory of preprocessing one CT-sized case (512 x 512 x 1000 voxels), against its float32 size.

Builds a two-case dataset: the big CT-like case (int16, 1.0 x 0.85 x 0.85 mm) and a small one at 0.8 x 0.7 x
0.7 mm, so the target spacing (the median, 0.9 x 0.775 x 0.775 mm) makes the big case grow to about 1111 x 562
x 562 voxels (the worst case: upsampling). Then runs ``autoseg fingerprint``, ``plan`` and, measured,
``autoseg preprocess -c 3d_fullres -np 1``: wall time and the peak memory (PSS) of the process tree.

Usage: ``python benchmarks/bench_preprocess_memory.py [--slices 1000] [--scratch DIR]`` (needs about 8 GB of
free RAM and 3 GB of disk in ``--scratch``, default: the system's temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from measure import run_once

from autoseg.io import Geometry, write_image, write_labels
from autoseg.workdir import CaseFolder, Workdir


def ct_like(slices: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An int16 CT-like volume (air, body ellipse, an organ) and its labels, built slice by slice."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    body = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.46 * size)) ** 2 <= 1
    image = np.full((slices, size, size), -1000, np.int16)
    labels = np.zeros((slices, size, size), np.uint8)
    rng = np.random.default_rng(0)
    for z in range(slices):
        radius = 0.12 * size * (1 + 0.3 * np.sin(z / slices * np.pi))
        organ = (yy - 0.45 * size) ** 2 + (xx - 0.55 * size) ** 2 <= radius**2
        noise = rng.normal(0, 15, (size, size)).astype(np.float32)
        image[z][body] = (40 + noise[body]).astype(np.int16)
        image[z][organ] = (70 + noise[organ]).astype(np.int16)
        labels[z][organ] = 1
    return image, labels


def main() -> None:
    """Build the dataset, measure the preprocessing, print a Markdown row."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scratch", type=Path, help="folder for the dataset and work directory (3 GB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        root = Path(scratch) / "Dataset999_BigCT"
        image, labels = ct_like(args.slices, args.size)
        geometry = Geometry((1.0, 0.85, 0.85), (0.0, 0.0, 0.0))
        write_image(image, geometry, root / "imagesTr" / "big_0000.nii")
        write_labels(labels, geometry, root / "labelsTr" / "big.nii")
        small_image, small_labels = ct_like(100, 128)
        small = Geometry((0.8, 0.7, 0.7), (0.0, 0.0, 0.0))
        write_image(small_image, small, root / "imagesTr" / "small_0000.nii")
        write_labels(small_labels, small, root / "labelsTr" / "small.nii")
        float32_gib = image.size * 4 / 2**30
        del image, labels
        meta = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "organ": 1},
            "numTraining": 2,
            "file_ending": ".nii",
        }
        (root / "dataset.json").write_text(json.dumps(meta))
        work = Path(scratch) / "work"
        autoseg = [sys.executable, "-m", "autoseg"]
        subprocess.run([*autoseg, "fingerprint", str(root), "--workdir", str(work), "-q"], check=True)
        subprocess.run([*autoseg, "plan", "--workdir", str(work), "--planner", "default", "-q"], check=True)
        wall, peak_mib = run_once([*autoseg, "preprocess", "--workdir", str(work), "-c", "3d_fullres", "-q"])
        stored = np.load(CaseFolder(Workdir(work).data_dir("3d_fullres") / "big").image_path, mmap_mode="r")
        print(
            f"| {args.slices}x{args.size}x{args.size} int16 (float32 {float32_gib:.2f} GiB) | "
            f"{'x'.join(map(str, stored.shape[1:]))} | {wall:.1f} | {peak_mib / 1024:.2f} | "
            f"{peak_mib / 1024 / float32_gib:.2f} |"
        )


if __name__ == "__main__":
    main()
