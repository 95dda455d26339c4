"""Bulk prediction on a Dask cluster (``autoseg predict-cluster``; optional extra ``autoseg[distributed]``).

Reads: the model (a work directory or a model file) and the input cases, from folders every worker sees.
Writes: each case's usual outputs into the shared output folder, by the worker that predicted it (the usual
atomic writes), and ``predict.json`` (by the client, at the end). One task per case; each worker loads the
model once (a worker plugin); a task that raises is retried, a dead worker's task moves to another; the
client shows the progress. Why Dask and not Ray: ``docs/scale.md``.

Importing the package imports nothing heavy; Dask is imported when a cluster is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg import lazy_exports

if TYPE_CHECKING:
    from autoseg.distributed.cluster import ClusterOptions, run_predict_cluster

__all__ = ["ClusterOptions", "run_predict_cluster"]
__getattr__ = lazy_exports(__name__, {"ClusterOptions": "cluster", "run_predict_cluster": "cluster"})
