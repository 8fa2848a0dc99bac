"""The network, its loss and its checkpoints: pure torch + MONAI, no file or UI knowledge.

Names are imported on first use, so `import models.errors` (the CLI does) does not load torch.
"""

from __future__ import annotations

import importlib

from models import lean_imports

lean_imports.install()  # before any of our modules imports MONAI

_WHERE = {
    "DEFAULT_LABELS": "models.config",
    "HEADS": "models.names",
    "OUTPUTS": "models.names",
    "ROUTES": "models.names",
    "ModelConfig": "models.config",
    "CheckpointError": "models.errors",
    "ConfigError": "models.errors",
    "ModelError": "models.errors",
    "PretrainedError": "models.errors",
    "MultiViewLoss": "models.losses",
    "Route": "models.names",
    "RoutingError": "models.twoview",
    "TwoViewNet": "models.twoview",
    "ViewLogits": "models.twoview",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
