"""``autoseg fingerprint``: what the planner needs to know about a dataset, in ``fingerprint.json``.

Per case: spacing, shape, orientation, and the bounding box / shape after cropping to the nonzero region of
all channels; spacing, shapes and box in the canonical axis order (:mod:`autoseg.preprocessing.orientation`),
the order preprocessing gives the network, so that a dataset stored in mixed orientations plans the right
spacing per axis. Per channel: intensity statistics of the foreground (label > 0) from a seeded sample of
foreground voxels, plus per-case statistics. Per class: voxel fraction, fraction of cases where present, and
the number and size of its connected components. Across cases: whether the orientation is consistent.

The result is deterministic (the sample of each case is seeded from the case identifier, so worker count and
order do not matter) and is recomputed only when the dataset's files change (:func:`dataset_signature`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from autoseg import __version__
from autoseg.dataset.layout import Case, Dataset, read_case
from autoseg.errors import FingerprintError, ImageReadError
from autoseg.io import Geometry, read_json
from autoseg.parallel import map_cases
from autoseg.plans import CANONICAL_AXIS_CODE, OBLIQUE_THRESHOLD_DEG
from autoseg.preprocessing.orientation import axis_alignment, canonical_extent
from autoseg.regions import Region, foreground_mask, is_region_target, overlapping_pairs, structure_mask
from autoseg.types import BoolVolume, FloatVolume, TargetVolume
from autoseg.workdir import Workdir

logger = logging.getLogger(__name__)

FINGERPRINT_SCHEMA_VERSION = 1
CONNECTIVITY = 1
"""Connected components use face connectivity (6 neighbours in 3D), as SimpleITK's default."""

TOTAL_FOREGROUND_SAMPLES = 10_000_000
"""Foreground voxels sampled per channel over the whole dataset, shared equally between cases."""


@dataclass(frozen=True)
class IntensityStats:
    """Intensity statistics of a set of voxels (float64 values, in the image's own units)."""

    count: int
    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStats:
        """Statistics of a 1D array; all-NaN fields are avoided by returning zeros for an empty array."""
        if values.size == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        v = values.astype(np.float64, copy=False)
        p005, p50, p995 = np.percentile(v, [0.5, 50.0, 99.5])
        return cls(
            int(v.size),
            float(v.mean()),
            float(v.std()),
            float(p50),
            float(v.min()),
            float(v.max()),
            float(p005),
            float(p995),
        )


@dataclass(frozen=True)
class CaseFingerprint:
    """One case. Tuples follow the ``(z, y, x)`` axis order of the canonical orientation (the stored order
    for an image already canonical); ``crop_box`` is half-open ``[start, stop)``. ``orientation`` is the
    stored one (``Geometry.orientation_code``); ``oblique_deg``: how far an oblique image's axes are from
    the patient axes (``None``, and absent from the JSON, when within the oblique threshold)."""

    identifier: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    cropped_shape: tuple[int, int, int]
    crop_box: tuple[tuple[int, int], ...]
    intensity: tuple[IntensityStats, ...]
    class_voxels: dict[str, int]
    component_sizes: dict[str, list[int]]
    overlaps: dict[str, int] = field(default_factory=dict)
    """Region datasets: ``"A+B"`` -> voxels in both structures, for each overlapping pair."""
    annotated: tuple[int, ...] | None = None
    """Partly contoured region datasets: the structure numbers contoured in the case; ``None``: all."""
    oblique_deg: float | None = None
    centroids_mm: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Label value (structure number) -> the centroid of its voxels, physical ``(z, y, x)`` LPS mm, for
    those present (:func:`find_mirror_pairs`)."""
    centre_mm: tuple[float, float, float] | None = None
    """The centre of the image's nonzero box (``crop_box``), physical ``(z, y, x)`` LPS mm."""


