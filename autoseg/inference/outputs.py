"""What ``autoseg predict`` writes per case: a NIfTI label map, a DICOM SEG, an RTSTRUCT, probabilities,
instances and a reviewer report, all on the input's own grid and geometry.

A region-based model (structures that may overlap, :mod:`autoseg.regions`) predicts a ``(K, Z, Y, X)``
region target (sigmoid >= 0.5 per structure, post-processed per structure). Its RTSTRUCT has one ROI and its
SEG one segment per structure (overlapping where the structures overlap); its ``CASE.nii.gz`` is a label map
(structure ``k`` = value ``k + 1``) when the predicted structures happen to be disjoint, otherwise a 4D file
with one binary channel per structure in the model's order (the multi-label layout of ``labelsTr``). Its
report draws and measures every structure on its own mask (overlapping contours where they overlap), and its
instance map is 4D, one channel of instance ids per selected structure (``docs/report.md``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoseg.dicom.names import check_roi_name
from autoseg.errors import UsageError
from autoseg.inference.export import MemberPredictions, RestoredTarget, restore_target, target_confidences
from autoseg.io import (
    Geometry,
    ProbabilityStream,
    atomic_files,
    stream_probabilities,
    write_json,
    write_label_channels,
    write_labels,
    write_target,
)
from autoseg.postprocessing.instances import instances_to_json, label_instances
from autoseg.postprocessing.steps import Postprocessing, apply_postprocessing
from autoseg.regions import (
    are_disjoint,
    is_region_target,
    label_map_in_class_order,
    label_map_of,
    structure_mask,
)
from autoseg.report.figure import render_report
from autoseg.report.structures import (
    FlagRules,
    StructureRow,
    TrainingReference,
    structure_flags,
    structure_table,
    write_structure_table,
)
from autoseg.types import FloatVolume, TargetVolume

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
            format of the validation probabilities plus ``labels``, the class names in channel order),
            streamed to disk channel by channel (:func:`autoseg.io.stream_probabilities`).
        instances: class names (or values) whose separate objects get their own ids (``CASE_instances``).
        split_touching: split touching objects of those classes with a watershed.
        report: a reviewer PNG and a structure table per case.
        skip_empty_structures: leave structures the case has no voxel of out of the SEG and RTSTRUCT
            (default: keep them, as SEG segments without frames and RTSTRUCT ROIs without contours, so
            every case's objects list the model's full structure set).
        uid_seed: ``None``: the SEG and RTSTRUCT get new random UIDs; otherwise their SOP Instance and Series
            Instance UIDs are derived from this text plus the input's SeriesInstanceUID (``autoseg serve``:
            the same input series and model give the same UIDs, so a re-sent result is recognisable).
    """

    formats: tuple[str, ...] = ("nifti",)
    save_probabilities: bool = False
    instances: tuple[str, ...] = ()
    split_touching: bool = False
    report: bool = False
    skip_empty_structures: bool = False
    uid_seed: str | None = None

    def check_inputs(self, cases: Sequence[InputCase], structure_names: Sequence[str] = ()) -> None:
        """Refuse before any work what cannot be written: DICOM outputs of non-DICOM inputs, and, for DICOM
        outputs, structure names that are not valid ROI names (:func:`autoseg.dicom.names.check_roi_name`)."""
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
        if wanted:
            for name in structure_names:
                for warning in check_roi_name(name):
                    logger.warning("structure %r: %s", name, warning)


@dataclass(frozen=True)
class CaseOutput:
    """What was written for one case."""

    identifier: str
    files: tuple[Path, ...]
    volumes_ml: dict[str, float]
    predict_seconds: float = 0.0
    review: tuple[str, ...] = ()
    """Why the case needs a look: ``"STRUCTURE: reason"`` per flag of the structure table (volume, missing,
    unexpected, confidence, parts; :mod:`autoseg.report.structures`), ``"input: ..."`` for a repaired input;
    empty when nothing is unusual."""


@dataclass(frozen=True)
class OutputContext:
    """What every case's outputs need from the model: class names, post-processing, the training reference,
    and the classes whose objects get instance ids."""

    labels_by_name: dict[str, int]
    postprocessing: Postprocessing | None = None
    reference: TrainingReference | None = None
    instance_classes: tuple[int, ...] = ()
    regions: bool = False
    """The model is region-based: ``probabilities`` are per-structure sigmoids, ``labels_by_name`` numbers
    the structures 1..K."""
    structure_types: dict[str, str] = field(default_factory=dict)
    """Structure name -> RTROIInterpretedType the training data gave (``TargetPlan.structure_types``); a
    structure not listed is typed from its name."""
    regions_class_order: tuple[int, ...] = ()
    """nnU-Net's ``regions_class_order`` (``TargetPlan.regions_class_order``): the NIfTI output is then the
    label map nnU-Net writes (:func:`autoseg.regions.label_map_in_class_order`), overlapping or not."""


