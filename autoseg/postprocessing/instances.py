"""Instance labelling: one id per separate object of the requested classes (``autoseg predict --instances``).

A semantic label map says *what* each voxel is; an instance map says *which object* it belongs to, so that
"3 lesions of 0.4, 1.2 and 7.9 ml" can be read off a case. Objects are the connected components of each
class, with face connectivity (6 neighbours), the same rule as the fingerprint (:data:`CONNECTIVITY`).

Touching objects (``split_touching=True``): two round lesions that touch form one connected component. The
optional watershed split cuts such a component along the "neck" between round parts:

1. Euclidean distance to the class boundary, in millimetres (the spacing is used, so anisotropic voxels are
   handled);
2. seeds at the maxima of that distance that stand at least :data:`NECK_DEPTH_MM` above the neck joining them
   to a deeper maximum (:func:`skimage.morphology.h_maxima`; a plateau or ridge is one maximum), and at least
   ``min_distance_mm`` apart (millimetres, not voxels; the deeper seed wins). ``peak_local_max`` was tried
   first: it returns every voxel of the flat ridge of an elongated object as a peak (54 on a 6 x 8 x 28 mm
   box), and even 5 mm apart those seeds cut the box into four;
3. :func:`skimage.segmentation.watershed` of the negated distance from those seeds, restricted to the class
   mask.

It helps for blob-like objects that touch through a narrow neck (metastases, nodules, cells, follicles). Its
limits: it cannot separate heavily overlapping objects whose neck is less than 1 mm thinner than they are
(two spheres of 10 mm diameter stay one object with centres 4.5 mm apart, and split at 6 mm, measured on
0.5 mm and 2 x 0.8 x 0.8 mm voxels), it may cut one elongated or irregular object (a vessel, a bowel loop,
a dumbbell-shaped lesion) into several, and objects whose centres are closer than ``min_distance_mm`` stay
merged. Leave it off for organs.

Instance ids are consecutive from 1, class by class in the order of ``class_ids`` and, within a class, from
the largest object to the smallest (ties in array order), so that "instance 1" is the largest object of the
first class.

Overlapping structures (a region target, :mod:`autoseg.regions`): the objects of each selected structure are
the components of its own mask, so a GTV inside its CTV is an object of both. One label volume cannot hold
two objects in one voxel, so the instance map of a region target is 4D: ``(S, Z, Y, X)`` uint16, channel
``c`` the instance ids of the ``c``-th selected structure (ids stay unique across channels), and every
object records its ``channel``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autoseg.errors import UsageError
from autoseg.fingerprint import CONNECTIVITY
from autoseg.io import Geometry
from autoseg.regions import crop, is_region_target, structure_boxes, structure_mask
from autoseg.types import BoolVolume, TargetVolume

logger = logging.getLogger(__name__)

INSTANCES_SCHEMA_VERSION = 1
DEFAULT_MIN_DISTANCE_MM = 5.0
"""Seeds of the watershed split closer than this (mm) merge: objects of radius below ~2.5 mm stay whole."""
NECK_DEPTH_MM = 1.0
"""A distance maximum seeds the watershed only if it stands this much (mm) above the neck to a deeper one."""
MAX_INSTANCES = 65535
"""The instance map is uint16 (what :func:`autoseg.io.write_labels` can store)."""
COORDINATE_FRAME = (
    "LPS mm (DICOM patient frame): +x patient left, +y posterior, +z superior; RAS = (-x, -y, z)"
)

InstanceMap = npt.NDArray[np.uint16]
"""``(Z, Y, X)`` uint16 instance ids, 0 = no object (``(S, Z, Y, X)``, one channel per selected structure, for
a region target)."""


@dataclass(frozen=True)
class InstanceObject:
    """One object.

    Attributes:
        instance_id: its value in the instance map (1, 2, ...).
        class_id: label value of its class.
        class_name: name of its class (from ``dataset.json``).
        voxels: voxel count.
        volume_mm3: voxel count times the voxel volume, mm³ (``volume_ml`` = mm³ / 1000).
        centroid_index_zyx: mean array index ``(z, y, x)``, fractional voxels.
        centroid_lps_mm: the same point in the patient frame, ``(x, y, z)`` LPS millimetres, the order a human
            reads (the reverse of :meth:`Geometry.index_to_physical`, which returns ``(z, y, x)``).
        bbox_start_zyx: first voxel of the bounding box, inclusive.
        bbox_stop_zyx: end of the bounding box, exclusive (half-open, as ``crop_box`` in the fingerprint).
        channel: its channel of a 4D instance map (region target); None for a 3D one.
    """

    instance_id: int
    class_id: int
    class_name: str
    voxels: int
    volume_mm3: float
    centroid_index_zyx: tuple[float, float, float]
    centroid_lps_mm: tuple[float, float, float]
    bbox_start_zyx: tuple[int, int, int]
    bbox_stop_zyx: tuple[int, int, int]
    channel: int | None = None

    @property
    def volume_ml(self) -> float:
        """Volume in millilitres (cm³)."""
        return self.volume_mm3 / 1000.0


@dataclass(frozen=True)
class InstanceResult:
    """Instance map plus one record per object.

    Attributes:
        instance_map: ``(Z, Y, X)`` uint16, 0 = no object, or ``(S, Z, Y, X)`` for a region target (channel
            ``c`` = structure ``class_ids[c]``); write it with the case's geometry.
        objects: records in instance id order.
        class_ids: the classes that were labelled, in the order given.
        class_names: label value -> name, for the classes that were labelled.
        split_touching: whether the watershed split was applied.
        min_distance_mm: the seed distance of the split (None when not split).
    """

    instance_map: InstanceMap
    objects: tuple[InstanceObject, ...]
    class_ids: tuple[int, ...]
    class_names: dict[int, str]
    split_touching: bool
    min_distance_mm: float | None


def parse_class_selection(text: str | Sequence[str], label_names: Mapping[str, int]) -> list[int]:
    """Class values from a command-line list such as ``"1,3"``, ``"lesion,cyst"`` or ``"all"``.

    Args:
        text: comma-separated class names or label values, or a sequence of such strings (e.g. the items of
            ``--instances lesion cyst``); ``"all"`` selects every foreground class.
        label_names: name -> label value, as in ``dataset.json`` (background 0 included or not).

    Raises:
        UsageError: an empty list, background, or a name / value that is not a class.
    """
    foreground = {name: value for name, value in label_names.items() if value != 0}
    known = _known({value: name for name, value in foreground.items()})
    text = text if isinstance(text, str) else ",".join(text)
    if text.strip().lower() == "all":
        return sorted(foreground.values())
    chosen: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        value = foreground.get(item)
        if value is None and item.isdigit():
            value = int(item)
        if value is None or value not in foreground.values():
            raise UsageError(f"--instances: {item!r} is not a foreground class; choose from {known}")
        if value not in chosen:
            chosen.append(value)
    if not chosen:
        raise UsageError(f"--instances: no class given; choose from {known} or 'all'")
    return chosen


def label_instances(
    labels: TargetVolume,
    class_ids: Sequence[int],
    geometry: Geometry,
    label_names: Mapping[str, int],
    *,
    split_touching: bool = False,
    min_distance_mm: float = DEFAULT_MIN_DISTANCE_MM,
) -> InstanceResult:
    """Give each separate object of the requested classes its own id.

    Args:
        labels: ``(Z, Y, X)`` uint8/uint16 label map (a prediction), or a ``(K, Z, Y, X)`` region target
            (structures that may overlap; the instance map is then 4D, see the module docstring).
        class_ids: label values to split into objects; a class absent from ``labels`` gives 0 objects.
        geometry: the label map's geometry (spacing for volumes and distances, frame for centroids).
        label_names: name -> label value, as in ``dataset.json``.
        split_touching: also cut touching round objects apart with a watershed (see the module docstring).
        min_distance_mm: smallest distance between watershed seeds, mm; only used with ``split_touching``.

    Returns:
        The uint16 instance map and one :class:`InstanceObject` per object.

    Raises:
        UsageError: a label map that is not 3D (or 4D masks), a class id that is background or not in
            ``label_names``, a non-positive ``min_distance_mm``, or more than 65535 objects.
    """
    regions = is_region_target(labels)
    if labels.ndim != 3 and not regions:
        raise UsageError(f"instances: expected a (Z, Y, X) label map, got shape {labels.shape}")
    names = {value: name for name, value in label_names.items() if value != 0}
    unknown = [c for c in class_ids if c not in names]
    if unknown:
        raise UsageError(
            f"instances: class id(s) {unknown} are not foreground classes; choose from {_known(names)}"
        )
    if split_touching and not min_distance_mm > 0:
        raise UsageError(f"instances: min_distance_mm must be positive, got {min_distance_mm}")
    ordered = tuple(dict.fromkeys(int(c) for c in class_ids))
    shape = labels.shape[-3:]
    instance_map: InstanceMap = np.zeros((len(ordered), *shape) if regions else shape, np.uint16)
    layers = list(instance_map) if regions else [instance_map] * len(ordered)
    boxes = structure_boxes(labels, ordered)
    instance_classes: list[int] = []
    for class_id, layer in zip(ordered, layers, strict=True):
        region = boxes.get(class_id)
        if region is None:
            continue  # class absent from this prediction: no objects
        mask = structure_mask(crop(labels, region), class_id)
        components = _class_components(mask, geometry.spacing_mm, split_touching, min_distance_mm)
        _check_count(len(instance_classes), int(components.max()), names[class_id])
        inside = components > 0
        layer[region][inside] = components[inside] + len(instance_classes)
        instance_classes += [class_id] * int(components.max())
    return InstanceResult(
        instance_map=instance_map,
        objects=_describe(
            layers if regions else [instance_map], instance_classes, names, geometry, channels=regions
        ),
        class_ids=ordered,
        class_names={c: names[c] for c in ordered},
        split_touching=split_touching,
        min_distance_mm=min_distance_mm if split_touching else None,
    )


def _check_count(found: int, count: int, name: str) -> None:
    if found + count > MAX_INSTANCES:
        raise UsageError(
            f"instances: over {MAX_INSTANCES} objects (class {name!r} alone has {count}); "
            "the prediction is probably noise: post-process it or choose fewer classes"
        )


def instances_to_json(result: InstanceResult) -> dict[str, Any]:
    """JSON-compatible summary for ``<case>_instances.json``: object counts per class name and every object.

    Coordinates: ``centroid_index_zyx`` is the fractional array index; ``centroid_lps_mm`` has named keys
    ``x``, ``y``, ``z`` in the LPS patient frame (see ``coordinate_frame`` in the output); bounding boxes are
    half-open ``[start, stop)`` array indices ``(z, y, x)``.
    """
    counts = {result.class_names[c]: 0 for c in result.class_ids}
    for item in result.objects:
        counts[item.class_name] += 1
    return {
        "schema_version": INSTANCES_SCHEMA_VERSION,
        "coordinate_frame": COORDINATE_FRAME,
        "connectivity": "face (6 neighbours)",
        "split_touching": result.split_touching,
        "min_distance_mm": result.min_distance_mm,
        "counts": counts,
        **_layout_json(result),
        "objects": [_object_json(item) for item in result.objects],
    }


def _layout_json(result: InstanceResult) -> dict[str, Any]:
    """For a 4D instance map (region target) only: which structure each channel holds."""
    if result.instance_map.ndim != 4:
        return {}
    return {
        "instance_map": "4D: channel c (NIfTI 4th axis) holds the instance ids of structure channels[c]",
        "channels": [result.class_names[c] for c in result.class_ids],
    }


# ------------------------------------------------------------------------------------------- internals


def _known(names: Mapping[int, str]) -> str:
    return ", ".join(f"{value} ({name})" for value, name in sorted(names.items())) or "none"


def _class_components(
    mask: BoolVolume, spacing_mm: tuple[float, float, float], split_touching: bool, min_distance_mm: float
) -> npt.NDArray[np.int32]:
    """Objects of one class mask as ``(Z, Y, X)`` int32 ids 1..n, largest first."""
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY)
    components = np.zeros(mask.shape, np.int32)
    count = ndimage.label(mask, structure=structure, output=components)
    if split_touching and count:
        components = _split_touching(mask, components, spacing_mm, min_distance_mm)
    sizes = np.bincount(components.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")  # ties keep array order
    lookup = np.zeros(sizes.size + 1, np.int32)
    lookup[order + 1] = np.arange(1, sizes.size + 1, dtype=np.int32)
    result: npt.NDArray[np.int32] = lookup[components]
    return result


def _split_touching(
    mask: BoolVolume,
    components: npt.NDArray[np.int32],
    spacing_mm: tuple[float, float, float],
    min_distance_mm: float,
) -> npt.NDArray[np.int32]:
    """Watershed of the mm distance map from its deep maxima, ``min_distance_mm`` apart within a component."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    padded = np.pad(mask, 1)  # the crop touches the mask: background must lie beyond it for the distance
    distance = ndimage.distance_transform_edt(padded, sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    tops = h_maxima(distance, NECK_DEPTH_MM) > 0  # type: ignore[no-untyped-call]  # skimage: no annotations
    markers, count = ndimage.label(tops & mask, structure=np.ones((3, 3, 3), bool))
    if count > 1:
        markers = _drop_close_markers(markers, count, distance, components, spacing_mm, min_distance_mm)
    flooded = watershed(-distance, markers, mask=mask, connectivity=1)  # type: ignore[no-untyped-call]
    regions = np.asarray(flooded, np.int32)
    leftover = mask & (regions == 0)  # a component without a deep enough maximum: keep it whole
    if leftover.any():
        extra, _ = ndimage.label(leftover, structure=ndimage.generate_binary_structure(3, CONNECTIVITY))
        regions[leftover] = extra[leftover] + regions.max()
    return regions


def _drop_close_markers(
    markers: npt.NDArray[np.int32],
    count: int,
    distance: npt.NDArray[np.float64],
    components: npt.NDArray[np.int32],
    spacing_mm: tuple[float, float, float],
    min_distance_mm: float,
) -> npt.NDArray[np.int32]:
    """Markers, deepest first, less those within ``min_distance_mm`` of a kept one of the same component."""
    index = np.arange(1, count + 1)
    peaks = np.asarray(ndimage.maximum_position(distance, markers, index), np.int64).reshape(-1, 3)
    depth = distance[tuple(peaks.T)]
    owner = components[tuple(peaks.T)]
    position_mm = peaks * np.asarray(spacing_mm)
    kept: list[int] = []
    for marker in np.argsort(-depth, kind="stable"):
        same = [k for k in kept if owner[k] == owner[marker]]
        if not np.any(np.linalg.norm(position_mm[same] - position_mm[marker], axis=1) < min_distance_mm):
            kept.append(int(marker))
    lookup = np.zeros(count + 1, np.int32)
    lookup[np.asarray(kept) + 1] = np.arange(1, len(kept) + 1, dtype=np.int32)
    result: npt.NDArray[np.int32] = lookup[markers]
    return result


def _describe(
    layers: Sequence[InstanceMap],
    instance_classes: Sequence[int],
    names: Mapping[int, str],
    geometry: Geometry,
    *,
    channels: bool,
) -> tuple[InstanceObject, ...]:
    """One record per object, in id order; ``layers``: the 3D instance map, or (``channels``) each channel
    of a 4D one."""
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    found: dict[int, tuple[int, tuple[slice, ...]]] = {}
    for channel, layer in enumerate(layers):
        for offset, region in enumerate(ndimage.find_objects(layer)[: len(instance_classes)]):
            if region is not None:
                found[offset] = (channel, region)
    objects = []
    for offset in range(len(instance_classes)):
        channel, region = found[offset]  # instance ids are consecutive
        start = np.array([s.start for s in region])
        inside = np.nonzero(layers[channel][region] == offset + 1)
        centroid = np.array([axis.mean() for axis in inside]) + start
        z, y, x = (float(v) for v in geometry.index_to_physical(centroid))
        objects.append(
            InstanceObject(
                instance_id=offset + 1,
                class_id=instance_classes[offset],
                class_name=names[instance_classes[offset]],
                voxels=len(inside[0]),
                volume_mm3=len(inside[0]) * voxel_mm3,
                centroid_index_zyx=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                centroid_lps_mm=(x, y, z),
                bbox_start_zyx=(int(start[0]), int(start[1]), int(start[2])),
                bbox_stop_zyx=(region[0].stop, region[1].stop, region[2].stop),
                channel=channel if channels else None,
            )
        )
    return tuple(objects)


def _object_json(item: InstanceObject) -> dict[str, Any]:
    x, y, z = item.centroid_lps_mm
    return {
        "instance_id": item.instance_id,
        "class_id": item.class_id,
        "class_name": item.class_name,
        "voxels": item.voxels,
        "volume_mm3": round(item.volume_mm3, 3),
        "volume_ml": round(item.volume_ml, 6),
        "centroid_index_zyx": [round(v, 3) for v in item.centroid_index_zyx],
        "centroid_lps_mm": {"x": round(x, 3), "y": round(y, 3), "z": round(z, 3)},
        "bbox_index_zyx": {"start": list(item.bbox_start_zyx), "stop": list(item.bbox_stop_zyx)},
        **({} if item.channel is None else {"channel": item.channel}),
    }
