"""`twoview import-weights`: DenseNet121 weights from any source twoview reads, as one plain `.safetensors`.

Sources: a TorchXRayVision release (a pickled `DenseNet`), a torchvision or MONAI state dict (`.pth`,
`.pt` or `.safetensors`), as a file or a URL (cached, SHA-256 checked). The output is a state dict in
torchvision's names (`features.denseblock1.denselayer1.norm1.weight`, `classifier.weight`) whose
metadata records the source layout, the source file's SHA-256, the DenseNet sizes and the input
normalisation the weights expect; `load_pretrained` gives that normalisation to the model it starts.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.atomic import atomic_path
from models.config import ModelConfig
from models.errors import PretrainedError
from models.pretrained import (
    IMPORTED_FORMAT,
    InputNorm,
    densenet_geometry,
    describe_geometry,
    file_sha256,
    read_weights,
    resolve,
    strip_prefixes,
)

__all__ = ["ImportReport", "densenet_shapes", "import_weights", "torchvision_names"]

_OLD_TORCHVISION = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.(\d)\.")  # torchvision < 0.3: "norm.1"


@dataclass
class ImportReport:
    """What `import_weights` wrote, from what, and the input normalisation it recorded."""

    output: Path
    source: str
    sha256: str
    layout: str
    architecture: str
    tensors: int
    stem_channels: int
    classes: int | None  # outputs of the source's classifier, if it had one
    norm: InputNorm
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = f"classifier with {self.classes} outputs" if self.classes else "no classifier"
        lines = [
            f"imported {self.layout} weights: {self.architecture}, {self.tensors} tensors "
            f"({self.stem_channels}-channel stem, {head}) -> {self.output}",
            f"source: {self.source} (SHA-256 {self.sha256})",
            f"input normalisation recorded: {self.norm.describe()}",
        ]
        if self.dropped:
            lines.append(f"not kept (not DenseNet weights): {', '.join(self.dropped)}")
        return "\n".join(lines)


def import_weights(
    source: str | os.PathLike,
    output: str | os.PathLike,
    sha256: str | None = None,
    *,
    expect: ModelConfig | None = None,
    norm: InputNorm | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ImportReport:
    """Convert `source` (file or URL) into `output`, refusing anything but a DenseNet of `expect`'s sizes.

    `expect` defaults to DenseNet121 (`ModelConfig()`); `norm` overrides the layout's normalisation.
    """
    output = Path(output)
    if output.suffix != ".safetensors":
        raise PretrainedError(f"{output}: the output must be a .safetensors file")
    expect = expect or ModelConfig()
    path = resolve(source, sha256, cache_dir)
    weights = read_weights(path)
    state, dropped = torchvision_names(weights.tensors)
    name = _architecture(expect)
    _check_densenet(path, state, expect, name, others=dropped)
    norm = norm or weights.norm
    if not norm.std > 0:
        raise PretrainedError(f"the normalisation's std must be positive, got {norm.std}")
    digest = file_sha256(path)
    metadata = {
        "format": IMPORTED_FORMAT,
        "format_version": "1",
        "architecture": name,
        "geometry": json.dumps(densenet_geometry(expect)),
        "source": str(source),
        "source_sha256": digest,
        "source_layout": weights.layout,
        "norm_mean": repr(float(norm.mean)),
        "norm_std": repr(float(norm.std)),
        "input_scale": norm.scale,
    }
    _write(state, output, metadata)
    classifier = state.get("classifier.weight")
    return ImportReport(
        output=output,
        source=str(source),
        sha256=digest,
        layout=weights.layout,
        architecture=name,
        tensors=len(state),
        stem_channels=int(state["features.conv0.weight"].shape[1]),
        classes=int(classifier.shape[0]) if classifier is not None else None,
        norm=norm,
        dropped=sorted(dropped),
    )


def torchvision_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`features.*` and `classifier.*` renamed from MONAI's or old torchvision's names; the other keys."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in state.items():
        name = strip_prefixes(key).replace(".layers.", ".")
        name = _OLD_TORCHVISION.sub(r"\1\2.", name)
        if name.startswith("class_layers.out."):
            name = "classifier." + name[len("class_layers.out.") :]
        if name.startswith(("features.", "classifier.")):
            out[name] = tensor
        else:
            dropped.append(key)
    return out, dropped


def densenet_shapes(config: ModelConfig, in_channels: int = 1) -> dict[str, tuple[int, ...]]:
    """Every `features.*` weight of a torchvision DenseNet with `config`'s sizes, and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, channels: int) -> None:
        for part in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{part}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    growth, width = config.growth_rate, config.bn_size * config.growth_rate
    channels = config.init_features
    shapes["features.conv0.weight"] = (channels, in_channels, 7, 7)
    norm("features.norm0", channels)
    for block, layers in enumerate(config.block_config, start=1):
        for layer in range(1, layers + 1):
            prefix = f"features.denseblock{block}.denselayer{layer}"
            norm(f"{prefix}.norm1", channels)
            shapes[f"{prefix}.conv1.weight"] = (width, channels, 1, 1)
            norm(f"{prefix}.norm2", width)
            shapes[f"{prefix}.conv2.weight"] = (growth, width, 3, 3)
            channels += growth
        if block < len(config.block_config):
            norm(f"features.transition{block}.norm", channels)
            shapes[f"features.transition{block}.conv.weight"] = (channels // 2, channels, 1, 1)
            channels //= 2
    norm("features.norm5", channels)
    return shapes


def _architecture(config: ModelConfig) -> str:
    if densenet_geometry(config) == densenet_geometry(ModelConfig()):
        return "DenseNet121"
    return f"DenseNet ({describe_geometry(densenet_geometry(config))})"


def _check_densenet(
    path: Path, state: dict[str, torch.Tensor], config: ModelConfig, name: str, others: list[str]
) -> None:
    """Refuse weights that are not exactly a DenseNet of `config`'s sizes, naming what differs."""
    stem = state.get("features.conv0.weight")
    in_channels = int(stem.shape[1]) if stem is not None and stem.ndim == 4 and stem.shape[1] in (1, 3) else 1
    expected = densenet_shapes(config, in_channels)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    # num_batches_tracked arrived in torch 0.4.1; older files lack it, and nothing needs it.
    missing = [k for k in expected if k not in features and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in features if k not in expected]
    wrong = [k for k in features if k in expected and tuple(features[k].shape) != expected[k]]
    final = expected["features.norm5.weight"][0]
    classifier = state.get("classifier.weight")
    outputs = int(classifier.shape[0]) if classifier is not None and classifier.ndim == 2 else 0
    expected.update({"classifier.weight": (outputs, final), "classifier.bias": (outputs,)})
    wrong += [
        k
        for k in ("classifier.weight", "classifier.bias")
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or wrong):
        return
    if not features:
        raise PretrainedError(
            f"{path}: not a {name}: none of its tensors is named like a DenseNet's (features.conv0.weight, "
            f"features.denseblock1...); it has {', '.join(others[:3]) or 'no tensors'}"
        )
    parts = []
    for title, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {title} weights (e.g. {', '.join(keys[:3])})")
    if wrong:
        shown = ", ".join(f"{k} is {tuple(state[k].shape)}, not {expected[k]}" for k in wrong[:3])
        parts.append(f"{len(wrong)} weights with the wrong shape ({shown})")
    raise PretrainedError(f"{path}: not a {name}: " + "; ".join(parts))


def _write(state: dict[str, torch.Tensor], output: Path, metadata: dict[str, str]) -> None:
    """Write atomically: a killed import leaves no half-written file under the output's name."""
    tensors = {k: v.detach().contiguous().clone() for k, v in sorted(state.items())}
    try:
        with atomic_path(output) as tmp:
            save_file(tensors, tmp, metadata=metadata)
    except OSError as err:
        raise PretrainedError(f"cannot write {output}: {err.strerror or err}") from err
