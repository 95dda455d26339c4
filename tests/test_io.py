"""IO round trips: geometry and voxels survive read -> write -> read in every format and orientation."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import ImageReadError, ImageWriteError
from autoseg.io import (
    Geometry,
    atomic_target,
    grid_mismatch,
    read_array,
    read_header,
    read_image,
    read_labels,
    read_probabilities,
    write_bytes_atomically,
    write_image,
    write_json,
    write_labels,
    write_probabilities,
    write_text_atomically,
)


def _rotation(angle_deg: float, axis: int) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# NIfTI affines (RAS+ world, nibabel convention) for the orientations a scanner produces.
AFFINES = {
    "RAS": np.diag([0.8, 0.9, 2.5, 1.0]),
    "LPS": np.diag([-0.8, -0.9, 2.5, 1.0]),
    "flipped": np.diag([0.8, -0.9, -2.5, 1.0]),
    "oblique": np.block(
        [
            [_rotation(17.0, 0) @ _rotation(-9.0, 2) @ np.diag([0.8, 0.9, 2.5]), np.zeros((3, 1))],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    ),
}
for _affine in AFFINES.values():
    _affine[:3, 3] = (-91.5, 12.25, 40.0)

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _volume(dtype: type, rng: np.random.Generator) -> np.ndarray:
    data = rng.normal(100.0, 50.0, size=(7, 6, 5))  # nibabel order (i, j, k), non-cubic on purpose
    return data.astype(dtype) if np.issubdtype(dtype, np.floating) else np.round(data).astype(dtype)


@pytest.mark.parametrize("orientation", sorted(AFFINES))
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_nifti_written_by_nibabel_round_trips(
    tmp_path: Path, rng: np.random.Generator, orientation: str, dtype: type
) -> None:
    affine = AFFINES[orientation]
    data = _volume(dtype, rng)
    source = tmp_path / "source.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), source)
    array, geometry = read_array(source)
    assert array.shape == data.shape[::-1]  # (Z, Y, X)
    np.testing.assert_array_equal(array, data.transpose(2, 1, 0))
    copy = tmp_path / "copy.nii.gz"
    write_image(array, geometry, copy)
    back: Any = nib.load(copy)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    assert back.get_data_dtype() == np.dtype(dtype)
    assert geometry.orientation_code() == "".join(nib.aff2axcodes(affine))


@pytest.mark.parametrize("orientation", sorted(AFFINES))
@pytest.mark.parametrize("ending", ENDINGS)
def test_every_format_round_trips_geometry_and_voxels(
    tmp_path: Path, rng: np.random.Generator, orientation: str, ending: str
) -> None:
    source = tmp_path / "source.nii.gz"
    nib.save(nib.Nifti1Image(_volume(np.int16, rng), AFFINES[orientation]), source)
    array, geometry = read_array(source)
    first = tmp_path / f"first{ending}"
    write_image(array, geometry, first)
    array_1, geometry_1 = read_array(first)
    second = tmp_path / f"second{ending}"
    write_image(array_1, geometry_1, second)
    array_2, geometry_2 = read_array(second)
    for other in (geometry_1, geometry_2):
        np.testing.assert_allclose(other.spacing_mm, geometry.spacing_mm, rtol=1e-6)
        np.testing.assert_allclose(other.origin_mm, geometry.origin_mm, atol=1e-4)
        np.testing.assert_allclose(other.direction, geometry.direction, atol=1e-6)
    np.testing.assert_array_equal(array_1, array)
    np.testing.assert_array_equal(array_2, array)
    assert array_2.dtype == array.dtype


def test_geometry_matches_simpleitk_physical_points(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(_volume(np.int16, rng), AFFINES["oblique"]), path)
    _, geometry = read_array(path)
    image = sitk.ReadImage(str(path))
    for index_xyz in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (0, 0, 4), (3, 2, 1)]:
        expected_xyz = image.TransformIndexToPhysicalPoint(index_xyz)
        got_zyx = geometry.index_to_physical(index_xyz[::-1])
        np.testing.assert_allclose(got_zyx[::-1], expected_xyz, atol=1e-5)


def test_header_read_without_voxels(tmp_path: Path) -> None:
    geometry = Geometry((2.5, 0.75, 0.5), (10.0, -20.0, 30.0))
    path = tmp_path / "a.nrrd"
    write_image(np.zeros((3, 4, 5), np.float32), geometry, path)
    info = read_header(path)
    assert info.shape == (3, 4, 5)
    assert info.dtype == "float32"
    assert info.geometry == geometry
    assert info.components == 1


def test_read_image_stacks_channels_and_rejects_mismatch(tmp_path: Path) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_image(np.ones((3, 4, 5), np.int16), geometry, tmp_path / "c0.nii.gz")
    write_image(np.full((3, 4, 5), 2.5, np.float32), geometry, tmp_path / "c1.nii.gz")
    image, read_geometry = read_image([tmp_path / "c0.nii.gz", tmp_path / "c1.nii.gz"])
    assert image.shape == (2, 3, 4, 5)
    assert image.dtype == np.float32
    assert read_geometry == geometry
    write_image(
        np.ones((3, 4, 5), np.int16), Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), tmp_path / "c2.nii.gz"
    )
    with pytest.raises(ImageReadError, match=r"c2\.nii\.gz: geometry differs .*spacing"):
        read_image([tmp_path / "c0.nii.gz", tmp_path / "c2.nii.gz"])


def test_labels_are_converted_to_unsigned_and_checked(tmp_path: Path) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_image(np.array([[[0, 1], [2, 300]]], np.float32), geometry, tmp_path / "float.nii.gz")
    labels, _ = read_labels(tmp_path / "float.nii.gz")
    assert labels.dtype == np.uint16
    assert labels.tolist() == [[[0, 1], [2, 300]]]
    write_image(np.array([[[0, 1.5]]], np.float32), geometry, tmp_path / "half.nii.gz")
    with pytest.raises(
        ImageReadError, match=r"half\.nii\.gz: label map has non-integer values \(e\.g\. 1\.5\)"
    ):
        read_labels(tmp_path / "half.nii.gz")
    write_image(np.array([[[0, -1]]], np.int16), geometry, tmp_path / "negative.nii.gz")
    with pytest.raises(ImageReadError, match="negative value -1"):
        read_labels(tmp_path / "negative.nii.gz")
    write_labels(np.array([[[0, 1]]], np.uint8), geometry, tmp_path / "ok.mha")
    assert read_labels(tmp_path / "ok.mha")[0].dtype == np.uint8


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"missing\.nii\.gz: file does not exist"):
        read_array(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match=r"notes\.txt: unsupported file type"):
        read_array(tmp_path / "notes.txt")
    good = tmp_path / "good.nii.gz"
    write_image(np.zeros((8, 8, 8), np.float32), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), good)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match=r"truncated\.nii\.gz: cannot read"):
        read_array(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(ImageReadError, match=r"garbage\.nii\.gz: cannot read"):
        read_array(garbage)


def test_4d_file_is_refused_where_3d_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), path)
    assert read_array(path)[0].shape == (2, 4, 4, 4)
    with pytest.raises(ImageReadError, match=r"four\.nii\.gz: is 4D .* expected a 3D volume"):
        read_image([path])


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_image(np.zeros((2, 2, 2), np.int16), geometry, tmp_path / "out" / "a.mhd")
    write_json({"b": 1, "a": [1, 2]}, tmp_path / "out" / "x.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mhd", "a.raw", "x.json"]
    with pytest.raises(ImageWriteError, match=r"b\.png: unsupported file type"):
        write_image(np.zeros((2, 2, 2), np.int16), geometry, tmp_path / "out" / "b.png")
    with pytest.raises(ImageWriteError, match="expected a \\(Z, Y, X\\) array"):
        write_image(np.zeros((2, 2), np.int16), geometry, tmp_path / "out" / "c.nii.gz")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mhd", "a.raw", "x.json"]


def _fail_after_writing(real: Any) -> Any:
    """A writer that writes half of its file, then fails (a full disk, a killed process)."""

    def failing(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        raise OSError("No space left on device")

    return failing


def test_a_failed_write_leaves_neither_the_target_nor_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_target(folder / "a.bin") as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(folder.iterdir()) == []
    monkeypatch.setattr("os.fsync", _fail_after_writing(lambda fd: None))
    with pytest.raises(ImageWriteError):
        write_bytes_atomically(b"data", folder / "b.png")
    with pytest.raises(ImageWriteError):
        write_text_atomically("text", folder / "c.md")
    with pytest.raises(ImageWriteError):
        write_json({"a": 1}, folder / "d.json")
    monkeypatch.undo()
    monkeypatch.setattr("numpy.savez_compressed", _fail_after_writing(np.savez_compressed))
    with pytest.raises(ImageWriteError):
        write_probabilities(np.ones((2, 3, 4, 5), np.float32), folder / "e.npz")
    monkeypatch.setattr("SimpleITK.WriteImage", _fail_after_writing(sitk.WriteImage))
    with pytest.raises(ImageWriteError):
        write_labels(
            np.ones((3, 4, 5), np.uint8), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), folder / "f.mhd"
        )
    assert list(folder.iterdir()) == []


def test_atomic_writes_land_whole_with_their_companions(tmp_path: Path) -> None:
    geometry = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_labels(np.ones((3, 4, 5), np.uint8), geometry, tmp_path / "a.mhd")  # header + data file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mhd", "a.raw"]
    np.testing.assert_array_equal(read_labels(tmp_path / "a.mhd")[0], 1)
    write_text_atomically("one\n", tmp_path / "b.md")
    write_text_atomically("two\n", tmp_path / "b.md")  # replaces
    assert (tmp_path / "b.md").read_text() == "two\n"


def test_probabilities_round_trip_with_and_without_class_names(tmp_path: Path) -> None:
    probabilities = np.random.default_rng(0).random((3, 2, 3, 4)).astype(np.float32)
    write_probabilities(probabilities, tmp_path / "a.npz")
    write_probabilities(probabilities, tmp_path / "b.npz", class_names=["background", "x", "y"])
    for name in ("a.npz", "b.npz"):
        read = read_probabilities(tmp_path / name)
        assert read.dtype == np.float32
        np.testing.assert_array_equal(read, probabilities.astype(np.float16).astype(np.float32))
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert list(a) == ["probabilities"] and list(b["labels"]) == ["background", "x", "y"]


def test_grid_mismatch_is_the_one_same_grid_check() -> None:
    geometry = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert grid_mismatch((1, 3, 4, 5), geometry, (3, 4, 5), geometry, "ref") is None
    assert grid_mismatch((3, 4, 6), geometry, (3, 4, 5), geometry, "ref") == (
        "shape (3, 4, 6) differs from ref (3, 4, 5)"
    )
    moved = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 5.0))
    assert (grid_mismatch((3, 4, 5), moved, (3, 4, 5), geometry, "ref") or "").startswith(
        "geometry differs from ref: origin (0, 0, 5) vs (0, 0, 0)"
    )


def test_atomic_folder_replaces_whole_or_leaves_the_old_folder(tmp_path: Path) -> None:
    from autoseg.io import atomic_folder

    target = tmp_path / "case"
    with atomic_folder(target) as scratch:
        (scratch / "a.txt").write_text("old")
    assert (target / "a.txt").read_text() == "old"
    with pytest.raises(RuntimeError), atomic_folder(target) as scratch:
        (scratch / "a.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "old"  # the old folder stays whole
    with atomic_folder(target) as scratch:
        (scratch / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]  # no scratch or stale folder left


def test_a_nifti_with_header_extensions_is_read(tmp_path: Path) -> None:
    """The raw voxel-size check reads the header's bytes alone (a file with extensions, as dcm2niix and
    TotalSegmentator write, once failed with 'failed to read extension content')."""
    from autoseg.io import read_header

    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([0.8, 0.9, 2.5, 1.0]))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"written by a scanner" * 20))
    path = tmp_path / "with_extension.nii.gz"
    nib.save(image, path)
    assert read_header(path).geometry.spacing_mm == pytest.approx((2.5, 0.9, 0.8))
