"""`import monai` and `import pydicom`, without the libraries their package imports load for features
twoview never uses.

MONAI's `__init__` imports every subpackage, and through them matplotlib (Jupyter helpers), scipy's
ndimage, signal, sparse, optimize and spatial (spline resampling, an ultrasound transform, metrics we
do not compute), pandas (profiling), requests (dataset downloads) and jsonschema (bundles): about 1.6 s
of a 3.7 s start on our CPUs, before a prediction can begin. pydicom's pixel package imports requests
to download pydicom's own test files (about 60 ms; it downloads them through urllib without it). While
such a package runs its import, those read as absent, so its own optional imports mark only those
features unavailable; afterwards they import normally for anyone. `install()` is called by `models`
and `pipeline`, so it is in place before any of our modules imports either package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

__all__ = ["SKIPPED", "install"]

#: Per package: what its package import loads that no feature twoview calls uses.
SKIPPED: dict[str, tuple[str, ...]] = {
    "monai": (
        "matplotlib",
        "scipy.ndimage",
        "scipy.signal",
        "scipy.sparse",
        "scipy.optimize",
        "scipy.spatial",
        "pandas",
        "requests",
        "jsonschema",
    ),
    "pydicom": ("requests",),
}


class _Loader(importlib.abc.Loader):
    """The package's own loader, run with `skipped` absent (those not imported already)."""

    def __init__(self, loader: importlib.abc.Loader, skipped: tuple[str, ...]) -> None:
        self._loader, self._skipped = loader, skipped

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        absent = [name for name in self._skipped if name not in sys.modules]
        sys.modules.update(dict.fromkeys(absent))  # None in sys.modules: `import x` raises ImportError
        try:
            self._loader.exec_module(module)
        finally:
            for name in absent:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]


class _Finder(importlib.abc.MetaPathFinder):
    """Finds each package of `SKIPPED` as usual, once, and hands it `_Loader`; leaves when all are found."""

    def __init__(self, packages: list[str]) -> None:
        self._packages = packages

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._packages:
            return None
        self._packages.remove(fullname)
        if not self._packages:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, SKIPPED[fullname])
        return spec


def install() -> None:
    """Make the next `import monai` and `import pydicom` lean ones; a package imported already is left alone."""
    packages = [name for name in SKIPPED if name not in sys.modules]
    if packages and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(packages))
