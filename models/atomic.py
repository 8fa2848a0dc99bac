"""Write a file all or nothing: a temporary file beside it, fsynced, then renamed over it.

The one atomic-write helper of the project. It sits in `models`, the bottom of the import order, so
checkpoints, weight downloads and every `pipeline`/`app` writer can share it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "write_atomic"]

_MODE = 0o644  # mkstemp makes 0600; what we write are ordinary shared files


@contextmanager
def atomic_path(path: str | os.PathLike, *, clear_stale: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For libraries that write by file name (safetensors). Each call gets its own temporary name, so
    concurrent writers never clash; the last one to finish wins whole. `clear_stale` first removes
    temporary files of `path` that a killed writer left behind (only where one writer is expected).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    if clear_stale:
        for stale in path.parent.glob(f"{prefix}*.tmp"):
            stale.unlink(missing_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _MODE)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = ""
) -> Iterator[IO[Any]]:
    """An open file ("w" text or "wb" bytes) whose content replaces `path` only if the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    text = {"encoding": encoding, "newline": newline} if mode == "w" else {}
    with atomic_path(path) as tmp, open(tmp, mode, **text) as f:
        yield f


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` all or nothing; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _fsync(path: Path) -> None:
    """Flush the file's bytes to disk before the rename makes them visible."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
