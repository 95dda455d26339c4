"""Anatomy-like synthetic datasets in the nnU-Net v2 raw layout, for tests, the demo and benchmarks.

Each case is a deformed ellipsoid "body" holding organ-like shapes, all built in millimetres, so anisotropic
spacing still gives physically round shapes. Classes (see ``CLASS_NAMES``): 1 a large organ; 2 a lesion nested
inside it (absent in about 1 case in 8 when there are >= 4 cases); 3 an organ touching class 1; 4 a small
nodule; 5-8 extra organs elsewhere, not overlapping the others. CT cases hold Hounsfield-like values (air
-1000, an unlabelled bright spine); MR cases hold positive arbitrary units with a smooth bias field,
Rician-like noise and exactly 0 outside the body. Case ``i`` depends only on ``(config.seed, i)``.

``difficulty="easy"`` (the demo's preset) draws the same shapes and values, then makes the small classes
learnable in a few minutes of CPU training: the lesion is 1.4x larger and always darker than the organ by
70 HU (realistic: 25-45 HU, brighter in a quarter of the cases), the touching organ 60 HU brighter than the
organ (realistic: 10-45 HU) and the noise halved (CT only; MR contrasts are kept).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np

from autoseg.dataset.anatomy import Grid, make_anatomy, render_ct, render_mr
from autoseg.errors import UsageError
from autoseg.io import Geometry, atomic_folder, write_image, write_labels
from autoseg.parallel import map_cases
from autoseg.types import FloatVolume, IntTriple, LabelVolume, Triple

logger = logging.getLogger(__name__)

FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
"""Single-file endings a synthetic dataset can be written with."""

CLASS_NAMES = (
    "organ",
    "lesion",
    "adjacent_organ",
    "nodule",
    "extra_organ_1",
    "extra_organ_2",
    "extra_organ_3",
    "extra_organ_4",
)
"""Names of foreground classes 1..8, in label order."""

CHANNEL_NAMES = {"CT": ("CT", "CT_arterial", "CT_venous", "CT_delayed"), "MR": ("T1", "T2", "PD", "T1c")}
"""Channel names per modality, channel 0 first."""


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic dataset looks like; stored in its ``dataset.json`` under ``"autoseg_synth"``.

    Attributes:
        cases: number of training cases, 1..10000.
        shape: ``(z, y, x)`` voxels of the median case, each 16..2048; cases vary by +-10 % (never < 16).
        spacing_mm: ``(z, y, x)`` voxel size in mm; cases vary by +-5 % per axis.
        classes: foreground classes, 1..8 (see ``CLASS_NAMES``).
        channels: image channels, 1..4 (see ``CHANNEL_NAMES``).
        modality: ``"CT"`` (int16 Hounsfield units on disk) or ``"MR"`` (float32 arbitrary units).
        seed: non-negative seed; case ``i`` uses ``np.random.SeedSequence([seed, i])``.
        file_ending: one of ``FILE_ENDINGS``.
        difficulty: ``"standard"`` or ``"easy"`` (see the module docstring); written to JSON only when easy,
            so the standard presets' ``dataset.json`` stay as they were.
    """

    cases: int = 8
    shape: IntTriple = (40, 96, 96)
    spacing_mm: Triple = (2.5, 0.8, 0.8)
    classes: int = 3
    channels: int = 1
    modality: Literal["CT", "MR"] = "CT"
    seed: int = 0
    file_ending: str = ".nii.gz"
    difficulty: Literal["standard", "easy"] = "standard"

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON-compatible dict (tuples become lists, spacing floats; ``difficulty`` only
        when not standard)."""
        data = asdict(self)
        data["shape"] = [int(v) for v in self.shape]
        data["spacing_mm"] = [float(v) for v in self.spacing_mm]
        if self.difficulty == "standard":
            del data["difficulty"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SynthConfig:
        """Build and validate a config from a dict like ``to_json()`` returns; missing keys take defaults.

        Raises:
            UsageError: an unknown key, or a value of the wrong type or out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"synthetic dataset config: unknown key(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**values)
        validate_config(config)
        return config


