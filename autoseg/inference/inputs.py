"""What ``autoseg predict`` reads: image files (one per channel, nnU-Net naming) or DICOM series.

``-i`` may be one image file, a folder of image files (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``... per
channel; single-channel models also take ``CASE.nii.gz``), a DICOM series folder, or a folder holding several
DICOM series (each becomes one case, grouped by SeriesInstanceUID).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.errors import PredictInputError
from autoseg.io import SUPPORTED_ENDINGS, Geometry, read_image, split_ending
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
