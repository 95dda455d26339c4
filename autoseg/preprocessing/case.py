"""Preprocessing of one case: crop to the nonzero region, normalise, resample; and its exact inverse.

``preprocess_case`` turns a raw case into training-ready arrays at a configuration's spacing, plus the
properties needed to undo it; ``restore_to_original`` maps a prediction in preprocessed space back to the
original grid (resample, then uncrop). Storage and the parallel, resumable run over a dataset live in
:mod:`autoseg.preprocessing.stage`.
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
from autoseg.preprocessing.resample import (
    resample_image,
    resample_probabilities,
    resample_target,
    target_shape,
)
from autoseg.regions import is_region_target, structure_mask
from autoseg.types import FloatVolume, TargetVolume

FOREGROUND_SAMPLES = 10_000
"""Foreground voxel locations stored per class and case, for oversampling."""

MIN_FOREGROUND_COVERAGE = 0.01
"""...but at least this fraction of a class's voxels, so large structures are sampled everywhere."""


@dataclass(frozen=True)
class CaseProperties:
    """All that is needed to map a preprocessed case back to its original image.

    Tuples are ``(z, y, x)``; ``crop_box`` is half-open ``[start, stop)`` in original voxels. ``annotated``
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

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        geometry = self.original_geometry
        extra = {} if self.annotated is None else {"annotated": list(self.annotated)}
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
    """Crop to the nonzero region of all channels, normalise per channel, resample to the plan's spacing.

    Args:
        image: ``(C, Z, Y, X)`` float32, raw intensities; normalised in place when ``in_place`` (saves a copy
            of the volume on large scans), otherwise left untouched.
        labels: ``(Z, Y, X)`` uint8/uint16, or a ``(K, Z, Y, X)`` uint8 region target (each structure
            resampled on its own), or ``None`` for an unlabelled case.
        geometry: the image's geometry.
        config: the configuration to preprocess for.
        identifier, seed: seed the foreground sample (with the identifier, so it is order independent).
        annotated: the structure numbers contoured in the case (:attr:`CaseProperties.annotated`).
    """
    box = crop_box_of_nonzero(image)
    region = tuple(slice(a, b) for a, b in box)
    cropped = image[(slice(None), *region)]
    if not in_place or cropped.dtype != np.float32:
        cropped = np.array(cropped, dtype=np.float32)
    cropped_labels = None if labels is None else labels[..., region[0], region[1], region[2]]
    mask = np.any(cropped != 0, axis=0)
    normalise(cropped, config.normalization, mask)
    shape = target_shape(cropped.shape[1:], geometry.spacing_mm, config.spacing_mm)
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
        original_shape=_int3(image.shape[1:]),
        original_geometry=geometry,
        crop_box=box,
        cropped_shape=_int3(tuple(b - a for a, b in box)),
        spacing_mm=config.spacing_mm,
        preprocessed_shape=shape,
        classes_present=tuple(sorted(foreground)),
        annotated=annotated,
    )
    return PreprocessedCase(resampled, resampled_labels, properties, foreground)


def normalise(image: FloatVolume, schemes: Sequence[ChannelNormalization], nonzero: np.ndarray) -> None:
    """Normalise ``(C, Z, Y, X)`` float32 in place, channel by channel, as the plan says.

    ``nonzero`` is the ``(Z, Y, X)`` mask of voxels nonzero in any channel; with ``use_nonzero_mask`` the
    statistics come from inside it and the outside is set to 0.
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
        inside = channel[nonzero] if scheme.use_nonzero_mask else channel
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
    values = [k + 1 for k in range(len(labels)) if labels[k].any()] if region else np.unique(labels)
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
    grid (resample per class or structure, uncrop)."""
    restored = resample_target(labels, properties.cropped_shape, config.resampling)
    full = np.zeros((*labels.shape[:-3], *properties.original_shape), dtype=labels.dtype)
    (z0, z1), (y0, y1), (x0, x1) = properties.crop_box
    full[..., z0:z1, y0:y1, x0:x1] = restored
    return full


def restore_probabilities(
    probabilities: FloatVolume, properties: CaseProperties, *, regions: bool = False
) -> FloatVolume:
    """``(K, Z, Y, X)`` probabilities in preprocessed space -> the original grid; outside the crop box the
    background (class 0) has probability 1, or, for per-structure sigmoid probabilities (``regions``), every
    structure 0."""
    restored = resample_probabilities(probabilities, properties.cropped_shape)
    full = np.zeros((probabilities.shape[0], *properties.original_shape), dtype=np.float32)
    if not regions:
        full[0] = 1.0
    full[(slice(None), *(slice(a, b) for a, b in properties.crop_box))] = restored
    return full


def _int3(values: Sequence[Any]) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in values)
    return a, b, c


def _float3(values: Sequence[Any]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
