"""Errors a user can act on. The CLI prints their message, one line per problem, without a traceback.

Placement rule: every :class:`AutosegError` subclass is defined here, in this one module, and the stages
import it from here (``tests/test_errors.py`` enforces it). A stage's error is named after the stage or the
artifact it refuses (``EvaluationError``, ``ModelError``, ``DicomError``); its docstring says when it is
raised, and its messages name the file and say what to do.
"""

from __future__ import annotations


class AutosegError(Exception):
    """Base class of every error caused by user input. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def lines(self) -> list[str]:
        """The message followed by one line per detail, for the CLI to print."""
        return [self.message, *(f"  {d}" for d in self.details)]


class UsageError(AutosegError):
    """The command line asks for something impossible (unknown name, missing folder, bad value)."""

    exit_code = 2


class CatalogueError(UsageError):
    """``datasets.json`` is missing or malformed, or a dataset name is not in it."""


class DatasetError(AutosegError):
    """A dataset folder or its ``dataset.json`` is not usable as it is."""


class ImageReadError(AutosegError):
    """An image or label file cannot be read, or its content is not what autoseg expects."""


class ImageWriteError(AutosegError):
    """An output file cannot be written."""


class FingerprintError(AutosegError):
    """``fingerprint.json`` is missing, malformed or from an incompatible version."""


class PlansError(AutosegError):
    """``plans.json`` is missing, from an incompatible version, or inconsistent."""


class WorkdirError(AutosegError):
    """A work-directory artifact is missing, malformed, or belongs to another stage's run."""


class PreprocessError(AutosegError):
    """Preprocessing cannot run (no plan, a plan made for another fingerprint, ...), or a stored case is
    missing or malformed."""


# ------------------------------------------------------------------------------------------- inference


class ModelError(AutosegError):
    """A trained model cannot be found, read or trusted."""


class PredictInputError(AutosegError):
    """The input to ``predict`` is missing, incomplete or ambiguous."""


# ------------------------------------------------------------------------------------------- evaluation


class EvaluationError(AutosegError):
    """Predictions and references cannot be evaluated together (missing case, other shape or geometry)."""


class BestConfigurationError(AutosegError):
    """Nothing to compare: no trained configuration with validation predictions."""


# ------------------------------------------------------------------------------------------- post-processing


class PostprocessingError(AutosegError):
    """``postprocessing.json`` is missing or malformed, or a step cannot be applied."""


# ------------------------------------------------------------------------------------------- DICOM


class DicomError(AutosegError):
    """A DICOM file or folder is not usable as it is (missing slices, wrong object, mismatched frame...).

    The message names the file or folder, the problem and, where there is one, what to do about it.
    """


class StructureNameError(UsageError):
    """A structure (ROI or segment) name that DICOM cannot hold: empty, over 64 characters, a backslash or a
    control character. The message names the name."""


class CheckpointError(AutosegError):
    """A checkpoint is missing, unreadable, or not one autoseg wrote."""


class WorkerError(AutosegError):
    """An augmentation worker died or stopped answering."""


class SplitsError(AutosegError):
    """``splits.json`` does not match the dataset, or a groups file is unusable."""


class FolderInUseError(AutosegError):
    """Another autoseg process holds the lock of a folder this one would write (an output folder of
    ``predict``, a fold's run folder): the message names the folder and the holder's pid."""


# ------------------------------------------------------------------------------------------- serve


class ServeConfigError(UsageError):
    """The ``autoseg serve`` configuration (file or flags) is invalid; the message names the key."""


class ServeError(AutosegError):
    """The DICOM node cannot start or run: the spool is unusable, the port is taken, a certificate is
    unreadable. The message names the file or the address."""


# ------------------------------------------------------------------------------------ predict resources


class MemoryLimitError(AutosegError):
    """A case would need more memory than is available (estimated from its header before any voxel is
    read): the message names the file, its size and the estimate."""


class FlaggedCasesError(AutosegError):
    """``predict --strict``: a predicted case has review flags (structures far outside the training
    reference, a replaced input voxel). Its outputs are written; the message lists each case and why."""


# ------------------------------------------------------------------------------------------- configurations


class ConfigurationNotPlannedError(PlansError, UsageError):
    """A configuration asked for (``-c``), or needed as the default, is not in ``plans.json``: a usage
    error (exit 2) in every command; the message lists the planned configurations."""

    exit_code = 2
