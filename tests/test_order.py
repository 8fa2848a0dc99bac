"""The suite's schedule: every file that `tests/conftest.py` hands out first still exists."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SLOWEST_FIRST

ROOT = Path(__file__).resolve().parents[1]


def test_the_slowest_files_listed_first_exist():
    missing = [path for path in SLOWEST_FIRST if not (ROOT / path).is_file()]
    assert not missing, f"renamed or removed, update SLOWEST_FIRST in tests/conftest.py: {missing}"
