"""Checkpoints: one `.safetensors` file holding the weights, with the `ModelConfig` as JSON in its metadata.

A checkpoint alone rebuilds its model, labels and preprocessing. Loading never unpickles: a
pickle (`.pt`, `.pth`, `.ckpt`) is refused before anything in it is read. `check` finds from the
header alone everything `load` would trip over (the network built on the meta device, so a config
declaring hundreds of billions of parameters costs nothing): the app runs it on every upload.
"""

from __future__ import annotations

import json
import math
import os
import struct
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from models.atomic import atomic_path
from models.config import ModelConfig
from models.errors import CheckpointError, ConfigError
from models.pretrained import IMPORTED_FORMAT
from models.twoview import TwoViewNet

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_FEATURE_BYTES",
    "MAX_PARAMETERS",
    "check",
    "describe",
    "load",
    "read_config",
    "read_metadata",
    "save",
]

FORMAT = "twoview"
FORMAT_VERSION = 1
MAX_PARAMETERS = 200_000_000  # a DenseNet121 pair with its fusion has 17 M; ten times that is no chest model
MAX_FEATURE_BYTES = 256 * 2**20  # the largest feature map of one image (DenseNet121 at 2048 px: 256 MiB)
_MAX_HEADER = 16 * 1024 * 1024  # a real header is a few hundred KB; bigger is forged
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
_ITEM_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_WRITTEN_FLOATS = ("F32", "F16", "BF16")  # what `save` writes floating weights as
_NAMES = {torch.float32: "F32", torch.int64: "I64"}


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
    return _metadata(Path(path), _read_header(Path(path))[0])


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The .safetensors header as JSON, where the tensor data starts, and the file's size."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            if len(head) < 9:
                raise CheckpointError(f"{path}: too short to be a .safetensors checkpoint")
            (size,) = struct.unpack("<Q", head[:8])
            if head[8:9] != b"{":
                _refuse_pickle(path, head)
                raise CheckpointError(f"{path}: not a .safetensors checkpoint")
            file_size = os.fstat(f.fileno()).st_size
            if size > _MAX_HEADER or 8 + size > file_size:
                raise CheckpointError(
                    f"{path}: header claims {size} bytes in a file of {file_size}; not a valid .safetensors "
                    "checkpoint"
                )
            f.seek(8)
            header = json.loads(f.read(size))
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: the .safetensors header is not valid JSON") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the .safetensors header is not a JSON object")
    return header, 8 + size, file_size


def _metadata(path: Path, header: dict[str, Any]) -> dict[str, str]:
    metadata = header.get("__metadata__")
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
    return _config(Path(path), read_metadata(path))


def _config(path: Path, metadata: dict[str, str]) -> ModelConfig:
    try:
        return ModelConfig.from_json(metadata["config"])
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint has no model config") from err
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored model config is invalid: {err}") from err


def check(path: str | os.PathLike) -> ModelConfig:
    """Refuse, from the header alone, a checkpoint that `load` or a prediction would fail on.

    The config's network is built on the meta device (no memory): its parameter count must stay
    under `MAX_PARAMETERS` and its largest feature map of one image under `MAX_FEATURE_BYTES`;
    every tensor the network has must be in the file with its shape and a dtype `save` writes,
    nothing else may be, and the tensors' bytes must lie end to end exactly up to the end of the file.
    """
    return _checked(Path(path))[0]


def _checked(path: Path) -> tuple[ModelConfig, TwoViewNet]:
    """`check`, also giving the network it built on the meta device, for `load` to fill in."""
    header, start, size = _read_header(path)
    config = _config(path, _metadata(path, header))
    net = _on_meta(path, config)
    expected = {name: (tuple(t.shape), t.dtype) for name, t in net.state_dict().items()}
    _check_entries(path, expected, {k: v for k, v in header.items() if k != "__metadata__"}, size - start)
    _check_features(path, net, config)
    return config, net


