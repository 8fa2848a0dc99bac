"""Progress of long commands: a tqdm bar on a terminal, a log line every few seconds otherwise.

Piped into a file or a job log, a redrawn bar would leave carriage returns and escape codes behind,
so there tqdm writes its status line through the log instead, at most every `interval` seconds.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

__all__ = ["progress_bar"]

logger = logging.getLogger("twoview.progress")


class _LogLines:
    """A file-like target for tqdm that turns each redraw into one INFO log line."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            logger.info("%s", line)

    def flush(self) -> None:
        pass


@contextmanager
def progress_bar(total: int | None, unit: str, *, interval: float = 10.0) -> Iterator[tqdm]:
    """A tqdm bar counting `unit`s (total may be set later); closed when the block ends."""
    terminal = sys.stderr.isatty()
    bar = tqdm(
        total=total,
        unit=f" {unit}",
        file=sys.stderr if terminal else _LogLines(),
        mininterval=0.1 if terminal else interval,
        dynamic_ncols=terminal,
        ascii=not terminal,
        leave=True,
    )
    try:
        yield bar
    finally:
        bar.close()
