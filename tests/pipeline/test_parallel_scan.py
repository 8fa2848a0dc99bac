"""The folder scan on several processes (`pipeline.parallel`): the same result, order and progress as
one process, bad files included; worker crashes, logs and warnings handled in the calling process."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import pytest

from pipeline.parallel import parallel_map, usable_cores
from pipeline.studies import PARALLEL_MIN_FILES, SetAside, scan_folder
from tests.pipeline.badfiles import make_bad_corpus
from tests.pipeline.conftest import write_dicom


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bad-file corpus beside 40 good studies, some without view tags (decoded in the workers)."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "bad").mkdir()
    make_bad_corpus(root / "bad")
    for i in range(40):
        view = "PA" if i % 2 else ("LL" if i % 4 else None)
        write_dicom(root / f"s{i:02d}" / "img.dcm", study_uid=f"1.2.9.{i}", view_position=view, seed=i)
    write_dicom(root / "no_modality.dcm", study_uid="1.2.9.99", modality="", seed=99)
    return root


def test_parallel_scan_equals_the_serial_scan_with_bad_files_in_it(mixed_folder: Path) -> None:
    serial_calls: list[tuple[int, int, Path]] = []
    parallel_calls: list[tuple[int, int, Path]] = []
    serial = scan_folder(mixed_folder, workers=1, progress=lambda *call: serial_calls.append(call))
    parallel = scan_folder(mixed_folder, workers=2, progress=lambda *call: parallel_calls.append(call))
    assert len(serial_calls) >= PARALLEL_MIN_FILES  # so the second scan really ran on workers
    assert parallel == serial
    assert parallel_calls == serial_calls  # every file, in file order
    assert len(serial.studies) >= 40 and len(serial.set_aside) >= 10


def test_worker_log_records_reach_this_process(mixed_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        scan_folder(mixed_folder, workers=2)
    assert any(
        "no_modality.dcm" in r.getMessage() and "no Modality tag" in r.getMessage() for r in caplog.records
    )


def test_a_scan_runs_from_a_thread(mixed_folder: Path) -> None:
    """The app scans from a worker thread: the pool must not fork a threaded process."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(scan_folder(mixed_folder, workers=2)))
    thread.start()
    thread.join(timeout=120)
    assert out and out[0] == scan_folder(mixed_folder, workers=1)


def square_or_die(item: int, die_on: int) -> int:
    """A worker task that kills its process on one item (a decoder crash stands in for this)."""
    if item == die_on:
        os._exit(3)
    if item == 5:
        logging.getLogger("tests.parallel").warning("item %d seen", item)
        warnings.warn("five is odd", UserWarning, stacklevel=1)
    return item * item


def test_a_crashing_item_is_isolated_and_the_rest_kept_in_order(caplog: pytest.LogCaptureFixture) -> None:
    items = list(range(30))
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="five is odd"):
        results = list(parallel_map(square_or_die, items, (17,), workers=2, on_crash=lambda item: -item))
    assert results == [-17 if i == 17 else i * i for i in items]
    assert [r.getMessage() for r in caplog.records if r.name == "tests.parallel"] == ["item 5 seen"]


def test_a_crash_while_scanning_sets_the_file_aside(tmp_path: Path) -> None:
    from pipeline import studies

    result = studies._crashed(tmp_path / "x.dcm")
    assert isinstance(result, SetAside) and "crash" in result.reason and result.kind == "unreadable"


def test_usable_cores_is_the_affinity() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))


def worker_pid(item: int) -> int:
    return os.getpid()


def test_the_pool_is_kept_for_the_next_call_and_renewed_after_a_crash() -> None:
    """New workers re-run the main script's imports, so a scan reuses the last scan's workers."""
    first = set(parallel_map(worker_pid, list(range(20)), workers=2, on_crash=lambda item: -1))
    second = set(parallel_map(worker_pid, list(range(20)), workers=2, on_crash=lambda item: -1))
    kept = first | second
    assert len(kept) <= 2 and os.getpid() not in kept  # two workers in all (one may start late), not four
    assert list(parallel_map(square_or_die, [1, 2], (2,), workers=2, on_crash=lambda item: -item)) == [1, -2]
    after = set(parallel_map(worker_pid, list(range(20)), workers=2, on_crash=lambda item: -1))
    assert after.isdisjoint(kept)  # the broken pool was replaced
