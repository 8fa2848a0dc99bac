"""Write requirements.lock and requirements-dev.lock: the exact installed versions of twoview's dependency tree.

Run where the tests pass: `python scripts/lock.py`. The runtime tree goes to requirements.lock (the
Docker image installs it); what the `dev` extra adds goes to requirements-dev.lock.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# {what} of twoview, pinned to the versions its tests pass with (Python 3.11, Linux x86-64).
# Made by `python scripts/lock.py` from the installed tree; the ranges live in pyproject.toml.
# Install: {install}
# torch is pinned without its build label: pick the CPU or a CUDA build with --index-url (see README).
"""


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _tree(requirements: list[Requirement], extras: set[str]) -> dict[str, str]:
    """Every installed distribution reachable from `requirements` (markers evaluated here): name -> version."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, extras) for r in requirements]
    env = default_environment()
    while todo:
        req, wanted = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({**env, "extra": e}) for e in wanted or {""}
        ):
            continue
        key = (_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            continue
        found[key[0]] = dist.version
        todo += [(Requirement(r), set(req.extras)) for r in dist.requires or ()]
    return found


def _pin(name: str, version: str) -> str:
    return f"{name}=={version.split('+')[0] if name == 'torch' else version}\n"


def _declared() -> list[Requirement]:
    """twoview's requirements as this checkout's pyproject.toml declares them (the dev extra marked as such).

    Read from the file rather than the installed metadata, which may be an older checkout's.
    """
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    for req in dev:
        req.marker = Marker('extra == "dev"' if req.marker is None else f'({req.marker}) and extra == "dev"')
    return [Requirement(r) for r in project["dependencies"]] + dev


def main() -> None:
    own = _declared()
    runtime = _tree(own, set())
    everything = _tree(own, {"dev"})
    runtime.pop("twoview", None)
    dev = {n: v for n, v in everything.items() if n not in runtime and n != "twoview"}
    (ROOT / "requirements.lock").write_text(
        HEADER.format(
            what="The runtime dependencies",
            install="pip install -r requirements.lock && pip install --no-deps -e .",
        )
        + "".join(_pin(n, v) for n, v in sorted(runtime.items()))
    )
    (ROOT / "requirements-dev.lock").write_text(
        HEADER.format(
            what="The development and test tools",
            install='pip install -r requirements-dev.lock && pip install --no-deps -e ".[dev]"',
        )
        + "-r requirements.lock\n"
        + "".join(_pin(n, v) for n, v in sorted(dev.items()))
    )
    print(f"requirements.lock: {len(runtime)} packages; requirements-dev.lock: {len(dev)} more")


if __name__ == "__main__":
    main()
