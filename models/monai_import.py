"""`import monai`, without the libraries its package import loads for features twoview never uses.

MONAI's `__init__` imports every subpackage, and through them matplotlib (Jupyter helpers), scipy's
ndimage, signal, sparse, optimize and spatial (spline resampling, an ultrasound transform, metrics we
do not compute), pandas (profiling), requests (dataset downloads) and jsonschema (bundles): about 1.6 s
of a 3.7 s start on our CPUs, before a prediction can begin. While MONAI's package runs, those read as
absent, so MONAI's own optional imports mark only those features unavailable; afterwards they import
normally for anyone. `install()` is called by `models` and `pipeline`, so it is in place before any of
our modules imports MONAI.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

__all__ = ["SKIPPED", "install"]

#: Imported by MONAI's package, used by no MONAI feature twoview calls.
SKIPPED = (
    "matplotlib",
    "scipy.ndimage",
    "scipy.signal",
    "scipy.sparse",
    "scipy.optimize",
    "scipy.spatial",
    "pandas",
    "requests",
    "jsonschema",
)


class _Loader(importlib.abc.Loader):
    """MONAI's own loader, run with `SKIPPED` absent (those not imported already)."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        absent = [name for name in SKIPPED if name not in sys.modules]
        sys.modules.update(dict.fromkeys(absent))  # None in sys.modules: `import x` raises ImportError
        try:
            self._loader.exec_module(module)
        finally:
            for name in absent:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]


class _Finder(importlib.abc.MetaPathFinder):
    """Finds `monai` as usual, once, and hands it `_Loader`."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "monai":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Make the next `import monai` a lean one; nothing happens once MONAI is imported."""
    if "monai" not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
