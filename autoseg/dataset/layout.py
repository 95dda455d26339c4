"""The dataset layer: a raw dataset folder in the nnU-Net v2 or Medical Segmentation Decathlon layout.

nnU-Net v2 (read unchanged)::

    DATASET/dataset.json          {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                                   "numTraining": 4, "file_ending": ".nii.gz"}
    DATASET/imagesTr/CASE_0000.nii.gz    one file per channel, 4-digit channel index
    DATASET/labelsTr/CASE.nii.gz
    DATASET/imagesTs/CASE_0000.nii.gz    optional, unlabelled

An nnU-Net v2 ``dataset.json`` may instead list the files under ``"dataset"``
(``{"CASE": {"images": [...], "label": "..."}}``, paths relative to the dataset folder).

Medical Segmentation Decathlon::

    DATASET/dataset.json          {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior"},
                                   "numTraining": 2, "training": [{"image": "./imagesTr/a.nii.gz",
                                                                   "label": "./labelsTr/a.nii.gz"}]}

MSD images hold all channels in one file (a 4D file when there is more than one channel).

Overlapping structures (:mod:`autoseg.regions`, ``docs/dicom.md`` "Overlapping structures"), in the nnU-Net v2
layout only:

* nnU-Net v2 regions, read unchanged: label values that are lists (``{"background": 0, "whole_tumor": [1, 2,
  3], "tumor_core": [2, 3], "enhancing": 3}``), optionally ``"regions_class_order"``; the label files are
  label maps and each region is the union of its label values;
* a multi-label layout: ``"structures": ["GTV", "CTV", "PTV"]`` and ``labelsTr/CASE.nii.gz`` 4D, one binary
  channel per structure in that order (``"labels"``, if given, must be ``{"background": 0, "GTV": 1, ...}``).

Either way :attr:`Dataset.labels` maps ``background`` to 0 and structure ``k`` to ``k + 1``, and
:func:`read_case` returns the ``(K, Z, Y, X)`` region target. A region dataset may say which structures each
case has contoured (``"annotated": {"CASE": ["GTV", ...]}``, :attr:`Case.annotated`; a case not listed has
all): the others are unannotated there, masked out of training and scoring, not background.

:func:`scan_dataset` never raises for problems in the data: it returns them, so that ``autoseg verify`` can
report all of them at once. :func:`load_dataset` raises :class:`DatasetError` listing every error.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from autoseg.dicom.names import ROI_TYPES
from autoseg.errors import DatasetError, ImageReadError
from autoseg.io import (
    SUPPORTED_ENDINGS,
    Geometry,
    read_channels_4d,
    read_image,
    read_labels,
    read_masks,
    require_same_grid,
    split_ending,
)
from autoseg.regions import Region, regions_from_labels
from autoseg.types import FloatVolume, TargetVolume

Layout = Literal["nnunet-v2", "msd"]

IGNORE_NAME = "ignore"
"""nnU-Net v2's name for the label of voxels of unknown class (:func:`parse_ignore_label`)."""

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, naming the file it is about."""

    severity: Severity
    message: str
    path: Path | None = None
    case: str | None = None

    def line(self) -> str:
        """One line for a report: ``error: PATH: message``."""
        where = f"{self.path}: " if self.path is not None else (f"case {self.case}: " if self.case else "")
        return f"{self.severity}: {where}{self.message}"


@dataclass(frozen=True)
class Case:
    """One training (or test) case.

    Attributes:
        identifier: case identifier (file name without channel suffix and ending).
        image_paths: one file per channel, in channel order; for MSD multi-channel data, one 4D file.
        label_path: the label map, ``None`` for unlabelled test cases.
        channels_in_one_file: the single image file holds every channel on its 4th axis (MSD).
        regions: the dataset's structures when they may overlap (:mod:`autoseg.regions`): the label file is
            then read as a ``(K, Z, Y, X)`` region target.
        annotated: region datasets: the structure numbers (1-based) contoured in this case (``"annotated"``
            in dataset.json); the others are unannotated, not background. ``None``: every structure.
        ignore_label: nnU-Net regions: the label value of unknown class, read as
            :data:`autoseg.regions.UNKNOWN` in every structure's channel.
    """

    identifier: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    channels_in_one_file: bool = False
    regions: tuple[Region, ...] = ()
    annotated: tuple[int, ...] | None = None
    ignore_label: int | None = None

    @property
    def label_channels(self) -> int:
        """Channels of the label file: one per structure for a multi-label (4D) file, else 0 (3D)."""
        return len(self.regions) if self.regions and not self.regions[0].label_values else 0

    def files(self) -> tuple[Path, ...]:
        """Every file of the case, images first."""
        return self.image_paths + ((self.label_path,) if self.label_path is not None else ())


@dataclass(frozen=True)
class Dataset:
    """A raw dataset as found on disk.

    Attributes:
        root: the dataset folder (absolute).
        layout: ``"nnunet-v2"`` or ``"msd"``.
        name: ``dataset.json``'s name, or the folder name.
        channel_names: channel names in channel order, e.g. ``("CT",)``.
        labels: label name -> value, background included.
        num_training: ``numTraining`` as declared, if any.
        file_ending: file ending of the images, e.g. ``".nii.gz"``.
        cases: complete labelled training cases, sorted by identifier.
        test_cases: unlabelled cases from ``imagesTs`` (complete ones only).
        metadata: the whole ``dataset.json``.
        regions: the structures when they may overlap (nnU-Net regions or ``"structures"``), else ``()``.
        regions_class_order: nnU-Net's ``regions_class_order``, if declared.
        structure_types: structure name -> DICOM RTROIInterpretedType, as ``"structure_types"`` in
            ``dataset.json`` declares it (``convert-dicom`` writes it from a mapping file's ``type`` or the
            source RTSTRUCTs); names that are not structures of the dataset are left out.
        ignore_label: nnU-Net's ignore label (``"ignore"`` in ``labels``, the highest value): its voxels are
            of unknown class, left out of the loss, foreground sampling and scoring, never predicted; it is
            not in ``labels``. ``None``: none declared.
    """

    root: Path
    layout: Layout
    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    num_training: int | None
    file_ending: str
    cases: tuple[Case, ...]
    test_cases: tuple[Case, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()
    regions_class_order: tuple[int, ...] = ()
    ignore_label: int | None = None

    @property
    def structure_types(self) -> dict[str, str]:
        """See the class docstring (checked when the dataset is read)."""
        declared = self.metadata.get("structure_types")
        names = {r.name for r in self.regions} | set(self.labels)
        if not isinstance(declared, dict):
            return {}
        return {str(k): str(v) for k, v in declared.items() if k in names and v in ROI_TYPES}

    @property
    def num_channels(self) -> int:
        """Number of image channels."""
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        """Values the label files may hold, sorted, background included: the declared labels; an nnU-Net
        region dataset's region values; 0 and 1 for a multi-label file; and the ignore label."""
        ignore = () if self.ignore_label is None else (self.ignore_label,)
        if self.regions and self.regions[0].label_values:
            return tuple(sorted({0, *(v for r in self.regions for v in r.label_values), *ignore}))
        return (0, 1) if self.regions else tuple(sorted({*self.labels.values(), *ignore}))

    @property
    def foreground_labels(self) -> dict[str, int]:
        """Declared labels without background (value 0)."""
        return {name: value for name, value in self.labels.items() if value != 0}


