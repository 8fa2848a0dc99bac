"""Where a prediction run's studies come from: a folder (scanned, with progress), a manifest or a scan.

Torch-free, so `twoview predict` can scan a folder on worker processes while torch and MONAI import.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import TwoviewError
from pipeline.isolate import Runner, direct
from pipeline.manifest import Manifest
from pipeline.progress import progress_bar
from pipeline.studies import ScanResult, SetAside, Study, scan_folder

__all__ = ["gather", "scan_with_progress"]

logger = logging.getLogger(__name__)


def gather(
    source: str | Path | Manifest | ScanResult, runner: Runner = direct
) -> tuple[tuple[Study, ...], tuple[SetAside, ...]]:
    """The studies to predict and the files already set aside, from a folder, a manifest or a scan.

    `runner` reads each scanned file (`pipeline.isolate.Isolated`: in a killable child process).
    """
    if isinstance(source, Manifest):
        return source.studies, ()
    if isinstance(source, ScanResult):
        return source.studies, source.set_aside
    scan = scan_with_progress(Path(source), runner)
    return scan.studies, scan.set_aside


def scan_with_progress(folder: Path, runner: Runner = direct) -> ScanResult:
    """`scan_folder` with a progress bar over the files, and a log line of what it found."""
    if not folder.exists():
        raise TwoviewError(f"{folder}: no such file or folder")
    logger.info("scanning %s", folder)
    with progress_bar(None, "files") as progress:

        def step(done: int, total: int, path: Path) -> None:
            progress.total = total
            progress.update()

        scan = scan_folder(folder, progress=step, runner=runner)
    logger.info("found %d studies in %s (%d files set aside)", len(scan.studies), folder, len(scan.set_aside))
    return scan
