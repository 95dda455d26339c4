"""All image file formats, behind one module.

Only this module imports SimpleITK and nibabel. Every other module sees numpy arrays plus a :class:`Geometry`.

Axis convention (documented in ``docs/conventions.md``):

* arrays are indexed ``(Z, Y, X)``: the last array axis varies fastest and is the file's first index ``i``;
* ``Geometry.spacing_mm`` and ``Geometry.origin_mm`` list ``(z, y, x)``;
* physical coordinates are the DICOM/ITK patient frame (LPS: +x left, +y posterior, +z superior), also listed
  ``(z, y, x)``;
* ``Geometry.direction`` is the 3x3 direction-cosine matrix, row-major, rows and columns both in that
  reversed order, so that ``point_zyx = origin + direction @ (spacing * index_zyx)``.

Supported formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``).
Writing reproduces the geometry that was read, to float tolerance, and the voxel values exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError, ImageReadError, ImageWriteError, UsageError
from autoseg.types import AnyArray, FloatVolume, LabelVolume, TargetVolume, Triple

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File endings autoseg reads and writes, longest first so that ``.nii.gz`` wins over ``.nii``."""

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Geometry:
    """Where a ``(Z, Y, X)`` array sits in patient space.

    Attributes:
        spacing_mm: voxel size ``(z, y, x)`` in millimetres.
        origin_mm: physical position of voxel ``(0, 0, 0)``, ``(z, y, x)`` in LPS millimetres.
        direction: 3x3 direction cosines, row-major, rows = physical ``(z, y, x)``, columns = array axes.
    """

    spacing_mm: Triple
    origin_mm: Triple
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    def direction_matrix(self) -> np.ndarray:
        """The direction as a ``(3, 3)`` float64 array (rows physical ``z, y, x``; columns array axes)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_physical(self, index_zyx: Sequence[float]) -> np.ndarray:
        """Physical ``(z, y, x)`` LPS position in mm of a (possibly fractional) array index ``(z, y, x)``."""
        scaled = np.asarray(self.spacing_mm, dtype=np.float64) * np.asarray(index_zyx, dtype=np.float64)
        result: np.ndarray = np.asarray(self.origin_mm, dtype=np.float64) + self.direction_matrix() @ scaled
        return result

    def orientation_code(self) -> str:
        """Three letters saying where the file's index axes ``i, j, k`` point, e.g. ``"LPS"`` or ``"RAS"``.

        This is the convention of nibabel's ``aff2axcodes``: identity DICOM/ITK direction gives ``"LPS"``.
        """
        itk = self.direction_matrix()[::-1, ::-1]  # rows physical x, y, z; columns index i, j, k
        letters = (("R", "L"), ("A", "P"), ("I", "S"))
        code = ""
        for column in range(3):
            axis = int(np.argmax(np.abs(itk[:, column])))
            code += letters[axis][int(itk[axis, column] > 0)]
        return code

    def differences(self, other: Geometry, *, tolerance: float = 1e-4) -> list[str]:
        """Readable differences to ``other`` beyond ``tolerance`` (relative for spacing, mm for origin)."""
        found: list[str] = []
        spacing_a, spacing_b = np.asarray(self.spacing_mm), np.asarray(other.spacing_mm)
        if not np.allclose(spacing_a, spacing_b, rtol=tolerance, atol=0.0):
            found.append(f"spacing {_fmt(self.spacing_mm)} vs {_fmt(other.spacing_mm)} mm")
        scale = max(1.0, float(np.max(np.abs(spacing_a))))
        if not np.allclose(self.origin_mm, other.origin_mm, rtol=0.0, atol=tolerance * scale * 10):
            found.append(f"origin {_fmt(self.origin_mm)} vs {_fmt(other.origin_mm)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0.0, atol=tolerance * 10):
            found.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return found


@dataclass(frozen=True)
class VolumeInfo:
    """What a file's header says, read without its voxels.

    Attributes:
        path: the file.
        shape: array shape in autoseg order: ``(Z, Y, X)`` for 3D, ``(T, Z, Y, X)`` for 4D, ``(Y, X)`` for 2D.
        geometry: spatial geometry of the first three axes (2D files get z spacing 1 mm).
        dtype: numpy dtype name of the stored voxels, e.g. ``"float32"``.
        components: values per voxel (1 for scalar images; more for vector or RGB files).
    """

    path: Path
    shape: tuple[int, ...]
    geometry: Geometry
    dtype: str
    components: int

    @property
    def ndim(self) -> int:
        """Number of spatial (+ time) dimensions of the file."""
        return len(self.shape)


def split_ending(path: Path) -> tuple[str, str]:
    """Split a file name into ``(stem, ending)`` for a supported ending; the ending is ``""`` otherwise."""
    name = path.name
    for ending in SUPPORTED_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)], name[-len(ending) :]
    return name, ""


def read_header(path: Path) -> VolumeInfo:
    """Read a file's header only (fast; no voxel data).

    Raises:
        ImageReadError: the file is missing, of an unsupported format, or its header is corrupt.
    """
    _check_readable(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _itk_errors(path, "cannot read the header"):
        reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    dtype = _pixel_id_to_dtype(reader.GetPixelIDValue(), path)
    geometry = _geometry_from_parts(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), len(size))
    _check_spacing(path, geometry.spacing_mm, _stored_nifti_spacing(path, len(size)))
    return VolumeInfo(path, size[::-1], geometry, dtype, int(reader.GetNumberOfComponents()))


def _stored_nifti_spacing(path: Path, ndim: int) -> Triple | None:
    """The spatial voxel size ``(z, y, x)`` a NIfTI header stores (``pixdim``), read raw: SimpleITK and
    nibabel both turn a zero into 1 mm on reading, which would make every volume wrong. ``None`` for other
    formats."""
    if split_ending(path)[1] not in (".nii", ".nii.gz"):
        return None
    try:
        with nib.openers.ImageOpener(str(path)) as stream:
            block = stream.read(540)
    except (OSError, EOFError, zlib.error) as error:
        raise ImageReadError(f"{path}: cannot read the header ({type(error).__name__}: {error})") from None
    size = int.from_bytes(block[:4], "little")
    nifti2 = 540 in (size, int.from_bytes(block[:4], "big"))
    header_class = nib.Nifti2Header if nifti2 else nib.Nifti1Header
    try:  # the header's bytes alone: header extensions, which follow it, are not needed here
        header: Any = header_class.from_fileobj(BytesIO(block[: 540 if nifti2 else 348]), check=False)
    except (ValueError, nib.spatialimages.HeaderDataError) as error:
        raise ImageReadError(f"{path}: cannot read the header ({error})") from None
    pixdim = [abs(float(v)) for v in header["pixdim"][1 : 1 + min(ndim, 3)]]  # a sign is read as its size
    pixdim += [1.0] * (3 - len(pixdim))
    return (pixdim[2], pixdim[1], pixdim[0])


def _check_spacing(path: Path, spacing_mm: Triple, stored_mm: Triple | None) -> None:
    """Refuse a voxel size that is zero, negative or not a number (stored, or as SimpleITK reads it)."""
    for spacing in (stored_mm, spacing_mm):
        if spacing is not None and not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ImageReadError(
                f"{path}: the header gives voxel size (z, y, x) {_fmt(spacing)} mm; every voxel size must "
                "be a positive number (fix the header: pixdim / spacing)"
            )


def read_array(path: Path) -> tuple[AnyArray, Geometry]:
    """Read voxels as stored (any dtype) plus geometry.

    NIfTI voxels are read with nibabel: SimpleITK's NIfTI reader silently turns NaN and Inf into 0 (measured
    with SimpleITK 2.5, see ``docs/design.md``), which would hide broken images. The geometry always comes
    from SimpleITK, so that reading and writing share one convention.

    Returns:
        The array in ``(Z, Y, X)`` order (``(T, Z, Y, X)`` for a 4D file) and the geometry of its spatial
        axes.

    Raises:
        ImageReadError: unreadable, truncated or corrupt file, or vector-valued voxels.
    """
    info = read_header(path)
    if info.components != 1:
        raise ImageReadError(
            f"{path}: has {info.components} values per voxel (vector or RGB image); "
            "store one scalar volume per channel"
        )
    if split_ending(path)[1] in (".nii", ".nii.gz"):
        array = _read_nifti_voxels(path, info.shape)
    else:
        with _itk_errors(path, "cannot read"):
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return array, info.geometry


def _read_nifti_voxels(path: Path, shape: tuple[int, ...]) -> AnyArray:
    try:
        loaded: Any = nib.load(str(path))
        data = np.asanyarray(loaded.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as error:
        reason = " ".join(str(error).split())  # one line (nibabel's messages span two)
        raise ImageReadError(f"{path}: cannot read ({type(error).__name__}: {reason})") from None
    if data.size != int(np.prod(shape)):
        raise ImageReadError(f"{path}: header and voxel data disagree ({data.shape} vs {shape[::-1]})")
    data = data.reshape(data.shape[: len(shape)] if data.ndim > len(shape) else data.shape)
    array: AnyArray = np.ascontiguousarray(data.transpose(tuple(range(data.ndim))[::-1])).reshape(shape)
    return array


def read_image(paths: Sequence[Path]) -> tuple[FloatVolume, Geometry]:
    """Read one 3D file per channel into a ``(C, Z, Y, X)`` float32 array.

    All channels must share shape and geometry; the first channel's geometry is returned.

    Raises:
        ImageReadError: a file is unreadable, not 3D, or disagrees with the first channel.
    """
    if not paths:
        raise ImageReadError("no image file given")
    first, first_geometry = read_array(paths[0])
    _require_3d(first, paths[0])
    image = np.empty((len(paths), *first.shape), np.float32)  # filled channel by channel: one copy in memory
    image[0] = first
    del first
    for channel, path in enumerate(paths[1:], start=1):
        array, geometry = read_array(path)
        _require_3d(array, path)
        require_same_grid(
            path, array.shape, geometry, image.shape[1:], first_geometry, reference_name=paths[0].name
        )
        image[channel] = array
    return image, first_geometry


def read_channels_4d(path: Path) -> tuple[FloatVolume, Geometry]:
    """Read an MSD multi-modal 4D file (channels on its 4th axis) as ``(C, Z, Y, X)`` float32."""
    array, geometry = read_array(path)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ImageReadError(f"{path}: expected a 4D file with one channel per volume, got {array.ndim}D")
    return array.astype(np.float32, copy=False), geometry


def read_labels(path: Path) -> tuple[LabelVolume, Geometry]:
    """Read a 3D label map as uint8 (uint16 when a value exceeds 255).

    Raises:
        ImageReadError: unreadable file, not 3D, negative / non-integer / non-finite values, or values >
        65535.
    """
    array, geometry = read_array(path)
    _require_3d(array, path)
    return labels_to_unsigned(array, path), geometry


def labels_to_unsigned(array: AnyArray, path: Path) -> LabelVolume:
    """Convert a stored label array (any numeric dtype) to uint8/uint16; refuse values that are not labels."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageReadError(f"{path}: label map contains NaN or Inf")
        if not np.array_equal(array, np.round(array)):
            raise ImageReadError(f"{path}: label map has non-integer values (e.g. {_first_fraction(array)})")
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise ImageReadError(f"{path}: label map has dtype {array.dtype}; expected integers")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0:
        raise ImageReadError(f"{path}: label map has negative value {low}")
    if high > 65535:
        raise ImageReadError(f"{path}: label value {high} exceeds 65535")
    dtype = np.uint8 if high <= 255 else np.uint16
    result: LabelVolume = array.astype(dtype)
    return result