def scan_dataset(root: Path) -> tuple[Dataset | None, list[Problem]]:
    """Read ``dataset.json`` and find every case, collecting problems instead of raising.

    Returns:
        The dataset (``None`` when ``dataset.json`` itself is unusable) and the structural problems found.
        Cases with a missing file are reported and left out of ``Dataset.cases``.
    """
    root = root.resolve()
    problems: list[Problem] = []
    meta = _read_dataset_json(root, problems)
    if meta is None:
        return None, problems
    if "channel_names" in meta or "training" not in meta:
        dataset = _scan_nnunet(root, meta, problems)
    else:
        dataset = _scan_msd(root, meta, problems)
    if dataset is not None:
        _check_num_training(dataset, problems)
        if not dataset.cases:
            problems.append(
                Problem("error", "no complete training case found (an image with its label)", meta_path(root))
            )
    return dataset, problems


def load_dataset(root: Path) -> Dataset:
    """Like :func:`scan_dataset` but raise :class:`DatasetError` listing every error; warnings are ignored."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    dataset, problems = scan_dataset(root)
    errors = [p.line() for p in problems if p.severity == "error"]
    if dataset is None or errors:
        raise DatasetError(
            f"{root}: dataset has {len(errors)} problem(s); run 'autoseg verify {root}'", details=errors
        )
    if not dataset.cases:
        raise DatasetError(f"{root}: no complete training case found")
    return dataset


# ------------------------------------------------------------------------------------------- dataset.json


def _read_dataset_json(root: Path, problems: list[Problem]) -> dict[str, Any] | None:
    path = root / "dataset.json"
    if not path.is_file():
        problems.append(Problem("error", "missing dataset.json (nnU-Net v2 or MSD layout expected)", path))
        return None
    duplicates: list[str] = []

    def keep_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        meta = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=keep_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(Problem("error", f"not valid JSON ({error})", path))
        return None
    if not isinstance(meta, dict):
        problems.append(Problem("error", "must hold a JSON object", path))
        return None
    problems.extend(
        Problem("error", f"key '{k}' appears more than once (duplicate case identifier?)", path)
        for k in sorted(set(duplicates))
    )
    problems.extend(_type_problems(meta, path))
    return meta


_EXPECTED_TYPES: dict[str, tuple[type, str]] = {
    "name": (str, "a string"),
    "description": (str, "a string"),
    "test": (list, "a list of image paths"),
    "dataset": (dict, "an object of case -> {images, label}"),
}
"""``dataset.json`` keys whose type is checked here; ``labels``, ``channel_names``/``modality``,
``numTraining``, ``file_ending``, ``training``, ``structures`` and ``annotated`` are checked where they are
parsed. Other keys (``reference``, ``licence``, ...) are not read."""


def _type_problems(meta: Mapping[str, Any], path: Path) -> list[Problem]:
    """A value of the wrong type under a key autoseg reads: named, instead of a later internal error."""
    found = [
        Problem("error", f"'{key}' must be {wanted}, got {json.dumps(meta[key])[:40]}", path)
        for key, (kind, wanted) in _EXPECTED_TYPES.items()
        if key in meta and not isinstance(meta[key], kind)
    ]
    tests = meta.get("test")
    if isinstance(tests, list) and not all(isinstance(t, str) for t in tests):
        found.append(Problem("error", "'test' must be a list of image paths (strings)", path))
    types = meta.get("structure_types", {})
    if not isinstance(types, dict):
        found.append(Problem("error", "'structure_types' must be an object of name -> ROI type", path))
    else:
        found += [
            Problem(
                "error", f"'structure_types': '{k}' is {v!r}; expected one of {', '.join(ROI_TYPES)}", path
            )
            for k, v in types.items()
            if v not in ROI_TYPES
        ]
    return found


def meta_path(root: Path) -> Path:
    """The ``dataset.json`` of dataset folder ``root``."""
    return root / "dataset.json"


def parse_labels(
    meta: Mapping[str, Any], path: Path, problems: list[Problem], *, msd: bool
) -> dict[str, int]:
    """Label name -> value from a ``dataset.json`` (nnU-Net v2 ``{"name": value}`` or MSD ``{"value":
    "name"}`` with ``msd=True``); problems are appended to ``problems``."""
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        problems.append(Problem("error", "'labels' must be a non-empty object", path))
        return {}
    labels: dict[str, int] = {}
    for key, value in raw.items():
        name, number = (value, key) if msd else (key, value)
        if isinstance(number, str) and number.strip().lstrip("-").isdigit():
            number = int(number)
        if not msd and str(name) == IGNORE_NAME:
            continue  # voxels of unknown class, not a class: parse_ignore_label
        if isinstance(number, list):
            problems.append(
                Problem(
                    "error",
                    f"label '{name}' is a region {number}; region-based labels are "
                    "not supported, give each class one integer value",
                    path,
                )
            )
            continue
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 65535:
            problems.append(
                Problem("error", f"label '{name}' has value {number!r}; expected an integer 0..65535", path)
            )
            continue
        if number in labels.values():
            problems.append(Problem("error", f"label value {number} is declared twice", path))
        labels[str(name)] = number
    if labels and 0 not in labels.values():
        problems.append(Problem("error", "labels must declare background as value 0", path))
    return labels


def parse_ignore_label(meta: Mapping[str, Any], path: Path, problems: list[Problem]) -> int | None:
    """nnU-Net v2's ignore label: the value of the label named ``"ignore"`` (voxels of unknown class), else
    ``None``. As nnU-Net requires, it is one integer (not a region) above every other label value, region
    values included; the multi-label (4D) layout has no label values, so it cannot have one. Problems are
    appended to ``problems``."""
    raw = meta.get("labels")
    if not isinstance(raw, dict) or IGNORE_NAME not in raw:
        return None
    value = raw[IGNORE_NAME]
    if "structures" in meta:
        problems.append(Problem("error", "an 'ignore' label needs label files of label values, not the "
                                "multi-label 'structures' layout", path))  # fmt: skip
        return None
    if not _is_label_value(value):
        problems.append(Problem("error", f"the 'ignore' label is {value!r}; it must be one integer label "
                                "value 1..65535 (a region cannot be the ignore label)", path))  # fmt: skip
        return None
    others = [v for k, item in raw.items() if k != IGNORE_NAME for v in _declared_values(item)]
    if others and value <= max(others):
        problems.append(Problem("error", f"the 'ignore' label is {value}; it must be the highest label value "
                                f"(above {max(others)}), as nnU-Net requires", path))  # fmt: skip
        return None
    return int(value)


def _declared_values(item: Any) -> list[int]:
    """The integer label values of one ``labels`` entry (a value or an nnU-Net region's list)."""
    values = item if isinstance(item, list) else [item]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def parse_regions(
    meta: Mapping[str, Any], path: Path, problems: list[Problem]
) -> tuple[tuple[Region, ...], tuple[int, ...]]:
    """The structures of a dataset whose structures may overlap, and nnU-Net's ``regions_class_order``:
    ``"structures"`` (a multi-label file), or ``"labels"`` with list values (nnU-Net regions); ``((), ())``
    for a dataset of disjoint labels. Problems are appended to ``problems``."""
    if "structures" in meta:
        return _structure_regions(meta, path, problems), ()
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not (
        "regions_class_order" in meta or any(isinstance(v, list) for v in raw.values())
    ):
        return (), ()
    regions = []
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if values in ([0], ["0"]) or name == IGNORE_NAME:
            continue
        if not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65535 for v in values
        ):
            problems.append(
                Problem("error", f"region '{name}' is {value!r}; expected label values 1..65535", path)
            )
            continue
        regions.append(Region(str(name), tuple(int(v) for v in values)))
    if raw.get("background") not in (0, [0]):
        problems.append(Problem("error", "labels must declare background as value 0", path))
    order = meta.get("regions_class_order", [])
    if not isinstance(order, list) or not all(_is_label_value(v) for v in order):
        problems.append(
            Problem("error", f"'regions_class_order' must be a list of label values, got {order!r}", path)
        )
        order = []
    elif order and len(order) != len(regions):
        problems.append(
            Problem("error", f"'regions_class_order' needs one label value per region ({len(regions)})", path)
        )
        order = []
    return tuple(regions), tuple(int(v) for v in order)