@dataclass(frozen=True)
class MirrorPair:
    """Two structures found as a mirror-image pair: ``left`` lies on the patient's left (LPS +x).

    Attributes:
        left, right: structure names.
        cases: cases in which their centroids mirror each other with similar volumes.
        both_present: cases in which both structures have voxels.
    """

    left: str
    right: str
    cases: int
    both_present: int


@dataclass(frozen=True)
class Distribution:
    """Summary of a list of numbers."""

    min: float
    median: float
    mean: float
    max: float
    percentile_05: float
    percentile_95: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        """Summary of ``values``; zeros when empty."""
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        v = np.asarray(values, dtype=np.float64)
        p05, p50, p95 = np.percentile(v, [5.0, 50.0, 95.0])
        return cls(float(v.min()), float(p50), float(v.mean()), float(v.max()), float(p05), float(p95))


@dataclass(frozen=True)
class ClassFingerprint:
    """One foreground class over the dataset."""

    name: str
    value: int
    voxel_fraction: float
    case_fraction: float
    components_per_case: Distribution
    component_size_voxels: Distribution
    component_volume_mm3: Distribution


@dataclass(frozen=True)
class Fingerprint:
    """Everything the planner needs about a dataset. ``cases`` and ``classes`` are sorted."""

    schema_version: int
    autoseg_version: str
    dataset_name: str
    dataset_root: str
    signature: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    num_cases: int
    median_spacing_mm: tuple[float, float, float]
    median_shape: tuple[float, float, float]
    median_cropped_shape: tuple[float, float, float]
    orientations: dict[str, int]
    orientation_consistent: bool
    intensity: tuple[IntensityStats, ...]
    classes: tuple[ClassFingerprint, ...]
    cases: tuple[CaseFingerprint, ...]
    seed: int
    regions: tuple[Region, ...] = ()
    """The structures when they may overlap (:mod:`autoseg.regions`); ``labels`` then numbers them 1..K."""
    regions_class_order: tuple[int, ...] = ()
    structure_types: dict[str, str] = field(default_factory=dict)
    """Structure name -> RTROIInterpretedType the dataset declares (:attr:`Dataset.structure_types`)."""
    mirror_pairs: tuple[MirrorPair, ...] = ()
    """Structures whose centroids mirror each other across the patient's left-right axis with similar
    volumes (:func:`find_mirror_pairs`); absent from the JSON when none."""
    ignore_label: int | None = None
    """nnU-Net's ignore label (:attr:`Dataset.ignore_label`): not in ``labels``, its voxels left out of the
    foreground statistics; ``None`` (and absent from the JSON): none."""

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists); the region fields only for a region dataset, so a
        dataset of disjoint labels has the fingerprint (and hash) it always had."""
        data = asdict(self)
        for case in data["cases"]:
            for optional in ("annotated", "oblique_deg"):
                if case[optional] is None:
                    del case[optional]
        if not self.structure_types:
            del data["structure_types"]
        if self.ignore_label is None:
            del data["ignore_label"]
        if not self.mirror_pairs:
            del data["mirror_pairs"]
        for case in data["cases"]:
            if case["centre_mm"] is None:
                del case["centre_mm"], case["centroids_mm"]
        if not self.regions:
            del data["regions"], data["regions_class_order"]
            for case in data["cases"]:
                del case["overlaps"]
        return data

    def overlap_cases(self) -> dict[str, int]:
        """``"A+B"`` -> number of cases in which the two structures overlap."""
        counts: Counter[str] = Counter(pair for case in self.cases for pair in case.overlaps)
        return dict(sorted(counts.items()))

    def sha256(self) -> str:
        """Content hash, for plans to record which fingerprint they came from."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def crop_box_of_nonzero(image: FloatVolume) -> tuple[tuple[int, int], ...]:
    """Bounding box ``((z0, z1), (y0, y1), (x0, x1))`` of voxels nonzero in any channel, holes filled.

    Args:
        image: ``(C, Z, Y, X)``. An all-zero image gives the full extent.
    """
    mask: BoolVolume = ndimage.binary_fill_holes(np.any(image != 0, axis=0))
    if not mask.any():
        return tuple((0, int(s)) for s in image.shape[1:])
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def fingerprint_case(
    image: FloatVolume,
    labels: TargetVolume,
    spacing_mm: tuple[float, float, float],
    orientation: str,
    identifier: str,
    *,
    samples: int,
    seed: int,
    ignore_label: int | None = None,
) -> tuple[CaseFingerprint, list[np.ndarray]]:
    """Fingerprint one case.

    Args:
        image: ``(C, Z, Y, X)`` float32, raw intensities.
        labels: ``(Z, Y, X)`` uint8/uint16 label map, or a ``(K, Z, Y, X)`` uint8 region target.
        spacing_mm: ``(z, y, x)``.
        samples: foreground voxels to sample per channel.
        seed: dataset seed; the case's generator is seeded from it and the identifier.
        ignore_label: a label map's ignore value: its voxels (unknown class) are neither foreground nor a
            class here.

    Returns:
        The case fingerprint and, per channel, the sampled foreground intensities (float32, 1D).
    """
    box = crop_box_of_nonzero(image)
    foreground = foreground_mask(labels)
    if ignore_label is not None and not is_region_target(labels):
        foreground &= labels != ignore_label
    rng = np.random.default_rng([seed, zlib.crc32(identifier.encode())])
    positions = np.flatnonzero(foreground)
    if positions.size > samples:
        positions = np.sort(rng.choice(positions, size=samples, replace=False))
    sampled = [channel.ravel()[positions].astype(np.float32) for channel in image]
    intensity = tuple(IntensityStats.of(channel[foreground]) for channel in image)
    class_voxels = _class_voxels(labels)
    class_voxels.pop(str(ignore_label), None)
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY)
    component_sizes: dict[str, list[int]] = {}
    for value in class_voxels:
        components, _ = ndimage.label(structure_mask(labels, int(value)), structure=structure)
        component_sizes[value] = sorted((int(s) for s in np.bincount(components.ravel())[1:]), reverse=True)
    fingerprint = CaseFingerprint(
        identifier=identifier,
        shape=_triple_int(labels.shape[-3:]),
        spacing_mm=spacing_mm,
        orientation=orientation,
        cropped_shape=_triple_int(tuple(b - a for a, b in box)),
        crop_box=box,
        intensity=intensity,
        class_voxels=class_voxels,
        component_sizes=component_sizes,
        overlaps=overlapping_pairs(labels, [str(k + 1) for k in range(len(labels))])
        if is_region_target(labels)
        else {},
    )
    return fingerprint, sampled


