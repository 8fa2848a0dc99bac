"""Checkpoints: one `.safetensors` file holding the weights, with the `ModelConfig` as JSON in its metadata.

A checkpoint alone rebuilds its model, labels and preprocessing. Loading never unpickles: a
pickle (`.pt`, `.pth`, `.ckpt`) is refused before anything in it is read.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.atomic import atomic_path
from models.config import ModelConfig
from models.errors import CheckpointError, ConfigError
from models.pretrained import IMPORTED_FORMAT
from models.twoview import TwoViewNet

__all__ = ["FORMAT", "FORMAT_VERSION", "describe", "load", "read_config", "read_metadata", "save"]

FORMAT = "twoview"
FORMAT_VERSION = 1
_MAX_HEADER = 16 * 1024 * 1024  # a real header is a few hundred KB; bigger is forged
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def save(
    model: TwoViewNet,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    config: ModelConfig | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write `model` (weights cast to `dtype`) and its config atomically to `path`."""
    path = Path(path)
    config = config or model.config
    tensors = {
        name: (t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu()).contiguous()
        for name, t in model.state_dict().items()
    }
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": config.to_json()}
    metadata.update(extra or {})
    with atomic_path(path, clear_stale=True) as tmp:  # stale: left by a save that was killed
        save_file(tensors, tmp, metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a twoview checkpoint, read from its header alone (no weights)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            if len(head) < 9:
                raise CheckpointError(f"{path}: too short to be a .safetensors checkpoint")
            (size,) = struct.unpack("<Q", head[:8])
            if head[8:9] != b"{":
                _refuse_pickle(path, head)
                raise CheckpointError(f"{path}: not a .safetensors checkpoint")
            if size > _MAX_HEADER:
                raise CheckpointError(
                    f"{path}: header claims {size} bytes; not a valid .safetensors checkpoint"
                )
            f.seek(8)
            header = json.loads(f.read(size))
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: the .safetensors header is not valid JSON") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if isinstance(metadata, dict) and metadata.get("format") == IMPORTED_FORMAT:
        raise CheckpointError(
            f"{path}: pretrained DenseNet weights (from 'twoview import-weights'), not a trained twoview "
            f"model; fine-tune one from them with 'twoview train --start {path}'"
        )
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a .safetensors file, but not a twoview checkpoint (no twoview metadata)"
        )
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}; this twoview reads up to {FORMAT_VERSION}"
        )
    return metadata


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` stored in a checkpoint, validated, without loading the weights."""
    try:
        return ModelConfig.from_json(read_metadata(path)["config"])
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint has no model config") from err
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored model config is invalid: {err}") from err


def load(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    expect_labels: tuple[str, ...] | list[str] | None = None,
) -> TwoViewNet:
    """Rebuild the model a checkpoint holds, in eval mode, float32; refuse mismatches with their names."""
    path = Path(path)
    config = read_config(path)
    if expect_labels is not None and tuple(expect_labels) != config.labels:
        raise CheckpointError(
            f"{path}: the model predicts {list(config.labels)}, but {list(expect_labels)} were expected"
        )
    model = TwoViewNet(config)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the weights: {err}") from err
    _check_shapes(path, model.state_dict(), tensors)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return model.to(map_location).eval()


def _check_shapes(path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    if not (missing or unexpected or wrong):
        return
    parts: list[str] = []
    for title, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {title} weights (e.g. {', '.join(keys[:3])})")
    if wrong:
        shown = ", ".join(f"{k}: {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3])
        parts.append(f"{len(wrong)} weights with the wrong shape ({shown})")
    raise CheckpointError(f"{path}: weights do not match the stored config: " + "; ".join(parts))


def _refuse_pickle(path: Path, head: bytes) -> None:
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a PyTorch pickle, which can run code when loaded; twoview loads only .safetensors "
            "checkpoints. Re-save weights you trust with safetensors, or use a DenseNet121 state dict as a pretrained start."
        )


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's config and metadata as plain data, for model cards and the app."""
    metadata = read_metadata(path)
    return {"config": json.loads(metadata["config"]), **{k: v for k, v in metadata.items() if k != "config"}}