def _is_label_value(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535


def _structure_regions(meta: Mapping[str, Any], path: Path, problems: list[Problem]) -> tuple[Region, ...]:
    names = meta.get("structures")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        problems.append(Problem("error", "'structures' must be a non-empty list of structure names", path))
        return ()
    if len(set(names)) != len(names):
        problems.append(Problem("error", "'structures' names a structure twice", path))
        return ()
    labels = meta.get("labels")
    expected = structure_labels([Region(n) for n in names])
    if labels is not None and labels != expected:
        problems.append(
            Problem("error", f"'labels' must be {expected} for these 'structures' (or be left out)", path)
        )
    return tuple(Region(n) for n in names)


def parse_annotated(
    meta: Mapping[str, Any], regions: Sequence[Region], path: Path, problems: list[Problem]
) -> dict[str, tuple[int, ...]]:
    """``"annotated": {"CASE": ["GTVp", ...]}`` (region datasets; ``docs/dicom.md``, "Partly contoured
    cases") as case -> the structure numbers contoured there; a case not listed has every structure."""
    raw = meta.get("annotated")
    if raw is None:
        return {}
    numbers = {region.name: index + 1 for index, region in enumerate(regions)}
    if not regions or not isinstance(raw, dict):
        problems.append(
            Problem("error", "'annotated' must map case -> structure names, in a region dataset", path)
        )
        return {}
    found: dict[str, tuple[int, ...]] = {}
    for case, names in raw.items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n in numbers for n in names):
            problems.append(
                Problem("error", f"'annotated' of '{case}' must list structures of {list(numbers)}", path)
            )
            continue
        found[str(case)] = tuple(sorted({numbers[n] for n in names}))
    return found