def validate_config(config: SynthConfig) -> None:
    """Check every field's type and range.

    Raises:
        UsageError: naming the bad field, its value and the allowed range.
    """
    _check_int("cases", config.cases, 1, 10000)
    _check_int("classes", config.classes, 1, len(CLASS_NAMES))
    _check_int("channels", config.channels, 1, 4)
    _check_int("seed", config.seed, 0, 2**63 - 1)
    shape, spacing = config.shape, config.spacing_mm
    if (
        not isinstance(shape, tuple)
        or len(shape) != 3
        or not all(_is_int(v) and 16 <= v <= 2048 for v in shape)
    ):
        raise UsageError(
            f"synthetic dataset config: shape is {shape!r}; expected 3 integers (z, y, x), "
            "each 16..2048 voxels"
        )
    if (
        not isinstance(spacing, tuple)
        or len(spacing) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 100 for v in spacing)
    ):
        raise UsageError(
            f"synthetic dataset config: spacing_mm is {spacing!r}; expected 3 numbers "
            "(z, y, x), each > 0 and <= 100 mm"
        )
    if config.modality not in CHANNEL_NAMES:
        raise UsageError(f"synthetic dataset config: modality is {config.modality!r}; expected 'CT' or 'MR'")
    if config.difficulty not in ("standard", "easy"):
        raise UsageError(
            f"synthetic dataset config: difficulty is {config.difficulty!r}; expected 'standard' or 'easy'"
        )
    if config.file_ending not in FILE_ENDINGS:
        raise UsageError(
            f"synthetic dataset config: file_ending is {config.file_ending!r}; expected one "
            f"of {', '.join(FILE_ENDINGS)}"
        )


def class_names(config: SynthConfig) -> dict[str, int]:
    """nnU-Net v2 ``labels``: ``{"background": 0, "organ": 1, ...}`` for the config's classes."""
    return {"background": 0, **{name: k + 1 for k, name in enumerate(CLASS_NAMES[: config.classes])}}


def channel_names(config: SynthConfig) -> dict[str, str]:
    """nnU-Net v2 ``channel_names``: ``{"0": "CT"}``, ``{"0": "T1", "1": "T2"}``, ..."""
    return {str(c): CHANNEL_NAMES[config.modality][c] for c in range(config.channels)}


def case_identifier(config: SynthConfig, index: int) -> str:
    """The case id of case ``index``, e.g. ``synthct_007`` (more digits beyond 1000 cases)."""
    return f"synth{config.modality.lower()}_{index:0{max(3, len(str(config.cases - 1)))}d}"


def synthesize_case(config: SynthConfig, index: int) -> tuple[FloatVolume, LabelVolume, Geometry]:
    """Make case ``index`` of the dataset; deterministic in ``(config.seed, index)`` alone.

    Returns:
        image ``(C, Z, Y, X)`` float32 (CT: Hounsfield units in [-1024, 3071]; MR: arbitrary units, 0
        outside the body), labels ``(Z, Y, X)`` uint8 with values ``0..config.classes``, and the geometry
        (identity direction; spacing and origin vary per case).

    Raises:
        UsageError: invalid config, or ``index`` outside ``0..config.cases - 1``.
    """
    validate_config(config)
    if not 0 <= index < config.cases:
        raise UsageError(f"case index {index} is outside 0..{config.cases - 1}")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    sizes = [max(16, round(n * f)) for n, f in zip(config.shape, rng.uniform(0.9, 1.1, 3), strict=True)]
    factors = rng.uniform(0.95, 1.05, 3)
    spacing = [round(float(s * f), 4) for s, f in zip(config.spacing_mm, factors, strict=True)]
    origin = [round(float(v), 2) for v in -np.multiply(sizes, spacing) / 2 + rng.uniform(-25.0, 25.0, 3)]
    geometry = Geometry((spacing[0], spacing[1], spacing[2]), (origin[0], origin[1], origin[2]))
    grid = Grid((sizes[0], sizes[1], sizes[2]), np.asarray(spacing, dtype=np.float64))
    with_lesion = not (config.cases >= 4 and index % 8 == (config.seed + 3) % 8)
    easy = config.difficulty == "easy"
    labels, tissue, body = make_anatomy(grid, config.classes, with_lesion, rng, easy=easy)
    if config.modality == "CT":
        return render_ct(tissue, body, config.channels, rng, easy=easy), labels, geometry
    return render_mr(tissue, body, config.channels, rng), labels, geometry


