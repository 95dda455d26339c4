"""The dataset layer reads the nnU-Net v2 and MSD layouts unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import tiny_case, write_nnunet_dataset

from autoseg.dataset.layout import load_dataset, read_case, scan_dataset
from autoseg.errors import DatasetError, ImageReadError
from autoseg.io import write_image, write_labels


def test_nnunet_layout(tmp_path: Path, rng: np.random.Generator) -> None:
    cases = {f"liver_{i}": tiny_case(rng, channels=2) for i in (3, 1, 2)}
    root = write_nnunet_dataset(tmp_path / "Dataset002_Liver", cases, channel_names=("CT", "PET"))
    (root / "imagesTr" / "._liver_1_0000.nii.gz").write_bytes(b"macOS resource fork")
    (root / "imagesTs").mkdir()
    write_image(cases["liver_1"][0][0], cases["liver_1"][2], root / "imagesTs" / "new_0000.nii.gz")
    write_image(cases["liver_1"][0][1], cases["liver_1"][2], root / "imagesTs" / "new_0001.nii.gz")
    dataset = load_dataset(root)
    assert dataset.layout == "nnunet-v2"
    assert [c.identifier for c in dataset.cases] == ["liver_1", "liver_2", "liver_3"]
    assert dataset.channel_names == ("CT", "PET")
    assert dataset.foreground_labels == {"organ": 1, "core": 2}
    assert dataset.cases[0].image_paths[1].name == "liver_1_0001.nii.gz"
    assert [c.identifier for c in dataset.test_cases] == ["new"]
    assert dataset.test_cases[0].label_path is None
    image, labels, geometry = read_case(dataset.cases[0])
    np.testing.assert_allclose(image, cases["liver_1"][0], rtol=1e-6)
    assert labels is not None
    np.testing.assert_array_equal(labels, cases["liver_1"][1])
    assert geometry.spacing_mm == pytest.approx((3.0, 0.8, 0.8))


def test_nnunet_dataset_key_lists_files(tiny_dataset: Path) -> None:
    (tiny_dataset / "imagesTr" / "case_000_0000.nii.gz").rename(tiny_dataset / "img0.nii.gz")
    listing = {"first": {"images": ["img0.nii.gz"], "label": "labelsTr/case_000.nii.gz"}}
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    meta.update(dataset=listing, numTraining=1)
    (tiny_dataset / "dataset.json").write_text(json.dumps(meta))
    dataset = load_dataset(tiny_dataset)
    assert [c.identifier for c in dataset.cases] == ["first"]
    assert dataset.cases[0].image_paths == ((tiny_dataset / "img0.nii.gz").resolve(),)


def test_msd_layout_with_4d_multichannel_images(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "Task05_Prostate"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([0.6, 0.6, 3.6, 1.0])
    training = []
    for name in ("prostate_00", "prostate_01"):
        image, labels, _ = tiny_case(rng, channels=2)
        nib.save(nib.Nifti1Image(image.transpose(3, 2, 1, 0), affine), root / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), affine), root / "labelsTr" / f"{name}.nii.gz")
        (root / "imagesTr" / f"._{name}.nii.gz").write_bytes(b"junk")  # as in the real MSD archives
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    meta = {
        "name": "Prostate",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": 2,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    dataset = load_dataset(root)
    assert dataset.layout == "msd"
    assert dataset.labels == {"background": 0, "PZ": 1, "TZ": 2}
    assert dataset.channel_names == ("T2", "ADC")
    assert [c.identifier for c in dataset.cases] == ["prostate_00", "prostate_01"]
    image, label_map, geometry = read_case(dataset.cases[0])
    assert image.shape == (2, 12, 16, 16)
    assert label_map is not None and label_map.shape == (12, 16, 16)
    assert geometry.spacing_mm == pytest.approx((3.6, 0.6, 0.6))


def test_load_dataset_lists_every_error(tiny_dataset: Path) -> None:
    (tiny_dataset / "labelsTr" / "case_000.nii.gz").unlink()
    (tiny_dataset / "imagesTr" / "case_002_0000.nii.gz").unlink()
    with pytest.raises(DatasetError) as raised:
        load_dataset(tiny_dataset)
    text = "\n".join(raised.value.lines())
    assert "missing label file of case 'case_000'" in text
    assert "missing channel 0 file of case 'case_002'" in text
    assert "autoseg verify" in text


def test_misnamed_image_is_an_error_and_stray_files_are_warnings(tiny_dataset: Path) -> None:
    (tiny_dataset / "imagesTr" / "case_000_0000.nii.gz").rename(tiny_dataset / "imagesTr" / "case_000.nii.gz")
    (tiny_dataset / "imagesTr" / "notes.txt").write_text("x")
    _, problems = scan_dataset(tiny_dataset)
    lines = [p.line() for p in problems]
    assert any("error" in line and "lacks the 4-digit channel suffix" in line for line in lines)
    assert any("warning" in line and "notes.txt" in line for line in lines)


def test_read_case_refuses_label_on_another_grid(tiny_dataset: Path, rng: np.random.Generator) -> None:
    _, labels, geometry = tiny_case(rng)
    write_labels(labels[:, :, :-2], geometry, tiny_dataset / "labelsTr" / "case_001.nii.gz")
    case = next(c for c in load_dataset(tiny_dataset).cases if c.identifier == "case_001")
    with pytest.raises(ImageReadError, match=r"case_001\.nii\.gz: shape \(12, 16, 14\) differs"):
        read_case(case)


def test_real_hippocampus_layout(data_root: Path) -> None:
    dataset = load_dataset(data_root / "hippocampus")
    assert len(dataset.cases) == 195 == dataset.num_training
    assert dataset.foreground_labels == {"Anterior": 1, "Posterior": 2}
