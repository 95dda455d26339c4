"""Routing: which route (model, formats, destinations) a complete series takes. The first route whose every
criterion matches wins; an empty criterion matches anything; patterns are case-insensitive shell wildcards."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoseg.serve.config import Route


@dataclass(frozen=True)
class SeriesInfo:
    """What routing looks at: from the series' first instance and its association."""

    modality: str
    body_part: str
    description: str
    calling_ae: str

    def describe(self) -> str:
        """For log lines: no patient data, only what routing saw."""
        return (
            f"modality={self.modality or '-'} body_part={self.body_part or '-'} "
            f"calling_ae={self.calling_ae} description={self.description!r}"
        )


def choose_route(routes: Sequence[Route], series: SeriesInfo) -> Route | None:
    """The first route matching ``series``, or ``None``."""
    for route in routes:
        if (
            _matches(route.modality, series.modality)
            and _matches(route.body_part, series.body_part)
            and _matches(route.series_description, series.description)
            and _matches(route.calling_ae, series.calling_ae)
        ):
            return route
    return None


def series_info(folder: Path, calling_ae: str) -> SeriesInfo | None:
    """The routing attributes of the first readable instance in ``folder`` (``None``: none readable)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    for path in sorted(folder.glob("*.dcm")):
        try:
            header = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            continue
        return SeriesInfo(
            modality=str(header.get("Modality", "") or ""),
            body_part=str(header.get("BodyPartExamined", "") or ""),
            description=str(header.get("SeriesDescription", "") or ""),
            calling_ae=calling_ae,
        )
    return None


def _matches(patterns: Sequence[str], value: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(value.upper(), p.upper()) for p in patterns)