def write_case_outputs(
    case: InputCase,
    predictions: MemberPredictions | FloatVolume,
    geometry: Geometry,
    image: FloatVolume | None,
    context: OutputContext,
    options: OutputOptions,
    out: Path,
) -> CaseOutput:
    """Argmax (or the 0.5 threshold per structure) on the input's grid, class by class
    (:func:`autoseg.inference.export.restore_target`: never ``(K, Z, Y, X)`` float32 there), post-processing,
    the structure table's flags (always; its PNG and JSON with ``options.report``), then every requested
    output of one case.

    The files are written into a scratch folder and renamed into ``out`` only when all of them are written
    (:func:`autoseg.io.atomic_files`): a case that fails leaves nothing, and an earlier run's files intact.

    Args:
        predictions: the members' probabilities on their network grids, and how to bring them back; or
            ``(K, Z, Y, X)`` float32 probabilities already on the input's grid.
        geometry: the input's geometry (written unchanged).
        image: ``(Z, Y, X)`` float32 first channel, raw intensities, for the report (``None`` without one).
    """
    if not isinstance(predictions, MemberPredictions):
        predictions = MemberPredictions.on_grid(predictions, geometry, regions=context.regions)
    with atomic_files(out) as scratch:
        files: list[Path] = []
        with contextlib.ExitStack() as stack:
            stream: ProbabilityStream | None = None
            if options.save_probabilities:
                files.append(scratch / f"{case.identifier}_probabilities.npz")
                class_names = [n for n, v in context.labels_by_name.items() if v or not context.regions]
                shape = (predictions.num_channels, *predictions.shape)
                stream = stack.enter_context(stream_probabilities(files[-1], shape, class_names=class_names))
            restored = restore_target(predictions, stream=stream)
        target = postprocess(restored.target, context.postprocessing, geometry.spacing_mm)
        rows = _structure_rows(target, restored, predictions, geometry, context)
        files = _write_files(case, target, geometry, context, options, scratch) + files
        if options.report and image is not None:
            files += _write_report(case.identifier, image, target, rows, geometry, scratch)
    names = {value: name for name, value in context.labels_by_name.items() if value != 0}
    volumes = _volumes(target, names, geometry)
    logger.info("%s: %s", case.identifier, ", ".join(f"{n} {v:.2f} ml" for n, v in volumes.items()))
    review = tuple(f"{row.name}: {flag.reason}" for row in rows for flag in row.flags)
    return CaseOutput(case.identifier, tuple(out / f.name for f in files), volumes, review=review)


def _structure_rows(
    target: TargetVolume,
    restored: RestoredTarget,
    predictions: MemberPredictions,
    geometry: Geometry,
    context: OutputContext,
) -> list[StructureRow]:
    """The structure table with the confidences of the class-by-class pass (the same numbers
    ``structure_table`` gives with the full probabilities) and the flags they raise."""
    reference = context.reference
    rows = structure_table(target, None, geometry, context.labels_by_name, reference)
    values = [row.value for row in rows]
    confidences = target_confidences(target, restored, predictions, values)
    flagged = []
    for row in rows:
        known = reference.get(row.value) if reference is not None else None
        row = replace(row, mean_confidence=confidences.get(row.value))
        flagged.append(replace(row, flags=structure_flags(row, known, reference, FlagRules())))
    return flagged


def _write_files(
    case: InputCase,
    target: TargetVolume,
    geometry: Geometry,
    context: OutputContext,
    options: OutputOptions,
    out: Path,
) -> list[Path]:
    """The label map, DICOM objects and instances of one case, into ``out``."""
    names = {value: name for name, value in context.labels_by_name.items() if value != 0}
    labels = _nifti_target(target, context.regions_class_order)
    files: list[Path] = []
    if "nifti" in options.formats:
        files.append(out / f"{case.identifier}.nii.gz")
        write_target(labels, geometry, files[-1])
    files += _write_dicom(case, target, names, options, out, context.structure_types)
    if context.instance_classes:
        files += _write_instances(case.identifier, target, geometry, context, options.split_touching, out)
    return files


def _nifti_target(target: TargetVolume, class_order: tuple[int, ...]) -> TargetVolume:
    """What the NIfTI holds: a label map as is; region predictions with nnU-Net's ``regions_class_order``
    as the label map nnU-Net writes; else disjoint structures as a label map of structure numbers,
    overlapping ones as one mask per structure (4D)."""
    if not is_region_target(target):
        return target
    if class_order:
        return label_map_in_class_order(target, class_order)
    return label_map_of(target) if are_disjoint(target) else target