class _MetaShortcuts(TorchFunctionMode):
    """On meta tensors (shapes, no values): random initialisation skipped, and the output shape alone for
    the ops our network uses whose meta kernels are Python references (batch norm, relu, dropout,
    adaptive pooling, linear, cat), and for convolution and pooling, whose meta kernels' `torch._check`
    imports sympy. Those imports (torch._dynamo 1-1.6 s, sympy 0.4 s) came with every command's start, for
    nothing. `tests/models/test_checkpoint.py` checks the shapes agree with PyTorch's.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        first = args[0] if args else None
        if func is torch.cat and isinstance(first, (list, tuple)) and first:
            first = first[0]  # cat's first argument is the list of tensors
        if isinstance(first, torch.Tensor) and first.is_meta:
            if func in _INITIALISERS:
                return args[0]
            if func in _SHAPE_KEEPING:
                return first.new_empty(first.shape)
            if func is torch.nn.functional.adaptive_avg_pool2d:
                size = args[1] if len(args) > 1 else kwargs["output_size"]
                return first.new_empty((*first.shape[:-2], *_pair(size)))
            if func is torch.nn.functional.linear:
                weight = args[1] if len(args) > 1 else kwargs["weight"]
                return first.new_empty((*first.shape[:-1], weight.shape[0]))
            if func is torch.cat:
                dim = args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0)
                shape = list(first.shape)
                shape[dim] = sum(t.shape[dim] for t in args[0])
                return first.new_empty(shape)
            if func is torch.conv2d:
                shape = _conv2d_shape(*args, **(kwargs or {}))
                if shape is not None:
                    return first.new_empty(shape)
            if func in _POOLS:
                shape = _pool2d_shape(func, *args, **(kwargs or {}))
                if shape is not None:
                    return first.new_empty(shape)
        return func(*args, **(kwargs or {}))


def _conv2d_shape(
    image: torch.Tensor, weight: torch.Tensor, bias=None, stride=1, padding=0, dilation=1, groups=1
) -> tuple[int, ...] | None:
    """`conv2d`'s output shape, with PyTorch's errors; None for string padding ("same"), left to PyTorch."""
    if isinstance(padding, str):
        return None
    if weight.shape[1] * groups != image.shape[1]:
        raise RuntimeError(
            f"conv2d expected input with {weight.shape[1] * groups} channels, but got {image.shape[1]} channels"
        )
    pairs = map(_pair, (stride, padding, dilation))
    return (*image.shape[:-3], weight.shape[0], *_sides(image, weight.shape[2:], *pairs))


def _pool2d_shape(
    func, image: torch.Tensor, kernel_size, stride=None, padding=0, *rest, **options
) -> tuple[int, ...] | None:
    """Max or average pooling's output shape (`ceil_mode` included); None when indices are asked for."""
    if func in (torch.nn.functional.max_pool2d, torch.max_pool2d):
        names = ("dilation", "ceil_mode", "return_indices")
        dilation, ceil, indices = (rest[i] if len(rest) > i else options.get(n) for i, n in enumerate(names))
        if indices:
            return None
    else:
        dilation, ceil = 1, rest[0] if rest else options.get("ceil_mode")
    dilation = 1 if dilation is None else dilation
    stride = stride if stride else kernel_size  # None or [] means the kernel's size
    pairs = map(_pair, (kernel_size, stride, padding, dilation))
    return (*image.shape[:-2], *_sides(image, *pairs, ceil=ceil))


def _pair(value) -> tuple[int, ...]:
    """An int or a sequence of them (a size, stride, padding...) as a tuple: 3 -> (3, 3)."""
    return (value, value) if isinstance(value, int) else tuple(value)


def _sides(image: torch.Tensor, kernel, stride, padding, dilation, *, ceil: bool = False) -> list[int]:
    """Height and width out of a sliding window (convolution or pooling), as PyTorch computes them."""
    sides = []
    for size, k, s, p, d in zip(image.shape[-2:], kernel, stride, padding, dilation, strict=True):
        span = size + 2 * p - d * (k - 1) - 1
        side = (span + (s - 1 if ceil else 0)) // s + 1
        if ceil and (side - 1) * s >= size + p:  # the last window must start inside the image
            side -= 1
        if side <= 0:
            raise RuntimeError(f"output size is too small ({size} px in, window {k}, stride {s})")
        sides.append(side)
    return sides


_INITIALISERS = frozenset(
    (torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_)
)
_POOLS = frozenset(
    (
        torch.nn.functional.max_pool2d,
        torch.max_pool2d,
        torch.nn.functional.avg_pool2d,
        torch._C._nn.avg_pool2d,
    )
)
_SHAPE_KEEPING = frozenset(
    (
        torch.nn.functional.batch_norm,
        torch.nn.functional.relu,
        torch.relu,
        torch.Tensor.relu,
        torch.nn.functional.dropout,
    )
)


def _on_meta(path: Path, config: ModelConfig) -> TwoViewNet:
    """The config's network with no storage behind it, refused above `MAX_PARAMETERS`."""
    try:
        with torch.device("meta"), _MetaShortcuts():
            net = TwoViewNet(config)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: the stored config does not build a network ({err})") from err
    count = sum(p.numel() for p in net.parameters())
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path}: the stored config declares a network of {count / 1e6:,.1f} M parameters "
            f"({count * 4 / 2**30:,.1f} GiB as float32); at most {MAX_PARAMETERS / 1e6:.0f} M are loaded"
        )
    return net


