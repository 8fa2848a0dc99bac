"""`ViewNet`: tells a frontal chest film from a lateral (or from neither) by its coarse layout, and its checkpoint.

An ensemble of small MLPs, each reading the film pooled to a few dozen pixels a side; their logits
are averaged. Why so coarse: convolutional networks trained on phantoms learned the phantom's
texture (its rib grid, its vertebral ladder) and called most real frontals lateral. At 20-32 px only
the layout is left (two lung fields beside the mediastinum, or one lung field with the spine at an
edge), which phantoms and real films share. The checkpoint is one `.safetensors` file with a
`ViewNetConfig` (architecture, normalisation, calibration, threshold) as JSON in its metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.atomic import atomic_path
from models.errors import CheckpointError, ConfigError

__all__ = ["VIEWNET_FORMAT", "ViewNet", "ViewNetConfig", "load_viewnet", "save_viewnet"]

VIEWNET_FORMAT = "twoview-viewnet"
_FORMAT_VERSION = 2  # 1 was a small CNN (never shipped)
_MAX_BYTES = 64 * 2**20  # a view classifier is a few MB; refuse to read anything far larger


@dataclass(frozen=True)
class ViewNetConfig:
    """Architecture, input normalisation and calibration of a `ViewNet`; saved in its checkpoint."""

    classes: tuple[str, ...] = ("frontal", "lateral", "other")  # "other": not a chest film at all
    image_size: int = 96  # square input side after resize-keep-aspect, percentile scaling and pad
    resolutions: tuple[int, ...] = (20, 24, 24, 32)  # one member each: the side it pools the input to
    hidden: int = 128  # units of each member's hidden layer
    dropout: float = 0.3
    norm_mean: float = 0.5  # percentile-scaled pixels in [0, 1] become (x - mean) / std
    norm_std: float = 0.3
    temperature: float = 1.0  # calibration: probabilities are softmax(logits / temperature)
    threshold: float = 0.5  # the least calibrated probability at which a view is decided
    provenance: dict[str, Any] = field(default_factory=dict)  # training data, seed, metrics

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        self.validate()

    def validate(self) -> None:
        """Refuse values that cannot build or calibrate a network, saying what to change."""
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes must be at least two distinct names, got {list(self.classes)}")
        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= 512:
            raise ConfigError(f"image_size must be an integer in [16, 512], got {self.image_size!r}")
        if not 1 <= len(self.resolutions) <= 16 or not all(
            4 <= r <= self.image_size for r in self.resolutions
        ):
            raise ConfigError(
                f"resolutions must be 1 to 16 sides in [4, image_size], got {list(self.resolutions)}"
            )
        if not 1 <= self.hidden <= 4096:
            raise ConfigError(f"hidden must be in [1, 4096], got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.norm_std > 0 and self.temperature > 0):
            raise ConfigError("norm_std and temperature must be positive")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViewNetConfig:
        """Rebuild a config from `to_json`; unknown keys are an error, missing ones take defaults."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"view classifier config is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError("view classifier config must be a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"view classifier config has unknown fields {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"view classifier config is malformed: {err}") from err


class _Member(nn.Module):
    """Pool the input to `side` x `side`, then one hidden layer."""

    def __init__(self, side: int, hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.side = side
        self.hidden = nn.Linear(side * side, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, self.side).flatten(1)
        return self.out(self.dropout(F.relu(self.hidden(x))))


class ViewNet(nn.Module):
    """One grey channel in, one logit per class out (`[B, 1, S, S]` -> `[B, len(classes)]`)."""

    def __init__(self, config: ViewNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ViewNetConfig()
        c = self.config
        self.members = nn.ModuleList(_Member(r, c.hidden, len(c.classes), c.dropout) for r in c.resolutions)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


def save_viewnet(model: ViewNet, path: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write the weights (cast to `dtype`) and `model.config` atomically to `path`."""
    tensors = {name: t.detach().to("cpu", dtype).contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": VIEWNET_FORMAT,
        "format_version": str(_FORMAT_VERSION),
        "config": model.config.to_json(),
    }
    path = Path(path)
    with atomic_path(path, clear_stale=True) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def load_viewnet(path: str | os.PathLike) -> ViewNet:
    """Rebuild a saved `ViewNet` in eval mode, float32; refuse anything else with the reason."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise CheckpointError(
                f"{path}: {path.stat().st_size / 2**20:.0f} MB is far too large for a view classifier"
            )
        with open(path, "rb") as f:
            head = f.read(9)
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise CheckpointError(
                f"{path}: a pickle (torch.save) file; twoview never unpickles, use .safetensors"
            )
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except FileNotFoundError as err:
        raise CheckpointError(
            f"view classifier {path} is missing; reinstall twoview or set TWOVIEW_VIEW_CLASSIFIER"
        ) from err
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable view classifier (.safetensors): {err}") from err
    if metadata.get("format") != VIEWNET_FORMAT:
        raise CheckpointError(f"{path}: a .safetensors file, but not a twoview view classifier")
    if metadata.get("format_version") != str(_FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: view classifier format {metadata.get('format_version')!r}; this twoview reads {_FORMAT_VERSION}"
        )
    try:
        config = ViewNetConfig.from_json(metadata.get("config", ""))
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored view classifier config is invalid: {err}") from err
    model = ViewNet(config)
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise CheckpointError(f"{path}: weights do not match the stored view classifier config")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.eval()
