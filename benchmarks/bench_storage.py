"""Which on-disk format gives the fastest random patch reads for training? Disk size and read time per format.

Candidates for a preprocessed float32 image ``(C, Z, Y, X)``: uncompressed ``.npy`` opened by memory map,
blosc2 (``.b2nd``, LZ4 and Zstd, chunks about the patch size), zarr v3 (blosc LZ4 chunks). Each read takes one
random patch of the planned size. "cold" evicts the file from the page cache first
(``posix_fadvise(DONTNEED)``), as for a dataset larger than RAM; "warm" reads from the page cache. Medians of
repeated reads.

Usage: ``python benchmarks/bench_storage.py [--reads 40] [--data-root DATA] [--scratch DIR]`` (needs ``pip
install blosc2 zarr``; includes a hippocampus case when the catalogue's ``hippocampus`` is under the data
root, default: the catalogue's). Prints a Markdown table for ``docs/design.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from autoseg.dataset.catalogue import default_catalogue_path, resolve_dataset
from autoseg.dataset.layout import load_dataset
from autoseg.dataset.synthetic import SynthConfig, synthesize_case
from autoseg.errors import AutosegError
from autoseg.io import read_array

Reader = Callable[[Path, tuple[slice, ...]], np.ndarray]


def _write_npy(array: np.ndarray, path: Path) -> Path:
    target = path.with_suffix(".npy")
    np.save(target, array)
    return target


def _read_npy(path: Path, box: tuple[slice, ...]) -> np.ndarray:
    return np.array(np.load(path, mmap_mode="r")[box])


def _blosc2_writer(codec: str) -> Callable[[np.ndarray, Path], Path]:
    def write(array: np.ndarray, path: Path) -> Path:
        import blosc2

        target = path.with_suffix(f".{codec}.b2nd")
        chunks = tuple(min(s, c) for s, c in zip(array.shape, (1, 64, 128, 128), strict=True))
        blocks = tuple(min(s, c) for s, c in zip(array.shape, (1, 16, 32, 32), strict=True))
        cparams = {
            "codec": getattr(blosc2.Codec, codec),
            "clevel": 5 if codec == "ZSTD" else 8,
            "nthreads": 1,
        }
        blosc2.asarray(
            np.ascontiguousarray(array),
            urlpath=str(target),
            mode="w",
            chunks=chunks,
            blocks=blocks,
            cparams=cparams,
        )
        return target

    return write


def _read_blosc2(path: Path, box: tuple[slice, ...]) -> np.ndarray:
    import blosc2

    return np.asarray(blosc2.open(str(path), mode="r", dparams={"nthreads": 1})[box])


def _write_zarr(array: np.ndarray, path: Path) -> Path:
    import zarr

    target = path.with_suffix(".zarr")
    chunks = tuple(min(s, c) for s, c in zip(array.shape, (1, 64, 128, 128), strict=True))
    stored = zarr.create_array(
        str(target), shape=array.shape, dtype=array.dtype, chunks=chunks, overwrite=True
    )
    stored[...] = array
    return target


def _read_zarr(path: Path, box: tuple[slice, ...]) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(str(path), mode="r")[box])


FORMATS: dict[str, tuple[Callable[[np.ndarray, Path], Path], Reader]] = {
    "npy + memory map": (_write_npy, _read_npy),
    "blosc2 LZ4": (_blosc2_writer("LZ4"), _read_blosc2),
    "blosc2 Zstd": (_blosc2_writer("ZSTD"), _read_blosc2),
    "zarr v3 (default Zstd)": (_write_zarr, _read_zarr),
}


def _evict(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def bench(name: str, array: np.ndarray, patch: tuple[int, int, int], reads: int, folder: Path) -> None:
    """One table block: every format on ``array`` with random ``patch`` reads."""
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(reads):
        start = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(array.shape[1:], patch, strict=True)]
        boxes.append((slice(None), *(slice(a, a + p) for a, p in zip(start, patch, strict=True))))
    for label, (write, read) in FORMATS.items():
        begin = time.perf_counter()
        path = write(array, folder / name.replace(" ", "_"))
        written = time.perf_counter() - begin
        assert np.array_equal(read(path, boxes[0]), array[boxes[0]])
        timings: dict[str, list[float]] = {"cold": [], "warm": []}
        for box in boxes:
            for mode in ("cold", "warm"):
                if mode == "cold":
                    _evict(path)
                begin = time.perf_counter()
                read(path, box)
                timings[mode].append(time.perf_counter() - begin)
        ratio = array.nbytes / _size(path)
        print(
            f"| {name} | {label} | {_size(path) / 2**20:.2f} | {ratio:.2f} | {1000 * written:.0f} | "
            f"{1000 * statistics.median(timings['cold']):.2f} | "
            f"{1000 * statistics.median(timings['warm']):.2f} |"
        )


def hippocampus_case(data_root: Path | None, scratch: Path) -> Path | None:
    """The first image of the catalogue's ``hippocampus`` dataset, ``None`` when it is not there."""
    try:
        root = resolve_dataset(
            "hippocampus", catalogue_path=default_catalogue_path(), data_root=data_root, cache_dir=scratch
        )
    except AutosegError:
        return None
    return load_dataset(root).cases[0].image_paths[0]


def main() -> None:
    """Run both datasets and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=40)
    parser.add_argument("--data-root", type=Path, help="where real datasets live (default: the catalogue's)")
    parser.add_argument("--scratch", type=Path, help="folder for the files (default: the system's temporary)")
    args = parser.parse_args()
    print(
        "| data | format | disk (MiB) | compression | write (ms) | cold patch read (ms) "
        "| warm patch read (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        folder = Path(scratch)
        hippo = hippocampus_case(args.data_root, folder)
        if hippo is not None:
            image = read_array(hippo)[0].astype(np.float32)
            image = ((image - image.mean()) / image.std())[None]
            bench("hippocampus case (1x35x51x35)", image, (32, 40, 32), args.reads, folder)
        ct, _, _ = synthesize_case(SynthConfig(cases=1, shape=(120, 256, 256), modality="CT", classes=4), 0)
        ct = np.clip(ct, -1000, 1000) / 400.0  # a normalised CT: the dynamic range preprocessing stores
        bench(
            f"synthetic CT ({'x'.join(map(str, ct.shape))})",
            ct.astype(np.float32),
            (56, 160, 160),
            args.reads,
            folder,
        )


if __name__ == "__main__":
    main()