def _class_voxels(labels: TargetVolume) -> dict[str, int]:
    """Label value (structure number for a region target) -> voxels, for those present."""
    if is_region_target(labels):
        sizes = [int(np.count_nonzero(channel == 1)) for channel in labels]  # not UNKNOWN voxels
        return {str(k + 1): c for k, c in enumerate(sizes) if c}
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


def extract_fingerprint(
    dataset: Dataset, *, num_workers: int = 1, seed: int = 0, show_progress: bool = True
) -> Fingerprint:
    """Fingerprint every training case of ``dataset`` (in ``num_workers`` processes) and aggregate."""
    samples = max(1000, TOTAL_FOREGROUND_SAMPLES // max(1, len(dataset.cases)))
    work = partial(_fingerprint_case_file, samples=samples, seed=seed, ignore_label=dataset.ignore_label)
    results = list(
        map_cases(
            work,
            dataset.cases,
            num_workers=num_workers,
            description="fingerprint",
            show_progress=show_progress,
        )
    )
    cases = tuple(replace(r[0], annotated=c.annotated) for r, c in zip(results, dataset.cases, strict=True))
    sampled = [np.concatenate([r[1][c] for r in results]) for c in range(dataset.num_channels)]
    orientations = Counter(c.orientation for c in cases)
    _warn_orientations(orientations, [c for c in cases if c.oblique_deg is not None])
    fingerprint = Fingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION,
        autoseg_version=__version__,
        dataset_name=dataset.name,
        dataset_root=str(dataset.root),
        signature=dataset_signature(dataset, seed=seed),
        channel_names=dataset.channel_names,
        labels=dict(dataset.labels),
        num_cases=len(cases),
        median_spacing_mm=_median_triple([c.spacing_mm for c in cases]),
        median_shape=_median_triple([c.shape for c in cases]),
        median_cropped_shape=_median_triple([c.cropped_shape for c in cases]),
        orientations=dict(orientations.most_common()),
        orientation_consistent=len(orientations) == 1,
        intensity=tuple(IntensityStats.of(s) for s in sampled),
        classes=_class_fingerprints(dataset.foreground_labels, cases),
        cases=cases,
        seed=seed,
        regions=dataset.regions,
        regions_class_order=dataset.regions_class_order,
        structure_types=dataset.structure_types,
        ignore_label=dataset.ignore_label,
    )
    fingerprint = replace(fingerprint, mirror_pairs=find_mirror_pairs(fingerprint))
    logger.info(
        "fingerprinted %d case(s): median spacing %s mm, median shape %s voxels",
        len(cases),
        " x ".join(f"{s:.3g}" for s in fingerprint.median_spacing_mm),
        " x ".join(f"{s:.0f}" for s in fingerprint.median_shape),
    )
    return fingerprint


