"""What ``autoseg predict`` reads: image files (one per channel, nnU-Net naming) or DICOM series.

``-i`` may be one image file, a folder of image files (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``... per
channel; single-channel models also take ``CASE.nii.gz``), a DICOM series folder, or a folder holding several
DICOM series (each becomes one case, grouped by SeriesInstanceUID).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import MemoryLimitError, PredictInputError
from autoseg.io import SUPPORTED_ENDINGS, Geometry, read_header, read_image, split_ending
from autoseg.plans import ConfigurationPlan
from autoseg.types import FloatVolume

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict.

    Attributes:
        identifier: the output's name (file name without channel suffix and ending, or the DICOM series').
        files: the channel files in channel order (empty for DICOM).
        series: the DICOM series (an ``autoseg.dicom.series.DicomSeries``), or ``None`` for image files.
    """

    identifier: str
    files: tuple[Path, ...] = ()
    series: Any = None

    @property
    def is_dicom(self) -> bool:
        """Whether the case is a DICOM series."""
        return self.series is not None


def find_input_cases(path: Path, num_channels: int) -> list[InputCase]:
    """The cases under ``path`` (see the module docstring), sorted by identifier.

    Raises:
        PredictInputError: nothing to predict, a missing channel, or a name given twice.
    """
    if path.is_file():
        return [_single_file_case(path, num_channels)]
    if not path.is_dir():
        raise PredictInputError(f"{path}: no such file or folder")
    images = sorted(
        p for p in path.iterdir() if p.is_file() and split_ending(p)[1].lower() in SUPPORTED_ENDINGS
    )
    if images:
        return _cases_from_files(images, num_channels, path)
    return _dicom_cases(path, num_channels)


def read_input_case(case: InputCase) -> tuple[FloatVolume, Geometry]:
    """The case's image ``(C, Z, Y, X)`` float32 (raw intensities; HU for CT) and its geometry."""
    if case.is_dicom:
        from autoseg.dicom.series import read_series

        return read_series(case.series)
    return read_image(case.files)


def _single_file_case(path: Path, num_channels: int) -> InputCase:
    stem, ending = split_ending(path)
    if ending.lower() not in SUPPORTED_ENDINGS:  # .NII.GZ too, as io reads it
        raise PredictInputError(f"{path}: not an image file autoseg reads ({', '.join(SUPPORTED_ENDINGS)})")
    match = _CHANNEL_SUFFIX.match(stem)
    if num_channels == 1:
        return InputCase(match["case"] if match else stem, (path,))
    if not match:
        raise PredictInputError(
            f"{path}: the model needs {num_channels} channels; "
            f"name the files CASE_0000{ending}, CASE_0001{ending}..."
        )
    siblings = tuple(path.with_name(f"{match['case']}_{c:04d}{ending}") for c in range(num_channels))
    missing = [p.name for p in siblings if not p.is_file()]
    if missing:
        raise PredictInputError(f"{path}: missing channel file(s) {', '.join(missing)}")
    return InputCase(match["case"], siblings)


def _cases_from_files(images: Sequence[Path], num_channels: int, folder: Path) -> list[InputCase]:
    channels: dict[str, dict[int, Path]] = defaultdict(dict)
    for image in images:
        stem, _ = split_ending(image)
        match = _CHANNEL_SUFFIX.match(stem)
        case, channel = (
            (match["case"], int(match["channel"])) if match else (stem, 0 if num_channels == 1 else -1)
        )
        if channel < 0:
            raise PredictInputError(
                f"{image}: the model needs {num_channels} channels; name the files CASE_0000, CASE_0001..."
            )
        if channel in channels[case]:
            raise PredictInputError(f"{folder}: case {case} channel {channel} given twice ({image.name})")
        channels[case][channel] = image
    cases: list[InputCase] = []
    problems: list[str] = []
    for case, files in sorted(channels.items()):
        expected = set(range(num_channels))
        if set(files) != expected:
            missing = sorted(expected - set(files))
            extra = sorted(set(files) - expected)
            problems.append(
                f"{case}: "
                + (f"missing channel(s) {', '.join(f'{c:04d}' for c in missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected channel(s) {', '.join(f'{c:04d}' for c in extra)}" if extra else "")
            )
            continue
        cases.append(InputCase(case, tuple(files[c] for c in range(num_channels))))
    if problems:
        raise PredictInputError(
            f"{folder}: the model needs {num_channels} channel(s) per case", details=problems
        )
    return cases


