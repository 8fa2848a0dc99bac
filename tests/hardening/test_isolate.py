"""The killable reader: results and errors come back, a call past its time or memory limit is stopped, Cancel works."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.dicom import read_image
from pipeline.errors import ImageError, NotAnImageError, ReaderStoppedError
from pipeline.isolate import Cancelled, Isolated, read_pixels

SAMPLE = (
    Path(__file__).resolve().parents[2]
    / "sample_data"
    / "studies"
    / "TV000000000"
    / "ST00000"
    / "SE001"
    / "1.dcm"
)


def sleep_then_pid(path: str, seconds: float) -> int:
    """A reader that takes `seconds` (a stand-in for a decoder stuck in a hostile file)."""
    time.sleep(seconds)
    return os.getpid()


def allocate(path: str, size: int) -> int:
    return len(np.ones(size, dtype=np.uint8))


def test_results_and_image_errors_come_back_from_the_child(tmp_path):
    with Isolated(seconds=60) as reader:
        pixels = reader.run(read_pixels, SAMPLE)
        assert np.array_equal(pixels, read_image(SAMPLE).pixels)
        assert reader.run(sleep_then_pid, "x", 0.0) != os.getpid()
        (tmp_path / "notes.txt").write_text("not an image")
        with pytest.raises(NotAnImageError) as caught:
            reader.run(read_image, tmp_path / "notes.txt")
        assert caught.value.path == tmp_path / "notes.txt" and "not a DICOM" in caught.value.reason


def test_a_call_past_the_time_limit_is_killed_and_the_next_call_works():
    reader = Isolated(seconds=1.0)
    first = reader.run(sleep_then_pid, "x", 0.0)
    started = time.monotonic()
    with pytest.raises(ReaderStoppedError, match="took longer than 1 s") as caught:
        reader.run(sleep_then_pid, "stuck.dcm", 600.0)
    assert time.monotonic() - started < 30  # killed, not waited for
    assert isinstance(caught.value, ImageError) and caught.value.path == Path("stuck.dcm")
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # the stuck child is gone
    assert reader.run(sleep_then_pid, "x", 0.0) not in (first, os.getpid())  # a fresh child
    reader.close()


def test_a_child_over_its_memory_limit_fails_cleanly():
    with Isolated(seconds=60, memory=256 * 2**20) as reader:
        assert reader.run(allocate, "small", 16 * 2**20) == 16 * 2**20
        with pytest.raises((MemoryError, ReaderStoppedError)):
            reader.run(allocate, "big", 2 * 2**30)
        assert reader.run(allocate, "small", 1024) == 1024


def test_cancel_stops_the_call_in_progress_and_every_later_one():
    reader = Isolated(seconds=600)
    reader.run(sleep_then_pid, "x", 0.0)
    outcome: list[BaseException] = []

    def work():
        try:
            reader.run(sleep_then_pid, "slow.dcm", 600.0)
        except BaseException as err:  # Cancelled is a BaseException, as it must pass `except Exception`
            outcome.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.5)
    reader.cancel()
    thread.join(30)
    assert not thread.is_alive() and len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    with pytest.raises(Cancelled):
        reader.run(sleep_then_pid, "x", 0.0)
    reader.close()


def test_read_pixels_shrinks_big_images_by_block_means():
    full = read_image(SAMPLE).pixels
    small = read_pixels(SAMPLE, max_side=256)
    step = -(-max(full.shape) // 256)
    assert max(small.shape) <= 256 and small.dtype == np.float32
    assert small[0, 0] == pytest.approx(full[:step, :step].mean(), abs=1e-6)


def test_the_time_limit_counts_from_a_started_reader(tmp_path):
    """A new reader re-runs the main script's imports (as spawn does): its start is not the file's time."""
    script = tmp_path / "main.py"
    script.write_text(
        "import os, sys, time\n"
        "time.sleep(1.0)  # a main script's slow imports: every new reader process runs them again\n"
        "from pipeline.isolate import Isolated\n"
        "if __name__ == '__main__':\n"
        "    reader = Isolated(seconds=0.3)\n"
        "    started = time.monotonic()\n"
        "    name = reader.run(os.path.basename, '/films/a.dcm')\n"
        "    print(name, time.monotonic() - started)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    name, seconds = done.stdout.split()
    assert name == "a.dcm" and float(seconds) > 0.3  # the start alone took longer than the limit
