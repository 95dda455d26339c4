"""The one error class of the DICOM layer."""

from __future__ import annotations

from autoseg.errors import AutosegError


class DicomError(AutosegError):
    """A DICOM file or folder is not usable as it is (missing slices, wrong object, mismatched frame...).

    The message names the file or folder, the problem and, where there is one, what to do about it.
    """
