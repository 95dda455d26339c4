"""Errors a user can act on. The CLI prints their message, one line per problem, without a traceback."""

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


class WorkdirError(AutosegError):
    """A work-directory artifact is missing, malformed, or belongs to another stage's run."""
