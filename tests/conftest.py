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


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one test process more than there are cores. A third of the suite's time is spent
    waiting (for app servers, browsers, `twoview` subprocesses), which a third process fills: on 2
    cores the run took 442 s against 564 s with two."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 1


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
