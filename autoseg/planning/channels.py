"""What each input channel was trained on: its modality and foreground intensity range, kept in the plan
(``Plans.channels``) so that a model can tell when ``predict`` is handed another modality."""

from __future__ import annotations

from autoseg.fingerprint import Fingerprint
from autoseg.plans import ChannelRecord, channel_modality


def channel_records(fingerprint: Fingerprint) -> tuple[ChannelRecord, ...]:
    """One record per channel: the modality its name says and the dataset-wide foreground 0.5/50/99.5
    percentiles (raw units, HU for CT)."""
    return tuple(
        ChannelRecord(
            name,
            channel_modality(name),
            round(stats.percentile_00_5, 6),
            round(stats.median, 6),
            round(stats.percentile_99_5, 6),
        )
        for name, stats in zip(fingerprint.channel_names, fingerprint.intensity, strict=True)
    )
