"""Preprocessing of one case: crop to the nonzero region, normalise, resample; and its exact inverse.

``preprocess_case`` turns a raw case into training-ready arrays at a configuration's spacing, plus the
properties needed to undo it; ``restore_probabilities`` / ``restore_labels`` map a prediction in preprocessed
space back to the original grid (resample, uncrop, undo the canonical orientation). Before anything else the
case is brought to the plan's canonical orientation (:mod:`autoseg.preprocessing.orientation`), so training
and inference see the same anatomy in the same array order whatever the file's axis order.
Storage and the parallel, resumable run over a dataset live in :mod:`autoseg.preprocessing.stage`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoseg.fingerprint import crop_box_of_nonzero
from autoseg.io import Geometry
from autoseg.plans import ChannelNormalization, ConfigurationPlan
from autoseg.preprocessing.orientation import (
    Reorientation,
    canonical_view,
    from_canonical,
    log_reorientation,
    plan_reorientation,
    target_from_canonical,
    target_to_canonical,
    to_canonical,
)
from autoseg.preprocessing.resample import (
    resample_image,
    resample_probabilities,
    resample_target,
    target_shape,
)
from autoseg.regions import is_region_target, structure_mask, structure_values
from autoseg.types import FloatVolume, TargetVolume

FOREGROUND_SAMPLES = 10_000
"""Foreground voxel locations stored per class and case, for oversampling."""

MIN_FOREGROUND_COVERAGE = 0.01
"""...but at least this fraction of a class's voxels, so large structures are sampled everywhere."""


@dataclass(frozen=True)
class CaseProperties:
    """All that is needed to map a preprocessed case back to its original image.

    Tuples are ``(z, y, x)``; ``original_shape`` and ``original_geometry`` are the input's own grid.
    ``orientation``: how the case was brought to the canonical orientation; ``None`` (and absent from the
    JSON, as in properties written before it existed): it was not (already canonical, or an ``"as-stored"``
    plan). ``crop_box`` is half-open ``[start, stop)`` in voxels of the canonical array
    (:attr:`network_geometry`), which is the original one when ``orientation`` is ``None``. ``annotated``
    (region targets of a partly contoured dataset): the structure numbers contoured in the case; ``None``
    (and absent from the JSON, as in properties written before it existed): every structure.
    """

    identifier: str
    original_shape: tuple[int, int, int]
    original_geometry: Geometry
    crop_box: tuple[tuple[int, int], ...]
    cropped_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    preprocessed_shape: tuple[int, int, int]
    classes_present: tuple[int, ...] = ()
    annotated: tuple[int, ...] | None = None
    orientation: Reorientation | None = None

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical array the crop box refers to."""
        return self.original_shape if self.orientation is None else self.orientation.canonical_shape

    @property
    def network_geometry(self) -> Geometry:
        """Geometry of the canonical array (before crop and resampling): its direction says which array
        axis is the patient's left-right one for the network (mirroring, laterality)."""
        return self.original_geometry if self.orientation is None else self.orientation.canonical_geometry

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        geometry = self.original_geometry
        extra: dict[str, Any] = {} if self.annotated is None else {"annotated": list(self.annotated)}
        if self.orientation is not None:
            extra["orientation"] = self.orientation.to_json()
        return {
            "identifier": self.identifier,
            "original_shape": list(self.original_shape),
            "original_geometry": {
                "spacing_mm": list(geometry.spacing_mm),
                "origin_mm": list(geometry.origin_mm),
                "direction": list(geometry.direction),
            },
            "crop_box": [list(b) for b in self.crop_box],
            "cropped_shape": list(self.cropped_shape),
            "spacing_mm": list(self.spacing_mm),
            "preprocessed_shape": list(self.preprocessed_shape),
            "classes_present": list(self.classes_present),
        } | extra

    def is_annotated(self, value: int) -> bool:
        """Whether structure number ``value`` was contoured in this case."""
        return self.annotated is None or value in self.annotated

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseProperties:
        """Inverse of :meth:`to_json`."""
        g = data["original_geometry"]
        return cls(
            identifier=str(data["identifier"]),
            original_shape=_int3(data["original_shape"]),
            original_geometry=Geometry(
                _float3(g["spacing_mm"]), _float3(g["origin_mm"]), tuple(float(v) for v in g["direction"])
            ),
            crop_box=tuple((int(a), int(b)) for a, b in data["crop_box"]),
            cropped_shape=_int3(data["cropped_shape"]),
            spacing_mm=_float3(data["spacing_mm"]),
            preprocessed_shape=_int3(data["preprocessed_shape"]),
            classes_present=tuple(int(c) for c in data["classes_present"]),
            annotated=None if data.get("annotated") is None else tuple(int(v) for v in data["annotated"]),
            orientation=None
            if data.get("orientation") is None
            else Reorientation.from_json(data["orientation"]),
        )