def _dicom_cases(folder: Path, num_channels: int) -> list[InputCase]:
    from autoseg.dicom.series import find_series

    series = find_series(folder)
    if not series:
        raise PredictInputError(
            f"{folder}: no image files ({', '.join(SUPPORTED_ENDINGS)}) and no DICOM image series found"
        )
    if num_channels != 1:
        raise PredictInputError(
            f"{folder}: the model needs {num_channels} channels; "
            "DICOM input is read as one channel per case. "
            "Convert the series to NIfTI (CASE_0000, CASE_0001...) first."
        )
    names = _series_names(folder, series)
    return [InputCase(name, (), item) for name, item in sorted(zip(names, series, strict=True))]


def _series_names(folder: Path, series: Sequence[Any]) -> list[str]:
    """Output names: the input folder's name for one series; the sub-folder path of each series when every
    series has a folder of its own; else the folder name plus the series description (or UID tail)."""
    if len(series) == 1:
        return [folder.name]
    homes = [item.files[0].parent for item in series]
    if len(set(homes)) == len(homes):
        names = ["_".join(home.relative_to(folder).parts) or folder.name for home in homes]
    else:
        names = [f"{folder.name}_{item.description or item.series_instance_uid[-8:]}" for item in series]
    names = [re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "series" for name in names]
    if len(set(names)) != len(names):
        names = [f"{name}_{index}" for index, name in enumerate(names)]
    return names


