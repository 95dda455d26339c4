"""Find DICOM image series in a folder and read one into a ``(1, Z, Y, X)`` float32 volume plus Geometry.

Headers are read without pixel data to group files by SeriesInstanceUID and to order the slices by their
position along the slice normal (array z 0 = lowest position, as ITK does). Non-image objects (RTSTRUCT, SEG,
RTPLAN, RTDOSE, SR, presentation states...) are returned separately. Pixel data are decoded by pydicom
(JPEG, JPEG-LS and JPEG 2000 need pylibjpeg and its plugins) and RescaleSlope/RescaleIntercept are applied
per slice.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from autoseg.dicom.geometry import geometry_from_dicom, slice_axes
from autoseg.errors import DicomError
from autoseg.io import Geometry
from autoseg.types import FloatVolume

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = frozenset(
    {"RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "RWV", "DOC", "PLAN", "FID"}
)
"""Modalities of objects that are never image series."""

SPACING_TOLERANCE = 0.01
"""Largest allowed relative deviation of one slice step from the mean step (1 %)."""

_GAP_FACTOR = 1.5  # a step this many times the median step means missing slices


@dataclass(frozen=True)
class DicomInstance:
    """One image file's header facts.

    Attributes:
        path: the file.
        sop_instance_uid: SOPInstanceUID (from the file meta when the data set has it empty).
        position_xyz: ImagePositionPatient, LPS ``(x, y, z)`` mm of the first pixel's centre.
        orientation: ImageOrientationPatient, 6 direction cosines.
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` mm.
        rows: Rows (array Y size).
        columns: Columns (array X size).
        number_of_frames: NumberOfFrames (1 for classic single-frame images).
    """

    path: Path
    sop_instance_uid: str
    position_xyz: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    number_of_frames: int


@dataclass(frozen=True)
class DicomSeries:
    """An image series: its identity and its instances ordered along the slice normal (index 0 = array z 0).

    Study, series and frame-of-reference UIDs may be empty strings in anonymised data.
    """

    series_instance_uid: str
    modality: str
    description: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    instances: tuple[DicomInstance, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """The files, ordered along the slice normal."""
        return tuple(instance.path for instance in self.instances)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOPInstanceUIDs, in slice order."""
        return tuple(instance.sop_instance_uid for instance in self.instances)

    def summary(self) -> str:
        """One line naming the series for messages: modality, description, file count, folder, UID."""
        folder = self.files[0].parent if self.files else Path()
        return (
            f"{self.modality or '?'} '{self.description}' ({len(self.instances)} files in {folder}, "
            f"SeriesInstanceUID {self.series_instance_uid or '<empty>'})"
        )


@dataclass(frozen=True)
class DicomObject:
    """A DICOM object that is not an image series (RTSTRUCT, SEG, RTPLAN, ...)."""

    path: Path
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str


@dataclass(frozen=True)
class DicomScan:
    """Everything found under a folder: image series, other DICOM objects, and files that are not DICOM."""

    folder: Path
    series: tuple[DicomSeries, ...]
    others: tuple[DicomObject, ...]
    skipped: tuple[Path, ...]


def read_header(path: Path, *, with_pixels: bool = False) -> Dataset | None:
    """Read one file with pydicom, or ``None`` when it is not a DICOM file.

    pydicom warns about malformed values that are common in real data; those warnings are logged (debug)
    rather than raised, so that one odd tag does not stop a whole series.

    Raises:
        DicomError: the file is DICOM but truncated or unreadable.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=not with_pixels)
        except InvalidDicomError:
            return None
        except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
            raise DicomError(f"{path}: cannot read DICOM ({type(error).__name__}: {error})") from None
    for warning in caught:
        logger.debug("%s: %s", path, warning.message)
    return dataset


def is_dicom_path(path: Path) -> bool:
    """Whether ``path`` is a DICOM file, or a folder holding at least one (searched recursively)."""
    if path.is_file():
        return _has_dicom_preamble(path) or read_header(path) is not None
    if path.is_dir():
        return any(_has_dicom_preamble(p) for p in path.rglob("*") if p.is_file())
    return False


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            head = stream.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def scan_folder(folder: Path) -> DicomScan:
    """Read every file's header under ``folder`` (recursively) and group image files into series.

    Raises:
        DicomError: ``folder`` does not exist or a DICOM file in it is unreadable.
    """
    if not folder.is_dir():
        raise DicomError(f"{folder}: is not a folder; give the folder that holds the DICOM files")
    groups: dict[str, list[tuple[DicomInstance, Dataset]]] = {}
    others: list[DicomObject] = []
    skipped: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        header = read_header(path)
        if header is None:
            logger.debug("%s: not a DICOM file, skipped", path)
            skipped.append(path)
        elif _is_image(header):
            key = str(header.get("SeriesInstanceUID", "") or f"no-uid:{path.parent}")
            groups.setdefault(key, []).append((_instance(header, path), header))
        else:
            others.append(_other(header, path))
    if skipped:
        logger.info("%s: skipped %d files that are not DICOM", folder, len(skipped))
    series = tuple(_make_series(members) for members in groups.values())
    return DicomScan(folder, series, tuple(others), tuple(skipped))


def find_series(folder: Path) -> list[DicomSeries]:
    """The image series under ``folder`` (recursively), one per SeriesInstanceUID.

    Raises:
        DicomError: no image series there (no DICOM at all, or only non-image objects, which are listed).
    """
    scan = scan_folder(folder)
    if not scan.series:
        if scan.others:
            kinds = ", ".join(
                sorted({f"{o.modality or o.sop_class_uid} ({o.path.name})" for o in scan.others})
            )
            raise DicomError(f"{folder}: holds no image series, only non-image DICOM objects: {kinds}")
        raise DicomError(f"{folder}: holds no DICOM files ({len(scan.skipped)} other files)")
    return list(scan.series)


def single_series(folder: Path) -> DicomSeries:
    """The one image series under ``folder``.

    Raises:
        DicomError: none, or several (listed, so the user can move one into its own folder).
    """
    series = find_series(folder)
    if len(series) > 1:
        raise DicomError(
            f"{folder}: holds {len(series)} image series; put each series in its own folder",
            details=[s.summary() for s in series],
        )
    return series[0]


def series_geometry(series: DicomSeries) -> Geometry:
    """The validated geometry of a series (slice spacing from the positions, not SliceThickness).

    Raises:
        DicomError: multiframe files, mixed orientations/sizes/pixel spacings, duplicate positions, missing
            slices, uneven spacing, or slices not stacked along their normal.
    """
    first = series.instances[0]
    _check_uniform(series)
    _, _, normal = slice_axes(first.orientation)
    positions = np.asarray([i.position_xyz for i in series.instances], dtype=np.float64)
    if len(positions) == 1:
        return geometry_from_dicom(first.orientation, first.position_xyz, first.pixel_spacing, 1.0)
    offsets = positions - positions[0]
    along = offsets @ normal
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if float(sideways.max()) > 0.01 * max(1.0, float(abs(along[-1]))):
        raise DicomError(
            f"{series.summary()}: slices are not stacked along their normal (gantry tilt or shear of "
            f"{float(sideways.max()):.3g} mm); resample the series to an orthogonal grid first"
        )
    _check_steps(series, np.diff(along))
    spacing = float(along[-1] - along[0]) / (len(along) - 1)
    return geometry_from_dicom(first.orientation, first.position_xyz, first.pixel_spacing, spacing)


def read_series(series: DicomSeries) -> tuple[FloatVolume, Geometry]:
    """Read a series' pixels.

    Returns:
        The image ``(1, Z, Y, X)`` float32 (RescaleSlope/Intercept applied per slice, e.g. HU for CT; Y =
        DICOM rows, X = columns) and its geometry.

    Raises:
        DicomError: invalid geometry (see :func:`series_geometry`), undecodable or inconsistent pixel data.
    """
    geometry = series_geometry(series)
    first = series.instances[0]
    image = np.empty((1, len(series.instances), first.rows, first.columns), np.float32)
    for index, instance in enumerate(series.instances):
        image[0, index] = _read_slice(instance)
    return image, geometry


# ------------------------------------------------------------------------------------------------ internals


def _is_image(header: Dataset) -> bool:
    modality = str(header.get("Modality", "")).upper()
    geometric = all(k in header for k in ("ImagePositionPatient", "ImageOrientationPatient", "Rows"))
    return modality not in NON_IMAGE_MODALITIES and geometric and "PixelSpacing" in header


def _uid(header: Dataset, keyword: str, meta_keyword: str) -> str:
    value = str(header.get(keyword, "") or "")
    if not value and meta_keyword:
        value = str(getattr(header, "file_meta", Dataset()).get(meta_keyword, "") or "")
    return value


def _instance(header: Dataset, path: Path) -> DicomInstance:
    try:
        position = tuple(float(v) for v in header.ImagePositionPatient)
        orientation = tuple(float(v) for v in header.ImageOrientationPatient)
        spacing = tuple(float(v) for v in header.PixelSpacing)
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, AttributeError) as error:
        raise DicomError(f"{path}: malformed image geometry tags ({error})") from None
    if len(position) != 3 or len(orientation) != 6 or len(spacing) != 2:
        raise DicomError(f"{path}: ImagePositionPatient/ImageOrientationPatient/PixelSpacing malformed")
    sop_uid = _uid(header, "SOPInstanceUID", "MediaStorageSOPInstanceUID")
    return DicomInstance(
        path, sop_uid, (position[0], position[1], position[2]), orientation, (spacing[0], spacing[1]),
        rows, columns, frames,
    )  # fmt: skip


def _other(header: Dataset, path: Path) -> DicomObject:
    return DicomObject(
        path=path,
        modality=str(header.get("Modality", "")).upper(),
        sop_class_uid=_uid(header, "SOPClassUID", "MediaStorageSOPClassUID"),
        sop_instance_uid=_uid(header, "SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        series_instance_uid=str(header.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "") or ""),
    )


def _make_series(members: Sequence[tuple[DicomInstance, Dataset]]) -> DicomSeries:
    _, _, normal = slice_axes(members[0][0].orientation)
    ordered = sorted(members, key=lambda m: (float(np.dot(m[0].position_xyz, normal)), str(m[0].path)))
    header = ordered[0][1]
    return DicomSeries(
        series_instance_uid=str(header.get("SeriesInstanceUID", "") or ""),
        modality=str(header.get("Modality", "")).upper(),
        description=str(header.get("SeriesDescription", "") or ""),
        study_instance_uid=str(header.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "") or ""),
        sop_class_uid=_uid(header, "SOPClassUID", "MediaStorageSOPClassUID"),
        instances=tuple(member[0] for member in ordered),
    )


def _check_uniform(series: DicomSeries) -> None:
    first = series.instances[0]
    for instance in series.instances:
        if instance.number_of_frames > 1:
            raise DicomError(
                f"{instance.path}: is a multiframe image ({instance.number_of_frames} frames); autoseg reads "
                "classic single-frame series only: convert it (e.g. dcm2niix) to NIfTI first"
            )
        problem = ""
        if (instance.rows, instance.columns) != (first.rows, first.columns):
            problem = f"size {instance.rows}x{instance.columns} vs {first.rows}x{first.columns}"
        elif not np.allclose(instance.orientation, first.orientation, atol=1e-4):
            problem = f"orientation {instance.orientation} vs {first.orientation}"
        elif not np.allclose(instance.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            problem = f"pixel spacing {instance.pixel_spacing} vs {first.pixel_spacing}"
        if problem:
            raise DicomError(
                f"{instance.path}: differs from {first.path.name} in the same series ({problem}); "
                f"the series mixes several stacks: {series.summary()}"
            )


def _check_steps(series: DicomSeries, steps: np.ndarray) -> None:
    files = series.files
    for index, step in enumerate(steps):
        if abs(float(step)) < 1e-3:
            raise DicomError(
                f"{files[index + 1]}: has the same position as {files[index].name} (duplicate slice); "
                f"remove duplicates from {files[0].parent}"
            )
    median = float(np.median(steps))
    for index, step in enumerate(steps):
        if float(step) > _GAP_FACTOR * median:
            missing = round(float(step) / median) - 1
            raise DicomError(
                f"{files[0].parent}: about {missing} slice(s) missing between {files[index].name} and "
                f"{files[index + 1].name} (step {float(step):.4g} mm, elsewhere {median:.4g} mm)"
            )
    mean = float(np.mean(steps))
    worst = int(np.argmax(np.abs(steps - mean)))
    if abs(float(steps[worst]) - mean) > SPACING_TOLERANCE * mean:
        raise DicomError(
            f"{files[0].parent}: uneven slice spacing: step {float(steps[worst]):.4g} mm between "
            f"{files[worst].name} and {files[worst + 1].name}, mean {mean:.4g} mm; resample the series first"
        )


def _read_slice(instance: DicomInstance) -> np.ndarray:
    dataset = read_header(instance.path, with_pixels=True)
    if dataset is None:
        raise DicomError(f"{instance.path}: is no longer a readable DICOM file")
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(f"{instance.path}: colour image (SamplesPerPixel > 1); autoseg reads greyscale only")
    syntax = getattr(dataset.file_meta, "TransferSyntaxUID", "unknown")
    try:
        pixels = np.asarray(dataset.pixel_array)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
        raise DicomError(
            f"{instance.path}: cannot decode pixel data (transfer syntax {syntax}: {error}); install "
            "pylibjpeg, pylibjpeg-openjpeg and pylibjpeg-libjpeg for compressed DICOM"
        ) from None
    if pixels.shape != (instance.rows, instance.columns):
        raise DicomError(f"{instance.path}: pixel data shape {pixels.shape} does not match Rows x Columns")
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)
