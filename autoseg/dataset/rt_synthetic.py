"""Synthetic radiotherapy structure sets as a clinic has them: DICOM CT + RTSTRUCT, one folder per case.

``autoseg synth OUT --preset rt`` (or the catalogue's ``synthetic-rt``) writes what ``autoseg convert-dicom``
reads, plus the synthetic truth for scoring::

    OUT/<case>/CT/slice_0001.dcm ...        the CT series (HU, int16, slope 1)
    OUT/<case>/RS.<case>.dcm                the structure set (one ROI per contoured structure, overlapping)
    OUT/<case>/truth/<TG-263 name>.nii.gz   the truth mask of every structure, contoured or not (uint8 0/1)
    OUT/synth_rt.json                       the config, and per case each structure's clinic name and type
                                            (``null``: not contoured in that case)

The anatomy is :mod:`autoseg.dataset.rt_anatomy`'s thorax. What makes it a clinic's archive: targets
nest (GTV in CTV in PTV); the PTV crosses the lung and the chest wall or the mediastinum; the skin (a rind)
has a hole on every slice, the PTV ring wherever the PTV keeps clear of the skin; BODY holds everything; the
lungs are a left/right pair; ROI names are spelled differently from case to case ("Lt Lung", "LUNG_L",
"lung left"), each with the RTROIInterpretedType a planner sets; the heart, the oesophagus, the ring and the
cord PRV are not contoured in some cases (no ROI at all, not an empty one); the PRV's names have no TG-263
match in autoseg's table, so ``convert-dicom --names tg263`` reports them. Case ``i`` depends only on
``(config.seed, i)``; UIDs, dates and pixels included, the same config writes the same files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.dataset.rt_anatomy import Thorax, make_thorax
from autoseg.errors import UsageError
from autoseg.io import Geometry, atomic_folder, write_labels
from autoseg.parallel import map_cases
from autoseg.types import IntTriple, Triple

logger = logging.getLogger(__name__)

MANIFEST = "synth_rt.json"
TRUTH_FOLDER = "truth"


@dataclass(frozen=True)
class RtStructure:
    """One structure of the synthetic structure set.

    Attributes:
        standard: TG-263 standard name (the truth file's name; what ``match_tg263`` gives for ``variants``,
            except where there is no match in autoseg's table).
        interpreted_type: the RTROIInterpretedType the clinic sets.
        variants: clinic spellings; case ``i`` uses ``variants[(i + seed + k) % len(variants)]``, ``k`` the
            structure's position, so neighbouring cases differ.
        absent: ``(period, phase)``: not contoured in case ``i`` when ``(i + seed) % period == phase``;
            ``None``: always contoured.
        colour: ROIDisplayColor, RGB 0..255.
    """

    standard: str
    interpreted_type: str
    variants: tuple[str, ...]
    absent: tuple[int, int] | None
    colour: tuple[int, int, int]


STRUCTURES = (
    RtStructure("External", "EXTERNAL", ("BODY", "External", "EXTERNAL", "Outline"), None, (0, 200, 0)),
    RtStructure("Skin", "ORGAN", ("Skin", "SKIN", "skin rind"), None, (255, 200, 170)),
    RtStructure("Lung_L", "ORGAN", ("Lt Lung", "LUNG_L", "lung left", "Left Lung"), None, (0, 150, 255)),
    RtStructure("Lung_R", "ORGAN", ("Rt Lung", "LUNG_R", "lung right", "Right Lung"), None, (0, 90, 200)),
    RtStructure("Heart", "ORGAN", ("Heart", "HEART", "Cor", "heart1"), (4, 1), (255, 80, 80)),
    RtStructure(
        "SpinalCord", "ORGAN", ("SpinalCord", "Cord", "Spinal Cord", "SPINAL_CORD"), None, (255, 255, 0)
    ),
    RtStructure(
        "Esophagus", "ORGAN", ("Esophagus", "Oesophagus", "ESOPHAGUS", "esoph"), (3, 2), (180, 120, 60)
    ),
    RtStructure("GTVp", "GTV", ("GTVp", "GTV_p", "gtv primary"), None, (255, 0, 0)),
    RtStructure("CTVp", "CTV", ("CTVp", "CTV_p", "ctv primary"), None, (255, 128, 0)),
    RtStructure("PTVp", "PTV", ("PTVp", "PTV_p", "ptv primary"), None, (255, 0, 255)),
    RtStructure("PTV_Ring", "CONTROL", ("PTV_Ring",), (2, 0), (160, 160, 160)),
    RtStructure(
        "SpinalCord_PRV05",
        "AVOIDANCE",
        ("SpinalCord_PRV05", "Cord_PRV5", "PRV_Cord"),
        (2, 1),
        (200, 200, 120),
    ),
)
"""The structure set, in ROI order."""


@dataclass(frozen=True)
class RtSynthConfig:
    """What a synthetic structure-set archive looks like; stored in ``synth_rt.json``.

    Attributes:
        cases: number of cases, 1..1000.
        shape: ``(z, y, x)`` voxels of every case, each 16..512.
        spacing_mm: ``(z, y, x)`` voxel size in mm, each > 0 and <= 10.
        seed: non-negative seed; case ``i`` uses ``np.random.SeedSequence([seed, i])``.
    """

    cases: int = 8
    shape: IntTriple = (40, 64, 64)
    spacing_mm: Triple = (2.5, 1.0, 1.0)
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON-compatible dict, ``"preset": "rt"`` first (tuples become lists)."""
        data = asdict(self)
        data["shape"] = [int(v) for v in self.shape]
        data["spacing_mm"] = [float(v) for v in self.spacing_mm]
        return {"preset": "rt", **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RtSynthConfig:
        """Build and validate a config from a dict like ``to_json()`` returns; missing keys take defaults.

        Raises:
            UsageError: an unknown key (``classes``, ``channels``, ``modality`` and ``file_ending`` are not
                options of this preset), or a value of the wrong type or out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"preset"})
        if unknown or data.get("preset", "rt") != "rt":
            raise UsageError(
                f"synthetic structure-set config: unknown key(s) {unknown or ['preset']}; "
                f"known: {sorted(known)}"
            )
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "preset"
        }
        config = cls(**values)
        validate_rt_config(config)
        return config


def validate_rt_config(config: RtSynthConfig) -> None:
    """Check every field's type and range.

    Raises:
        UsageError: naming the bad field, its value and the allowed range.
    """

    def number(value: object) -> bool:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

    checks = (
        (
            "cases",
            config.cases,
            isinstance(config.cases, int) and 1 <= config.cases <= 1000,
            "an integer 1..1000",
        ),
        ("seed", config.seed, isinstance(config.seed, int) and 0 <= config.seed < 2**63, "an integer >= 0"),
        (
            "shape",
            config.shape,
            isinstance(config.shape, tuple)
            and len(config.shape) == 3
            and all(isinstance(v, int) and 16 <= v <= 512 for v in config.shape),
            "3 integers (z, y, x), each 16..512",
        ),
        (
            "spacing_mm",
            config.spacing_mm,
            isinstance(config.spacing_mm, tuple)
            and len(config.spacing_mm) == 3
            and all(number(v) and 0 < v <= 10 for v in config.spacing_mm),
            "3 numbers (z, y, x), each > 0 and <= 10 mm",
        ),
    )
    for name, value, ok, expected in checks:
        if not ok or isinstance(value, bool):
            raise UsageError(f"synthetic structure-set config: {name} is {value!r}; expected {expected}")


def rt_case_identifier(config: RtSynthConfig, index: int) -> str:
    """The folder name of case ``index``, e.g. ``synthrt_003``."""
    return f"synthrt_{index:0{max(3, len(str(config.cases - 1)))}d}"


def contoured_names(config: RtSynthConfig, index: int) -> dict[str, tuple[str, str] | None]:
    """Standard name -> (clinic ROI name, RTROIInterpretedType) in case ``index``; ``None``: not contoured."""
    names: dict[str, tuple[str, str] | None] = {}
    for position, structure in enumerate(STRUCTURES):
        period_phase = structure.absent
        if period_phase is not None and (index + config.seed) % period_phase[0] == period_phase[1]:
            names[structure.standard] = None
            continue
        variant = structure.variants[(index + config.seed + position) % len(structure.variants)]
        names[structure.standard] = (variant, structure.interpreted_type)
    return names


def synthesize_rt_case(config: RtSynthConfig, index: int) -> tuple[Thorax, Geometry]:
    """Make case ``index``: its thorax (HU image and every structure's mask) and its geometry.

    The geometry has the config's spacing, an identity direction (LPS) and an origin centring the grid
    on the patient axis (a per-case shift of up to +-10 mm in x and y).

    Raises:
        UsageError: invalid config, or ``index`` outside ``0..config.cases - 1``.
    """
    validate_rt_config(config)
    if not 0 <= index < config.cases:
        raise UsageError(f"case index {index} is outside 0..{config.cases - 1}")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    spacing = tuple(float(s) for s in config.spacing_mm)
    shift = rng.uniform(-10.0, 10.0, 2)
    half = -np.multiply(config.shape, spacing) / 2
    origin = (
        round(float(half[0]), 3),
        round(float(half[1] + shift[0]), 3),
        round(float(half[2] + shift[1]), 3),
    )
    thorax = make_thorax(config.shape, (spacing[0], spacing[1], spacing[2]), rng)
    return thorax, Geometry((spacing[0], spacing[1], spacing[2]), origin)


def write_rt_dataset(
    config: RtSynthConfig, out_dir: Path, *, num_workers: int = 1, show_progress: bool = True
) -> Path:
    """Write the archive (layout in the module docstring) to ``out_dir``, atomically; skip it when up to date.

    The cases are written by ``num_workers`` processes (:func:`autoseg.parallel.map_cases`).

    Returns:
        ``out_dir``.

    Raises:
        UsageError: invalid config or ``num_workers``, or ``out_dir`` holds something else.
    """
    validate_rt_config(config)
    if num_workers < 1:
        raise UsageError(f"num_workers is {num_workers}; expected >= 1")
    if _is_up_to_date(config, out_dir):
        logger.info("%s: synthetic structure sets are up to date", out_dir)
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(
            f"{out_dir}: exists and is not this synthetic structure-set archive; pick another folder or "
            "delete it"
        )
    with atomic_folder(out_dir) as scratch:
        write = partial(_write_case, config, scratch)
        entries = map_cases(
            write,
            range(config.cases),
            num_workers=num_workers,
            description="synthesizing",
            show_progress=show_progress,
        )
        cases = {rt_case_identifier(config, index): entry for index, entry in enumerate(entries)}
        manifest = {"autoseg_synth_rt": config.to_json(), "cases": cases}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %d synthetic CT structure sets to %s", config.cases, out_dir)
    return out_dir


def _write_case(config: RtSynthConfig, scratch: Path, index: int) -> dict[str, Any]:
    """Write case ``index``'s folder under ``scratch``; return its manifest entry (picklable for workers)."""
    from autoseg.dicom.export import write_clinical_structure_set, write_image_series
    from autoseg.dicom.structures import Structure

    thorax, geometry = synthesize_rt_case(config, index)
    identifier = rt_case_identifier(config, index)
    folder = scratch / identifier
    seed = f"autoseg synth rt {config.seed} {index}"
    study = {
        "PatientName": f"Synthetic^Case{index + 1:03d}",
        "StudyDate": "20240101",
        "StudyTime": "090000",
        "StudyID": f"S{index + 1}",
        "AccessionNumber": "",
    }
    write_image_series(
        thorax.image, geometry, folder / "CT", patient_id=identifier, uid_seed=seed, attributes=study
    )
    names = contoured_names(config, index)
    by_standard = {s.standard: s for s in STRUCTURES}
    structures = [
        Structure(entry[0], thorax.masks[standard], entry[1], by_standard[standard].colour)
        for standard, entry in names.items()
        if entry is not None
    ]
    write_clinical_structure_set(structures, folder / "CT", folder / f"RS.{identifier}.dcm", uid_seed=seed)
    for standard, mask in thorax.masks.items():
        write_labels(mask.astype(np.uint8), geometry, folder / TRUTH_FOLDER / f"{standard}.nii.gz")
    return {
        standard: None if entry is None else {"roi_name": entry[0], "type": entry[1]}
        for standard, entry in names.items()
    }


def _is_up_to_date(config: RtSynthConfig, out_dir: Path) -> bool:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("autoseg_synth_rt") == config.to_json()
