"""Test-wide setup: the scripts next to the interpreter running the tests come first on PATH, and a
static file server on 127.0.0.1 (downloads never leave this machine).

Tests start `twoview ...` as a real process. Run as `.venv/bin/python -m pytest` with nothing activated,
that console script is found in `.venv/bin`, as activating the environment would have done.
"""

from __future__ import annotations

import http.server
import os
import sys
import threading
from functools import partial
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, path]) if path else scripts


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest -p no:xdist still runs
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one test process more than there are cores. Much of the suite waits (on app servers,
    browsers, `twoview` subprocesses): on 2 cores, two processes kept 1.32 cores busy on average, three
    kept 1.4 (the run took 442-564 s, as fast as the VM was that hour)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 1


#: The test files that take longest (seconds on 2 cores, 2026-12-01, `--durations=0` summed per file),
#: handed to the test processes first, so none is left running alone at the end of the run. xdist would
#: otherwise order files by their number of tests (`--no-loadscope-reorder` in `pyproject.toml` keeps
#: this order), and a file of one long test (the eight-browser load test) came last.
SLOWEST_FIRST = (
    "tests/browser/test_attacks_browser.py",  # 114 s
    "tests/pipeline/test_train.py",  # 108 s
    "tests/app/test_predict.py",  # 84 s
    "tests/hardening/test_kill.py",  # 73 s
    "tests/pipeline/test_ray_engine.py",  # 68 s
    "tests/app/test_batch.py",  # 62 s
    "tests/browser/test_load.py",  # 62 s
    "tests/pipeline/test_cli.py",  # 61 s
    "tests/models/test_importing.py",  # 61 s
    "tests/browser/test_app_browser.py",  # 50 s
    "tests/pipeline/test_reduced.py",  # 45 s
    "tests/app/test_finetune.py",  # 40 s
    "tests/app/test_model.py",  # 40 s
    "tests/hardening/test_fuzz.py",  # 38 s
)


def pytest_collection_modifyitems(config, items) -> None:
    """The files of `SLOWEST_FIRST` first, in its order; the others after them, as collected."""
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 that counts its requests."""
    root = tmp_path / "served"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