MIRROR_VOLUME_RATIO = 1.5
"""Mirror-image pairs: the larger structure's volume is at most this multiple of the smaller one's."""

MIRROR_CASE_FRACTION = 2 / 3
"""Mirror-image pairs: they mirror each other in at least this fraction of the cases that have both."""


def find_mirror_pairs(fingerprint: Fingerprint) -> tuple[MirrorPair, ...]:
    """Structures that come as a left/right pair whatever their names (``docs/dicom.md``, "Laterality"):
    in most cases with both (:data:`MIRROR_CASE_FRACTION`) their centroids mirror each other across the
    patient's left-right axis (:func:`_mirror_side`) and their volumes are similar
    (:data:`MIRROR_VOLUME_RATIO`). Pairs in label order."""
    names = {str(v): n for n, v in fingerprint.labels.items() if v}
    found = []
    for a, b in combinations(sorted(names, key=int), 2):
        both = [c for c in fingerprint.cases if a in c.centroids_mm and b in c.centroids_mm and c.centre_mm]
        hits = [side for side in (_mirror_side(c, a, b) for c in both) if side is not None]
        if hits and len(hits) >= MIRROR_CASE_FRACTION * len(both):
            left, right = (a, b) if 2 * sum(hits) >= len(hits) else (b, a)
            found.append(MirrorPair(names[left], names[right], len(hits), len(both)))
    return tuple(found)


def _mirror_side(case: CaseFingerprint, a: str, b: str) -> bool | None:
    """Whether structures ``a`` and ``b`` mirror each other in ``case``: similar volumes, centroids apart
    along patient x (LPS) by at least the larger one's equivalent diameter, within half that diameter (at
    least 5 mm) of each other along y and z, their midpoint within a quarter of their distance (at least
    20 mm) of the image centre's x. ``True``: ``a`` is on the patient's left (+x); ``None``: no mirror."""
    assert case.centre_mm is not None
    voxel_mm3 = float(np.prod(case.spacing_mm))
    volumes = sorted((case.class_voxels[a] * voxel_mm3, case.class_voxels[b] * voxel_mm3))
    if volumes[1] > MIRROR_VOLUME_RATIO * volumes[0]:
        return None
    (za, ya, xa), (zb, yb, xb) = case.centroids_mm[a], case.centroids_mm[b]
    diameter = 2.0 * (3.0 * volumes[1] / (4.0 * np.pi)) ** (1 / 3)
    separation, near = abs(xa - xb), max(0.5 * diameter, 5.0)
    if separation < diameter or abs(ya - yb) > near or abs(za - zb) > near:
        return None
    if abs((xa + xb) / 2 - case.centre_mm[2]) > max(20.0, 0.25 * separation):
        return None
    return xa > xb


