"""Modality sense: does an input look like what the model was trained on (CT in HU, or MR)?

The plan records each channel's modality and foreground range (``Plans.channels``). Before a case's networks
run, ``predict`` checks it:

* a DICOM series: its Modality tag (CT, MR) against the channel's modality;
* an image file: its intensities. A CT field of view holds air (-1000 HU), lung or at least fat (about
  -100 HU), so a CT model's input whose lowest 0.5% of voxels lie above :data:`CT_LOWEST_HU` holds neither:
  an MR scan (magnitude images are never negative), an already normalised image, or a CT without its rescale
  applied. (A CT cut to a window above fat, or skull-stripped to a background of 0, is flagged too: a
  warning, or a refusal with ``--strict``.) MR images have no large negative values, so an MR model's input
  with at least :data:`MR_MAX_AIR_FRACTION` of its voxels below :data:`AIR_HU` holds Hounsfield units (air,
  padding at -1024 or -3024) - unless the training images' own foreground reached below that value.

A mismatch is a warning naming the case (``predict --strict`` refuses the case); a channel of another modality
(PET, ``noNorm``...) is not checked. Each case's check goes into ``predict.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from autoseg.plans import ChannelRecord, Plans, channel_modality
from autoseg.types import FloatVolume

logger = logging.getLogger(__name__)

CT_LOWEST_HU = -50.0
"""A CT image's 0.5th percentile lies below this: air, lung or fat (about -100 HU) reach below it. Fat-only
fields of view (a CT cropped inside the body) have their 0.5th percentile near -120 HU, so the threshold sits
above fat, not between fat and air."""

AIR_HU = -500.0
"""Below this, a voxel is air (or padding) in Hounsfield units."""

MR_MAX_AIR_FRACTION = 0.01
"""An MR image never has this fraction of its voxels below :data:`AIR_HU`."""

SAMPLE_VOXELS = 1_000_000
"""Voxels looked at per channel (an even stride through the image)."""


@dataclass(frozen=True)
class InputCheck:
    """The verdict on one case's input.

    Attributes:
        case: the case identifier.
        expected: the modality of each channel, as trained.
        found: what the input showed (the DICOM Modality tag, or its intensity summary per channel).
        verdict: ``ok``, ``mismatch``, or ``unchecked`` (no channel of a known modality).
        reason: why, in words, for the warning and ``predict.json``.
        refused: whether ``--strict`` refused the case.
    """

    case: str
    expected: tuple[str, ...]
    found: str
    verdict: Literal["ok", "mismatch", "unchecked"]
    reason: str
    refused: bool = False


def check_input(
    case: str, image: FloatVolume, channels: Sequence[ChannelRecord], dicom_modality: str | None = None
) -> InputCheck:
    """Whether ``image`` looks like the modality each channel was trained on (see the module docstring).

    Args:
        case: the case identifier, for the record.
        image: ``(C, Z, Y, X)`` float32, raw intensities (HU for CT), before any preprocessing.
        channels: the plan's channel records (``Plans.channels``).
        dicom_modality: the series' Modality tag for a DICOM input (one channel), else ``None``.
    """
    expected = tuple(c.modality for c in channels)
    if all(m == "other" for m in expected):
        return InputCheck(case, expected, "", "unchecked", "the model's channels are neither CT nor MR")
    tag = (dicom_modality or "").upper()
    if tag in ("CT", "MR") and len(channels) == 1:
        found = f"DICOM Modality {tag}"
        if channels[0].modality == tag:
            return _verdict(case, expected, found, [])
        return _verdict(case, expected, found, [f"the DICOM series is {tag}; {_trained(channels[0])}"])
    summaries, problems = [], []
    for index, record in enumerate(channels):
        low, high, air = intensity_summary(image[index])
        summaries.append(f"channel {index}: 0.5-99.5% [{low:.4g}, {high:.4g}], {100 * air:.3g}% < {AIR_HU:g}")
        problem = _intensity_problem(record, low, air)
        if problem:
            problems.append(f"channel {index} ({problem}); {_trained(record)}")
    return _verdict(case, expected, "; ".join(summaries), problems)


def check_case(
    case: str,
    image: FloatVolume,
    channels: Sequence[ChannelRecord],
    dicom_modality: str | None,
    *,
    strict: bool,
) -> InputCheck:
    """:func:`check_input`, with a warning naming the case on a mismatch, or (``strict``) the mismatch marked
    ``refused`` for the caller to skip the case."""
    check = check_input(case, image, channels, dicom_modality)
    if check.verdict != "mismatch":
        return check
    if strict:
        return replace(check, refused=True)
    logger.warning(
        "%s: the input does not look like the model's modality, so the prediction may be meaningless "
        "(predict --strict refuses such cases): %s",
        case,
        check.reason,
    )
    return check


def model_channels(plans: Plans) -> tuple[ChannelRecord, ...]:
    """The plan's channel records; from the channel names where a plan has none."""
    return plans.channels or tuple(ChannelRecord(n, channel_modality(n)) for n in plans.channel_names)


def intensity_summary(channel: np.ndarray) -> tuple[float, float, float]:
    """``(0.5th percentile, 99.5th percentile, fraction below AIR_HU)`` of a ``(Z, Y, X)`` channel, from an
    even sample of at most :data:`SAMPLE_VOXELS` voxels (NaN left out)."""
    flat = channel.reshape(-1)
    values = flat[:: max(1, flat.size // SAMPLE_VOXELS)].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 0.0, 0.0
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(high), float(np.mean(values < AIR_HU))


def _intensity_problem(record: ChannelRecord, low: float, air_fraction: float) -> str:
    if record.modality == "CT" and low > CT_LOWEST_HU:
        return (
            f"its lowest 0.5% of voxels lie above {CT_LOWEST_HU:g} ({low:.4g}): no fat and no air, so not "
            "CT in HU; an MR or normalised image, or a CT without its rescale applied"
        )
    trained_low = record.foreground_percentile_00_5
    trained_air = trained_low is not None and trained_low < AIR_HU
    if record.modality == "MR" and air_fraction >= MR_MAX_AIR_FRACTION and not trained_air:
        return f"{100 * air_fraction:.3g}% of its voxels lie below {AIR_HU:g}: Hounsfield units (CT), not MR"
    return ""


def _trained(record: ChannelRecord) -> str:
    trained = f"the model was trained on {record.modality} (channel '{record.name}'"
    if record.foreground_percentile_00_5 is not None and record.foreground_percentile_99_5 is not None:
        trained += (
            f", foreground 0.5-99.5% [{record.foreground_percentile_00_5:.4g}, "
            f"{record.foreground_percentile_99_5:.4g}]"
        )
    return trained + ")"


def _verdict(case: str, expected: tuple[str, ...], found: str, problems: list[str]) -> InputCheck:
    if problems:
        return InputCheck(case, expected, found, "mismatch", "; ".join(problems))
    return InputCheck(case, expected, found, "ok", f"looks like {'/'.join(expected)}")
