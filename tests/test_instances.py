"""Instance labelling: ids, volumes, centroids (index and LPS mm), watershed split, JSON, errors."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from autoseg.errors import UsageError
from autoseg.io import Geometry
from autoseg.postprocessing.instances import instances_to_json, label_instances, parse_class_selection

NAMES = {"background": 0, "lesion": 1, "cyst": 2}
ANISOTROPIC = Geometry((3.0, 0.8, 0.5), (10.0, -20.0, 5.0))


def balls(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    centres_mm: Sequence[tuple[float, float, float]],
    r: float,
) -> np.ndarray:
    """Union of balls of radius ``r`` mm at ``centres_mm`` ((z, y, x) mm from voxel 0), as a bool volume."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing_mm, strict=True)], indexing="ij")
    mask = np.zeros(shape, bool)
    for centre in centres_mm:
        mask |= sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= r * r
    return mask


def test_two_separate_blobs_get_ids_by_size_with_volumes_and_centroids() -> None:
    labels = np.zeros((8, 20, 30), np.uint8)
    labels[1:3, 2:6, 3:7] = 1  # 2 x 4 x 4 = 32 voxels
    labels[4:7, 10:16, 20:28] = 1  # 3 x 6 x 8 = 144 voxels
    result = label_instances(labels, [1], ANISOTROPIC, NAMES)
    assert result.instance_map.dtype == np.uint16
    assert [o.instance_id for o in result.objects] == [1, 2]
    big, small = result.objects
    voxel_mm3 = 3.0 * 0.8 * 0.5
    assert (big.voxels, small.voxels) == (144, 32)
    assert big.volume_mm3 == pytest.approx(144 * voxel_mm3)
    assert small.volume_ml == pytest.approx(32 * voxel_mm3 / 1000)
    assert big.centroid_index_zyx == pytest.approx((5.0, 12.5, 23.5))
    # identity direction: LPS x = origin_x + 0.5 * index_x, and so on; reported (x, y, z)
    assert big.centroid_lps_mm == pytest.approx((5.0 + 23.5 * 0.5, -20.0 + 12.5 * 0.8, 10.0 + 5.0 * 3.0))
    assert (big.bbox_start_zyx, big.bbox_stop_zyx) == ((4, 10, 20), (7, 16, 28))
    assert np.array_equal(result.instance_map == 2, labels.astype(bool) & (np.arange(30) < 10))