def structure_labels(regions: Sequence[Region]) -> dict[str, int]:
    """``{"background": 0, <structure k>: k + 1}``: the labels of a region dataset."""
    return {"background": 0, **{region.name: index + 1 for index, region in enumerate(regions)}}


def _parse_channels(meta: Mapping[str, Any], path: Path, problems: list[Problem]) -> tuple[str, ...]:
    key = "channel_names" if "channel_names" in meta else "modality"
    raw = meta.get(key)
    if not isinstance(raw, dict) or not raw:
        problems.append(Problem("error", "'channel_names' (or 'modality') must be a non-empty object", path))
        return ()
    if not all(isinstance(v, str) and v.strip() for v in raw.values()):
        problems.append(Problem("error", f"'{key}' values must be channel names (non-empty strings)", path))
        return ()
    try:
        indexed = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        problems.append(Problem("error", f'\'{key}\' keys must be channel indices "0", "1", ...', path))
        return ()
    if sorted(indexed) != list(range(len(indexed))):
        problems.append(
            Problem("error", f"'{key}' indices must be 0..{len(indexed) - 1}, got {sorted(indexed)}", path)
        )
        return ()
    return tuple(indexed[i] for i in range(len(indexed)))


def _check_num_training(dataset: Dataset, problems: list[Problem]) -> None:
    declared = dataset.num_training
    path = dataset.root / "dataset.json"
    if declared is None:
        problems.append(Problem("warning", "'numTraining' is missing", path))
    elif declared != len(dataset.cases) + _incomplete_count(problems):
        found = len(dataset.cases) + _incomplete_count(problems)
        problems.append(
            Problem("error", f"numTraining is {declared} but {found} training case(s) were found", path)
        )


