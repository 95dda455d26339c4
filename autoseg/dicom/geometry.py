"""The one place that converts between DICOM patient coordinates and array indices.

DICOM lists points ``(x, y, z)`` in the LPS patient frame (mm). autoseg's :class:`~autoseg.io.Geometry` lists
everything ``(z, y, x)``: array index ``(z, row, column)`` maps to the LPS point
``origin_mm + direction @ (spacing_mm * index)``, all in ``(z, y, x)`` order. For a DICOM slice, array axis X
(the column index) runs along the first ImageOrientationPatient triple (the row direction), array axis Y (the
row index) along the second triple, and array axis Z along the slice normal (row x column direction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from autoseg.io import Geometry

Points = npt.NDArray[np.float64]
"""``(N, 3)`` float64 points."""


def slice_axes(orientation: Sequence[float]) -> tuple[Points, Points, Points]:
    """Unit row direction, column direction and slice normal (each ``(3,)``, LPS ``x, y, z``) of an IOP."""
    values = np.asarray(orientation, dtype=np.float64)
    row = values[:3] / np.linalg.norm(values[:3])
    column = values[3:] / np.linalg.norm(values[3:])
    return row, column, np.cross(row, column)


def geometry_from_dicom(
    orientation: Sequence[float],
    first_position_xyz: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_spacing_mm: float,
) -> Geometry:
    """The :class:`Geometry` of a stack of DICOM slices.

    Args:
        orientation: ImageOrientationPatient, 6 direction cosines (row direction, then column direction).
        first_position_xyz: ImagePositionPatient of the slice at array z 0, LPS ``(x, y, z)`` mm.
        pixel_spacing: PixelSpacing, ``(row spacing, column spacing)`` = ``(y, x)`` spacing in mm.
        slice_spacing_mm: distance between neighbouring slices along the normal, mm (> 0).
    """
    row, column, normal = slice_axes(orientation)
    itk = np.stack([row, column, normal], axis=1)  # rows physical x, y, z; columns index i, j, k
    direction = itk[::-1, ::-1]
    return Geometry(
        spacing_mm=(float(slice_spacing_mm), float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin_mm=(float(first_position_xyz[2]), float(first_position_xyz[1]), float(first_position_xyz[0])),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def index_to_patient(geometry: Geometry, index_zyx: npt.ArrayLike) -> Points:
    """LPS patient points ``(N, 3)``, DICOM ``(x, y, z)`` mm, of array indices ``(N, 3)`` ``(z, y, x)``.

    Indices may be fractional: index ``(0, 0, 0)`` is the centre of the first voxel.
    """
    index = np.atleast_2d(np.asarray(index_zyx, dtype=np.float64))
    scaled = index * np.asarray(geometry.spacing_mm, dtype=np.float64)
    physical_zyx = np.asarray(geometry.origin_mm, dtype=np.float64) + scaled @ geometry.direction_matrix().T
    result: Points = physical_zyx[:, ::-1].copy()
    return result


def patient_to_index(geometry: Geometry, points_xyz: npt.ArrayLike) -> Points:
    """Fractional array indices ``(N, 3)`` ``(z, y, x)`` of LPS points ``(N, 3)``, DICOM ``(x, y, z)`` mm.

    The exact inverse of :func:`index_to_patient` (the direction may be any invertible matrix).
    """
    points = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))[:, ::-1]
    offset = points - np.asarray(geometry.origin_mm, dtype=np.float64)
    scaled = np.linalg.solve(geometry.direction_matrix(), offset.T).T
    result: Points = scaled / np.asarray(geometry.spacing_mm, dtype=np.float64)
    return result