def write_synthetic_dataset(
    config: SynthConfig, out_dir: Path, *, num_workers: int = 1, show_progress: bool = True
) -> Path:
    """Write the dataset to ``out_dir`` in the nnU-Net v2 raw layout, atomically; skip it when up to date.

    Layout: ``dataset.json``, ``imagesTr/<case>_<CCCC><ending>``, ``labelsTr/<case><ending>``, case ids
    ``synthct_000`` or ``synthmr_000``. CT images are stored as int16, MR as float32, labels as uint8.
    The dataset is built in a hidden sibling folder, then renamed to ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        UsageError: invalid config or ``num_workers``, or ``out_dir`` holds something else.
    """
    validate_config(config)
    if num_workers < 1:
        raise UsageError(f"num_workers is {num_workers}; expected >= 1")
    if _is_up_to_date(config, out_dir):
        logger.info("%s: synthetic dataset is up to date", out_dir)
        return out_dir
    _require_replaceable(out_dir)
    with atomic_folder(out_dir) as scratch:
        (scratch / "imagesTr").mkdir()
        (scratch / "labelsTr").mkdir()
        write = partial(_write_case, config, scratch)
        for identifier in map_cases(
            write,
            range(config.cases),
            num_workers=num_workers,
            description="synthesizing",
            show_progress=show_progress,
        ):
            logger.debug("synthesized %s", identifier)
        (scratch / "dataset.json").write_text(json.dumps(_dataset_json(config), indent=2) + "\n")
    logger.info(
        "wrote %d synthetic %s cases (%d classes, %d channel(s)) to %s",
        config.cases,
        config.modality,
        config.classes,
        config.channels,
        out_dir,
    )
    return out_dir


# ------------------------------------------------------------------------------------------------ writing


def _write_case(config: SynthConfig, folder: Path, index: int) -> str:
    """Synthesize case ``index`` into ``folder``; module-level so that worker processes can run it."""
    image, labels, geometry = synthesize_case(config, index)
    identifier = case_identifier(config, index)
    for channel, volume in enumerate(image):
        stored = np.rint(volume).astype(np.int16) if config.modality == "CT" else volume
        write_image(stored, geometry, folder / "imagesTr" / f"{identifier}_{channel:04d}{config.file_ending}")
    write_labels(labels, geometry, folder / "labelsTr" / f"{identifier}{config.file_ending}")
    return identifier


def _dataset_json(config: SynthConfig) -> dict[str, Any]:
    return {
        "name": f"Synth{config.modality}",
        "description": f"autoseg synthetic {config.modality} dataset: {config.cases} cases, "
        f"{config.classes} classes, {config.channels} channel(s), seed {config.seed}",
        "channel_names": channel_names(config),
        "labels": class_names(config),
        "numTraining": config.cases,
        "file_ending": config.file_ending,
        "autoseg_synth": config.to_json(),
    }


def _is_up_to_date(config: SynthConfig, out_dir: Path) -> bool:
    try:
        data = json.loads((out_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("autoseg_synth") == config.to_json()


def _require_replaceable(out_dir: Path) -> None:
    """Raise unless ``out_dir`` is absent or an empty folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(
            f"{out_dir}: exists and is not this synthetic dataset (other config or other "
            "content); pick another folder or delete it"
        )


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not _is_int(value) or not low <= int(value) <= high:
        raise UsageError(f"synthetic dataset config: {name} is {value!r}; expected an integer {low}..{high}")
