"""Start both branches (and the fusion block) from a pretrained DenseNet121 state dict.

Three layouts are understood: MONAI (`features.denseblock1.denselayer1.layers.norm1.weight`),
torchvision (`...denselayer1.norm1.weight`, or the old `norm.1` spelling) and TorchXRayVision
(torchvision's names plus `op_threshs`, or its pickled `DenseNet`, read by `models.torchfile`). A
three-channel first convolution is summed into one channel. Weights come from a local file or a URL,
cached on disk and checked against a SHA-256. The input normalisation the weights expect comes with
them: recorded by `twoview import-weights` (`models.importing`), else the layout's (`INPUT_NORMS`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from models.atomic import atomic_path
from models.config import ModelConfig
from models.errors import DownloadError, PretrainedError
from models.torchfile import read_torch_file
from models.twoview import TwoViewNet

__all__ = [
    "IMAGENET_DENSENET121",
    "IMPORTED_FORMAT",
    "INPUT_NORMS",
    "InputNorm",
    "PinnedWeights",
    "PretrainedReport",
    "SourceWeights",
    "default_cache_dir",
    "densenet_geometry",
    "describe_geometry",
    "fetch",
    "fetch_pinned",
    "file_sha256",
    "load_pretrained",
    "read_state_dict",
    "read_weights",
    "resolve",
    "strip_prefixes",
]

#: The `format` metadata of a file written by `twoview import-weights` (not a twoview checkpoint).
IMPORTED_FORMAT = "twoview-densenet"

_PREFIXES = ("module.", "model.", "densenet121.", "backbone.")
_TORCHVISION_OLD = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.(\d)\.")
_TORCHVISION_LAYER = re.compile(r"(denselayer\d+)\.((?:norm|conv)\d\.)")
_TAIL = ("transition3.", "denseblock4.", "norm5.")


@dataclass(frozen=True)
class InputNorm:
    """`(x - mean) / std` of pixels in [0, 1]: the normalisation that gives the scale features know."""

    mean: float
    std: float
    scale: str  # that scale, in words

    def describe(self) -> str:
        return f"(x - {self.mean:g}) / {self.std:g} on pixels in [0, 1]: {self.scale}"


#: The input each layout's published weights were trained with. MONAI's pretrained DenseNet121 is
#: torchvision's ImageNet one; grey pixels take ImageNet's mean and std averaged over RGB.
INPUT_NORMS: dict[str, InputNorm] = {
    "TorchXRayVision": InputNorm(0.5, 1 / 2048, "TorchXRayVision's [-1024, 1024]"),
    "torchvision": InputNorm(0.449, 0.226, "ImageNet's mean and std, averaged over RGB"),
    "MONAI": InputNorm(0.449, 0.226, "ImageNet's mean and std, averaged over RGB"),
}


@dataclass
class SourceWeights:
    """A DenseNet state dict as read, its layout, the normalisation it expects, and what a file recorded."""

    tensors: dict[str, torch.Tensor]
    layout: str
    norm: InputNorm
    geometry: dict[str, Any] | None = None  # DenseNet sizes recorded by `twoview import-weights`
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class PretrainedReport:
    """What a pretrained start did: the layout, the weights loaded or left fresh, the input scale."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # source keys with no place, or the wrong shape
    norm: InputNorm | None = None

    def summary(self) -> str:
        text = (
            f"pretrained ({self.layout} layout): {len(self.loaded)} weights loaded, "
            f"{len(self.fresh)} left fresh, {len(self.dropped)} source weights not used"
        )
        return text + (f"; input normalisation {self.norm.describe()}" if self.norm else "")


def default_cache_dir() -> Path:
    """`$TWOVIEW_CACHE/weights`, else `~/.cache/twoview/weights`."""
    root = os.environ.get("TWOVIEW_CACHE") or Path.home() / ".cache" / "twoview"
    return Path(root) / "weights"


@dataclass(frozen=True)
class PinnedWeights:
    """Published weights twoview can start from by name: where they are and the checksum they must have.

    `sha256` may be a prefix of at least 8 hex digits: torch.hub's own check, for files that publish
    only the prefix in their name (torchvision's `densenet121-a639ec97.pth`).
    """

    name: str
    url: str
    sha256: str
    layout: str


#: `twoview train --start imagenet`: torchvision's ImageNet DenseNet121, the start a real run wants.
IMAGENET_DENSENET121 = PinnedWeights(
    "ImageNet DenseNet121 (torchvision IMAGENET1K_V1)",
    "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "a639ec97",
    "torchvision",
)


