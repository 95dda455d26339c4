"""What runs on a Dask worker of ``predict-cluster``: the model, loaded once per worker (a worker plugin), and
the task that predicts one case into the shared output folder. Imports Dask (the ``distributed`` extra)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from autoseg.inference.inputs import InputCase
from autoseg.inference.modality import InputCheck
from autoseg.inference.outputs import CaseOutput
from autoseg.inference.stage import Ensemble, PredictRequest, load_ensemble, predict_cases

logger = logging.getLogger(__name__)

CaseHook = Callable[[str], None]
"""Called with the case's identifier on the worker before the case is predicted (fault injection in tests;
an exception it raises fails the attempt, as any other would)."""


@dataclass(frozen=True)
class CaseResult:
    """What one task sends back to the client."""

    identifier: str
    output: CaseOutput | None
    failures: list[str]
    checks: list[InputCheck]
    worker: str
    device: str


class ModelPlugin(WorkerPlugin):
    """Loads the request's model once on each worker (also on a worker that joins or restarts later) and
    keeps it for the tasks. ``torch`` threads: ``request.threads`` (default: torch's)."""

    def __init__(self, request: PredictRequest) -> None:
        self.request = request
        self.ensemble: Ensemble | None = None

    def setup(self, worker: object) -> None:
        import torch

        if self.request.threads is not None:
            torch.set_num_threads(self.request.threads)
        self.ensemble = load_ensemble(self.request)
        logger.info("%s: model loaded on %s", worker, self.ensemble.members[0].settings.device)

    def teardown(self, worker: object) -> None:
        self.ensemble = None


def predict_case_task(case: InputCase, plugin_name: str, before_case: CaseHook | None = None) -> CaseResult:
    """Predict one case with the worker's model into the request's output folder (the usual atomic
    per-case writes). A data problem (unreadable input, refused modality) comes back in ``failures`` and is
    not retried; any other exception fails the attempt, which Dask retries."""
    worker = get_worker()
    plugin = worker.plugins[plugin_name]
    if not isinstance(plugin, ModelPlugin) or plugin.ensemble is None:
        raise RuntimeError(f"worker {worker.address} has no model loaded (plugin {plugin_name})")
    if before_case is not None:
        before_case(case.identifier)
    outputs, failures, checks = predict_cases([case], plugin.ensemble, plugin.request, show_progress=False)
    device = plugin.ensemble.members[0].settings.device
    return CaseResult(
        case.identifier, outputs[0] if outputs else None, failures, checks, worker.address, device
    )