def _warn_orientations(orientations: Counter[str], oblique: Sequence[CaseFingerprint]) -> None:
    """A warning when training cases are stored in more than one orientation, or some are oblique, saying
    what the canonical orientation does about it."""
    if len(orientations) > 1:
        logger.warning(
            "training cases are stored in %d orientations (%s); each is brought to the canonical %s "
            "orientation before training and prediction (an exact permutation/flip of its array), and the "
            "spacings and shapes planned from here are in that axis order",
            len(orientations),
            ", ".join(f"{code}: {count}" for code, count in orientations.most_common()),
            CANONICAL_AXIS_CODE,
        )
    if oblique:
        logger.warning(
            "%d training case(s) are oblique (e.g. %s by %.1f deg): they are resampled onto an axis-aligned "
            "grid in world space before training, which blurs them a little",
            len(oblique),
            oblique[0].identifier,
            oblique[0].oblique_deg,
        )


def dataset_signature(dataset: Dataset, *, seed: int) -> str:
    """sha256 of ``dataset.json`` and every case file's path, size and modification time (plus the seed)."""
    digest = hashlib.sha256()
    # "axes": fingerprints before the canonical axis order are stale (their shapes are in stored order)
    digest.update(f"schema={FINGERPRINT_SCHEMA_VERSION};seed={seed};axes={CANONICAL_AXIS_CODE};".encode())
    digest.update((dataset.root / "dataset.json").read_bytes())
    for case in dataset.cases:
        for path in case.files():
            stat = path.stat()
            digest.update(f"{path.relative_to(dataset.root)}|{stat.st_size}|{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class FingerprintOptions:
    """What ``autoseg fingerprint`` runs: worker processes, the seed of the foreground sample, and whether
    to recompute an up-to-date (or another dataset's) ``fingerprint.json``."""

    num_workers: int = 1
    seed: int = 0
    force: bool = False


def run_fingerprint(
    workdir: Path,
    dataset: Dataset,
    options: FingerprintOptions | None = None,
    *,
    show_progress: bool = True,
) -> Path:
    """Write the work directory's ``fingerprint.json`` unless an up-to-date one (same signature) is there.

    Raises:
        FingerprintError: the work directory belongs to another dataset (and ``options.force`` is off).
    """
    options = options or FingerprintOptions()
    work = Workdir(workdir)
    path = work.fingerprint_path
    if not options.force and path.is_file():
        try:
            existing = work.read_fingerprint()
        except FingerprintError as error:
            logger.warning("recomputing: %s", error.message)
        else:
            if existing.dataset_root != str(dataset.root):
                raise FingerprintError(
                    f"{path} belongs to dataset {existing.dataset_root}, not {dataset.root}; "
                    "use another --workdir (one per dataset) or --force to replace it"
                )
            if existing.signature == dataset_signature(dataset, seed=options.seed):
                logger.info("%s is up to date (dataset unchanged); use --force to recompute", path)
                return path
            logger.info("dataset changed since %s was written; recomputing", path)
    fingerprint = extract_fingerprint(
        dataset, num_workers=options.num_workers, seed=options.seed, show_progress=show_progress
    )
    work.write_fingerprint(fingerprint)
    logger.info("wrote %s", path)
    return path


def load_fingerprint(path: Path) -> Fingerprint:
    """Read and validate ``fingerprint.json``.

    Raises:
        FingerprintError: missing, malformed, or written by an incompatible schema version.
    """
    if not path.is_file():
        raise FingerprintError(f"{path}: no fingerprint; run 'autoseg fingerprint DATASET' first")
    try:
        data = read_json(path)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        version = data.get("schema_version")
        if version != FINGERPRINT_SCHEMA_VERSION:
            raise FingerprintError(
                f"{path}: schema_version {version}; this autoseg reads "
                f"{FINGERPRINT_SCHEMA_VERSION}. Re-run 'autoseg fingerprint'."
            )
        return _fingerprint_from_json(data)
    except FingerprintError:
        raise
    except (ImageReadError, KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise FingerprintError(
            f"{path}: malformed fingerprint ({error}); re-run 'autoseg fingerprint'"
        ) from error


# ------------------------------------------------------------------------------------------- internals


def _fingerprint_case_file(
    case: Case, *, samples: int, seed: int, ignore_label: int | None = None
) -> tuple[CaseFingerprint, list[np.ndarray]]:
    image, labels, geometry = read_case(case)
    assert labels is not None, "training cases have labels"
    fingerprint, sampled = fingerprint_case(
        image,
        labels,
        geometry.spacing_mm,
        geometry.orientation_code(),
        case.identifier,
        samples=samples,
        seed=seed,
        ignore_label=ignore_label,
    )
    fingerprint = replace(
        fingerprint,
        centroids_mm=_centroids_mm(labels, geometry, [int(v) for v in fingerprint.class_voxels]),
        centre_mm=_triple_float(
            geometry.index_to_physical([(a + b - 1) / 2 for a, b in fingerprint.crop_box])
        ),
    )
    return in_canonical_order(fingerprint, geometry.direction), sampled


def _centroids_mm(
    labels: TargetVolume, geometry: Geometry, values: Sequence[int]
) -> dict[str, tuple[float, float, float]]:
    """Label value (structure number) -> physical ``(z, y, x)`` centroid of its voxels, rounded to 0.1 mm."""
    if not values:
        return {}
    if is_region_target(labels):
        indices = [ndimage.center_of_mass(structure_mask(labels, v)) for v in values]
    else:
        indices = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, values)
    return {
        str(v): _triple_float(np.round(geometry.index_to_physical(index), 1))
        for v, index in zip(values, indices, strict=True)
    }


def _triple_float(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def in_canonical_order(fingerprint: CaseFingerprint, direction: Sequence[float]) -> CaseFingerprint:
    """A case fingerprint of an image stored with ``direction`` in the canonical axis order (shape, spacing,
    crop box), what preprocessing gives the network; oblique images noted (``oblique_deg``)."""
    alignment = axis_alignment(direction)
    shape, spacing, box = canonical_extent(
        alignment, fingerprint.shape, fingerprint.spacing_mm, fingerprint.crop_box
    )
    oblique = round(alignment.angle_deg, 2) if alignment.angle_deg > OBLIQUE_THRESHOLD_DEG else None
    cropped = _triple_int(tuple(b - a for a, b in box))
    return replace(
        fingerprint, shape=shape, spacing_mm=spacing, crop_box=box, cropped_shape=cropped, oblique_deg=oblique
    )


def _class_fingerprints(
    labels: Mapping[str, int], cases: Sequence[CaseFingerprint]
) -> tuple[ClassFingerprint, ...]:
    total_voxels = sum(int(np.prod(c.shape)) for c in cases)
    result = []
    for name, value in sorted(labels.items(), key=lambda item: item[1]):
        key = str(value)
        sizes = [s for c in cases for s in c.component_sizes.get(key, [])]
        volumes = [s * float(np.prod(c.spacing_mm)) for c in cases for s in c.component_sizes.get(key, [])]
        result.append(
            ClassFingerprint(
                name=name,
                value=value,
                voxel_fraction=sum(c.class_voxels.get(key, 0) for c in cases) / max(1, total_voxels),
                case_fraction=sum(key in c.class_voxels for c in cases) / max(1, len(cases)),
                components_per_case=Distribution.of([len(c.component_sizes.get(key, [])) for c in cases]),
                component_size_voxels=Distribution.of(sizes),
                component_volume_mm3=Distribution.of(volumes),
            )
        )
    return tuple(result)


def _median_triple(values: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    median = np.median(np.asarray(values, dtype=np.float64), axis=0)
    return float(median[0]), float(median[1]), float(median[2])


def _triple_int(values: Sequence[int]) -> tuple[int, int, int]:
    return int(values[0]), int(values[1]), int(values[2])


def _fingerprint_from_json(data: dict[str, Any]) -> Fingerprint:
    def triple(v: Sequence[Any]) -> tuple[float, float, float]:
        return float(v[0]), float(v[1]), float(v[2])

    cases = tuple(
        CaseFingerprint(
            identifier=str(c["identifier"]),
            shape=_triple_int(c["shape"]),
            spacing_mm=triple(c["spacing_mm"]),
            orientation=str(c["orientation"]),
            cropped_shape=_triple_int(c["cropped_shape"]),
            crop_box=tuple((int(a), int(b)) for a, b in c["crop_box"]),
            intensity=tuple(IntensityStats(**s) for s in c["intensity"]),
            class_voxels={str(k): int(v) for k, v in c["class_voxels"].items()},
            component_sizes={str(k): [int(s) for s in v] for k, v in c["component_sizes"].items()},
            overlaps={str(k): int(v) for k, v in c.get("overlaps", {}).items()},
            annotated=None if c.get("annotated") is None else tuple(int(v) for v in c["annotated"]),
            oblique_deg=None if c.get("oblique_deg") is None else float(c["oblique_deg"]),
            centroids_mm={str(k): triple(v) for k, v in c.get("centroids_mm", {}).items()},
            centre_mm=None if c.get("centre_mm") is None else triple(c["centre_mm"]),
        )
        for c in data["cases"]
    )
    classes = tuple(
        ClassFingerprint(
            name=str(c["name"]),
            value=int(c["value"]),
            voxel_fraction=float(c["voxel_fraction"]),
            case_fraction=float(c["case_fraction"]),
            components_per_case=Distribution(**c["components_per_case"]),
            component_size_voxels=Distribution(**c["component_size_voxels"]),
            component_volume_mm3=Distribution(**c["component_volume_mm3"]),
        )
        for c in data["classes"]
    )
    return Fingerprint(
        schema_version=int(data["schema_version"]),
        autoseg_version=str(data["autoseg_version"]),
        dataset_name=str(data["dataset_name"]),
        dataset_root=str(data["dataset_root"]),
        signature=str(data["signature"]),
        channel_names=tuple(str(n) for n in data["channel_names"]),
        labels={str(k): int(v) for k, v in data["labels"].items()},
        num_cases=int(data["num_cases"]),
        median_spacing_mm=triple(data["median_spacing_mm"]),
        median_shape=triple(data["median_shape"]),
        median_cropped_shape=triple(data["median_cropped_shape"]),
        orientations={str(k): int(v) for k, v in data["orientations"].items()},
        orientation_consistent=bool(data["orientation_consistent"]),
        intensity=tuple(IntensityStats(**s) for s in data["intensity"]),
        classes=classes,
        cases=cases,
        seed=int(data["seed"]),
        regions=tuple(
            Region(str(r["name"]), tuple(int(v) for v in r["label_values"])) for r in data.get("regions", [])
        ),
        regions_class_order=tuple(int(v) for v in data.get("regions_class_order", [])),
        structure_types={str(k): str(v) for k, v in data.get("structure_types", {}).items()},
        ignore_label=None if data.get("ignore_label") is None else int(data["ignore_label"]),
        mirror_pairs=tuple(MirrorPair(**pair) for pair in data.get("mirror_pairs", [])),
    )