# ------------------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class CaseHeader:
    """What a case's headers say before any voxel is read.

    Attributes:
        shape: ``(Z, Y, X)`` voxels.
        spacing_mm: ``(z, y, x)`` voxel size, mm.
        channels: number of channels.
        stored_bytes: bytes per voxel as stored (the read buffer of one channel before conversion).
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    channels: int
    stored_bytes: int


def read_case_header(case: InputCase) -> CaseHeader:
    """The case's size from its headers only (image files: each channel's header; DICOM: the series'
    instances).

    Raises:
        ImageReadError: an unreadable header or a voxel size that is not positive (named by the file).
        PredictInputError: a file that is not 3D.
    """
    if case.is_dicom:
        instances = case.series.instances
        first = instances[0]
        slices = sum(max(1, int(i.number_of_frames)) for i in instances)
        span = float(np.linalg.norm(np.subtract(instances[-1].position_xyz, first.position_xyz)))
        spacing = (
            span / (len(instances) - 1) if len(instances) > 1 and span > 0 else 1.0,
            *first.pixel_spacing,
        )
        return CaseHeader((slices, int(first.rows), int(first.columns)), spacing, 1, 4)
    infos = [read_header(path) for path in case.files]
    for info in infos:
        if info.ndim != 3 or info.components != 1:
            raise PredictInputError(
                f"{info.path}: is {info.ndim}D with shape {info.shape} and {info.components} value(s) "
                "per voxel; expected one 3D volume per channel"
            )
    shape = infos[0].shape
    stored = max(int(np.dtype(info.dtype).itemsize) for info in infos)
    return CaseHeader((shape[0], shape[1], shape[2]), infos[0].geometry.spacing_mm, len(infos), stored)


FLOAT16_ABOVE_BYTES = 2 * 2**30
"""Network-grid probabilities of one configuration that would take more than this in float32 are kept in
float16 (:func:`network_grid_dtype`)."""


def network_grid_dtype(num_classes: int, shape: Sequence[int]) -> type[np.floating]:
    """float32 for the probabilities of a ``shape`` (Z, Y, X) network grid with ``num_classes`` channels,
    unless that takes more than :data:`FLOAT16_ABOVE_BYTES`: then float16 (what nnU-Net accumulates in),
    which halves the largest buffer of a many-class prediction (117 classes on a 600 x 512 x 512 CT planned
    at 1.5 mm: 6.9 instead of 13.9 GB) and rounds each probability by at most 2**-11 relative, so a voxel
    whose two best classes are closer than that may take the other label."""
    size = 4 * num_classes * math.prod(int(n) for n in shape)
    return np.float16 if size > FLOAT16_ABOVE_BYTES else np.float32


def estimate_peak_bytes(
    header: CaseHeader, spacings_mm: Sequence[Sequence[float]], num_outputs: int, *, regions: bool = False
) -> int:
    """Peak memory of predicting one case, bytes, from its header: the channel read as stored, the float32
    image, per configuration (``spacings_mm``: each plan's spacing) the image resampled to the plan's
    spacing and its ``(K, Z', Y', X')`` probabilities (float32, or float16 above :data:`FLOAT16_ABOVE_BYTES`)
    with one volume for the blending band and the finished slab; on the input's grid the class-by-class
    export (:mod:`autoseg.inference.export`): five float32 volumes (the running maximum, the channel being
    restored, its resampled crop, the member being added, an oblique image's canonical channel) and the
    label map, plus ``K`` uint8 masks for a region-based model (``regions``). The input grid no longer holds
    ``K`` float32 probabilities. A bound, not a measurement: the crop to the nonzero region only makes it
    smaller; an oblique input's axis-aligned grid (up to ~1.7x the voxels) is covered by a factor 1.5 on the
    resampled arrays."""
    voxels = header.shape[0] * header.shape[1] * header.shape[2]
    extent_mm3 = voxels * float(np.prod(header.spacing_mm))
    masks = num_outputs if regions else 0
    total = voxels * (header.stored_bytes + 4 * header.channels + 4 * 5 + 2 + masks)
    for spacing in spacings_mm:
        resampled = math.ceil(1.5 * extent_mm3 / float(np.prod(spacing)))
        stored = np.dtype(network_grid_dtype(num_outputs, (resampled,))).itemsize
        total += resampled * (4 * header.channels + stored * num_outputs + 4)
    return total


def available_memory_bytes() -> int | None:
    """Memory available to this process now, bytes: psutil's ``available`` when psutil is installed, else
    ``MemAvailable`` of ``/proc/meminfo``; ``None`` when neither is known (the check is then skipped)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_case_memory(
    case: InputCase,
    header: CaseHeader,
    spacings_mm: Sequence[Sequence[float]],
    num_outputs: int,
    available: int | None,
    *,
    regions: bool = False,
) -> int:
    """The estimated peak (:func:`estimate_peak_bytes`); refuse the case before any voxel is read when it
    exceeds ``available`` bytes.

    Raises:
        MemoryLimitError: naming the case's file, its size and the memory it would need.
    """
    need = estimate_peak_bytes(header, spacings_mm, num_outputs, regions=regions)
    if available is not None and need > available:
        where = case.files[0] if case.files else case.series.summary()
        shape = " x ".join(str(n) for n in header.shape)
        raise MemoryLimitError(
            f"{where}: {shape} voxels x {header.channels} channel(s) at "
            f"{_spacing_text(header.spacing_mm)} mm "
            f"would need about {format_bytes(need)} to predict ({num_outputs} classes); "
            f"{format_bytes(available)} is available. Crop or downsample the image, or use a larger machine"
        )
    return need


def window_activation_bytes(plan: ConfigurationPlan, num_outputs: int, channels: int) -> int:
    """float32 activations of one window through the plan's U-Net, bytes (a bound, measured nowhere): the
    encoder's output of every stage, kept for the skip connections, four maps of the largest stage at once
    (a convolution's input and output, the normalisation, the decoder's concatenation), and the input and
    ``K`` logits with their softmax at full resolution."""
    voxels = float(math.prod(plan.patch_size))
    maps, stage_voxels = [], voxels
    for features, strides in zip(plan.network.features_per_stage, plan.network.strides, strict=True):
        stage_voxels /= math.prod(strides)
        maps.append(features * stage_voxels)
    return math.ceil(4 * (sum(maps) + 4 * max(maps) + (channels + 2 * num_outputs) * voxels))


def estimate_device_bytes(
    image_shapes: Sequence[Sequence[int]],
    plans: Sequence[ConfigurationPlan],
    num_outputs: int,
    *,
    windows_per_batch: int = 1,
    accumulate_on_device: bool = False,
) -> int:
    """Peak CUDA memory of predicting one preprocessed case, bytes, beyond the networks' weights (loaded
    before, so no longer free): per configuration (they run one after another; the largest counts) the
    ``(C, Z, Y, X)`` image moved whole to the device, ``windows_per_batch`` windows through the network
    (:func:`window_activation_bytes`), and with ``accumulate_on_device`` the blending band: one patch depth of
    the ``K`` sums and their weights, and a finished slab (``accumulate auto`` puts it on the CPU when it does
    not fit).

    Args:
        image_shapes: each configuration's preprocessed image shape, ``(C, Z, Y, X)``.
    """
    peak = 0
    for shape, plan in zip(image_shapes, plans, strict=True):
        channels, voxels = int(shape[0]), math.prod(int(n) for n in shape[1:])
        total = 4 * channels * voxels
        total += windows_per_batch * window_activation_bytes(plan, num_outputs, channels)
        if accumulate_on_device:  # the blending band (``autoseg.inference.ensemble.band_bytes``)
            rows = min(plan.patch_size[0] if len(plan.patch_size) == 3 else 1, int(shape[1]))
            total += 4 * (2 * num_outputs + 1) * rows * math.prod(int(n) for n in shape[2:])
        peak = max(peak, total)
    return peak


def device_free_bytes(device: str) -> int | None:
    """Memory a CUDA ``device`` can still give this process, bytes: ``torch.cuda.mem_get_info``'s free memory
    plus what PyTorch's caching allocator holds but does not use; ``None`` for a CPU device."""
    if not device.startswith("cuda"):
        return None
    import torch

    handle = torch.device(device)
    free, _ = torch.cuda.mem_get_info(handle)
    cached = torch.cuda.memory_reserved(handle) - torch.cuda.memory_allocated(handle)
    return int(free) + max(0, int(cached))


def check_device_memory(
    case: InputCase, need: int, device: str, free: int | None, *, windows_per_batch: int = 1
) -> None:
    """Refuse a case whose estimated device memory (:func:`estimate_device_bytes`) exceeds ``free`` bytes
    (``None``: not a CUDA device, nothing checked), before any of its windows runs.

    Raises:
        MemoryLimitError: naming the case's file, the memory it would need on ``device`` and what is free.
    """
    if free is None or need <= free:
        return
    where = case.files[0] if case.files else case.series.summary()
    raise MemoryLimitError(
        f"{where}: would need about {format_bytes(need)} of GPU memory on {device} to predict (the "
        f"preprocessed image and {windows_per_batch} window(s) at a time through the network); "
        f"{format_bytes(free)} is free there. Use --device cpu, free the GPU, or use one with more memory"
    )


def format_bytes(count: float) -> str:
    """``1.5 GiB``, ``12 MiB``, ``3.6e+06 TiB``: a byte count for messages."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= size:
            value = count / size
            return f"{value:.3g} {unit}" if value < 1e6 else f"{value:.2g} {unit}"
    return f"{count / 1024:.3g} KiB"


def _spacing_text(spacing_mm: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in spacing_mm) + ")"


def replace_non_finite(image: FloatVolume, identifier: str, *, strict: bool) -> str | None:
    """Replace NaN and Inf voxels of ``(C, Z, Y, X)`` ``image`` in place by their channel's lowest finite
    value (background in CT and MR), and say so; a network fed one NaN returns all background.

    Returns:
        ``None`` when every voxel is finite, else the note for the log and ``predict.json``.

    Raises:
        PredictInputError: a channel without any finite voxel, or (``strict``) any non-finite voxel.
    """
    notes: list[str] = []
    for index, channel in enumerate(image):
        if math.isfinite(float(channel.sum(dtype=np.float64))):  # NaN and Inf survive a sum
            continue
        bad = ~np.isfinite(channel)
        count = int(np.count_nonzero(bad))
        if count == channel.size:
            raise PredictInputError(f"{identifier}: channel {index} has no finite voxel (all NaN or Inf)")
        fill = float(channel[~bad].min())
        if strict:
            raise PredictInputError(
                f"{identifier}: channel {index} has {count} NaN/Inf voxel(s); refused (--strict)"
            )
        channel[bad] = fill
        notes.append(f"channel {index}: {count} NaN/Inf voxel(s) replaced by its lowest value {fill:.6g}")
    return "; ".join(notes) if notes else None