@dataclass(frozen=True)
class PreprocessedCase:
    """A case ready for training: ``image`` ``(C, Z, Y, X)`` float32 normalised, ``labels`` ``(Z, Y, X)`` (or
    the ``(K, Z, Y, X)`` region target), and per foreground class (structure number) a sample of its voxel
    locations ``(N, 3)`` int32 (``(z, y, x)``)."""

    image: FloatVolume
    labels: TargetVolume | None
    properties: CaseProperties
    foreground: dict[int, np.ndarray] = field(default_factory=dict)


def preprocess_case(
    image: FloatVolume,
    labels: TargetVolume | None,
    geometry: Geometry,
    config: ConfigurationPlan,
    *,
    identifier: str = "case",
    seed: int = 0,
    in_place: bool = False,
    annotated: tuple[int, ...] | None = None,
) -> PreprocessedCase:
    """Bring to the canonical orientation (``config.orientation``), crop to the nonzero region of all
    channels, normalise per channel, resample to the plan's spacing.

    Args:
        image: ``(C, Z, Y, X)`` float32, raw intensities; normalised in place when ``in_place`` (saves a copy
            of the volume on large scans), otherwise left untouched.
        labels: ``(Z, Y, X)`` uint8/uint16, or a ``(K, Z, Y, X)`` uint8 region target (each structure
            resampled on its own), or ``None`` for an unlabelled case.
        geometry: the image's geometry (any orientation; oblique images are resampled in world space).
        config: the configuration to preprocess for.
        identifier, seed: seed the foreground sample (with the identifier, so it is order independent).
        annotated: the structure numbers contoured in the case (:attr:`CaseProperties.annotated`).
    """
    original_shape = _int3(image.shape[1:])
    reorientation = plan_reorientation(geometry, original_shape, config.orientation, config.spacing_mm)
    canonical_geometry, footprint = geometry, None
    if reorientation is not None:
        log_reorientation(identifier, reorientation, geometry, config.orientation.oblique_threshold_deg)
        image, labels, footprint = _canonical_case(image, labels, geometry, reorientation, config)
        canonical_geometry = reorientation.canonical_geometry
    box = crop_box_of_nonzero(image if footprint is None else footprint[None])
    region = tuple(slice(a, b) for a, b in box)
    cropped = image[(slice(None), *region)]
    if not in_place or cropped.dtype != np.float32:
        cropped = np.array(cropped, dtype=np.float32, order="C")
    elif reorientation is not None and not cropped.flags.c_contiguous:
        cropped = np.ascontiguousarray(cropped)  # one copy of a transposed view, not strided work throughout
    cropped_labels = None if labels is None else labels[..., region[0], region[1], region[2]]
    within = None if footprint is None else footprint[region]
    normalise(cropped, config.normalization, np.any(cropped != 0, axis=0), within=within)
    if within is not None:
        cropped[:, ~within] = 0.0  # beyond the scan's edge: what padding is in training and sliding windows
    del footprint, within
    shape = target_shape(cropped.shape[1:], canonical_geometry.spacing_mm, config.spacing_mm)
    resampled = resample_image(cropped, shape, config.resampling)
    del cropped
    resampled_labels = (
        None if cropped_labels is None else resample_target(cropped_labels, shape, config.resampling)
    )
    foreground = (
        {}
        if resampled_labels is None
        else sample_foreground(
            resampled_labels, np.random.default_rng([seed, zlib.crc32(identifier.encode())])
        )
    )
    properties = CaseProperties(
        identifier=identifier,
        original_shape=original_shape,
        original_geometry=geometry,
        crop_box=box,
        cropped_shape=_int3(tuple(b - a for a, b in box)),
        spacing_mm=config.spacing_mm,
        preprocessed_shape=shape,
        classes_present=tuple(sorted(foreground)),
        annotated=annotated,
        orientation=reorientation,
    )
    return PreprocessedCase(resampled, resampled_labels, properties, foreground)