def _incomplete_count(problems: Sequence[Problem]) -> int:
    return len({p.case for p in problems if p.case is not None and p.message.startswith("missing")})


def _parse_num_training(meta: Mapping[str, Any], path: Path, problems: list[Problem]) -> int | None:
    value = meta.get("numTraining")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        problems.append(
            Problem("error", f"'numTraining' must be a non-negative integer, got {value!r}", path)
        )
        return None
    return value


# ------------------------------------------------------------------------------------------- nnU-Net v2


_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _scan_nnunet(root: Path, meta: dict[str, Any], problems: list[Problem]) -> Dataset | None:
    path = root / "dataset.json"
    channels = _parse_channels(meta, path, problems)
    regions, order = parse_regions(meta, path, problems)
    labels = structure_labels(regions) if regions else parse_labels(meta, path, problems, msd=False)
    ignore_label = parse_ignore_label(meta, path, problems)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or ending.lower() not in SUPPORTED_ENDINGS:
        problems.append(
            Problem(
                "error", f"'file_ending' is {ending!r}; autoseg reads {', '.join(SUPPORTED_ENDINGS)}", path
            )
        )
        return None
    num_training = _parse_num_training(meta, path, problems)
    if not channels:
        return None
    if isinstance(meta.get("dataset"), dict):
        cases = _cases_from_listing(root, meta["dataset"], len(channels), problems)
    else:
        cases = _cases_from_folders(root, "imagesTr", "labelsTr", ending, len(channels), problems)
    test_cases = _cases_from_folders(root, "imagesTs", None, ending, len(channels), problems)
    annotated = parse_annotated(meta, regions, path, problems)
    return Dataset(
        root,
        "nnunet-v2",
        str(meta.get("name", root.name)),
        channels,
        labels,
        num_training,
        ending,
        tuple(
            replace(
                c,
                regions=regions,
                annotated=annotated.get(c.identifier),
                ignore_label=ignore_label if regions else None,
            )
            for c in cases
        ),
        tuple(test_cases),
        meta,
        regions,
        order,
        ignore_label,
    )