def write_image(image: FloatVolume | AnyArray, geometry: Geometry, path: Path) -> None:
    """Write a ``(Z, Y, X)`` array (any numeric dtype, stored as is) atomically with ``geometry``.

    A ``(1, Z, Y, X)`` array is written as its single channel.

    Raises:
        ImageWriteError: unsupported ending, wrong shape, or the file system refused.
    """
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ImageWriteError(f"{path}: expected a (Z, Y, X) array to write, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    direction = tuple(float(v) for v in geometry.direction_matrix()[::-1, ::-1].ravel())
    _set_geometry(sitk_image, geometry.spacing_mm[::-1], geometry.origin_mm[::-1], direction, path)
    _write_atomically(sitk_image, path)


def _set_geometry(
    image: sitk.Image,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
    path: Path,
) -> None:
    """Spacing, origin and direction in ITK order; SimpleITK's refusal (a zero spacing) as an
    :class:`ImageWriteError` naming ``path``."""
    try:
        image.SetSpacing(tuple(float(v) for v in spacing))
        image.SetOrigin(tuple(float(v) for v in origin))
        image.SetDirection(tuple(float(v) for v in direction))
    except RuntimeError as error:
        raise ImageWriteError(
            f"{path}: cannot write this geometry ({_short_itk_message(str(error))})"
        ) from None


def write_labels(labels: LabelVolume, geometry: Geometry, path: Path) -> None:
    """Write a ``(Z, Y, X)`` label map atomically as uint8 (uint16 if a value exceeds 255)."""
    write_image(labels_to_unsigned(np.asarray(labels), path), geometry, path)


def read_masks(path: Path) -> tuple[TargetVolume, Geometry]:
    """Read a multi-label file (one binary channel per structure on its 4th axis) as ``(K, Z, Y, X)`` uint8;
    a 3D file is one structure.

    Raises:
        ImageReadError: unreadable file, or values other than 0 and 1.
    """
    array, geometry = read_array(path)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ImageReadError(f"{path}: is {array.ndim}D; expected one binary channel per structure (4D)")
    if not np.isin(np.unique(array), (0, 1)).all():
        raise ImageReadError(f"{path}: a multi-label file holds 0 and 1 only (one binary mask per channel)")
    masks: TargetVolume = array.astype(np.uint8, copy=False)
    return masks, geometry


def write_masks(masks: TargetVolume, geometry: Geometry, path: Path) -> None:
    """Write ``(K, Z, Y, X)`` binary masks atomically as one 4D uint8 file (channel = 4th NIfTI axis), with
    ``geometry`` on the spatial axes (the 4th has spacing 1 and origin 0)."""
    _write_channels(np.ascontiguousarray(np.asarray(masks) > 0, dtype=np.uint8), geometry, path)


def write_label_channels(channels: TargetVolume, geometry: Geometry, path: Path) -> None:
    """Write ``(C, Z, Y, X)`` label volumes (e.g. one instance map per structure) atomically as one 4D uint16
    file, laid out as :func:`write_masks`."""
    _write_channels(np.ascontiguousarray(channels, dtype=np.uint16), geometry, path)


def _write_channels(array: AnyArray, geometry: Geometry, path: Path) -> None:
    if array.ndim != 4:
        raise ImageWriteError(f"{path}: expected (K, Z, Y, X) channels to write, got shape {array.shape}")
    image = sitk.GetImageFromArray(array, isVector=False)
    direction = np.eye(4)
    direction[:3, :3] = geometry.direction_matrix()[::-1, ::-1]
    spacing, origin = (*geometry.spacing_mm[::-1], 1.0), (*geometry.origin_mm[::-1], 0.0)
    _set_geometry(image, spacing, origin, direction.ravel().tolist(), path)
    _write_atomically(image, path)


def read_target(path: Path) -> tuple[TargetVolume, Geometry]:
    """A stored target: a 3D label map (:func:`read_labels`) or a 4D region target (:func:`read_masks`)."""
    if read_header(path).ndim == 4:
        return read_masks(path)
    return read_labels(path)


def write_target(target: TargetVolume, geometry: Geometry, path: Path) -> None:
    """Write a ``(Z, Y, X)`` label map (:func:`write_labels`) or a ``(K, Z, Y, X)`` region target
    (:func:`write_masks`)."""
    if np.asarray(target).ndim == 4:
        write_masks(target, geometry, path)
    else:
        write_labels(target, geometry, path)


def write_probabilities(
    probabilities: FloatVolume | AnyArray, path: Path, *, class_names: Sequence[str] | None = None
) -> None:
    """Write ``(K, Z, Y, X)`` class probabilities as float16 in a compressed ``.npz``, atomically.

    The one format of autoseg's probability files (validation ``<case>.npz`` and predict's
    ``CASE_probabilities.npz``): key ``probabilities``, ``(K, Z, Y, X)`` float16 on the image's original grid,
    channel ``k`` the class of label value ``k``; with ``class_names`` also key ``labels``, the class names in
    channel order (predict writes them, validation does not). :func:`read_probabilities` reads it back.
    """
    arrays: dict[str, Any] = {"probabilities": np.asarray(probabilities).astype(np.float16)}
    if class_names is not None:
        arrays["labels"] = np.asarray(class_names)
    with atomic_target(path) as temporary, temporary.open("wb") as stream:
        np.savez_compressed(stream, **arrays)


def read_probabilities(path: Path) -> FloatVolume:
    """The ``(K, Z, Y, X)`` probabilities :func:`write_probabilities` wrote, as float32 (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["probabilities"], dtype=np.float32)


class ProbabilityStream:
    """Writes the channels of a ``(K, Z, Y, X)`` probability file one ``(Z, Y, X)`` channel at a time (as
    float16), so the whole array never exists in memory: :func:`stream_probabilities` makes one."""

    def __init__(self, entry: Any, shape: tuple[int, ...]) -> None:
        self._entry = entry
        self.shape = shape
        self.written = 0

    def write(self, channel: FloatVolume | AnyArray) -> None:
        """Append the next channel (``(Z, Y, X)``, any float dtype; stored as float16)."""
        if tuple(channel.shape) != self.shape[1:] or self.written >= self.shape[0]:
            raise ValueError(f"channel {self.written} of shape {channel.shape} does not fit {self.shape}")
        for plane in channel:  # one float16 slice at a time
            self._entry.write(np.ascontiguousarray(plane, dtype="<f2").tobytes())
        self.written += 1


@contextlib.contextmanager
def stream_probabilities(
    path: Path, shape: Sequence[int], *, class_names: Sequence[str] | None = None
) -> Iterator[ProbabilityStream]:
    """The streaming form of :func:`write_probabilities`: the same ``.npz`` (key ``probabilities``,
    ``(K, Z, Y, X)`` float16, compressed; ``labels`` with ``class_names``), its channels written as they come.

    Atomic as every autoseg file (:func:`atomic_target`): the file appears only when all ``K`` channels
    were written and the block succeeded.
    """
    import zipfile

    full = tuple(int(n) for n in shape)
    with (
        atomic_target(path) as temporary,
        zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
    ):
        with archive.open("probabilities.npy", "w", force_zip64=True) as entry:
            header = {"descr": "<f2", "fortran_order": False, "shape": full}
            np.lib.format.write_array_header_1_0(entry, header)
            stream = ProbabilityStream(entry, full)
            yield stream
            if stream.written != full[0]:
                raise ValueError(f"{path}: {stream.written} of {full[0]} channels written")
        if class_names is not None:
            with archive.open("labels.npy", "w") as entry:
                np.save(entry, np.asarray(class_names), allow_pickle=False)


def write_json(data: object, path: Path) -> None:
    """Write indented JSON with stable key order, atomically (temporary file, then rename)."""
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_text_atomically(text, path)


def read_json(path: Path) -> object:
    """Read a JSON file.

    Raises:
        ImageReadError: missing file or invalid JSON, naming the file.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ImageReadError(f"{path}: not valid JSON ({error})") from None


def write_text_atomically(text: str, path: Path) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_target`)."""
    write_bytes_atomically(text.encode("utf-8"), path)


def write_bytes_atomically(data: bytes, path: Path) -> None:
    """Write a binary file atomically (see :func:`atomic_target`), flushed to disk and its size checked
    before the rename."""
    with atomic_target(path, min_bytes=0) as temporary:
        with temporary.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        require_size(temporary, len(data), path)


def require_size(temporary: Path, expected: int, path: Path) -> None:
    """Raise :class:`ImageWriteError` naming ``path`` unless ``temporary`` holds ``expected`` bytes."""
    written = temporary.stat().st_size
    if written != expected:
        raise ImageWriteError(
            f"{path}: wrote {written} of {expected} bytes (disk full?); the previous file, if any, is kept"
        )


@contextlib.contextmanager
def atomic_target(path: Path, *, min_bytes: int = 1) -> Iterator[Path]:
    """The one way autoseg writes a file: a path to write into, moved onto ``path`` when the block succeeds,
    so ``path`` is never half-written.

    The path has ``path``'s own name, in a new hidden folder beside it (``.<name>.<random>.tmp/``), so
    writers that choose the format by the ending (SimpleITK, matplotlib) see the right one. Files a writer
    puts next to it (the data file of a MetaImage ``.mhd`` header) are moved into place first, the file itself
    last. The hidden folder is removed whether the block succeeds or fails: a failed write leaves no temporary
    file, and no ``path`` unless one existed before. Files get the permissions a plain ``open`` gives.

    Before the rename the written file must exist and hold at least ``min_bytes`` bytes (a writer that
    ignores "no space left on device" leaves an empty file); writers check more of what they wrote inside
    the block (:func:`require_size`, the image writers' read-back). A file-system error (read-only folder,
    full disk, a parent that is a file) becomes an :class:`ImageWriteError` naming ``path``; the previous
    ``path`` stays as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is a file, not a folder" if blocking else _os_reason(error)
        raise ImageWriteError(f"{path}: cannot write ({reason})") from None
    try:
        temporary = scratch / path.name
        yield temporary
        if not temporary.is_file() or temporary.stat().st_size < min_bytes:
            size = temporary.stat().st_size if temporary.is_file() else 0
            raise ImageWriteError(f"{path}: the writer left {size} bytes (disk full?); nothing replaced")
        for companion in sorted(scratch.iterdir()):
            if companion.name != path.name:
                companion.replace(path.parent / companion.name)
        temporary.replace(path)
    except OSError as error:
        raise ImageWriteError(f"{path}: cannot write ({_os_reason(error)})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def prepare_output_folder(path: Path, *, probe_bytes: int = 2**16) -> bool:
    """Create the output folder ``path`` if needed and prove it takes a file: ``probe_bytes`` written,
    flushed to disk and removed. For commands to call before their long work (loading a model). Returns
    whether it created ``path`` (so that a command failing before it writes anything can remove it).

    Raises:
        UsageError: ``path`` or one of its parents is a file.
        ImageWriteError: the folder cannot be created or written (read-only, full disk, no permission).
    """
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is under {parent}, which is a file"
            raise UsageError(f"{path}: the output folder {where}; give a folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".autoseg-probe-", dir=path)
        try:
            os.write(handle, b"\0" * probe_bytes)
            os.fsync(handle)
        finally:
            os.close(handle)
            Path(name).unlink(missing_ok=True)
    except OSError as error:
        raise ImageWriteError(f"{path}: the output folder cannot be written ({_os_reason(error)})") from None
    return created


@contextlib.contextmanager
def atomic_files(folder: Path) -> Iterator[Path]:
    """A hidden scratch folder inside ``folder`` for a set of files (one case's outputs): when the block
    succeeds each file is renamed into ``folder`` (each lands whole); when it fails none does, and the files
    of an earlier run stay as they were. The scratch folder is removed either way. An :class:`AutosegError`
    from the block names the file by its final path, not the scratch folder's."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".autoseg-partial-", dir=folder))
    except OSError as error:
        raise ImageWriteError(f"{folder}: cannot write ({_os_reason(error)})") from None
    try:
        yield scratch
        for written in sorted(scratch.iterdir()):
            written.replace(folder / written.name)
    except OSError as error:
        raise ImageWriteError(f"{folder}: cannot write ({_os_reason(error)})") from None
    except AutosegError as error:
        error.message = error.message.replace(str(scratch), str(folder))
        error.args = (error.message,)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """The folder form of :func:`atomic_target`: a new hidden folder beside ``path`` to fill, renamed onto
    ``path`` when the block succeeds, so ``path`` is never a half-written folder.

    An existing ``path`` (an outdated stored case, an empty folder) is first renamed aside and removed after
    the new one is in place; the hidden folder is removed whether the block succeeds or fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield scratch
        if path.exists():
            stale = path.with_name(f".{path.name}.stale-{scratch.name.rsplit('-', 1)[-1]}")
            path.rename(stale)
            scratch.rename(path)
            shutil.rmtree(stale)
        else:
            scratch.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def grid_mismatch(
    shape: Sequence[int],
    geometry: Geometry,
    reference_shape: Sequence[int],
    reference_geometry: Geometry,
    reference_name: str,
) -> str | None:
    """Why an array is not on the grid of a reference, or ``None`` when it is: the one same-grid check.

    Compared: the last three axes of the shapes ``(..., Z, Y, X)``, then spacing, origin and direction within
    the tolerances of :meth:`Geometry.differences`. The answer reads ``"shape (z, y, x) differs from NAME
    (z, y, x)"`` or ``"geometry differs from NAME: spacing THIS vs REFERENCE mm; ..."``.
    """
    this, other = tuple(int(s) for s in shape[-3:]), tuple(int(s) for s in reference_shape[-3:])
    if this != other:
        return f"shape {this} differs from {reference_name} {other}"
    differences = geometry.differences(reference_geometry)
    return f"geometry differs from {reference_name}: " + "; ".join(differences) if differences else None


def require_same_grid(
    path: Path,
    shape: Sequence[int],
    geometry: Geometry,
    reference_shape: Sequence[int],
    reference_geometry: Geometry,
    *,
    reference_name: str,
    error: type[AutosegError] = ImageReadError,
) -> None:
    """Raise ``error("<path>: <mismatch>")`` when the array read from ``path`` is not on the reference grid
    (:func:`grid_mismatch`)."""
    mismatch = grid_mismatch(shape, geometry, reference_shape, reference_geometry, reference_name)
    if mismatch is not None:
        raise error(f"{path}: {mismatch}")


# ------------------------------------------------------------------------------------------------ internals


def limit_threads(count: int) -> None:
    """Cap SimpleITK's own threads (call once in each worker process of a process pool)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, count))


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _first_fraction(array: AnyArray) -> float:
    flat = array.ravel().astype(np.float64)
    index = int(np.argmax(flat != np.round(flat)))
    return float(flat[index])


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: file does not exist")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file")
    if not split_ending(path)[1]:
        raise ImageReadError(
            f"{path}: unsupported file type; autoseg reads {', '.join(SUPPORTED_ENDINGS)} "
            "(DICOM: convert-dicom)"
        )


def _require_3d(array: AnyArray, path: Path) -> None:
    if array.ndim != 3:
        kind = "4D" if array.ndim == 4 else f"{array.ndim}D"
        raise ImageReadError(
            f"{path}: is {kind} with shape {array.shape} (autoseg order); expected a 3D volume"
        )


def _geometry_from_parts(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], ndim: int
) -> Geometry:
    """Convert ITK (x, y, z[, t]) metadata to a (z, y, x) Geometry of the spatial axes."""
    dim = len(spacing)
    spatial = min(dim, 3)
    matrix = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:spatial, :spatial]
    spacing3 = [float(s) for s in spacing[:spatial]]
    origin3 = [float(o) for o in origin[:spatial]]
    if spatial == 2:  # a 2D file: one slice, 1 mm thick, in the x-y plane
        full = np.eye(3)
        full[:2, :2] = matrix
        matrix, spacing3, origin3 = full, [*spacing3, 1.0], [*origin3, 0.0]
    reversed_direction = matrix[::-1, ::-1]
    return Geometry(
        spacing_mm=(spacing3[2], spacing3[1], spacing3[0]),
        origin_mm=(origin3[2], origin3[1], origin3[0]),
        direction=tuple(float(v) for v in reversed_direction.ravel()),
    )


_DTYPES = {
    "sitkUInt8": "uint8",
    "sitkInt8": "int8",
    "sitkUInt16": "uint16",
    "sitkInt16": "int16",
    "sitkUInt32": "uint32",
    "sitkInt32": "int32",
    "sitkUInt64": "uint64",
    "sitkInt64": "int64",
    "sitkFloat32": "float32",
    "sitkFloat64": "float64",
}


def _pixel_id_to_dtype(pixel_id: int, path: Path) -> str:
    for sitk_name, dtype in _DTYPES.items():
        vector_name = sitk_name.replace("sitk", "sitkVector", 1)
        if pixel_id in (getattr(sitk, sitk_name, None), getattr(sitk, vector_name, None)):
            return dtype
    raise ImageReadError(f"{path}: unsupported voxel type {sitk.GetPixelIDValueAsString(pixel_id)}")


@contextlib.contextmanager
def _itk_errors(path: Path, what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as error:
        raise ImageReadError(f"{path}: {what} ({_short_itk_message(str(error))})") from error


def _short_itk_message(message: str) -> str:
    """The informative part of an ITK exception text, on one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [
        re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", line)
        for line in lines
        if not line.startswith("Exception thrown in SimpleITK") and not line.startswith("/")
    ]
    text = " ".join(useful) or (lines[-1] if lines else "unknown error")
    return text if len(text) <= 300 else text[:297] + "..."


def _write_atomically(image: sitk.Image, path: Path) -> None:
    ending = split_ending(path)[1]
    if not ending:
        raise ImageWriteError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_ENDINGS)}")
    compress = ending in (".nii.gz", ".nrrd", ".mha")
    with atomic_target(path) as temporary:  # same name, so a .mhd header names its final data file
        try:
            sitk.WriteImage(image, str(temporary), compress)
        except RuntimeError as error:
            raise ImageWriteError(f"{path}: cannot write ({_short_itk_message(str(error))})") from error
        verify_image_file(temporary, image, path)


def verify_image_file(temporary: Path, image: sitk.Image, path: Path) -> None:
    """Check that ``temporary`` holds all of ``image`` before it replaces ``path``: SimpleITK's writers
    ignore "no space left on device" and leave an empty or truncated file.

    The header must read back with the image's size; a ``.nii.gz`` must decompress to its end (gzip's
    length and CRC) into at least the voxel bytes; a ``.nii`` must hold the voxel bytes; other formats are
    read back in full.

    Raises:
        ImageWriteError: naming ``path``; nothing is renamed.
    """
    ending = split_ending(path)[1]
    voxel_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
    voxel_bytes *= image.GetNumberOfComponentsPerPixel()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(temporary))
    try:
        reader.ReadImageInformation()
        if tuple(reader.GetSize()) != tuple(image.GetSize()):
            raise ImageWriteError(f"{path}: the written header reads back as size {reader.GetSize()}")
        if ending == ".nii.gz":
            stored = _gunzipped_length(temporary, path)
        elif ending == ".nii":
            stored = temporary.stat().st_size - 352
        else:
            sitk.ReadImage(str(temporary))
            stored = voxel_bytes
    except RuntimeError as error:
        reason = _short_itk_message(str(error)).replace(str(temporary), str(path))
        raise ImageWriteError(f"{path}: the written file does not read back ({reason}; disk full?)") from None
    if stored < voxel_bytes:
        raise ImageWriteError(f"{path}: the written file is truncated (disk full?); nothing replaced")


def check_image_file(path: Path) -> None:
    """Check that an image file already in place is whole, as :func:`verify_image_file` checks a new one:
    its header reads, and a ``.nii.gz`` decompresses to its end into at least a header and the voxel bytes
    (``predict --shard`` and ``--skip-existing`` redo a case whose output fails this).

    Raises:
        ImageReadError: naming ``path`` and what is wrong.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _itk_errors(path, "the header does not read"):
        reader.ReadImageInformation()
    voxel_bytes = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents()
    voxel_bytes *= np.dtype(_pixel_id_to_dtype(reader.GetPixelID(), path)).itemsize
    if split_ending(path)[1] != ".nii.gz":
        with _itk_errors(path, "the voxels do not read"):
            sitk.ReadImage(str(path))
        return
    try:
        stored = _gunzipped_length(path, path)
    except ImageWriteError as error:
        raise ImageReadError(error.message.replace("; nothing replaced", "")) from None
    if stored - 352 < voxel_bytes:  # the smallest header (NIfTI-1's 348 bytes and 4 of extension flag)
        raise ImageReadError(f"{path}: truncated ({stored} bytes for {voxel_bytes} voxel bytes and a header)")


def _gunzipped_length(temporary: Path, path: Path) -> int:
    """Bytes a gzip file inflates to, streaming (1 MiB at a time); raises when the stream is cut short."""
    inflater = zlib.decompressobj(wbits=31)
    total = 0
    with temporary.open("rb") as stream:
        while chunk := stream.read(2**20):
            try:
                while chunk:  # at most 16 MiB inflated at a time, whatever the ratio
                    total += len(inflater.decompress(chunk, 2**24))
                    chunk = inflater.unconsumed_tail
            except zlib.error as error:
                raise ImageWriteError(
                    f"{path}: the written file is corrupt ({error}); nothing replaced"
                ) from None
    if not inflater.eof:
        raise ImageWriteError(f"{path}: the written file is truncated (disk full?); nothing replaced")
    return total