def _canonical_case(
    image: FloatVolume,
    labels: TargetVolume | None,
    geometry: Geometry,
    reorientation: Reorientation,
    config: ConfigurationPlan,
) -> tuple[FloatVolume, TargetVolume | None, np.ndarray | None]:
    """Image ``(C, Z, Y, X)`` and labels in the canonical orientation: views for an exact permutation. An
    oblique image is resampled in raw intensities with the plan's orders, each channel filled outside the
    image with its lowest value (air for CT) or 0 (a masked MR's background); the crop and the normalisation
    then follow as for an axis-aligned image.

    The third value is, for an oblique image, its *footprint* on the canonical grid: where its nonzero
    voxels (in any channel) land. The crop goes by it, as it goes by the nonzero voxels of an axis-aligned
    image (the fill of a channel that is not masked is nonzero); an unmasked channel's statistics come from
    it; after normalisation everything outside it is 0, as padding is for the network (training patches,
    sliding windows). Normalising before resampling took the statistics over the whole oblique array, and
    cropping the normalised array kept the whole covering grid: on 20-degree hippocampus variants the
    network saw a canvas twice as large at another contrast, Dice 0.00 (now >= 0.9 against the plain
    scan's prediction, `benchmarks/bench_orientation.py`)."""
    if reorientation.kind == "permute":
        canonical_labels = None if labels is None else canonical_view(labels, reorientation)
        return canonical_view(image, reorientation), canonical_labels, None
    work = np.asarray(image, dtype=np.float32)
    nonzero = np.any(work != 0, axis=0)
    footprint = to_canonical(nonzero.astype(np.float32), reorientation, geometry, 1) >= 0.5
    del nonzero
    order = config.resampling.image_order
    fills = [
        0.0 if s.use_nonzero_mask else float(c.min()) if c.size else 0.0
        for c, s in zip(work, config.normalization, strict=True)
    ]
    channels = [
        to_canonical(c, reorientation, geometry, order, default=f) for c, f in zip(work, fills, strict=True)
    ]
    del work
    canonical_labels = (
        None
        if labels is None
        else target_to_canonical(labels, reorientation, geometry, config.resampling.label_order)
    )
    return np.stack(channels), canonical_labels, footprint


def normalise(
    image: FloatVolume,
    schemes: Sequence[ChannelNormalization],
    nonzero: np.ndarray,
    *,
    within: np.ndarray | None = None,
) -> None:
    """Normalise ``(C, Z, Y, X)`` float32 in place, channel by channel, as the plan says.

    ``nonzero`` is the ``(Z, Y, X)`` mask of voxels nonzero in any channel; with ``use_nonzero_mask`` the
    statistics come from inside it and the outside is set to 0. ``within`` (an oblique scan's footprint on
    the canonical grid) is where an unmasked channel's statistics come from: the scan's voxels, not the
    fill around them.
    """
    if len(schemes) != image.shape[0]:
        raise ValueError(f"{len(schemes)} normalisation scheme(s) for {image.shape[0]} channel(s)")
    for channel, scheme in zip(image, schemes, strict=True):
        if scheme.scheme == "ct":
            assert scheme.clip_low is not None and scheme.clip_high is not None
            assert scheme.mean is not None and scheme.std is not None
            np.clip(channel, scheme.clip_low, scheme.clip_high, out=channel)
            channel -= scheme.mean
            channel /= max(scheme.std, 1e-8)
            continue
        inside = (
            channel[nonzero] if scheme.use_nonzero_mask else channel if within is None else channel[within]
        )
        mean, std = (float(inside.mean()), float(inside.std())) if inside.size else (0.0, 1.0)
        channel -= mean
        channel /= max(std, 1e-8)
        if scheme.use_nonzero_mask:
            channel[~nonzero] = 0.0