def _check_entries(
    path: Path,
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
    found: dict[str, Any],
    data_bytes: int,
) -> None:
    """The file's tensor entries against the network's: names, shapes, dtypes and byte ranges."""
    problems: list[str] = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    for title, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {title} weights (e.g. {', '.join(keys[:3])})")
    ranges: list[tuple[int, int]] = []
    wrong: dict[str, list[str]] = {"with the wrong shape": [], "of a dtype twoview does not write": []}
    wrong["whose byte range does not fit their shape"] = []
    for name in sorted(set(expected) & set(found)):
        shape, dtype = expected[name]
        try:
            kind, dims, (begin, end) = (
                found[name]["dtype"],
                tuple(found[name]["shape"]),
                found[name]["data_offsets"],
            )
            fits = 0 <= begin <= end and end - begin == math.prod(int(d) for d in dims) * _ITEM_BYTES[kind]
        except (KeyError, TypeError, ValueError):
            wrong["whose byte range does not fit their shape"].append(f"{name}: not a valid tensor entry")
            continue
        allowed = _WRITTEN_FLOATS if dtype.is_floating_point else (_NAMES.get(dtype, str(dtype)),)
        if dims != shape:
            wrong["with the wrong shape"].append(f"{name}: {dims} vs {shape}")
        elif kind not in allowed:
            wrong["of a dtype twoview does not write"].append(f"{name}: {kind}, not {' or '.join(allowed)}")
        elif not fits:
            wrong["whose byte range does not fit their shape"].append(f"{name}: {begin}..{end}")
        ranges.append((begin, end))
    for title, items in wrong.items():
        if items:
            problems.append(f"{len(items)} weights {title} ({', '.join(items[:3])})")
    if problems:
        raise CheckpointError(f"{path}: weights do not match the stored config: " + "; ".join(problems))
    position = 0
    for begin, end in sorted(ranges):
        if begin != position:
            break
        position = end
    if position != data_bytes:
        raise CheckpointError(
            f"{path}: the tensors declared in the header do not fill the file exactly ({data_bytes:,} bytes "
            f"of data); the file is damaged or forged"
        )


def _meta_outputs(
    net: TwoViewNet, image_size: int, *, shortcuts: bool = True
) -> list[tuple[torch.nn.Module, tuple[int, ...]]]:
    """Every module's output shape, in call order, for one image through a network on the meta device
    (frontal branch, its head, the joint path); `shortcuts=False` uses PyTorch's own meta kernels."""
    found: list[tuple[torch.nn.Module, tuple[int, ...]]] = []

    def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            found.append((module, tuple(output.shape)))

    hooks = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.no_grad(), _MetaShortcuts() if shortcuts else nullcontext():
            image = torch.empty(1, net.config.in_channels, image_size, image_size, device="meta")
            maps = net.frontal.trunk(image)
            net.frontal.head(net.frontal.tail(maps))
            net.joint(maps, maps)
    finally:
        for handle in hooks:
            handle.remove()
    return found


def _check_features(path: Path, net: TwoViewNet, config: ModelConfig) -> None:
    """Refuse a network whose largest feature map for one image passes `MAX_FEATURE_BYTES`."""
    leaves = [shape for module, shape in _meta_outputs(net, config.image_size) if not list(module.children())]
    largest = max((math.prod(shape) * 4 for shape in leaves), default=0)
    if largest > MAX_FEATURE_BYTES:
        raise CheckpointError(
            f"{path}: at {config.image_size} px this network makes feature maps of {largest / 2**20:,.0f} MiB "
            f"per image; at most {MAX_FEATURE_BYTES / 2**20:.0f} MiB are allowed, so predicting with it would "
            "run out of memory"
        )


def load(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    expect_labels: tuple[str, ...] | list[str] | None = None,
) -> TwoViewNet:
    """Rebuild the model a checkpoint holds, in eval mode, float32; refuse mismatches with their names."""
    path = Path(path)
    config, model = _checked(path)
    if expect_labels is not None and tuple(expect_labels) != config.labels:
        raise CheckpointError(
            f"{path}: the model predicts {list(config.labels)}, but {list(expect_labels)} were expected"
        )
    try:
        tensors = load_file(str(path), device="cpu")
        _check_shapes(path, model.state_dict(), tensors)
        # The checked network is on the meta device: the file's tensors become its weights (no second
        # build, no random initialisation to overwrite).
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, assign=True
        )
        return model.to(map_location).eval()
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the weights: {err}") from err
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "alloc" not in str(err).lower():
            raise
        raise CheckpointError(f"{path}: not enough memory to load this model ({_describe(err)})") from err


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


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


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
