"""Read files in a child process with a time and memory limit, so a hostile file is stopped, not waited for.

`Isolated.run(fn, path, ...)` calls `fn(path, ...)` in a long-lived child (started by a fork server,
so the parent's threads are never forked) and returns its result or re-raises its error. A call
that runs past the time limit, or a child that dies (its memory limit, a crash), kills the child
and raises `ReaderStoppedError` naming the file; the next call starts a fresh child. `cancel()`,
from any thread, kills the child at once and makes the waiting and every later call raise
`Cancelled`. The app reads uploads and Batch folders this way; the CLI reads in-process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ReaderStoppedError, TwoviewError

__all__ = [
    "DEFAULT_MEMORY",
    "DEFAULT_SECONDS",
    "SECONDS_ENV",
    "Cancelled",
    "Isolated",
    "Runner",
    "direct",
    "read_pixels",
]

logger = logging.getLogger(__name__)

#: How file readers are called: `run(fn, path, *args, **kwargs)` returns `fn(path, *args, **kwargs)`.
Runner = Callable[..., Any]
DEFAULT_SECONDS = 60.0  # a 16384 x 16384 film decodes in about 10 s on one slow core
SECONDS_ENV = "TWOVIEW_READ_SECONDS"  # the operator's choice of that limit
DEFAULT_MEMORY = 4 * 2**30  # address space a child may add to what it starts with
_START_SECONDS = 300.0  # a new child's start (the fork server's imports): not counted against a file
_PRELOAD = ["pipeline.isolate", "pipeline.studies", "pipeline.data"]  # imported once, in the fork server


class Cancelled(BaseException):  # noqa: N818 (like KeyboardInterrupt: it is no error, and nothing may swallow it)
    """The work was cancelled by the user; raised by `Isolated.run` after `Isolated.cancel()`."""


def direct(fn: Callable[..., Any], path: str | Path, *args: Any, **kwargs: Any) -> Any:
    """The in-process runner: `fn(path, *args, **kwargs)`."""
    return fn(path, *args, **kwargs)


def read_pixels(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """A file's decoded [0, 1] pixels, block-averaged to at most `max_side` on the long side if given.

    What the app keeps to show and explain an image: a 16384-pixel film shrunk where it is decoded,
    so only the shrunk copy crosses back to the server.
    """
    from pipeline.dicom import read_image, shrink

    return shrink(read_image(path).pixels, max_side)


class Isolated:
    """A runner whose calls happen in a child process that is killed after `seconds` or on `cancel()`.

    One call at a time (calls from several threads wait their turn); `close()` ends the child, as
    does garbage collection of this object.
    """

    def __init__(self, seconds: float | None = None, memory: int | None = DEFAULT_MEMORY) -> None:
        """`seconds` per call: by default `$TWOVIEW_READ_SECONDS`, else `DEFAULT_SECONDS`."""
        self.seconds = (
            seconds if seconds is not None else float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS)
        )
        self.memory = memory
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._child: _Child | None = None
        self._finalizer = weakref.finalize(self, _Child.stop_all, [])

    def __call__(self, fn: Callable[..., Any], path: str | Path, *args: Any, **kwargs: Any) -> Any:
        return self.run(fn, path, *args, **kwargs)

    def run(self, fn: Callable[..., Any], path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """`fn(path, *args, **kwargs)` in the child: its result, or its exception raised here."""
        with self._lock:
            if self._cancelled.is_set():
                raise Cancelled
            child = self._start()
            try:
                status, value = child.call((fn, path, args, kwargs), self.seconds)
            except _Stopped as stopped:
                self._stop()
                if self._cancelled.is_set():
                    raise Cancelled from None
                raise ReaderStoppedError(path, stopped.reason) from None
        if status == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the call in progress (the child is killed) and refuse every later one with `Cancelled`."""
        self._cancelled.set()
        child = self._child
        if child is not None:
            child.interrupt()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def close(self) -> None:
        """End the child (a later call starts a new one)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> Isolated:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> _Child:
        if self._child is None or not self._child.alive:
            self._stop()
            self._child = _Child(self.memory)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _Child.stop_all, [self._child])
        return self._child

    def _stop(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None


class _Stopped(Exception):  # noqa: N818 (internal signal)
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Child:
    """One child process serving calls over a pipe."""

    def __init__(self, memory: int | None) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, memory), name="twoview-reader", daemon=True
        )
        self.process.start()
        theirs.close()
        self.ready = False

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def call(self, request: tuple, seconds: float) -> tuple[str, Any]:
        """The answer to `request`; the time limit counts from a started child, so a slow start under
        load (imports in the fork server) is never blamed on the file."""
        try:
            if not self.ready:
                if not self.conn.poll(_START_SECONDS):
                    raise _Stopped(f"its reader did not start within {_START_SECONDS:g} s")
                self.ready = self.conn.recv() == ("ready", None)
            self.conn.send(request)
            if not self.conn.poll(seconds):
                raise _Stopped(f"reading it took longer than {seconds:g} s, so it was stopped")
            return self.conn.recv()
        except (EOFError, OSError) as err:
            self.process.join(1)
            code = self.process.exitcode
            why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise _Stopped(
                f"its reader stopped ({why}): the file needs too much memory or crashed it"
            ) from err

    def interrupt(self) -> None:
        """SIGKILL only (safe from another thread): the caller waiting on the pipe sees it close."""
        if self.process.exitcode is None:
            self.process.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    @staticmethod
    def stop_all(children: list[_Child]) -> None:
        for child in children:
            child.kill()


def _serve(conn: Connection, memory: int | None) -> None:
    """The child's loop: call, answer, until the pipe closes."""
    if memory is not None:
        _limit_memory(memory)
    conn.send(("ready", None))
    while True:
        try:
            fn, path, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[str, Any] = ("ok", fn(path, *args, **kwargs))
        except BaseException as err:  # everything goes back to the caller, which decides
            answer = ("error", err)
        try:
            conn.send(answer)
        except Exception as err:  # an answer that cannot be pickled
            conn.send(("error", TwoviewError(f"{path}: the reader's answer cannot be returned ({err})")))


def _limit_memory(extra: int) -> None:
    """Cap the child's address space at what it has now plus `extra`: a bigger allocation fails cleanly."""
    try:
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, StopIteration, ValueError) as err:  # not Linux: no cap, the time limit still holds
        logger.debug("no memory limit for the reader: %s", err)
