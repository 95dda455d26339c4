"""What ``autoseg evaluate`` reports: the summary over cases and its files.

* ``summary.json``: conventions, labels, per case and class every metric, per class mean / median / std over
  the cases where the metric is defined (with the counts), and the mean over classes of the class means;
* ``metrics.csv``: one row per case and class;
* ``metrics.png``: per-class box plots of Dice, HD95 and surface Dice.

Undefined values (NaN in memory) are ``null`` in JSON and empty cells in CSV. Every file is written
atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.evaluation.metrics import METRIC_NAMES, ClassMetrics
from autoseg.io import write_bytes_atomically, write_json, write_text_atomically

SUMMARY_SCHEMA_VERSION = 1

CONVENTIONS = {
    "both_empty": "every ratio and distance undefined (null), left out of means, counted as undefined",
    "one_empty": "dice, iou and surface_dice 0; hd95_mm and assd_mm undefined (null), counted as undefined; "
    "precision (empty prediction) or recall (empty reference) undefined",
    "surface": "voxels with a face neighbour outside the mask; distances between voxel centres in mm",
    "hd95_mm": "max of the two directed 95th percentiles of surface distances",
    "assd_mm": "mean of the surface distances of both directions together",
    "surface_dice": "fraction of surface voxels of both masks within tolerance_mm of the other surface",
    "mean_over_classes": "mean of the per-class means (classes with no defined value left out)",
}


@dataclass(frozen=True)
class MetricStats:
    """One metric of one class over cases; statistics over the defined (non-NaN) values only."""

    mean: float
    median: float
    std: float
    defined: int
    undefined: int

    @classmethod
    def of(cls, values: list[float]) -> MetricStats:
        """Statistics of ``values``; NaN statistics when none is defined."""
        array = np.asarray(values, dtype=np.float64)
        kept = array[~np.isnan(array)]
        if kept.size == 0:
            return cls(math.nan, math.nan, math.nan, 0, int(array.size))
        return cls(
            float(kept.mean()), float(np.median(kept)), float(kept.std()), int(kept.size),
            int(array.size - kept.size),
        )  # fmt: skip


@dataclass(frozen=True)
class EvaluationSummary:
    """Metrics of every case and their summary.

    Attributes:
        labels: evaluated class value -> name.
        tolerance_mm: tolerance of the surface Dice.
        cases: case name -> class value -> metrics.
        per_class: class value -> metric name -> statistics over cases.
        mean_over_classes: metric name -> mean of the per-class means (NaN when no class has a value).
    """

    labels: dict[int, str]
    tolerance_mm: float
    cases: dict[str, dict[int, ClassMetrics]]
    per_class: dict[int, dict[str, MetricStats]]
    mean_over_classes: dict[str, float]

    @property
    def mean_dice(self) -> float:
        """Mean over classes of the mean Dice over cases (what ``find_best_configuration`` compares)."""
        return self.mean_over_classes["dice"]

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict; NaN becomes ``None``."""
        data: dict[str, Any] = nan_to_none(
            {
                "schema_version": SUMMARY_SCHEMA_VERSION,
                "tolerance_mm": self.tolerance_mm,
                "conventions": CONVENTIONS,
                "labels": {str(k): name for k, name in self.labels.items()},
                "mean_over_classes": self.mean_over_classes,
                "per_class": {
                    str(k): {metric: asdict(s) for metric, s in stats.items()}
                    for k, stats in self.per_class.items()
                },
                "cases": {
                    case: {str(k): asdict(m) for k, m in metrics.items()}
                    for case, metrics in self.cases.items()
                },
            }
        )
        return data


def summarize(
    cases: Mapping[str, Mapping[int, ClassMetrics]], labels: Mapping[int, str], tolerance_mm: float
) -> EvaluationSummary:
    """Per-class statistics over cases and the mean over classes of every metric in :data:`METRIC_NAMES`."""
    per_class = {
        k: {m: MetricStats.of([float(getattr(c[k], m)) for c in cases.values()]) for m in METRIC_NAMES}
        for k in labels
    }
    mean_over_classes = {}
    for metric in METRIC_NAMES:
        means = [per_class[k][metric].mean for k in labels if not math.isnan(per_class[k][metric].mean)]
        mean_over_classes[metric] = float(np.mean(means)) if means else math.nan
    return EvaluationSummary(
        labels=dict(labels),
        tolerance_mm=tolerance_mm,
        cases={case: dict(metrics) for case, metrics in cases.items()},
        per_class=per_class,
        mean_over_classes=mean_over_classes,
    )


def write_report(summary: EvaluationSummary, folder: Path) -> None:
    """Write ``summary.json``, ``metrics.csv`` and ``metrics.png`` into ``folder`` (created if needed)."""
    write_json(summary.to_json(), folder / "summary.json")
    write_text_atomically(metrics_csv(summary), folder / "metrics.csv")
    plot_metrics(summary, folder / "metrics.png")


def metrics_csv(summary: EvaluationSummary) -> str:
    """CSV text: ``case,label,name`` then every metric and the two empty flags; undefined cells empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "label", "name", *METRIC_NAMES, "prediction_empty", "reference_empty"])
    for case, metrics in summary.cases.items():
        for k, m in metrics.items():
            values = [_csv_number(float(getattr(m, name))) for name in METRIC_NAMES]
            writer.writerow(
                [case, k, summary.labels[k], *values, int(m.prediction_empty), int(m.reference_empty)]
            )
    return buffer.getvalue()


def plot_metrics(summary: EvaluationSummary, path: Path) -> None:
    """Per-class box plots of Dice, HD95 and surface Dice over cases (defined values only), as a PNG."""
    from matplotlib.figure import Figure  # Agg canvas of a bare Figure: no pyplot, no global backend state

    panels = (
        ("dice", "Dice"),
        ("hd95_mm", "HD95 (mm)"),
        ("surface_dice", f"surface Dice @ {summary.tolerance_mm:g} mm"),
    )
    figure = Figure(figsize=(4 + 1.2 * len(summary.labels) * len(panels) / 2, 4.5))
    names = list(summary.labels.values())
    for index, (metric, title) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        data = [_defined(summary, k, metric) for k in summary.labels]
        if any(len(d) for d in data):
            axes.boxplot([d if len(d) else [math.nan] for d in data], showmeans=True)
        axes.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        axes.set_title(title)
        if metric != "hd95_mm":
            axes.set_ylim(0.0, 1.02)
    figure.suptitle(f"{len(summary.cases)} case(s)")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=90)
    write_bytes_atomically(png.getvalue(), path)


def _defined(summary: EvaluationSummary, label: int, metric: str) -> list[float]:
    values = [float(getattr(metrics[label], metric)) for metrics in summary.cases.values()]
    return [v for v in values if not math.isnan(v)]


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.12g}"


def nan_to_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (also inside dicts, lists, tuples) replaced by ``None``,
    for strict JSON."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value
