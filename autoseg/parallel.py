"""Run a function over cases in worker processes, with a progress bar and results in input order."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

from autoseg.io import limit_threads

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)

_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
"""Workers start from a clean server process, never by forking a parent that may hold threads (tqdm's monitor,
BLAS or PyTorch pools): forking a threaded process can deadlock, and Python 3.12+ warns about it."""


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
        context = multiprocessing.get_context(_START_METHOD)
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=limit_threads, initargs=(1,)
        ) as pool:
            for result in pool.map(function, items, chunksize=1):
                yield result
                bar.update()
    finally:
        bar.close()
