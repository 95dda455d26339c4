"""DICOM Segmentation (SEG) objects: written with highdicom, read with pydicom onto a series grid.

Writing: a BINARY SEG with one segment per structure (:class:`autoseg.dicom.structures.Structure`;
overlapping structures give overlapping segments), or from a label map one segment per label in
``label_names`` plus one per label present but not named (``label_<v>``), in increasing label value. DICOM
numbers segments 1, 2, 3... so segment numbers are not label values: the segment *label* carries the name,
and :func:`read_dicom_seg` maps names back to values. Frames of empty slices are omitted; a structure with no
voxels still gets its segment description (and no frames) unless ``skip_empty``.

Reading: every frame is placed on the series slice it lies on (by its ImagePositionPatient along the slice
normal, through :mod:`autoseg.dicom.geometry`), not by SOPInstanceUID, so SEGs of anonymised series work too.
Frames must share the series' orientation, pixel spacing and in-plane grid.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from autoseg import __version__
from autoseg.dicom.geometry import patient_to_index
from autoseg.dicom.series import DicomSeries, read_header, series_geometry
from autoseg.dicom.structures import (
    Structure,
    check_structures,
    overlaps,
    structures_from_labels,
    without_empty,
)
from autoseg.dicom.writing import (
    apply_character_set,
    check_label_grid,
    copy_patient_and_study,
    highdicom_character_set,
    read_source_headers,
    save_atomically,
    series_shape,
    source_character_set,
)
from autoseg.errors import DicomError
from autoseg.io import Geometry
from autoseg.types import BoolVolume, LabelVolume

logger = logging.getLogger(__name__)


def write_dicom_seg(
    labels: LabelVolume,
    series: DicomSeries,
    label_names: Mapping[int, str],
    path: Path,
    *,
    skip_empty: bool = False,
    algorithm_name: str = "autoseg",
    algorithm_version: str = __version__,
    uid_seed: str | None = None,
) -> None:
    """Write a label map as a BINARY DICOM SEG referencing ``series``, atomically.

    One segment per label in ``label_names`` (labels without voxels get a segment without frames unless
    ``skip_empty``) plus one ``label_<v>`` per label present but not named, in increasing label value; colours
    as :func:`autoseg.dicom.structures.structures_from_labels` gives them.

    Args:
        labels: ``(Z, Y, X)`` unsigned label map on the series grid (Z in slice order, Y = rows, X = columns).
        series: the image series the labels were computed on.
        label_names: label value -> segment label (background 0 is ignored).
        path: output file.
        skip_empty: leave out the segments of labels without voxels.
        algorithm_name: name in the AlgorithmIdentificationSequence and Manufacturer.
        algorithm_version: algorithm and software version.
        uid_seed: ``None``: new random SOP Instance and Series Instance UIDs; otherwise both are derived from
            this text (the same seed gives the same UIDs, so a re-sent result is recognisable).

    Raises:
        DicomError: labels not on the series grid, or highdicom rejects the inputs.
    """
    check_label_grid(labels, series)
    write_dicom_seg_structures(
        structures_from_labels(labels, label_names),
        series,
        path,
        skip_empty=skip_empty,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        uid_seed=uid_seed,
    )


def write_dicom_seg_structures(
    structures: Sequence[Structure],
    series: DicomSeries,
    path: Path,
    *,
    skip_empty: bool = False,
    algorithm_name: str = "autoseg",
    algorithm_version: str = __version__,
    uid_seed: str | None = None,
) -> None:
    """Write structures (they may overlap) as a BINARY DICOM SEG referencing ``series``, atomically.

    Segment ``i`` (from 1) is ``structures[i - 1]``; overlapping structures give overlapping segments. Each
    segment is AUTOMATIC with the algorithm identified and the structure's colour as
    RecommendedDisplayCIELabValue; Patient and Study attributes come from the source; the character set is
    the source's unless a label needs UTF-8 (:func:`autoseg.dicom.writing.apply_character_set`).

    Args:
        structures: masks on the series grid with name and colour (the RTROIInterpretedType is not used).
        series: the image series the masks were computed on.
        path: output file.
        skip_empty: leave out structures without voxels (otherwise: segments without frames).
        algorithm_name: as :func:`write_dicom_seg`.
        algorithm_version: as :func:`write_dicom_seg`.
        uid_seed: as :func:`write_dicom_seg`.

    Raises:
        DicomError: a mask off the series grid, repeated names, no structure to write, or highdicom rejects
            the inputs.
        StructureNameError: an invalid segment label (:func:`autoseg.dicom.names.check_roi_name`).
    """
    series_geometry(series)
    check_structures(structures, series_shape(series), str(path))
    chosen = without_empty(structures) if skip_empty else list(structures)
    if not chosen:
        raise DicomError(f"{path}: no structure to write; a DICOM SEG needs at least one segment")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = [_segment(number, s, algorithm) for number, s in enumerate(chosen, start=1)]
    headers = read_source_headers(series)
    identity = (algorithm_name, algorithm_version)
    seg = _build(headers, _segment_pixels(chosen), descriptions, identity, path, uid_seed)
    copy_patient_and_study(headers[0], seg)
    apply_character_set(seg, headers[0])
    save_atomically(seg, path)


def read_dicom_seg_masks(path: Path, series: DicomSeries) -> dict[str, BoolVolume]:
    """Every segment of a SEG as a mask on the grid of ``series``.

    Returns:
        Segment label -> ``(Z, Y, X)`` bool mask (segments sharing a label are merged). FRACTIONAL segments
        are thresholded at half their maximum value.

    Raises:
        DicomError: not a SEG, frame of reference differs, or frames that do not lie on the series grid.
    """
    dataset = _read_seg(path, series)
    geometry = series_geometry(series)
    first = series.instances[0]
    shape = (len(series.instances), first.rows, first.columns)
    names = {int(s.SegmentNumber): str(s.get("SegmentLabel", "") or f"segment {s.SegmentNumber}")
             for s in dataset.SegmentSequence}  # fmt: skip
    masks: dict[str, BoolVolume] = {name: np.zeros(shape, bool) for name in names.values()}
    frames = _frames(dataset, path)
    threshold = 0.5 * float(dataset.get("MaximumFractionalValue", 1) or 1)
    for index, frame in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        segment = _frame_item(dataset, frame, "SegmentIdentificationSequence")
        number = int(segment.ReferencedSegmentNumber) if segment is not None else 1
        z = _frame_slice(dataset, frame, geometry, shape, f"{path}: frame {index + 1}")
        masks[names.get(number, f"segment {number}")][z] |= frames[index] > threshold
    return masks


def read_dicom_seg(
    path: Path, series: DicomSeries, label_values: Mapping[str, int] | None = None
) -> LabelVolume:
    """A SEG as one label map on the grid of ``series``.

    Args:
        path: the SEG file.
        series: the image series it refers to.
        label_values: segment label -> label value; default: segments in file order get 1, 2, 3...
            (use ``{name: value for value, name in label_names.items()}`` to invert :func:`write_dicom_seg`).

    Returns:
        ``(Z, Y, X)`` uint8 (uint16 above 255) label map; where segments overlap, the higher value wins.

    Raises:
        DicomError: as :func:`read_dicom_seg_masks`, or a segment label missing from ``label_values``.
    """
    masks = read_dicom_seg_masks(path, series)
    values = dict(label_values) if label_values is not None else {n: i + 1 for i, n in enumerate(masks)}
    unknown = sorted(set(masks) - set(values))
    if unknown:
        raise DicomError(f"{path}: segments {unknown} have no label value; known: {sorted(values)}")
    labels = np.zeros(next(iter(masks.values())).shape if masks else (0, 0, 0), np.uint16)
    for name in sorted(masks, key=lambda n: values[n]):
        labels[masks[name]] = values[name]
    result: LabelVolume = labels.astype(np.uint8) if labels.size == 0 or labels.max() <= 255 else labels
    return result


# ------------------------------------------------------------------------------------------------ writing


def _segment(
    number: int, structure: Structure, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=structure.name,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*structure.colour),
    )


def _segment_pixels(structures: Sequence[Structure]) -> np.ndarray:
    """highdicom's pixel array: ``(Z, Y, X)`` segment numbers when no structures overlap (small), else
    ``(Z, Y, X, S)`` binary, one channel per segment."""
    if overlaps(structures):
        return np.stack([s.mask for s in structures], axis=-1).astype(np.uint8)
    numbers = np.zeros(structures[0].mask.shape, np.uint16 if len(structures) > 255 else np.uint8)
    for number, structure in enumerate(structures, start=1):
        numbers[structure.mask] = number
    return numbers


def _build(
    sources: list[Dataset],
    segments: np.ndarray,
    descriptions: list[hd.seg.SegmentDescription],
    identity: tuple[str, str],
    path: Path,
    uid_seed: str | None = None,
) -> hd.seg.Segmentation:
    try:
        with warnings.catch_warnings():
            # highdicom re-validates the source's PatientName and warns on single-component names such as
            # "JANCT000", which are common in real data and harmless: copy them as they are.
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            return _segmentation(sources, segments, descriptions, identity, uid_seed)
    except (ValueError, TypeError, AttributeError) as error:
        raise DicomError(f"{path}: cannot build the DICOM SEG ({error})") from None


def _segmentation(
    sources: list[Dataset],
    segments: np.ndarray,
    descriptions: list[hd.seg.SegmentDescription],
    identity: tuple[str, str],
    uid_seed: str | None = None,
) -> hd.seg.Segmentation:
    name, version = identity
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_new_uid(uid_seed, "seg series"),
        series_number=902,
        sop_instance_uid=_new_uid(uid_seed, "seg"),
        instance_number=1,
        manufacturer=name,
        manufacturer_model_name=name,
        software_versions=version,
        device_serial_number="none",
        series_description=f"{name} segmentation",
        content_description=f"automatic, unapproved: {name} {version}"[:64],
        specific_character_set=highdicom_character_set(source_character_set(sources[0])),
    )


def _new_uid(seed: str | None, what: str) -> str:
    """A random UID, or one derived from ``seed`` and ``what``."""
    return str(generate_uid() if seed is None else generate_uid(entropy_srcs=[seed, what]))


# ------------------------------------------------------------------------------------------------ reading


def _read_seg(path: Path, series: DicomSeries) -> Dataset:
    if not path.is_file():
        raise DicomError(f"{path}: SEG file does not exist")
    dataset = read_header(path, with_pixels=True)
    if dataset is None or str(dataset.get("Modality", "")) != "SEG" or "SegmentSequence" not in dataset:
        raise DicomError(f"{path}: is not a DICOM SEG object")
    frame = str(dataset.get("FrameOfReferenceUID", "") or "")
    if frame and series.frame_of_reference_uid and frame != series.frame_of_reference_uid:
        raise DicomError(
            f"{path}: SEG is in frame of reference {frame}, the image series in "
            f"{series.frame_of_reference_uid}; pair the SEG with the series it was made on",
            details=[series.summary()],
        )
    return dataset


def _frames(dataset: Dataset, path: Path) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pixels = np.asarray(dataset.pixel_array)
        except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
            raise DicomError(f"{path}: cannot decode the SEG frames ({error})") from None
    for warning in caught:
        logger.debug("%s: %s", path, warning.message)
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    return pixels.reshape(count, int(dataset.Rows), int(dataset.Columns))


def _frame_item(dataset: Dataset, frame: Dataset, sequence: str) -> Dataset | None:
    for source in (frame, dataset.SharedFunctionalGroupsSequence[0]):
        if sequence in source:
            item: Dataset = source[sequence].value[0]
            return item
    return None


def _frame_slice(
    dataset: Dataset, frame: Dataset, geometry: Geometry, shape: tuple[int, int, int], where: str
) -> int:
    position = _frame_item(dataset, frame, "PlanePositionSequence")
    orientation = _frame_item(dataset, frame, "PlaneOrientationSequence")
    measures = _frame_item(dataset, frame, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise DicomError(f"{where}: has no plane position/orientation/pixel spacing; cannot place it")
    if (int(dataset.Rows), int(dataset.Columns)) != shape[1:]:
        raise DicomError(f"{where}: frames are {dataset.Rows}x{dataset.Columns}, the series {shape[1:]}")
    if not np.allclose([float(v) for v in measures.PixelSpacing], geometry.spacing_mm[1:], rtol=1e-4):
        raise DicomError(f"{where}: pixel spacing {measures.PixelSpacing} differs from the series")
    # Three corners of the frame must land on integer (row, column) = (0, 0), (0, 1) and (1, 0) of one slice.
    row_dir = np.asarray([float(v) for v in orientation.ImageOrientationPatient[:3]])
    col_dir = np.asarray([float(v) for v in orientation.ImageOrientationPatient[3:]])
    origin = np.asarray([float(v) for v in position.ImagePositionPatient])
    spacing = [float(v) for v in measures.PixelSpacing]
    corners = np.stack([origin, origin + row_dir * spacing[1], origin + col_dir * spacing[0]])
    index = patient_to_index(geometry, corners)
    z = int(np.rint(index[0, 0]))
    expected = np.asarray([[z, 0, 0], [z, 0, 1], [z, 1, 0]], float)
    if not 0 <= z < shape[0] or not np.allclose(index, expected, atol=0.05):
        raise DicomError(f"{where}: does not lie on a slice of the series grid (index {index[0].round(2)})")
    return z