def _cases_from_folders(
    root: Path,
    images_dir: str,
    labels_dir: str | None,
    ending: str,
    num_channels: int,
    problems: list[Problem],
) -> list[Case]:
    images_root = root / images_dir
    if not images_root.is_dir():
        if labels_dir is not None:
            problems.append(
                Problem("error", "missing folder (nnU-Net v2 layout expects imagesTr/)", images_root)
            )
        return []
    channel_files: dict[str, dict[int, Path]] = {}
    for file in sorted(images_root.iterdir()):
        match = _match_channel_file(file, ending, root, problems)
        if match is not None:
            channel_files.setdefault(match[0], {})[match[1]] = file
    label_files: dict[str, Path] = {}
    if labels_dir is not None:
        labels_root = root / labels_dir
        if not labels_root.is_dir():
            problems.append(
                Problem("error", "missing folder (nnU-Net v2 layout expects labelsTr/)", labels_root)
            )
        else:
            label_files = _label_files(labels_root, ending, root, problems)
    identifiers = sorted(set(channel_files) | set(label_files))
    cases = []
    for identifier in identifiers:
        case = _assemble_case(
            root / images_dir,
            identifier,
            channel_files.get(identifier, {}),
            label_files.get(identifier),
            labels_dir is not None,
            ending,
            num_channels,
            problems,
        )
        if case is not None:
            cases.append(case)
    return cases


def _match_channel_file(
    file: Path, ending: str, root: Path, problems: list[Problem]
) -> tuple[str, int] | None:
    if file.name.startswith("."):
        return None  # hidden files such as macOS "._x.nii.gz" resource forks
    if file.is_dir():
        problems.append(Problem("warning", "unexpected folder, ignored", file))
        return None
    if not file.name.endswith(ending):
        problems.append(
            Problem("warning", f"file does not end with the dataset's file_ending '{ending}'; ignored", file)
        )
        return None
    unusable = _unusable_file(file, root)
    if unusable is not None:
        problems.append(Problem("error", unusable, file))
        return None
    match = _CHANNEL_SUFFIX.match(file.name[: -len(ending)])
    if match is None:
        problems.append(
            Problem(
                "error",
                f"image file name lacks the 4-digit channel suffix (expected CASE_0000{ending})",
                file,
            )
        )
        return None
    return match["case"], int(match["channel"])


