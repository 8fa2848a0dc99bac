"""The lock files pin every dependency pyproject.toml names, inside its range, once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
REPO = Path(__file__).resolve().parents[2]


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, Version]:
    """name -> pinned version of a lock file (comments and `-r` lines skipped); a name twice is an error."""
    found: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-r ")):
            continue
        name, _, version = line.partition("==")
        assert version, f"{path.name}: {line!r} is not pinned with =="
        assert _name(name) not in found, f"{path.name}: {name} pinned twice"
        found[_name(name)] = Version(version)
    return found


@pytest.mark.parametrize(("lock", "group"), [("requirements.lock", None), ("requirements-dev.lock", "dev")])
def test_every_declared_dependency_is_pinned_inside_its_range(lock, group):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] if group is None else project["optional-dependencies"][group]
    pinned = pins(REPO / "requirements.lock")
    if group is not None:
        overlap = set(pinned) & set(pins(REPO / lock))
        assert not overlap, f"{lock} repeats {sorted(overlap)} from requirements.lock"
        pinned |= pins(REPO / lock)
    for text in declared:
        requirement = Requirement(text)
        name = _name(requirement.name)
        assert name in pinned, f"{lock}: {requirement.name} is not pinned"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock}: {name}=={pinned[name]} is outside pyproject's {requirement.specifier}"
        )
