"""``run_predict_cluster``: the client of ``autoseg predict-cluster``.

It finds the cases (and, with ``--skip-existing``, leaves out those already written whole), registers a
:class:`~autoseg.distributed.worker.ModelPlugin` (each worker loads the model once), submits one task per
case with ``retries``, shows the progress as the tasks finish, and writes ``predict.json``. The workers read
the inputs and the model and write the outputs themselves, so all three must be on a folder every worker
sees under the same path. The client holds the output folder's lock for the whole run (a second predict
into the folder is refused).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from autoseg.errors import AutosegError, UsageError
from autoseg.inference.inputs import InputCase, find_input_cases
from autoseg.inference.modality import InputCheck
from autoseg.inference.outputs import CaseOutput
from autoseg.inference.sharding import output_settings, select_cases
from autoseg.inference.stage import PredictRequest, finish_run, load_ensemble, predict_record
from autoseg.io import prepare_output_folder, write_json
from autoseg.workdir import folder_lock

if TYPE_CHECKING:
    from distributed import Client, Future

    from autoseg.distributed.worker import CaseHook, CaseResult

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'autoseg[distributed]'"


@dataclass(frozen=True)
class ClusterOptions:
    """Where to run and how hard to try.

    Attributes:
        address: the Dask scheduler, ``tcp://HOST:8786`` (``dask scheduler`` and one ``dask worker`` per GPU
            or CPU node, ``docs/scale.md``); ``None``: start a local cluster of ``local_workers`` processes.
        local_workers: worker processes of the local cluster (one thread each).
        retries: further attempts of a case whose task raised (a worker that died moves its task to
            another worker, up to Dask's ``allowed-failures``); after them the case is reported as failed.
        gpus_per_case: ``1``: each task needs one ``GPU`` resource (workers started with ``--resources
            GPU=1``), so a GPU predicts one case at a time; ``0``: no resource asked.
        connect_timeout_s: how long to try to reach the scheduler.
    """

    address: str | None = None
    local_workers: int = 2
    retries: int = 2
    gpus_per_case: int = 0
    connect_timeout_s: float = 30.0


def run_predict_cluster(
    request: PredictRequest,
    options: ClusterOptions,
    *,
    show_progress: bool = True,
    before_case: CaseHook | None = None,
) -> list[CaseOutput]:
    """Predict every case of ``request.inputs`` on the cluster into ``request.output``; the outputs are
    those of :func:`~autoseg.inference.stage.run_predict` (same files, same ``predict.json`` plus
    ``cluster``).

    Args:
        before_case: called on the worker before each case (fault injection in tests).

    Raises:
        UsageError: the extra is not installed, the scheduler cannot be reached, ``--shard`` given.
        AutosegError: some cases failed (after their retries); the others are written.
    """
    if request.shard is not None:
        raise UsageError("predict-cluster spreads the cases itself; --shard is for independent workers")
    _require_dask()
    request = replace(  # the workers' working folders differ from the client's
        request,
        inputs=request.inputs.resolve(),
        output=request.output.resolve(),
        model=request.model.resolve(),
    )
    prepare_output_folder(request.output)
    with folder_lock(request.output, "predict-cluster"):
        ensemble = load_ensemble(replace(request, device="cpu"))  # the client: labels, settings, record
        channels = len(ensemble.members[0].model.plans.channel_names)
        settings = output_settings(predict_record(ensemble, [], [], []))
        cases, skipped = select_cases(
            find_input_cases(request.inputs, channels),
            None,
            request.outputs,
            request.output,
            settings if request.skips_existing else None,
        )
        request.outputs.check_inputs(cases, [n for n, v in ensemble.labels.items() if v != 0])
        with _client(options) as client:
            results, failures = _run_tasks(client, cases, request, options, show_progress, before_case)
            address = str(client.scheduler.address) if client.scheduler else ""
        outputs = [r.output for r in results if r.output is not None]
        checks: list[InputCheck] = [c for r in results for c in r.checks]
        record = predict_record(ensemble, outputs, failures, checks) | {
            "skipped": skipped,
            "cluster": {
                "scheduler": address,
                "retries": options.retries,
                "cases_by_worker": _cases_by_worker(results),
                "devices": sorted({r.device for r in results}),
            },
        }
        write_json(record, request.record_path)
    finish_run(outputs, failures, len(cases), strict=request.strict)
    return outputs


def _run_tasks(
    client: Client,
    cases: list[InputCase],
    request: PredictRequest,
    options: ClusterOptions,
    show_progress: bool,
    before_case: CaseHook | None,
) -> tuple[list[CaseResult], list[str]]:
    """Register the model plugin, submit one task per case, collect the results as they finish."""
    from distributed import as_completed

    from autoseg.distributed.worker import ModelPlugin, predict_case_task

    name = f"autoseg-model-{uuid.uuid4().hex[:12]}"
    try:
        client.register_plugin(ModelPlugin(request), name=name)
    except AutosegError as error:  # load_model's own error, raised on a worker (the model not on its disk)
        raise type(error)(
            f"a worker could not load the model: {error.message}", details=error.details
        ) from None
    resources = {"GPU": options.gpus_per_case} if options.gpus_per_case else None
    futures: dict[Future[Any], str] = {}
    for case in cases:
        future = client.submit(
            predict_case_task,
            case,
            name,
            before_case,
            key=f"autoseg-predict-{case.identifier}-{name[-12:]}",
            retries=options.retries,
            resources=resources,
            pure=False,
        )
        futures[future] = case.identifier
    results: list[CaseResult] = []
    failures: list[str] = []
    bar = tqdm(total=len(cases), desc="predict-cluster", unit="case", disable=not show_progress)
    try:
        for future in as_completed(list(futures)):
            identifier = futures[future]
            try:
                result: CaseResult = future.result()
            except Exception as error:  # the task's own exception, re-raised on the client after retries
                failures.append(_failure_line(identifier, error, options.retries))
            else:
                results.append(result)
                failures += result.failures
            bar.update()
    finally:
        bar.close()
        with contextlib.suppress(Exception):  # the worker plugins' models are freed; best effort
            client.unregister_worker_plugin(name)
    order = {c.identifier: i for i, c in enumerate(cases)}
    results.sort(key=lambda r: order[r.identifier])
    return results, failures


def _failure_line(identifier: str, error: BaseException, retries: int) -> str:
    """``CASE: failed on the cluster after N attempts (Type: message)``."""
    message = error.message if isinstance(error, AutosegError) else str(error)
    attempts = f"{retries + 1} attempt(s)"
    return f"{identifier}: failed on the cluster after {attempts} ({type(error).__name__}: {message})"


def _cases_by_worker(results: list[CaseResult]) -> dict[str, list[str]]:
    by_worker: dict[str, list[str]] = {}
    for result in results:
        by_worker.setdefault(result.worker, []).append(result.identifier)
    return dict(sorted(by_worker.items()))


@contextlib.contextmanager
def _client(options: ClusterOptions) -> Iterator[Client]:
    """A client of the scheduler at ``options.address``, or of a local cluster started (and stopped) here."""
    from distributed import Client, LocalCluster

    if options.address is None:
        cluster = LocalCluster(
            n_workers=options.local_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(options.address, timeout=f"{options.connect_timeout_s}s")
    except (OSError, TimeoutError) as error:
        raise UsageError(f"--address {options.address}: no Dask scheduler answers ({error})") from None
    with client:
        if not client.scheduler_info().get("workers"):
            logger.warning("the scheduler at %s has no worker yet; the tasks wait for one", options.address)
        yield client


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError(f"predict-cluster needs Dask: {INSTALL_HINT}") from None
