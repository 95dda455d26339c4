"""Run a function over cases in worker processes, with a progress bar and results in input order.

Interruptions: the workers ignore SIGINT (a Ctrl-C at a terminal reaches the whole process group; only the
parent reacts, so no worker prints a traceback), and when the parent stops early, for any reason (Ctrl-C,
SIGTERM, an error in one case, the consumer leaving the loop), the workers are terminated and joined (the
pending cases never run) before the exception goes on: nothing keeps working after the command says it
stopped. When the parent dies without a word (``kill -9``, the OOM killer), each worker notices within a
moment and exits too, instead of finishing its case into a folder a re-run may already be writing and then
waiting forever. Each worker writes its outputs atomically (:func:`autoseg.io.atomic_target`), so a
terminated case leaves no half file.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import resource_tracker
from typing import TypeVar

from tqdm import tqdm

from autoseg.io import limit_threads

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)

_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
"""Workers start from a clean server process, never by forking a parent that may hold threads (tqdm's monitor,
BLAS or PyTorch pools): forking a threaded process can deadlock, and Python 3.12+ warns about it."""

STOP_TIMEOUT_S = 10.0
"""How long a terminated worker may take to exit before it is killed."""


def map_cases(
    function: Callable[[T], R],
    items: Sequence[T],
    *,
    num_workers: int = 1,
    description: str = "cases",
    show_progress: bool = True,
) -> Iterator[R]:
    """Yield ``function(item)`` for every item, in input order.

    With ``num_workers > 1`` the calls run in that many processes, each holding one item's data at a time
    (tasks are handed out one by one). ``function`` must be a module-level function (picklable).
    """
    bar = tqdm(total=len(items), desc=description, unit="case", disable=not show_progress, leave=False)
    try:
        if num_workers <= 1 or len(items) <= 1:
            for item in items:
                yield function(item)
                bar.update()
            return
        workers = min(num_workers, len(items))
        logger.debug("running %s over %d items in %d processes", description, len(items), workers)
        yield from _in_processes(function, items, workers, bar)
    finally:
        bar.close()


def _in_processes(function: Callable[[T], R], items: Sequence[T], workers: int, bar: tqdm) -> Iterator[R]:
    context = multiprocessing.get_context(_START_METHOD)
    before = set(multiprocessing.active_children())
    pool: ProcessPoolExecutor | None = None
    try:
        with _signals_held_while_spawning():  # inside the try: the held signal is raised as the block ends
            pool = ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
            )
            futures = [pool.submit(function, item) for item in items]  # spawns the workers; never cancelled
        for future in futures:
            yield future.result()
            bar.update()
    except BaseException:  # Ctrl-C, SIGTERM, a failed case, GeneratorExit: stop now, not after the queue
        _stop(pool, [p for p in multiprocessing.active_children() if p not in before])
        raise
    pool.shutdown(wait=True)


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_held_while_spawning() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the pool spawns its workers, and deliver them when the block ends.
    A signal inside ``Process.start`` (after the forkserver forked the child, before the parent read its pid:
    ``popen_forkserver._launch``) left a child the parent did not know: ``_stop`` could not end it, the
    parent exited and unlinked the queues' semaphores, and the child, still unpickling them, printed a
    ``FileNotFoundError`` traceback from ``SemLock._rebuild`` (``test_signals``, every time at 60 ms). The
    handlers are swapped for one that records the signal, then put back and the signal raised again
    (``signal.raise_signal``), so it takes its usual course once every started worker is known. Blocking
    with ``pthread_sigmask`` does not do that part: it holds the signal back from this thread only, and the
    kernel hands it to another (tqdm's monitor, a reader thread), whose C handler lets the main thread's
    Python handler run anyway.

    SIGINT is blocked in this thread's mask as well, for the processes started meanwhile: a mask survives
    fork and exec, so the forkserver (or a spawned worker) and every worker it forks start with SIGINT
    blocked, until :func:`_start_worker` ignores it and unblocks it. Before, a terminal's Ctrl-C that reached
    the process group while a worker was still importing (before its initializer ran) raised
    KeyboardInterrupt in the worker, and Python printed "Exception ignored in ... _get_module_lock" with a
    traceback (CI), or the forkserver, still importing ``site``, a "Fatal Python error" (18 of 40 trials
    0-100 ms after the pool's first process appeared). Python's resource tracker is started first, as its
    start unblocks both signals in the calling thread when it is done. Only in the main thread (where
    handlers can be set); elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in _HELD_SIGNALS}
    resource_tracker.ensure_running()  # first: starting it unblocks SIGINT and SIGTERM in this thread's mask
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGINT held meanwhile reaches ``record`` now
        for signum, handler in previous.items():  # None: a handler not set from Python; the default then
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])  # its own handler now: Interrupted, or the default action


def _start_worker(parent: int) -> None:
    """Worker initializer: one thread, SIGINT left to the parent (which terminates the workers), and exit as
    soon as the parent process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])  # blocked from birth: see above
    limit_threads(1)
    threading.Thread(target=_exit_after, args=(parent,), name="autoseg-parent", daemon=True).start()


def _exit_after(parent: int) -> None:
    """Wait for process ``parent`` to end (a pidfd on Linux, else polling once a second), then exit."""
    try:
        handle = os.pidfd_open(parent)
    except (AttributeError, OSError):  # not Linux 5.3+, or the parent is already gone
        while _exists(parent):
            time.sleep(1.0)
    else:
        select.select([handle], [], [])
    os._exit(1)  # no clean-up: the case in progress is abandoned, as a kill -9 would


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(pool: ProcessPoolExecutor | None, processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """End the pool's worker processes (SIGTERM, then SIGKILL), then the pool. The pool then fails the
    pending calls itself (``BrokenProcessPool``, never read). No call is cancelled: with cancelled calls,
    Python 3.11's pool thread raised ``InvalidStateError`` when it failed them after the workers ended (seen
    in test_signals)."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
    if pool is not None:
        pool.shutdown(wait=True)
    logger.debug("stopped %d worker process(es)", len(processes))