def _volumes(target: TargetVolume, names: dict[int, str], geometry: Geometry) -> dict[str, float]:
    """Structure name -> predicted volume in ml."""
    voxel_ml = float(np.prod(geometry.spacing_mm)) / 1000.0
    return {
        name: round(float(np.count_nonzero(structure_mask(target, value))) * voxel_ml, 4)
        for value, name in names.items()
    }


def _write_dicom(
    case: InputCase,
    labels: TargetVolume,
    names: dict[int, str],
    options: OutputOptions,
    out: Path,
    types: dict[str, str],
) -> list[Path]:
    """``CASE_seg.dcm`` and ``CASE_rtstruct.dcm`` as requested, referencing the case's DICOM series.

    With ``skip_empty_structures`` and no structure present, neither is written (both need at least one
    structure) and a warning says so.
    """
    wanted = [f for f in options.formats if f in DICOM_FORMATS]
    skip = options.skip_empty_structures
    seed = None if options.uid_seed is None else f"{options.uid_seed}|{case.series.series_instance_uid}"
    if wanted and skip and not labels.any():
        logger.warning("%s: no structure has voxels; no %s written", case.identifier, " or ".join(wanted))
        return []
    if is_region_target(labels):
        return _write_dicom_structures(case, labels, names, wanted, out, skip=skip, seed=seed, types=types)
    paths: list[Path] = []
    if "dicom-seg" in wanted:
        from autoseg.dicom.seg import write_dicom_seg

        paths.append(out / f"{case.identifier}_seg.dcm")
        write_dicom_seg(labels, case.series, names, paths[-1], skip_empty=skip, uid_seed=seed)
    if "rtstruct" in wanted:
        from autoseg.dicom.rtstruct import write_rtstruct

        paths.append(out / f"{case.identifier}_rtstruct.dcm")
        write_rtstruct(labels, case.series, names, paths[-1], skip_empty=skip, uid_seed=seed, types=types)
    return paths


def _write_dicom_structures(
    case: InputCase,
    target: TargetVolume,
    names: dict[int, str],
    wanted: list[str],
    out: Path,
    *,
    skip: bool,
    seed: str | None = None,
    types: dict[str, str] | None = None,
) -> list[Path]:
    """A region target as structures (one ROI / one segment each, overlapping where they overlap), types
    as the training data gave them or from the names, colours from the names."""
    from autoseg.dicom.names import structure_colours
    from autoseg.dicom.rtstruct import write_rtstruct_structures
    from autoseg.dicom.seg import write_dicom_seg_structures
    from autoseg.dicom.structures import Structure, structure_type

    ordered = sorted(names)
    colours = structure_colours([names[v] for v in ordered])
    structures = [
        Structure(names[v], structure_mask(target, v), structure_type(names[v], types), colour, number=v)
        for v, colour in zip(ordered, colours, strict=True)
    ]
    paths: list[Path] = []
    if "dicom-seg" in wanted:
        paths.append(out / f"{case.identifier}_seg.dcm")
        write_dicom_seg_structures(structures, case.series, paths[-1], skip_empty=skip, uid_seed=seed)
    if "rtstruct" in wanted:
        paths.append(out / f"{case.identifier}_rtstruct.dcm")
        write_rtstruct_structures(structures, case.series, paths[-1], skip_empty=skip, uid_seed=seed)
    return paths


def _write_instances(
    identifier: str,
    labels: TargetVolume,
    geometry: Geometry,
    context: OutputContext,
    split_touching: bool,
    out: Path,
) -> list[Path]:
    """``CASE_instances.nii.gz`` (an id per object; 4D, a channel per selected structure, for a region
    target), ``CASE_instances.json`` (structure, volume, centroid per object)."""
    result = label_instances(
        labels, context.instance_classes, geometry, context.labels_by_name, split_touching=split_touching
    )
    paths = [out / f"{identifier}_instances.nii.gz", out / f"{identifier}_instances.json"]
    if is_region_target(labels):
        write_label_channels(result.instance_map, geometry, paths[0])
    else:
        write_labels(result.instance_map, geometry, paths[0])
    write_json(instances_to_json(result), paths[1])
    return paths


def _write_report(
    identifier: str,
    image: FloatVolume,
    labels: TargetVolume,
    rows: list[StructureRow],
    geometry: Geometry,
    out: Path,
) -> list[Path]:
    """``CASE_report.png`` (contours on three orientations, structure table) and ``CASE_structures.json``."""
    paths = [out / f"{identifier}_report.png", out / f"{identifier}_structures.json"]
    render_report(image, labels, geometry, rows, paths[0], title=identifier)
    write_structure_table(rows, paths[1])
    return paths


def postprocess(
    labels: TargetVolume, choice: Postprocessing | None, spacing_mm: tuple[float, float, float]
) -> TargetVolume:
    """Apply the post-processing chosen on cross-validation (``postprocessing.json``), if any (per structure
    on a region target)."""
    return labels if choice is None else apply_postprocessing(labels, choice, spacing_mm)