def _label_files(labels_root: Path, ending: str, root: Path, problems: list[Problem]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for file in sorted(labels_root.iterdir()):
        if file.name.startswith("."):
            continue
        if file.is_dir() or not file.name.endswith(ending):
            problems.append(Problem("warning", f"not a label file ending with '{ending}'; ignored", file))
            continue
        unusable = _unusable_file(file, root)
        if unusable is not None:
            problems.append(Problem("error", unusable, file))
            continue
        found[file.name[: -len(ending)]] = file
    return found


def _assemble_case(
    images_root: Path,
    identifier: str,
    channels: dict[int, Path],
    label: Path | None,
    labelled: bool,
    ending: str,
    num_channels: int,
    problems: list[Problem],
) -> Case | None:
    complete = True
    for index in range(num_channels):
        if index not in channels:
            expected = images_root / f"{identifier}_{index:04d}{ending}"
            problems.append(
                Problem("error", f"missing channel {index} file of case '{identifier}'", expected, identifier)
            )
            complete = False
    for extra in sorted(set(channels) - set(range(num_channels))):
        problems.append(
            Problem(
                "error",
                f"channel {extra} is not declared in channel_names ({num_channels} channel(s))",
                channels[extra],
                identifier,
            )
        )
    if labelled and label is None:
        expected = images_root.parent / "labelsTr" / f"{identifier}{ending}"
        problems.append(Problem("error", f"missing label file of case '{identifier}'", expected, identifier))
        complete = False
    if not complete:
        return None
    return Case(identifier, tuple(channels[i] for i in range(num_channels)), label)


def _cases_from_listing(
    root: Path, listing: dict[str, Any], num_channels: int, problems: list[Problem]
) -> list[Case]:
    cases = []
    path = root / "dataset.json"
    for identifier, entry in sorted(listing.items()):
        images = entry.get("images") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if (
            not isinstance(images, list)
            or not all(isinstance(i, str) for i in images)
            or not isinstance(label, str)
        ):
            problems.append(
                Problem(
                    "error",
                    f"'dataset' entry '{identifier}' needs 'images' (list of paths) and 'label' (path)",
                    path,
                    identifier,
                )
            )
            continue
        if len(images) != num_channels:
            problems.append(
                Problem(
                    "error",
                    f"case '{identifier}' lists {len(images)} image(s) for {num_channels} channel(s)",
                    path,
                    identifier,
                )
            )
            continue
        resolved = [_resolve_inside(root, p, identifier, problems) for p in [*images, label]]
        if any(r is None for r in resolved):
            continue
        files = [r for r in resolved if r is not None]
        if _report_missing(files, identifier, problems):
            cases.append(Case(identifier, tuple(files[:-1]), files[-1]))
    return cases


# ------------------------------------------------------------------------------------------- MSD


def _scan_msd(root: Path, meta: dict[str, Any], problems: list[Problem]) -> Dataset | None:
    path = root / "dataset.json"
    channels = _parse_channels(meta, path, problems)
    labels = parse_labels(meta, path, problems, msd=True)
    num_training = _parse_num_training(meta, path, problems)
    training = meta.get("training")
    if not isinstance(training, list) or not channels:
        problems.append(Problem("error", "'training' must be a list of {image, label} entries", path))
        return None
    cases: list[Case] = []
    seen: set[str] = set()
    ending = ""
    for number, entry in enumerate(training):
        case = _msd_case(root, entry, number, len(channels) > 1, problems)
        if case is None:
            continue
        if case.identifier in seen:
            problems.append(
                Problem(
                    "error",
                    f"duplicate case identifier '{case.identifier}' in 'training'",
                    path,
                    case.identifier,
                )
            )
            continue
        seen.add(case.identifier)
        ending = ending or split_ending(case.image_paths[0])[1]
        cases.append(case)
    test_cases = [
        Case(split_ending(p)[0], (p,), None, len(channels) > 1)
        for p in (_resolve_inside(root, t, None, problems) for t in _listed_tests(meta) if isinstance(t, str))
        if p is not None and _unusable_file(p, root) is None
    ]
    return Dataset(
        root,
        "msd",
        str(meta.get("name", root.name)),
        channels,
        labels,
        num_training,
        ending or ".nii.gz",
        tuple(sorted(cases, key=lambda c: c.identifier)),
        tuple(test_cases),
        meta,
    )


def _listed_tests(meta: Mapping[str, Any]) -> list[Any]:
    """MSD's ``"test"`` list (anything else is reported by :func:`_type_problems`)."""
    tests = meta.get("test", [])
    return tests if isinstance(tests, list) else []


def _msd_case(
    root: Path, entry: Any, number: int, multichannel: bool, problems: list[Problem]
) -> Case | None:
    path = root / "dataset.json"
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("image"), str)
        or not isinstance(entry.get("label"), str)
    ):
        problems.append(Problem("error", f"training entry {number} needs 'image' and 'label' paths", path))
        return None
    identifier = split_ending(Path(entry["image"]))[0]
    image = _resolve_inside(root, entry["image"], identifier, problems)
    label = _resolve_inside(root, entry["label"], identifier, problems)
    if image is None or label is None or not _report_missing([image, label], identifier, problems):
        return None
    return Case(identifier, (image,), label, multichannel)


