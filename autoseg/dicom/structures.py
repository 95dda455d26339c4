"""What the DICOM writers write: a sequence of structures, each a boolean mask on the series grid.

A :class:`Structure` is one RTSTRUCT ROI or one SEG segment. Structures may overlap (a GTV inside a CTV
inside a PTV, an organ inside BODY): every structure keeps its own mask, so overlapping structures become
one ROI each in an RTSTRUCT and overlapping BINARY segments in a SEG. :func:`structures_from_labels` is the
convenience path from a label map (what ``autoseg predict`` has when its classes are exclusive).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoseg.dicom.names import RGB, ROI_TYPES, check_roi_name, roi_interpreted_type, structure_colours
from autoseg.errors import DicomError
from autoseg.types import BoolVolume, LabelVolume

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Structure:
    """One structure to write.

    Attributes:
        name: ROI name / segment label (checked by the writers: at most 64 characters, no backslash or
            control characters).
        mask: ``(Z, Y, X)`` bool on the series grid (Z in slice order, Y = rows, X = columns).
        interpreted_type: RTROIInterpretedType (``ORGAN``, ``GTV``, ``CTV``, ``PTV``, ``EXTERNAL``, ...).
        colour: display colour, RGB 0..255: RTSTRUCT ROIDisplayColor and, converted to CIELab, the SEG's
            RecommendedDisplayCIELabValue.
        number: RTSTRUCT ROI number (``None``: its position in the sequence, from 1). SEG segments are
            always numbered 1, 2, 3... in sequence order, as DICOM requires.
    """

    name: str
    mask: BoolVolume
    interpreted_type: str = "ORGAN"
    colour: RGB = (255, 0, 0)
    number: int | None = None

    @property
    def is_empty(self) -> bool:
        """True when the mask has no voxel."""
        return not bool(np.any(self.mask))


def structures_from_labels(
    labels: LabelVolume, label_names: Mapping[int, str], types: Mapping[str, str] | None = None
) -> list[Structure]:
    """One structure per label of a label map, in increasing label value.

    Every label in ``label_names`` becomes a structure (an empty one when it has no voxels), plus one named
    ``label_<v>`` per label present but not named. The ROI number is the label value; the type comes from
    ``types`` where it names one (the dataset's ``structure_types``: a mapping file's or the source
    RTSTRUCTs'), else from the name (:func:`autoseg.dicom.names.roi_interpreted_type`), and the colours from
    :func:`autoseg.dicom.names.structure_colours` (conventional where there is one, distinct for any number).

    Args:
        labels: ``(Z, Y, X)`` unsigned label map.
        label_names: label value -> name (background 0 is ignored).
    """
    values = sorted({v for v in label_names if v > 0} | {int(v) for v in np.unique(labels) if v > 0})
    names = [label_names.get(value, f"label_{value}") for value in values]
    return [
        Structure(name, labels == value, structure_type(name, types), colour, number=value)
        for value, name, colour in zip(values, names, structure_colours(names), strict=True)
    ]


def structure_type(name: str, types: Mapping[str, str] | None) -> str:
    """The RTROIInterpretedType of structure ``name``: ``types[name]`` when it is one of DICOM's defined
    terms, else the one its name implies (:func:`autoseg.dicom.names.roi_interpreted_type`)."""
    given = (types or {}).get(name)
    return given if given in ROI_TYPES else roi_interpreted_type(name)


def check_structures(structures: Sequence[Structure], shape: tuple[int, int, int], where: str) -> None:
    """Refuse structures a writer cannot write: masks off the series grid, repeated ROI numbers or names.

    Names go through :func:`autoseg.dicom.names.check_roi_name` (its warnings are logged).

    Raises:
        StructureNameError: an empty name, over 64 characters, a backslash or a control character.
        DicomError: naming the structure and what is wrong.
    """
    for structure in structures:
        for warning in check_roi_name(structure.name):
            logger.warning("%s: %s", where, warning)
        if structure.mask.shape != shape:
            raise DicomError(
                f"{where}: structure '{structure.name}' has a mask of shape {structure.mask.shape}, "
                f"not the series grid (Z, Y, X) = {shape}"
            )
        if len(structure.colour) != 3 or not all(0 <= c <= 255 for c in structure.colour):
            raise DicomError(
                f"{where}: structure '{structure.name}' has colour {structure.colour}, not RGB 0..255"
            )
    _refuse_repeats([s.name for s in structures], "name", where)
    _refuse_repeats(roi_numbers(structures), "ROI number", where)


def roi_numbers(structures: Sequence[Structure]) -> list[int]:
    """Each structure's ROI number: its own, or its position in the sequence (from 1)."""
    return [s.number if s.number is not None else index for index, s in enumerate(structures, start=1)]


def without_empty(structures: Iterable[Structure]) -> list[Structure]:
    """The structures that have at least one voxel."""
    return [s for s in structures if not s.is_empty]


def overlaps(structures: Sequence[Structure]) -> bool:
    """True when any voxel belongs to more than one structure."""
    if not structures:
        return False
    count = np.zeros(structures[0].mask.shape, np.uint16)
    for structure in structures:
        count += structure.mask.astype(np.uint16)
    return bool(np.any(count > 1))


def _refuse_repeats(values: Sequence[object], what: str, where: str) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise DicomError(
            f"{where}: structures repeat the {what}(s) {', '.join(repeated)}; each must be unique"
        )
