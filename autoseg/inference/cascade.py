"""Predicting a cascade stage (``3d_cascade_fullres``): its previous stage (``3d_lowres``) runs first on the
same case, and its prediction joins the image as one-hot channels, exactly as in training
(:mod:`autoseg.training.cascade`).

The previous stage's probabilities go back to the input's grid class by class (its label map, the argmax,
as the fold validation writes it, without post-processing), then onto the cascade stage's preprocessed grid
(:func:`autoseg.preprocessing.case.target_to_preprocessed`: canonical orientation, crop box, the plan's
per-class label resampling). So ``predict`` feeds the cascade network what its training fed it: the
previous stage's label map on the original grid, brought to the stage's grid the same way. Class by class,
the previous stage never holds ``(K, Z, Y, X)`` float32 on the input's grid: one class at a time, the best
score so far and the label map.
"""

from __future__ import annotations

import numpy as np

from autoseg.plans import ConfigurationPlan
from autoseg.preprocessing.case import CaseProperties, restore_probabilities, target_to_preprocessed
from autoseg.regions import REGION_THRESHOLD
from autoseg.training.cascade import with_previous_stage
from autoseg.types import FloatVolume, TargetVolume


def previous_stage_target(
    probabilities: FloatVolume, properties: CaseProperties, *, regions: bool
) -> TargetVolume:
    """The previous stage's prediction on the input's grid: the label map of ``(K, ...)`` class
    probabilities in its preprocessed space (argmax, ties to the lower class, as
    :func:`autoseg.inference.ensemble.labels_from_probabilities`), or with ``regions`` each structure's
    sigmoid at least 0.5 (``(K, ...)`` uint8), restored one channel at a time."""
    if regions:
        return np.stack(
            [
                (restore_probabilities(p[None], properties, regions=True)[0] >= REGION_THRESHOLD).astype(
                    np.uint8
                )
                for p in probabilities
            ]
        )
    classes = probabilities.shape[0]
    # channel 0 restored as a one-channel "softmax": background 1 outside the crop; the others 0 outside
    best = restore_probabilities(probabilities[:1], properties)[0]
    labels = np.zeros(best.shape, np.uint8 if classes <= 256 else np.uint16)
    for k in range(1, classes):
        score = restore_probabilities(probabilities[k : k + 1], properties, regions=True)[0]
        better = score > best
        labels[better] = k
        np.maximum(best, score, out=best)
    return labels


def cascade_input(
    image: FloatVolume,
    properties: CaseProperties,
    plan: ConfigurationPlan,
    previous_probabilities: FloatVolume,
    previous_properties: CaseProperties,
    *,
    channels: int,
    regions: bool,
) -> FloatVolume:
    """The cascade network's input for one case: its preprocessed ``(C, Z, Y, X)`` image (``properties``,
    ``plan``) with the previous stage's prediction (its probabilities in its own preprocessed space,
    ``previous_properties``) as ``channels`` one-hot channels after the image's."""
    target = previous_stage_target(previous_probabilities, previous_properties, regions=regions)
    projected = target_to_preprocessed(target, properties, plan)
    return with_previous_stage(image, projected, channels, regions=regions)