# ------------------------------------------------------------------------------------------- shared helpers


def _resolve_inside(
    root: Path, relative: str, identifier: str | None, problems: list[Problem]
) -> Path | None:
    """Resolve a path listed in dataset.json; report it when it leaves the dataset folder."""
    candidate = Path(relative)
    joined = candidate if candidate.is_absolute() else root / candidate
    resolved = Path(*joined.parts).resolve()
    if not resolved.is_relative_to(root):
        lexical = Path(os.path.normpath(joined))
        message = (
            f"path '{relative}' is a symbolic link to {resolved}, outside the dataset folder {root}"
            if lexical.is_relative_to(root)
            else f"path '{relative}' escapes the dataset folder {root}"
        )
        problems.append(Problem("error", message, root / "dataset.json", identifier))
        return None
    return resolved


def _unusable_file(file: Path, root: Path) -> str | None:
    """Why ``file`` (in a dataset folder ``root``, resolved) cannot be read as an image or label, or ``None``:
    a symbolic link leaving the dataset folder (refused in both layouts, so that a dataset is what its folder
    holds), a broken link, or not a regular file (a FIFO would block every reader forever)."""
    target = file.resolve()
    if not target.is_relative_to(root):
        how = "a symbolic link" if file.is_symlink() else "reached through a linked folder"
        return f"{how} to {target}, outside the dataset folder {root}; copy the file into the dataset"
    try:
        mode = file.stat().st_mode
    except OSError as error:
        return f"cannot be read ({error.strerror or error}; a broken link to {target}?)"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device); autoseg reads only regular files"
    return None


def _report_missing(files: Sequence[Path], identifier: str, problems: list[Problem]) -> bool:
    """Report the listed (resolved) files that are missing or not regular files; True when all are there."""
    bad = [f for f in files if not f.is_file()]
    for file in bad:
        message = (
            "not a regular file (a FIFO, socket, device or folder); autoseg reads only regular files"
            if file.exists()
            else f"missing file listed for case '{identifier}'"
        )
        problems.append(Problem("error", message, file, identifier))
    return not bad


def read_case(case: Case) -> tuple[FloatVolume, TargetVolume | None, Geometry]:
    """Read a case's channels as ``(C, Z, Y, X)`` float32 and its target: the label map ``(Z, Y, X)``
    uint8/uint16, or for a dataset with regions the ``(K, Z, Y, X)`` uint8 region target.

    Raises:
        ImageReadError: a file is unreadable, or the channels and label disagree in shape or geometry.
    """
    if case.channels_in_one_file:
        image, geometry = read_channels_4d(case.image_paths[0])
    else:
        image, geometry = read_image(case.image_paths)
    if case.label_path is None:
        return image, None, geometry
    labels: TargetVolume
    if case.label_channels:
        labels, label_geometry = read_masks(case.label_path)
        if len(labels) != case.label_channels:
            raise ImageReadError(
                f"{case.label_path}: holds {len(labels)} structure channel(s); dataset.json lists "
                f"{case.label_channels} 'structures'"
            )
    else:
        labels, label_geometry = read_labels(case.label_path)
    reference = case.image_paths[0].name
    require_same_grid(
        case.label_path, labels.shape[-3:], label_geometry, image.shape, geometry, reference_name=reference
    )
    if case.regions and not case.label_channels:
        labels = regions_from_labels(labels, case.regions, case.ignore_label)
    return image, labels, geometry