def sample_foreground(labels: TargetVolume, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Per foreground class present (structure number of a region target), up to :data:`FOREGROUND_SAMPLES`
    voxel locations ``(N, 3)`` int32 (at least :data:`MIN_FOREGROUND_COVERAGE` of the class's voxels),
    sorted."""
    found: dict[int, np.ndarray] = {}
    region = is_region_target(labels)
    values = structure_values(labels) if region else np.unique(labels)
    for value in values:
        if value == 0:
            continue
        flat = np.flatnonzero(structure_mask(labels, int(value)))
        count = max(min(FOREGROUND_SAMPLES, flat.size), math.ceil(flat.size * MIN_FOREGROUND_COVERAGE))
        chosen = np.sort(rng.choice(flat, size=count, replace=False)) if count < flat.size else flat
        found[int(value)] = np.stack(np.unravel_index(chosen, labels.shape[-3:]), axis=1).astype(np.int32)
    return found


def restore_labels(
    labels: TargetVolume, properties: CaseProperties, config: ConfigurationPlan
) -> TargetVolume:
    """A ``(Z, Y, X)`` label map (or ``(K, Z, Y, X)`` region target) in preprocessed space -> the original
    grid (resample per class or structure, uncrop, undo the canonical orientation: exactly for a
    permutation, by world-space resampling for an oblique image)."""
    restored = resample_target(labels, properties.cropped_shape, config.resampling)
    orientation = properties.orientation
    lead = labels.shape[:-3]
    if orientation is not None and orientation.kind == "resample":
        full = np.zeros((*lead, *properties.canonical_shape), dtype=labels.dtype)
        full[(Ellipsis, *_box_slices(properties))] = restored
        order = config.resampling.label_order
        original = properties.original_geometry
        return target_from_canonical(full, orientation, properties.original_shape, original, order)
    full = np.zeros((*lead, *properties.original_shape), dtype=labels.dtype)
    canonical = full if orientation is None else canonical_view(full, orientation)  # writes land in `full`
    canonical[(Ellipsis, *_box_slices(properties))] = restored
    return full


def target_to_preprocessed(
    target: TargetVolume, properties: CaseProperties, config: ConfigurationPlan
) -> TargetVolume:
    """A label map ``(Z, Y, X)`` (or ``(K, Z, Y, X)`` region target) on the case's original grid -> its
    preprocessed grid (canonical orientation, crop box, resampled per class or structure to
    ``properties.preprocessed_shape`` with the plan's label scheme): what :func:`preprocess_case` does to
    the labels it is given, for a case already preprocessed (its stored ``properties``); the inverse of
    :func:`restore_labels`. A cascade's previous-stage prediction reaches the next stage's grid this way."""
    if tuple(target.shape[-3:]) != properties.original_shape:
        raise ValueError(
            f"{properties.identifier}: target of shape {target.shape[-3:]} for an image of "
            f"{properties.original_shape}"
        )
    canonical = target
    if properties.orientation is not None:
        order = config.resampling.label_order
        canonical = target_to_canonical(target, properties.orientation, properties.original_geometry, order)
    cropped = canonical[(Ellipsis, *_box_slices(properties))]
    return resample_target(np.ascontiguousarray(cropped), properties.preprocessed_shape, config.resampling)


def restore_probabilities(
    probabilities: FloatVolume, properties: CaseProperties, *, regions: bool = False
) -> FloatVolume:
    """``(K, Z, Y, X)`` probabilities in preprocessed space -> the original grid; outside the crop box the
    background (class 0) has probability 1, or, for per-structure sigmoid probabilities (``regions``), every
    structure 0. The canonical orientation is undone exactly (a permutation: written through a view of the
    original-order array, no extra copy) or, for an oblique image, by linear resampling in world space."""
    restored = resample_probabilities(probabilities, properties.cropped_shape)
    orientation = properties.orientation
    oblique = orientation is not None and orientation.kind == "resample"
    shape = properties.canonical_shape if oblique else properties.original_shape
    full = np.zeros((probabilities.shape[0], *shape), dtype=np.float32)
    if not regions:
        full[0] = 1.0
    canonical = full if orientation is None or oblique else canonical_view(full, orientation)
    canonical[(slice(None), *_box_slices(properties))] = restored
    if orientation is None or not oblique:
        return full
    del restored
    original = properties.original_geometry
    return np.stack(
        [
            from_canonical(
                c, orientation, properties.original_shape, original, 1, default=float(k == 0 and not regions)
            )
            for k, c in enumerate(full)
        ]
    )


def _box_slices(properties: CaseProperties) -> tuple[slice, slice, slice]:
    (z0, z1), (y0, y1), (x0, x1) = properties.crop_box
    return slice(z0, z1), slice(y0, y1), slice(x0, x1)


def _int3(values: Sequence[Any]) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in values)
    return a, b, c


def _float3(values: Sequence[Any]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
