"""Run a function over many items in worker processes, results in input order, as if run here.

`parallel_map` is what the folder scan uses to read headers on every core. Workers start through
forkserver (spawn where there is none), so it is safe to call from a thread (the app does). A
worker's log records and warnings are replayed here, through this process's handlers and filters
(the de-identifying log filter included). An item whose worker process dies (a decoder crash) is
retried alone in a fresh pool; if it kills that one too, `on_crash(item)` stands for its result.

The pool is kept for the next call (one per worker count, shut down at exit): a new worker re-runs
the main script's imports (Python 3.11's forkserver never preloads `__main__`), which for a script
that imports torch costs seconds, so a pool per scan would cost that on every scan.

`Gate` makes DataLoader workers and a model on the CPU take turns at the cores (see its docstring).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["Gate", "Gated", "parallel_map", "usable_cores"]

T = TypeVar("T")
R = TypeVar("R")

_MAX_CHUNK = 64  # items per task: large enough to amortise the hand-over, small enough to balance
_CHUNKS_PER_WORKER = 4


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class Gate:
    """Lets worker processes start an item only while no model runs on this machine's cores.

    A model on the CPU runs one thread per core, and its threads wait for each other after every
    layer: a worker decoding on one core holds up all of them, so model and workers together run
    slower than taking turns (`bench/predict.py`: 13 against 10 studies/s on 2 cores). Workers call
    `wait` before each item; the model runs inside `closed()`. An inactive gate (model on a GPU, or no
    worker processes) does nothing. The workers must start from `context` (default: the default one).
    Items whose index is below `passing` never wait: the first batch, decoded while the model loads
    inside `closed()`, so that nothing but that batch takes the cores from the load.
    """

    def __init__(
        self,
        active: bool = True,
        context: multiprocessing.context.BaseContext | None = None,
        *,
        passing: int = 0,
    ) -> None:
        self.context = context or multiprocessing.get_context()
        self._open = self.context.Event() if active else None
        self.passing = passing
        if self._open is not None:
            self._open.set()
        self._parent = os.getpid()

    @property
    def active(self) -> bool:
        return self._open is not None

    def wait(self, index: int | None = None) -> None:
        """In a worker: return once the gate is open (or the process that made the gate is gone); at once
        for an item `index` below `passing`."""
        if self._open is None or os.getpid() == self._parent:
            return
        if index is not None and index < self.passing:
            return
        parent = os.getppid()  # the gate's maker, or a forkserver that exits when the maker does
        while not self._open.wait(timeout=1.0):
            if os.getppid() != parent or not _alive(self._parent):  # orphaned: the worker's loop exits
                return

    @contextmanager
    def closed(self) -> Iterator[None]:
        """Hold the workers back for the duration of the block (a worker already inside an item finishes it)."""
        if self._open is None:
            yield
            return
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie still does, until its parent reaps it)."""
    if os.name != "posix":  # signal 0 would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or its number reused by another user's process
        return False
    return True


class Gated:
    """A map-style dataset whose items are made only while `gate` is open (`Gate.wait` first)."""

    def __init__(self, dataset: Any, gate: Gate) -> None:
        self.dataset, self.gate = dataset, gate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.gate.wait(index)
        return self.dataset[index]


def parallel_map(
    fn: Callable[..., R],
    items: Sequence[T],
    args: tuple[Any, ...] = (),
    *,
    workers: int,
    on_crash: Callable[[T], R],
    preload: Sequence[str] = (),
) -> Iterator[R]:
    """`fn(item, *args)` for each item, in order, computed by `workers` processes in chunks.

    `fn` must be a module-level function (it is pickled) that returns rather than raises for a bad
    item. `preload` names modules the forkserver imports once, so each worker starts with them.
    """
    size = max(1, min(_MAX_CHUNK, math.ceil(len(items) / (workers * _CHUNKS_PER_WORKER))))
    pending = deque(list(items[i : i + size]) for i in range(0, len(items), size))
    while pending:
        pool = _pool(workers, preload)
        futures = []
        try:
            futures = [pool.submit(_run_chunk, fn, chunk, args) for chunk in pending]
            for future in futures:
                results, records, caught = future.result()
                _replay(records, caught)
                pending.popleft()
                yield from results
        except BrokenProcessPool:  # every unfinished task fails, not only the one that killed its worker
            _discard(workers, pool)
            chunk = pending.popleft()
            if len(chunk) == 1:
                yield _alone(fn, chunk[0], args, workers, preload, on_crash)
            else:  # find the item that kills its worker: retry the chunk one item at a time
                pending.extendleft([item] for item in reversed(chunk))
        finally:
            for future in futures:  # a caller that stopped early leaves nothing queued behind
                future.cancel()


def _alone(
    fn: Callable[..., R], item: T, args: tuple[Any, ...], workers: int, preload: Sequence[str], on_crash
) -> R:
    """One item run by itself, so that if the pool breaks, this item broke it."""
    pool = _pool(workers, preload)
    try:
        results, records, caught = pool.submit(_run_chunk, fn, [item], args).result()
    except BrokenProcessPool:
        _discard(workers, pool)
        return on_crash(item)
    _replay(records, caught)
    return results[0]


_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int, preload: Sequence[str]) -> ProcessPoolExecutor:
    """The kept pool of `workers` processes (made on first use; callers in several threads share it)."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=_context(preload),
                initializer=_start_worker,
                initargs=(logging.getLogger().getEffectiveLevel(),),
            )
        return pool


def _discard(workers: int, pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool, so the next call starts a fresh one."""
    with _pools_lock:
        if _pools.get(workers) is pool:
            del _pools[workers]
    pool.shutdown(wait=True, cancel_futures=True)


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """Forkserver, importing `preload` once, so each worker starts as a fork with those modules loaded.

    Each new worker still runs the main script's imports (as spawn does), so scripts need the usual
    `if __name__ == "__main__":` guard; "__main__" stays in the preload list for Pythons whose
    forkserver honours it. The list is fixed when the forkserver starts (the first parallel call).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *preload])
    return context


# --- inside a worker ---------------------------------------------------------------------------

_records: list[logging.LogRecord] = []


class _Collect(logging.Handler):
    """Keeps each record, made picklable (message formatted, traceback as text), for the parent."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        _records.append(record)


def _start_worker(level: int) -> None:
    root = logging.getLogger()
    root.handlers[:] = [_Collect()]
    root.setLevel(level)


def _run_chunk(
    fn: Callable[..., R], chunk: list[T], args: tuple[Any, ...]
) -> tuple[list[R], list[logging.LogRecord], list[tuple[str, type[Warning]]]]:
    _records.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        results = [fn(item, *args) for item in chunk]
    return results, list(_records), [(str(w.message), w.category) for w in caught]


# --- back in the parent ------------------------------------------------------------------------


def _replay(records: list[logging.LogRecord], caught: list[tuple[str, type[Warning]]]) -> None:
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    for message, category in caught:
        warnings.warn(message, category, stacklevel=2)
