"""Start both branches (and the fusion block) from a pretrained DenseNet121 state dict.

Three layouts are understood: MONAI (`features.denseblock1.denselayer1.layers.norm1.weight`),
torchvision (`...denselayer1.norm1.weight`, or the old `norm.1` spelling) and TorchXRayVision
(torchvision's names plus `op_threshs`). A three-channel first convolution is summed into one
channel. Weights come from a local file or a URL, cached on disk and checked against a SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from models.errors import PretrainedError
from models.twoview import TwoViewNet

__all__ = ["PretrainedReport", "default_cache_dir", "fetch", "load_pretrained", "read_state_dict"]

_PREFIXES = ("module.", "model.", "densenet121.", "backbone.")
_TORCHVISION_OLD = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.(\d)\.")
_TORCHVISION_LAYER = re.compile(r"(denselayer\d+)\.((?:norm|conv)\d\.)")
_TAIL = ("transition3.", "denseblock4.", "norm5.")


@dataclass
class PretrainedReport:
    """What a pretrained start did: the layout found, and which model weights were loaded or left fresh."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # source keys with no place, or the wrong shape

    def summary(self) -> str:
        return (
            f"pretrained ({self.layout} layout): {len(self.loaded)} weights loaded, "
            f"{len(self.fresh)} left fresh, {len(self.dropped)} source weights not used"
        )


def default_cache_dir() -> Path:
    """`$TWOVIEW_CACHE/weights`, else `~/.cache/twoview/weights`."""
    root = os.environ.get("TWOVIEW_CACHE") or Path.home() / ".cache" / "twoview"
    return Path(root) / "weights"


def fetch(url: str, sha256: str, cache_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download `url` once into the cache, verified against `sha256`; later calls reuse the file."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256 or ""):
        raise PretrainedError(f"a SHA-256 (64 hex digits) is needed to download {url}; got {sha256!r}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = Path(urllib.request.urlparse(url).path).name or "weights"
    target = cache / f"{sha256[:12]}-{name}"
    if target.exists() and _sha256(target) == sha256.lower():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
    os.fchmod(handle, 0o644)  # mkstemp makes 0600; this is an ordinary shared file
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        digest = _sha256(Path(tmp))
        if digest != sha256.lower():
            raise PretrainedError(
                f"{url}: SHA-256 is {digest}, expected {sha256.lower()}; the file was not kept"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise PretrainedError(f"cannot download pretrained weights from {url}: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file, or a torch file loaded with `weights_only=True` (no code runs)."""
    path = Path(path)
    try:
        if path.read_bytes()[:1] == b"{" or path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise PretrainedError(f"{path}: cannot read a state dict: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj


def load_pretrained(
    model: TwoViewNet,
    source: str | os.PathLike,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PretrainedReport:
    """Load a DenseNet121 state dict (file path or http(s) URL) into both branches and the fusion block."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        path = fetch(source, sha256 or "", cache_dir)
    else:
        path = Path(source)
        if not path.is_file():
            raise PretrainedError(f"pretrained weights not found: {path}")
        if sha256 and _sha256(path) != sha256.lower():
            raise PretrainedError(f"{path}: SHA-256 does not match {sha256}")
    state = read_state_dict(path)
    layout, features = _monai_features(state)
    targets = model.state_dict()
    report = PretrainedReport(layout=layout)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in features.items():
        places = _places(key)
        if not places:
            report.dropped.append(key)
            continue
        for place in places:
            value = _fit(tensor, targets.get(place), place)
            if value is None:
                report.dropped.append(key)
            else:
                mapped[place] = value
    report.dropped.extend(k for k in state if not _strip(k).startswith("features."))
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    report.fresh = sorted(set(targets) - set(mapped))
    report.dropped = sorted(set(report.dropped))
    if not report.loaded:
        raise PretrainedError(
            f"{path}: no weight matched a DenseNet layout (MONAI, torchvision or TorchXRayVision)"
        )
    return report


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _monai_features(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The `features.*` weights renamed to MONAI's layout, and the name of the layout found."""
    keys = [_strip(k) for k in state]
    if any(".layers." in k for k in keys):
        layout = "MONAI"
    elif any("op_threshs" in k for k in keys):
        layout = "TorchXRayVision"
    else:
        layout = "torchvision"
    out = {}
    for key, tensor in zip(keys, state.values(), strict=True):
        if not key.startswith("features."):
            continue
        key = key[len("features.") :]
        if layout != "MONAI":
            key = _TORCHVISION_OLD.sub(r"\1\2.", key)
            key = _TORCHVISION_LAYER.sub(r"\1.layers.\2", key)
        out[key] = tensor
    return layout, out


def _places(key: str) -> list[str]:
    """Model keys that a MONAI `features.<key>` weight initialises (both branches, and the fusion block)."""
    part = "tail" if key.startswith(_TAIL) else "trunk"
    places = [f"frontal.{part}.{key}", f"lateral.{part}.{key}"]
    if key.startswith("denseblock4."):
        places.append("joint.fusion.denseblock." + key[len("denseblock4.") :])
    elif key.startswith("norm5."):
        places.append("joint.fusion.norm." + key[len("norm5.") :])
    elif key.startswith("transition3."):
        places.append("joint.fusion.transition." + key[len("transition3.") :])
    return places


def _fit(tensor: torch.Tensor, target: torch.Tensor | None, place: str) -> torch.Tensor | None:
    """`tensor` shaped for `target`: a 3-channel stem summed to 1, the fusion transition taking both views."""
    if target is None:
        return None
    tensor = tensor.to(target.dtype) if tensor.is_floating_point() else tensor
    if tensor.shape == target.shape:
        return tensor.clone()
    if place.endswith("conv0.weight") and tensor.ndim == 4 and tensor.shape[1] == 3 and target.shape[1] == 1:
        return tensor.sum(dim=1, keepdim=True)
    if place.startswith("joint.fusion.transition."):
        # Concatenated [frontal, lateral] channels: norm stats repeat; the conv averages the two views.
        if tensor.ndim == 1 and target.shape[0] == 2 * tensor.shape[0]:
            return tensor.repeat(2)
        if tensor.ndim == 4 and target.shape[1] == 2 * tensor.shape[1] and target.shape[0] == tensor.shape[0]:
            return torch.cat([tensor, tensor], dim=1) / 2
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
