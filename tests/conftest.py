"""Test-wide setup: the scripts installed next to the interpreter running the tests come first on PATH.

Tests start `twoview ...` as a real process. Run as `.venv/bin/python -m pytest` with nothing activated,
that console script is found in `.venv/bin`, as activating the environment would have done.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def pytest_configure(config) -> None:
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, path]) if path else scripts