def fetch(url: str, sha256: str, cache_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download `url` once into the cache, verified against `sha256`; later calls reuse the file.

    Network failures raise `DownloadError`; a file with another checksum raises `PretrainedError`
    and is not kept.
    """
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256 or ""):
        raise PretrainedError(f"a SHA-256 (64 hex digits) is needed to download {url}; got {sha256!r}")
    return _download(url, sha256.lower(), cache_dir, timeout)


def fetch_pinned(weights: PinnedWeights, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file of published weights, downloaded once into the cache and checked against its pinned checksum."""
    return _download(weights.url, weights.sha256.lower(), cache_dir, 60.0)


def _download(url: str, expected: str, cache_dir: str | os.PathLike | None, timeout: float) -> Path:
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = Path(urllib.request.urlparse(url).path).name or "weights"
    target = cache / f"{expected[:12]}-{name}"
    if target.exists() and file_sha256(target).startswith(expected):
        return target
    try:
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
            digest = file_sha256(tmp)
            if not digest.startswith(expected):
                raise PretrainedError(
                    f"{url}: SHA-256 is {digest}, expected {expected}; the file was not kept"
                )
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(f"cannot download pretrained weights from {url}: {err}") from err
    return target


def resolve(
    source: str | os.PathLike, sha256: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The local file for `source`: a URL is downloaded into the cache; a given SHA-256 is always checked."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        return fetch(source, sha256 or "", cache_dir)
    path = Path(source)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights not found: {path}")
    if sha256 and file_sha256(path) != sha256.lower():
        raise PretrainedError(f"{path}: SHA-256 does not match {sha256}")
    return path


def read_weights(path: str | os.PathLike) -> SourceWeights:
    """A `.safetensors` file (an imported one with its recorded layout and normalisation) or a torch file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as err:
        raise PretrainedError(f"cannot read pretrained weights {path}: {err.strerror or err}") from err
    if path.suffix != ".safetensors" and not (len(head) == 9 and head[8:9] == b"{"):
        found = read_torch_file(path)
        layout = _layout(found.tensors, found.module_class)
        return SourceWeights(found.tensors, layout, INPUT_NORMS[layout])
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise PretrainedError(f"{path}: cannot read: the file is incomplete or damaged ({err})") from err
    if metadata.get("format") != IMPORTED_FORMAT:
        layout = _layout(tensors)
        return SourceWeights(tensors, layout, INPUT_NORMS[layout], metadata=metadata)
    try:
        norm = InputNorm(float(metadata["norm_mean"]), float(metadata["norm_std"]), metadata["input_scale"])
        geometry = json.loads(metadata["geometry"])
        layout = metadata["source_layout"]
    except (KeyError, ValueError) as err:
        raise PretrainedError(f"{path}: the imported weights' metadata is damaged ({err})") from err
    if not norm.std > 0 or not isinstance(geometry, dict):
        raise PretrainedError(f"{path}: the imported weights' metadata is damaged")
    return SourceWeights(tensors, layout, norm, geometry, metadata)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file or a torch file (read without running code from it)."""
    return read_weights(path).tensors


def densenet_geometry(config: ModelConfig) -> dict[str, Any]:
    """The DenseNet sizes that decide the shape of every weight."""
    return {
        "init_features": config.init_features,
        "growth_rate": config.growth_rate,
        "block_config": list(config.block_config),
        "bn_size": config.bn_size,
    }


def load_pretrained(
    model: TwoViewNet,
    source: str | os.PathLike,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PretrainedReport:
    """Load a DenseNet121 (file path or http(s) URL) into both branches and the fusion block.

    `model.config` takes the input normalisation the weights expect, so training and prediction
    feed them the scale their features know.
    """
    path = resolve(source, sha256, cache_dir)
    weights = read_weights(path)
    wanted = densenet_geometry(model.config)
    if weights.geometry is not None and weights.geometry != wanted:
        raise PretrainedError(
            f"{path} holds a DenseNet with {describe_geometry(weights.geometry)}, but this model needs "
            f"{describe_geometry(wanted)}; import the weights for the model's size (--arch)"
        )
    state = weights.tensors
    features = _monai_features(state)
    targets = model.state_dict()
    report = PretrainedReport(layout=weights.layout, norm=weights.norm)
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
    report.dropped.extend(k for k in state if not strip_prefixes(k).startswith("features."))
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    report.fresh = sorted(set(targets) - set(mapped))
    report.dropped = sorted(set(report.dropped))
    if not report.loaded:
        raise PretrainedError(
            f"{path}: no weight matched a DenseNet layout (MONAI, torchvision or TorchXRayVision)"
        )
    model.config = replace(model.config, norm_mean=weights.norm.mean, norm_std=weights.norm.std)
    return report


def describe_geometry(geometry: dict[str, Any]) -> str:
    """DenseNet sizes in words, for messages."""
    blocks = "-".join(str(b) for b in geometry.get("block_config", ()))
    return (
        f"stem {geometry.get('init_features')}, growth {geometry.get('growth_rate')}, "
        f"blocks {blocks}, bottleneck x{geometry.get('bn_size')}"
    )


def strip_prefixes(key: str) -> str:
    """A state-dict key without the wrappers' prefixes (`module.` of DataParallel, `model.`, ...)."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _layout(state: dict[str, torch.Tensor], module_class: str | None = None) -> str:
    """MONAI (`.layers.` in names), TorchXRayVision (its pickled class or `op_threshs`), else torchvision."""
    keys = [strip_prefixes(k) for k in state]
    if any(".layers." in k for k in keys):
        return "MONAI"
    if (module_class or "").startswith("torchxrayvision.") or any("op_threshs" in k for k in keys):
        return "TorchXRayVision"
    return "torchvision"


def _monai_features(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `features.*` weights renamed to MONAI's layout."""
    keys = [strip_prefixes(k) for k in state]
    monai = _layout(state) == "MONAI"
    out = {}
    for key, tensor in zip(keys, state.values(), strict=True):
        if not key.startswith("features."):
            continue
        key = key[len("features.") :]
        if not monai:
            key = _TORCHVISION_OLD.sub(r"\1\2.", key)
            key = _TORCHVISION_LAYER.sub(r"\1.layers.\2", key)
        out[key] = tensor
    return out


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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
