"""What ``autoseg predict`` writes per case: a NIfTI label map, a DICOM SEG, an RTSTRUCT, probabilities,
instances and a reviewer report, all on the input's own grid and geometry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoseg.errors import UsageError
from autoseg.inference.ensemble import labels_from_probabilities
from autoseg.io import Geometry, write_json, write_labels, write_probabilities
from autoseg.postprocessing.instances import instances_to_json, label_instances
from autoseg.postprocessing.steps import Postprocessing, apply_postprocessing
from autoseg.report.figure import render_report
from autoseg.report.structures import TrainingReference, structure_table, write_structure_table
from autoseg.types import FloatVolume, LabelVolume

if TYPE_CHECKING:
    from autoseg.inference.inputs import InputCase

logger = logging.getLogger(__name__)

FORMATS = ("nifti", "dicom-seg", "rtstruct")
DICOM_FORMATS = ("dicom-seg", "rtstruct")


@dataclass(frozen=True)
class OutputOptions:
    """What to write per case.

    Attributes:
        formats: any of ``nifti`` (``CASE.nii.gz``), ``dicom-seg`` (``CASE_seg.dcm``), ``rtstruct``
            (``CASE_rtstruct.dcm``); the DICOM ones need a DICOM input series.
        save_probabilities: also ``CASE_probabilities.npz`` (:func:`autoseg.io.write_probabilities`, the
            format of the validation probabilities plus ``labels``, the class names in channel order).
        instances: class names (or values) whose separate objects get their own ids (``CASE_instances``).
        split_touching: split touching objects of those classes with a watershed.
        report: a reviewer PNG and a structure table per case.
        skip_empty_structures: leave structures the case has no voxel of out of the SEG and RTSTRUCT
            (default: keep them, as SEG segments without frames and RTSTRUCT ROIs without contours, so
            every case's objects list the model's full structure set).
    """

    formats: tuple[str, ...] = ("nifti",)
    save_probabilities: bool = False
    instances: tuple[str, ...] = ()
    split_touching: bool = False
    report: bool = False
    skip_empty_structures: bool = False

    def check_inputs(self, cases: Sequence[InputCase]) -> None:
        """Refuse before any work what cannot be written: DICOM outputs of non-DICOM inputs."""
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise UsageError(
                f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}"
            )
        wanted = [f for f in self.formats if f in DICOM_FORMATS]
        not_dicom = [c.identifier for c in cases if not c.is_dicom]
        if wanted and not_dicom:
            raise UsageError(
                f"--format {' '.join(wanted)} references the input's DICOM instances, "
                "but these inputs are not "
                f"DICOM series: {', '.join(not_dicom[:5])}{'...' if len(not_dicom) > 5 else ''}"
            )


@dataclass(frozen=True)
class CaseOutput:
    """What was written for one case."""

    identifier: str
    files: tuple[Path, ...]
    volumes_ml: dict[str, float]
    predict_seconds: float = 0.0


@dataclass(frozen=True)
class OutputContext:
    """What every case's outputs need from the model: class names, post-processing, the training reference,
    and the classes whose objects get instance ids."""

    labels_by_name: dict[str, int]
    postprocessing: Postprocessing | None = None
    reference: TrainingReference | None = None
    instance_classes: tuple[int, ...] = ()


def write_case_outputs(
    case: InputCase,
    probabilities: FloatVolume,
    geometry: Geometry,
    image: FloatVolume | None,
    context: OutputContext,
    options: OutputOptions,
    out: Path,
) -> CaseOutput:
    """Argmax, post-processing, then every requested output of one case.

    Args:
        probabilities: ``(K, Z, Y, X)`` float32 on the input's grid.
        geometry: the input's geometry (written unchanged).
        image: ``(Z, Y, X)`` float32 first channel, raw intensities, for the report (``None`` without one).
    """
    labels = postprocess(
        labels_from_probabilities(probabilities), context.postprocessing, geometry.spacing_mm
    )
    names = {value: name for name, value in context.labels_by_name.items() if value != 0}
    stem = out / case.identifier
    files: list[Path] = []
    if "nifti" in options.formats:
        files.append(stem.with_name(f"{case.identifier}.nii.gz"))
        write_labels(labels, geometry, files[-1])
    files += _write_dicom(case, labels, names, options, out)
    if options.save_probabilities:
        files.append(stem.with_name(f"{case.identifier}_probabilities.npz"))
        write_probabilities(probabilities, files[-1], class_names=list(context.labels_by_name))
    if context.instance_classes:
        files += _write_instances(case.identifier, labels, geometry, context, options.split_touching, out)
    if options.report and image is not None:
        files += _write_report(case.identifier, image, labels, probabilities, geometry, context, out)
    voxel_ml = float(np.prod(geometry.spacing_mm)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(names, default=0) + 1)
    volumes = {name: round(float(counts[value]) * voxel_ml, 4) for value, name in names.items()}
    logger.info("%s: %s", case.identifier, ", ".join(f"{n} {v:.2f} ml" for n, v in volumes.items()))
    return CaseOutput(case.identifier, tuple(files), volumes)


def _write_dicom(
    case: InputCase, labels: LabelVolume, names: dict[int, str], options: OutputOptions, out: Path
) -> list[Path]:
    """``CASE_seg.dcm`` and ``CASE_rtstruct.dcm`` as requested, referencing the case's DICOM series.

    With ``skip_empty_structures`` and no structure present, neither is written (both need at least one
    structure) and a warning says so.
    """
    wanted = [f for f in options.formats if f in DICOM_FORMATS]
    skip = options.skip_empty_structures
    if wanted and skip and not labels.any():
        logger.warning("%s: no structure has voxels; no %s written", case.identifier, " or ".join(wanted))
        return []
    paths: list[Path] = []
    if "dicom-seg" in wanted:
        from autoseg.dicom.seg import write_dicom_seg

        paths.append(out / f"{case.identifier}_seg.dcm")
        write_dicom_seg(labels, case.series, names, paths[-1], skip_empty=skip)
    if "rtstruct" in wanted:
        from autoseg.dicom.rtstruct import write_rtstruct

        paths.append(out / f"{case.identifier}_rtstruct.dcm")
        write_rtstruct(labels, case.series, names, paths[-1], skip_empty=skip)
    return paths


def _write_instances(
    identifier: str,
    labels: LabelVolume,
    geometry: Geometry,
    context: OutputContext,
    split_touching: bool,
    out: Path,
) -> list[Path]:
    """``CASE_instances.nii.gz`` (an id per object), ``CASE_instances.json`` (volume, centroid per object)."""
    result = label_instances(
        labels, context.instance_classes, geometry, context.labels_by_name, split_touching=split_touching
    )
    paths = [out / f"{identifier}_instances.nii.gz", out / f"{identifier}_instances.json"]
    write_labels(result.instance_map, geometry, paths[0])
    write_json(instances_to_json(result), paths[1])
    return paths


def _write_report(
    identifier: str,
    image: FloatVolume,
    labels: LabelVolume,
    probabilities: FloatVolume,
    geometry: Geometry,
    context: OutputContext,
    out: Path,
) -> list[Path]:
    """``CASE_report.png`` (contours on three orientations, structure table) and ``CASE_structures.json``."""
    rows = structure_table(labels, probabilities, geometry, context.labels_by_name, context.reference)
    paths = [out / f"{identifier}_report.png", out / f"{identifier}_structures.json"]
    render_report(image, labels, geometry, rows, paths[0], title=identifier)
    write_structure_table(rows, paths[1])
    flagged = [f"{row.name}: {'; '.join(f.reason for f in row.flags)}" for row in rows if row.flags]
    for line in flagged:
        logger.warning("%s: review %s", identifier, line)
    return paths


def postprocess(
    labels: LabelVolume, choice: Postprocessing | None, spacing_mm: tuple[float, float, float]
) -> LabelVolume:
    """Apply the post-processing chosen on cross-validation (``postprocessing.json``), if any."""
    return labels if choice is None else apply_postprocessing(labels, choice, spacing_mm)
