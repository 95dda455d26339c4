"""``autoseg predict`` and model files under bad inputs (issue 16, points 2, 3 and 5): every per-case problem
is one line naming the file, the case is skipped and the others go on, nothing partial lands under a final
name, earlier outputs stay intact, structures far outside the training reference are flagged.

Each test here fails on the code before the fix it covers (docs/reliability.md, 'Bad inputs: predict and
model files', tables them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import tiny_case

from autoseg.cli.main import main
from autoseg.errors import ImageReadError, ImageWriteError, MemoryLimitError, ModelError, UsageError
from autoseg.inference.inputs import (
    CaseHeader,
    InputCase,
    check_case_memory,
    estimate_peak_bytes,
    replace_non_finite,
)
from autoseg.inference.model_file import load_model
from autoseg.io import Geometry, prepare_output_folder, read_header, read_labels, write_image, write_labels
from autoseg.report.structures import structure_table

GEOMETRY = Geometry((3.0, 0.8, 0.8), (0.0, 0.0, 0.0))


def _predict(inputs: Path, out: Path, model: Path, *extra: str) -> int:
    return main(
        ["predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "-q", "--preset", "fast", *extra]
    )


def _with_air(volume: np.ndarray) -> np.ndarray:
    """A copy with one row of air (-1000 HU) per slice: the tiny CT model's inputs then pass its modality
    check (``--strict`` refuses a "CT" without air)."""
    copy = volume.copy()
    copy[:, 0, :] = -1000.0
    return copy


def _two_cases(folder: Path, rng: np.random.Generator, bad: np.ndarray | None = None) -> None:
    """``good_0000.nii.gz`` and, unless ``bad`` is None, ``bad_0000.nii.gz`` holding ``bad``."""
    image, _, geometry = tiny_case(rng)
    write_image(_with_air(image[0]), geometry, folder / "good_0000.nii.gz")
    if bad is not None:
        write_image(bad, geometry, folder / "bad_0000.nii.gz")


def _record(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "predict.json").read_text())
    return data


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err


# ------------------------------------------------------------------------------------------- writes


def _writes_nothing(image: sitk.Image, path: str, *args: Any) -> None:
    Path(path).write_bytes(b"")  # what SimpleITK leaves on a full disk, without an error


def _writes_half(image: sitk.Image, path: str, *args: Any) -> None:
    real_write(image, path, *args)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


real_write = sitk.WriteImage


@pytest.mark.parametrize("writer", [_writes_nothing, _writes_half], ids=["empty", "truncated"])
@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii", "a.nrrd"])
def test_a_writer_that_ignores_a_full_disk_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: Any, name: str
) -> None:
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[2:4, 2:6, 2:6] = 1
    target = tmp_path / name
    write_labels(labels, GEOMETRY, target)
    before = target.read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", writer)
    with pytest.raises(ImageWriteError, match=str(target)):
        write_labels(labels * 2, GEOMETRY, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_full_disk_during_predict_keeps_the_earlier_prediction_and_exits_1(
    trained_workdir: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _two_cases(tmp_path / "in", rng)
    out = tmp_path / "out"
    assert _predict(tmp_path / "in", out, trained_workdir) == 0
    before = (out / "good.nii.gz").read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", _writes_nothing)
    assert _predict(tmp_path / "in", out, trained_workdir) == 1
    err = capsys.readouterr().err
    assert f"{out / 'good.nii.gz'}: " in err and "disk full" in err  # the final name, not the scratch one
    _no_traceback(err)
    assert (out / "good.nii.gz").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_case_whose_second_output_fails_leaves_no_file_and_the_earlier_ones_intact(
    trained_workdir: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _two_cases(tmp_path / "in", rng)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "good.nii.gz").write_bytes(b"an earlier output")

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    from autoseg.io import ProbabilityStream

    monkeypatch.setattr(ProbabilityStream, "write", full_disk)  # the probabilities are streamed (17.2)
    assert _predict(tmp_path / "in", out, trained_workdir, "--save-probabilities") == 1
    err = capsys.readouterr().err
    assert f"{out / 'good_probabilities.npz'}: cannot write (No space left on device)" in err
    _no_traceback(err)
    assert (out / "good.nii.gz").read_bytes() == b"an earlier output"  # not replaced by half a case
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "predict.json"]


# ------------------------------------------------------------------------------------------- output folder


def test_an_unusable_output_folder_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_file").write_text("x")
    missing_model = tmp_path / "no_model"  # loading it would fail: the output check must come first
    for out, code in ((tmp_path / "a_file", 2), (tmp_path / "a_file" / "under", 2)):
        assert _predict(tmp_path, out, missing_model) == code
        err = capsys.readouterr().err
        assert str(out) in err and "output folder" in err and "no_model" not in err
        _no_traceback(err)


def test_a_full_or_read_only_output_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", no_space)
        with pytest.raises(ImageWriteError, match="No space left on device"):
            prepare_output_folder(tmp_path / "full")

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(ImageWriteError, match="Read-only file system"):
        prepare_output_folder(tmp_path / "read_only")
    with pytest.raises(UsageError, match="is a file"):
        (tmp_path / "f").write_text("x")
        prepare_output_folder(tmp_path / "f")


# ------------------------------------------------------------------------------------------- inputs


def test_one_nan_voxel_is_replaced_with_a_warning_and_listed(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _, _ = tiny_case(rng)
    bad = _with_air(image[0])
    bad[6, 8, 8] = np.nan
    _two_cases(tmp_path / "in", np.random.default_rng(5), bad)
    write_image(
        np.where(np.isnan(bad), np.nanmin(bad), bad), GEOMETRY, tmp_path / "fixed" / "bad_0000.nii.gz"
    )
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir, "--precision", "float32") == 0
    assert "NaN/Inf voxel(s) replaced" in capsys.readouterr().err
    flagged = {f["case"]: f["reasons"] for f in _record(tmp_path / "out")["flagged"]}
    assert any("1 NaN/Inf voxel(s) replaced" in reason for reason in flagged["bad"])
    assert _predict(tmp_path / "fixed", tmp_path / "ref", trained_workdir, "--precision", "float32") == 0
    predicted = read_labels(tmp_path / "out" / "bad.nii.gz")[0]
    np.testing.assert_array_equal(predicted, read_labels(tmp_path / "ref" / "bad.nii.gz")[0])
    assert predicted.any()  # before: one NaN voxel gave all background

    assert _predict(tmp_path / "in", tmp_path / "strict", trained_workdir, "--strict") == 1
    err = capsys.readouterr().err
    assert "bad: channel 0 has 1 NaN/Inf voxel(s); refused (--strict)" in err
    assert not (tmp_path / "strict" / "bad.nii.gz").exists()
    assert (tmp_path / "strict" / "good.nii.gz").is_file()


def test_non_finite_voxels_unit() -> None:
    image = np.ones((2, 3, 4, 5), np.float32)
    assert replace_non_finite(image, "c", strict=False) is None
    image[1, 0, 0, 0], image[1, 1, 1, 1] = np.inf, -5.0
    assert "channel 1: 1 NaN/Inf" in str(replace_non_finite(image, "c", strict=False))
    assert image[1, 0, 0, 0] == -5.0
    image[0] = np.nan
    with pytest.raises(Exception, match="no finite voxel"):
        replace_non_finite(image, "c", strict=False)


def _patch_nifti_header(path: Path, offset: int, fmt: str, *values: float) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(bytes(raw))


def test_a_zero_voxel_size_is_refused_naming_the_file(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    _two_cases(tmp_path / "in", rng)
    bad = tmp_path / "in" / "bad_0000.nii"
    write_image(tiny_case(rng)[0][0], GEOMETRY, bad)
    _patch_nifti_header(bad, 88, "<f", 0.0)  # pixdim[3] (z); SimpleITK and nibabel read it as 1 mm
    with pytest.raises(ImageReadError, match=r"voxel size \(z, y, x\) \(0, 0.8, 0.8\)"):
        read_header(bad)
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir) == 1
    err = capsys.readouterr().err
    assert f"{bad}: the header gives voxel size" in err
    _no_traceback(err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "predict.json"]


def test_huge_headers_are_refused_before_allocation_and_the_others_go_on(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    _two_cases(tmp_path / "in", rng)
    huge = tmp_path / "in" / "huge_0000.nii"
    write_image(np.zeros((4, 4, 4), np.float32), GEOMETRY, huge)
    _patch_nifti_header(huge, 40, "<8h", 3, 10000, 10000, 10000, 1, 1, 1, 1)  # 10^12 voxels, 4 TB
    far = tmp_path / "in" / "far_0000.nii"
    write_image(np.zeros((4, 4, 4), np.float32), GEOMETRY, far)
    _patch_nifti_header(far, 88, "<f", 1e30)  # a slice spacing of 1e30 mm
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert f"{huge}: 10000 x 10000 x 10000 voxels" in err and "TiB to predict" in err
    assert f"{far}: 4 x 4 x 4 voxels" in err and "1e+30" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "predict.json"]


def test_the_memory_estimate_grows_with_the_case_and_refuses_over_the_limit() -> None:
    header = CaseHeader((100, 200, 200), (2.0, 1.0, 1.0), 1, 2)
    one = estimate_peak_bytes(header, [(2.0, 1.0, 1.0)], 3)
    assert one > 100 * 200 * 200 * 4 * 8  # image, 3 float32 probabilities twice, resampled outputs
    assert estimate_peak_bytes(header, [(1.0, 0.5, 0.5)], 3) > 4 * one  # finer plan spacing
    # more classes: the network grid's outputs grow, the input grid's export does not (issue 17.2)
    assert estimate_peak_bytes(header, [(2.0, 1.0, 1.0)], 30) > 3 * one
    case = InputCase("c", (Path("c_0000.nii.gz"),))
    assert check_case_memory(case, header, [(2.0, 1.0, 1.0)], 3, one) == one
    with pytest.raises(MemoryLimitError, match=r"c_0000.nii.gz: 100 x 200 x 200 voxels .* MiB is available"):
        check_case_memory(case, header, [(2.0, 1.0, 1.0)], 3, one - 1)


def test_the_device_memory_estimate_reads_cuda_and_refuses_over_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On CUDA the case's device memory (image, windows through the network, accumulation when forced on
    the device) is checked against torch.cuda.mem_get_info plus the allocator's unused cache (monkeypatched:
    no GPU needed); a CPU device is not checked."""
    import torch

    from autoseg.inference.inputs import (
        check_device_memory,
        device_free_bytes,
        estimate_device_bytes,
        window_activation_bytes,
    )
    from autoseg.plans import (
        ChannelNormalization,
        ConfigurationPlan,
        NetworkPlan,
        ResamplingPlan,
        TrainingSchedule,
    )

    assert device_free_bytes("cpu") is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 512 * 2**20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 128 * 2**20)
    assert device_free_bytes("cuda:0") == 2**30 + 384 * 2**20
    network = NetworkPlan("plain", 3, (32, 64), ((3, 3, 3),) * 2, ((1, 1, 1), (2, 2, 2)), (2, 2), (2,))
    plan = ConfigurationPlan(
        3,
        (1.0, 1.0, 1.0),
        (1.0, 1.0, 1.0),
        (64, 64, 64),
        2,
        network,
        (ChannelNormalization("zscore"),),
        ResamplingPlan(3, 1, None, 0, 0),
        True,
        TrainingSchedule(),
        0.1,
    )
    activations = window_activation_bytes(plan, 3, 1)
    assert activations == 4 * (32 * 64**3 + 64 * 32**3 + 4 * 32 * 64**3 + 7 * 64**3)
    shape = (1, 200, 300, 300)
    one = estimate_device_bytes([shape], [plan], 3)
    assert one == 4 * 200 * 300 * 300 + activations
    assert estimate_device_bytes([shape], [plan], 3, windows_per_batch=4) == one + 3 * activations
    # blending on the device: a band of one patch depth (64 slices) of 3 sums, the weights and a finished slab
    band = 4 * (2 * 3 + 1) * 64 * 300**2
    assert estimate_device_bytes([shape], [plan], 3, accumulate_on_device=True) == one + band
    case = InputCase("c", (Path("c_0000.nii.gz"),))
    check_device_memory(case, one, "cuda:0", one)  # fits exactly
    check_device_memory(case, 10**15, "cpu", None)  # not a CUDA device: not checked
    with pytest.raises(MemoryLimitError, match=r"c_0000.nii.gz: would need about .* of GPU memory on cuda:0"):
        check_device_memory(case, one, "cuda:0", one - 1)