def test_diagonal_neighbours_are_separate_objects_as_in_the_fingerprint() -> None:
    labels = np.zeros((3, 3, 3), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 1
    assert len(label_instances(labels, [1], ANISOTROPIC, NAMES).objects) == 2


def test_ids_run_class_by_class_in_the_requested_order() -> None:
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[0, 0:2, 0:2] = 1
    labels[2, 5:9, 5:9] = 2
    labels[3, 0:1, 8:9] = 1
    result = label_instances(labels, [2, 1], ANISOTROPIC, NAMES)
    assert [(o.instance_id, o.class_name, o.voxels) for o in result.objects] == [
        (1, "cyst", 16),
        (2, "lesion", 4),
        (3, "lesion", 1),
    ]
    assert set(np.unique(result.instance_map[labels == 2])) == {1}


def test_touching_spheres_split_only_with_the_watershed_option() -> None:
    spacing = (2.0, 0.8, 0.8)
    centres = [(20.0, 20.0, 14.0), (20.0, 20.0, 26.0)]  # radius 7 mm, 12 mm apart: they overlap
    mask = balls((20, 50, 52), spacing, centres, 7.0)
    labels = mask.astype(np.uint8)
    geometry = Geometry(spacing, (0.0, 0.0, 0.0))
    assert len(label_instances(labels, [1], geometry, NAMES).objects) == 1
    result = label_instances(labels, [1], geometry, NAMES, split_touching=True)
    assert len(result.objects) == 2
    first, second = result.objects
    assert first.voxels == pytest.approx(second.voxels, rel=0.05)
    assert first.voxels + second.voxels == int(mask.sum())
    centre_ids = {int(result.instance_map[10, 25, round(c[2] / 0.8)]) for c in centres}
    assert centre_ids == {1, 2}  # each sphere's centre lies in a different instance


def test_watershed_keeps_single_convex_objects_whole() -> None:
    spacing = (2.0, 0.8, 0.8)
    labels = balls((16, 40, 40), spacing, [(16.0, 16.0, 16.0)], 9.0).astype(np.uint8)
    labels[2:5, 30:38, 2:38] = 2  # elongated box 6 x 6.4 x 28.8 mm: a flat ridge, one object
    result = label_instances(labels, [1, 2], Geometry(spacing, (0.0, 0.0, 0.0)), NAMES, split_touching=True)
    assert [o.class_name for o in result.objects] == ["lesion", "cyst"]


def test_empty_class_gives_zero_objects_and_a_zero_count() -> None:
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[1, 1, 1] = 1
    result = label_instances(labels, [1, 2], ANISOTROPIC, NAMES, split_touching=True)
    assert [o.class_name for o in result.objects] == ["lesion"]
    assert instances_to_json(result)["counts"] == {"lesion": 1, "cyst": 0}


def test_oblique_centroid_in_mm_matches_index_to_physical() -> None:
    angle = np.deg2rad(30.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    geometry = Geometry((2.5, 0.7, 0.9), (-40.0, 12.0, 3.0), tuple(float(v) for v in rotation.ravel()))
    labels = np.zeros((6, 12, 12), np.uint8)
    labels[2:5, 3:9, 4:6] = 1
    (only,) = label_instances(labels, [1], geometry, NAMES).objects
    z, y, x = geometry.index_to_physical(only.centroid_index_zyx)
    assert only.centroid_lps_mm == pytest.approx((x, y, z))
    assert only.centroid_index_zyx == pytest.approx((3.0, 5.5, 4.5))


def test_json_is_strict_json_with_counts_and_objects() -> None:
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 2
    data = instances_to_json(label_instances(labels, [2], ANISOTROPIC, NAMES))
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["counts"] == {"cyst": 1}
    (item,) = data["objects"]
    assert item["instance_id"] == 1 and item["class_id"] == 2 and item["class_name"] == "cyst"
    assert item["voxels"] == 8 and item["volume_ml"] == pytest.approx(8 * 1.2 / 1000)
    assert set(item["centroid_lps_mm"]) == {"x", "y", "z"}
    assert item["bbox_index_zyx"] == {"start": [0, 0, 0], "stop": [2, 2, 2]}
    assert data["split_touching"] is False and data["min_distance_mm"] is None


@pytest.mark.parametrize("class_ids", [[3], [0], [1, 7]])
def test_unknown_or_background_class_ids_are_refused_with_the_known_classes(class_ids: list[int]) -> None:
    with pytest.raises(UsageError, match=r"1 \(lesion\), 2 \(cyst\)"):
        label_instances(np.zeros((2, 2, 2), np.uint8), class_ids, ANISOTROPIC, NAMES)


def test_non_positive_min_distance_is_refused() -> None:
    with pytest.raises(UsageError, match="min_distance_mm"):
        label_instances(
            np.zeros((2, 2, 2), np.uint8), [1], ANISOTROPIC, NAMES, split_touching=True, min_distance_mm=0
        )


def test_class_selection_by_name_value_or_all() -> None:
    assert parse_class_selection("cyst, 1", NAMES) == [2, 1]
    assert parse_class_selection("all", NAMES) == [1, 2]
    assert parse_class_selection(["cyst", "1,2"], NAMES) == [2, 1]
    for bad in ("tumour", "0", "", "3"):
        with pytest.raises(UsageError, match="choose from"):
            parse_class_selection(bad, NAMES)


def test_overlapping_structures_get_a_4d_instance_map_one_channel_per_structure() -> None:
    """A region target: two GTV objects inside one CTV; ids unique across the channels, each object names
    its structure and channel."""
    target = np.zeros((2, 8, 20, 30), np.uint8)
    target[1, 1:7, 1:19, 1:29] = 1  # CTV: one object
    target[0, 2:4, 3:7, 3:7] = 1  # GTV 1: 32 voxels
    target[0, 2:5, 10:16, 20:26] = 1  # GTV 2: 108 voxels
    names = {"background": 0, "GTV": 1, "CTV": 2}
    result = label_instances(target, [2, 1], ANISOTROPIC, names)
    assert result.instance_map.shape == (2, 8, 20, 30) and result.instance_map.dtype == np.uint16
    assert [(o.instance_id, o.class_name, o.channel) for o in result.objects] == [
        (1, "CTV", 0),
        (2, "GTV", 1),
        (3, "GTV", 1),
    ]
    assert [o.voxels for o in result.objects] == [6 * 18 * 28, 108, 32]
    assert np.array_equal(result.instance_map[0] > 0, target[1] > 0)
    assert set(np.unique(result.instance_map[1])) == {0, 2, 3}
    data = instances_to_json(result)
    assert data["channels"] == ["CTV", "GTV"] and data["counts"] == {"CTV": 1, "GTV": 2}
    assert [o["channel"] for o in data["objects"]] == [0, 1, 1]
    label_map = label_instances(np.zeros((4, 4, 4), np.uint8), [1], ANISOTROPIC, names)
    assert "channels" not in instances_to_json(label_map)  # label maps: the 3D layout, unchanged