def test_a_case_over_the_device_memory_is_skipped_and_the_others_go_on(
    trained_workdir: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """predict checks each case's device estimate in the predicting thread before its windows run (here
    the device's free memory is faked: the first case 'does not fit')."""
    from autoseg.inference import stage

    for name in ("first", "second"):
        image, _, geometry = tiny_case(rng)
        write_image(_with_air(image[0]), geometry, tmp_path / "in" / f"{name}_0000.nii.gz")
    calls: list[str] = []

    def free_bytes(device: str) -> int:
        calls.append(device)
        return 1000 if len(calls) == 1 else 2**50

    monkeypatch.setattr(stage, "device_free_bytes", free_bytes)
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "first_0000.nii.gz: would need about" in err and "of GPU memory on cpu to predict" in err
    assert len(calls) == 2 and [p.name for p in (tmp_path / "out").glob("*.nii.gz")] == ["second.nii.gz"]


def test_a_dicom_series_is_sized_from_its_instances_before_reading() -> None:
    from types import SimpleNamespace

    from autoseg.inference.inputs import read_case_header

    instances = tuple(
        SimpleNamespace(
            rows=5000, columns=6000, number_of_frames=1, pixel_spacing=(0.1, 0.2), position_xyz=(0, 0, z)
        )
        for z in (0.0, 2.5, 5.0)
    )
    series = SimpleNamespace(instances=instances, summary=lambda: "CT 'huge' (3 files in /scans)")
    header = read_case_header(InputCase("huge", (), series))
    assert header.shape == (3, 5000, 6000) and header.spacing_mm == (2.5, 0.1, 0.2)
    with pytest.raises(MemoryLimitError, match=r"CT 'huge' \(3 files in /scans\): 3 x 5000 x 6000 voxels"):
        check_case_memory(InputCase("huge", (), series), header, [(1.0, 1.0, 1.0)], 3, 2**30)


def test_out_of_memory_in_one_case_skips_it_and_the_others_go_on(
    trained_workdir: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import autoseg.inference.stage as stage

    image, _, _ = tiny_case(rng, shape=(12, 16, 24))
    _two_cases(tmp_path / "in", rng, image[0])
    real = stage.predict_probabilities  # type: ignore[attr-defined]

    def fails_on_the_wide_case(networks: Any, image: Any, *args: Any, **kwargs: Any) -> Any:
        if image.shape[-1] > 20:
            raise MemoryError
        return real(networks, image, *args, **kwargs)

    monkeypatch.setattr(stage, "predict_probabilities", fails_on_the_wide_case)
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir) == 1
    err = capsys.readouterr().err
    assert "bad: ran out of memory" in err
    _no_traceback(err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "predict.json"]


# ------------------------------------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def model_zip(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.zip"
    assert main(["export-model", str(path), "--workdir", str(trained_workdir), "-c", "3d_fullres", "-q"]) == 0
    return path


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rewrite(source: Path, target: Path, changes: dict[str, bytes], *, stored: bool = False) -> Path:
    """A copy of a model file with ``changes`` to its entries, the manifest's checksums updated."""
    manifest = json.loads(_entries(source)["autoseg_model.json"])
    entries = _entries(source) | changes
    for name in changes:
        if name != "autoseg_model.json":
            manifest["files"][name] = hashlib.sha256(entries[name]).hexdigest()
    if "autoseg_model.json" not in changes:
        entries["autoseg_model.json"] = json.dumps(manifest).encode()
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(target, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def _damage(path: Path, entry: str, delta: int) -> Path:
    """Flip one byte in the middle of ``entry``'s stored data."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(entry)
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    raw[start + info.compress_size // 2] ^= delta
    path.write_bytes(bytes(raw))
    return path


def test_corrupt_model_files_are_refused_naming_the_zip(
    model_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = json.loads(_entries(model_zip)["training_reference.json"])
    plans = json.loads(_entries(model_zip)["plans.json"])
    plans["configurations"]["3d_fullres"]["batch_size"] = 0
    cases = {
        "manifest.zip": ({"autoseg_model.json": b"{not json"}, "not valid JSON"),
        "reference.zip": (
            {"training_reference.json": json.dumps({"num_cases": reference["num_cases"]}).encode()},
            "training_reference.json: incomplete",
        ),
        "plans.zip": ({"plans.json": json.dumps(plans).encode()}, "batch_size"),
    }
    for name, (changes, message) in cases.items():
        broken = _rewrite(model_zip, tmp_path / name, changes)
        with pytest.raises(ModelError) as caught:
            load_model(broken)
        assert caught.value.message.startswith(str(broken))
        assert message in " ".join(caught.value.lines())
    crc = _damage(_rewrite(model_zip, tmp_path / "crc.zip", {}, stored=True), "plans.json", 0x01)
    deflate = _damage(_rewrite(model_zip, tmp_path / "deflate.zip", {}), "folds/3d_fullres/fold_0.pt", 0xFF)
    for broken in (crc, deflate):
        with pytest.raises(ModelError, match="is corrupt") as caught:
            load_model(broken)
        assert str(broken) in caught.value.message
    _rewrite(model_zip, tmp_path / "cli.zip", {"autoseg_model.json": b"{not json"})
    assert (
        main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "cli.zip")])
        == 1
    )
    err = capsys.readouterr().err
    assert "cli.zip:autoseg_model.json: not valid JSON" in err
    _no_traceback(err)


def test_an_entry_that_would_inflate_hugely_is_refused_before_inflation(
    model_zip: Path, tmp_path: Path
) -> None:
    import tracemalloc

    big_json = _rewrite(model_zip, tmp_path / "json.zip", {"training_reference.json": b" " * (80 * 2**20)})
    bomb = _rewrite(model_zip, tmp_path / "bomb.zip", {"folds/3d_fullres/fold_0.pt": bytes(40 * 2**20)})
    with zipfile.ZipFile(bomb) as archive:
        assert archive.getinfo("folds/3d_fullres/fold_0.pt").compress_size < 2**20  # 40 MiB in under 1 MiB
    for path, message in ((big_json, "declares 80.0 MiB"), (bomb, "would inflate")):
        tracemalloc.start()
        with pytest.raises(ModelError, match=message):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * 2**20  # nothing inflated


# ------------------------------------------------------------------------------------------- flags


def test_flags_are_computed_by_default_and_strict_turns_them_into_exit_1(
    trained_workdir: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    _two_cases(tmp_path / "in", rng)
    assert _predict(tmp_path / "in", tmp_path / "out", trained_workdir) == 0
    record = _record(tmp_path / "out")
    (case,) = record["cases"]
    assert case["review"], "the tiny model's structures are flagged (confidence, parts)"
    assert record["flagged"] == [{"case": "good", "reasons": case["review"]}]
    captured = capsys.readouterr()
    assert "1 flagged for review" in captured.out and "flagged for review" in captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "predict.json"]  # no PNG

    assert _predict(tmp_path / "in", tmp_path / "strict", trained_workdir, "--strict") == 1
    err = capsys.readouterr().err
    assert "1 of 1 case(s) flagged for review (--strict)" in err and "good: " in err
    _no_traceback(err)
    assert (tmp_path / "strict" / "good.nii.gz").is_file()  # written, for the reviewer


def test_a_confidence_flag_never_prints_equal_numbers() -> None:
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[1:3, 1:5, 1:5] = 1
    probabilities = np.zeros((2, 4, 6, 6), np.float32)
    probabilities[1][labels == 1] = 0.7996
    probabilities[0] = 1 - probabilities[1]
    (row,) = structure_table(labels, probabilities, GEOMETRY, {"background": 0, "organ": 1}, None)
    (flag,) = row.flags
    low, high = (float(v) for v in flag.reason.removeprefix("mean confidence ").split(" < "))
    assert low < high, flag.reason
