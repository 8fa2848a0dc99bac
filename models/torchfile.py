"""Tensors from a torch file (`torch.save` output), read without running any code from the file.

A state dict goes through torch's weights-only loader. A TorchXRayVision release is a whole pickled
`DenseNet` module: its classes (`XRV_CLASSES`) are mapped to inert stand-ins that only hold the
attributes the pickle gives them, so neither torchxrayvision nor torchvision is imported. Those
releases were saved by torch < 1.6 in the legacy (non-zip) format, which names each module class
with its source text in a persistent id that torch's weights-only loader refuses; such files are read
by a restricted unpickler that resolves only the names in the same allowlist.
"""

from __future__ import annotations

import pickle
import re
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch

from models.errors import PretrainedError

__all__ = ["XRV_CLASSES", "PickledModule", "TorchFile", "read_torch_file"]

#: The classes a TorchXRayVision DenseNet pickle holds beyond torch's own weights-only allowlist
#: (what `torch.serialization.get_unsafe_globals_in_checkpoint` reports for one).
XRV_CLASSES: tuple[str, ...] = (
    "torchxrayvision.models.DenseNet",
    "torchxrayvision.models._DenseBlock",
    "torchxrayvision.models._DenseLayer",
    "torchxrayvision.models._Transition",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.linear.Linear",
)
#: Modules pickled by torch <= 1.2 each hold a `_backend` rebuilt by this call (a no-op in torch today).
THNN_BACKEND = "torch.nn.backends.thnn._get_thnn_function_backend"
_MAGIC, _PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch's legacy format header
_KEYS = ("state_dict", "model", "model_state_dict")


class PickledModule:
    """Stands in for a module class named in a pickle: keeps the object's attributes, runs nothing."""

    pickled_class: ClassVar[str] = ""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.pickled_class} comes without its attributes")
        self.attributes = state


def _stand_in(name: str) -> type[PickledModule]:
    return type(name.rsplit(".", 1)[1], (PickledModule,), {"pickled_class": name})


def _no_backend() -> None:
    return None


_STAND_INS: dict[str, Any] = {name: _stand_in(name) for name in XRV_CLASSES}
_STAND_INS[THNN_BACKEND] = _no_backend


@dataclass
class TorchFile:
    """A torch file's tensors, and the class of the module it held (None for a plain state dict)."""

    tensors: dict[str, torch.Tensor]
    module_class: str | None = None


def read_torch_file(path: str | Path) -> TorchFile:
    """The tensors of a state dict or of a pickled TorchXRayVision DenseNet; anything else is refused."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head == b"PK\x03\x04":
                obj = _load_zip(f)
            elif head[:1] == b"\x80":
                obj = _LegacyReader(f, path.stat().st_size).read()
            else:
                raise PretrainedError(f"{path}: not a torch file (neither a state dict nor a pickled model)")
    except _Refused as err:
        raise _refusal(path, err.name) from None
    except PretrainedError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            struct.error, pickle.UnpicklingError) as err:  # fmt: skip
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused:
            raise _refusal(path, refused.group(1)) from None
        raise PretrainedError(
            f"{path}: cannot read: the file is incomplete or damaged ({_reason(err)})"
        ) from err
    return _as_tensors(obj, path)


class _Refused(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refusal(path: Path, name: str) -> PretrainedError:
    return PretrainedError(
        f"{path}: refused: the file asks for `{name}`, which is not part of a DenseNet state dict or of a "
        "TorchXRayVision DenseNet; nothing from the file was run. If you trust the file, load it yourself "
        "and save its state_dict()."
    )


def _reason(err: BaseException) -> str:
    """The cause in an error's text (torch's weights-only loader wraps it in advice we do not pass on)."""
    text = str(err)
    inner = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if inner:
        return inner.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _load_zip(f: BinaryIO) -> Any:
    pairs = [(value, name) for name, value in _STAND_INS.items()]
    with torch.serialization.safe_globals(pairs):
        return torch.load(f, map_location="cpu", weights_only=True)


class _LegacyReader:
    """torch's pre-1.6 format: header pickles, the object pickle, its storage keys, then raw storages."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.storages: dict[str, tuple[torch.dtype, torch.Tensor]] = {}  # key -> (dtype, uint8 buffer)
        self.claimed = 0  # bytes of all storages: never more than the file holds

    def read(self) -> Any:
        if self._load() != _MAGIC:
            raise pickle.UnpicklingError("not a torch file (wrong magic number)")
        if self._load() != _PROTOCOL:
            raise pickle.UnpicklingError("unknown legacy torch file version")
        info = self._load()
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise pickle.UnpicklingError("only little-endian torch files are supported")
        obj = self._load()
        keys = self._load()
        if not isinstance(keys, list):
            raise pickle.UnpicklingError("storage list missing")
        for key in keys:
            dtype, buffer = self.storages[key]
            (count,) = struct.unpack("<q", self._exactly(8))
            if count * torch.empty((), dtype=dtype).element_size() != buffer.numel():
                raise pickle.UnpicklingError(
                    f"storage {key} has {count} elements, not the size its tensors need"
                )
            buffer.copy_(torch.frombuffer(bytearray(self._exactly(buffer.numel())), dtype=torch.uint8))
        return obj

    def _exactly(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise EOFError("the file ends early")
        return data

    def _load(self) -> Any:
        return _RestrictedUnpickler(self.f, self).load()


class _StorageKind:
    def __init__(self, name: str) -> None:
        self.dtype = torch.serialization.StorageType(name).dtype


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without its storage")
    return storage.buffer.view(storage.dtype).as_strided(tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without its tensor")
    return data


@dataclass
class _Storage:
    dtype: torch.dtype
    buffer: torch.Tensor


#: What the legacy reader resolves, besides `_STAND_INS` and `torch.<Type>Storage`: torch's own
#: containers and tensor rebuilds, as ours (a tensor is a view of bytes read from the file).
_LEGACY: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allowlisted names (the pickle module's documented way to refuse code)."""

    def __init__(self, f: BinaryIO, reader: _LegacyReader) -> None:
        super().__init__(f)
        self.reader = reader

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol 2's name for builtins
        full = f"{module}.{name}"
        if full in _STAND_INS:
            return _STAND_INS[full]
        if full in _LEGACY:
            return _LEGACY[full]
        if module == "torch" and name.endswith("Storage"):
            try:
                return _StorageKind(name)
            except KeyError:
                pass
        raise _Refused(full)

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        kind = kind.decode("ascii") if isinstance(kind, bytes) else kind
        if (
            kind == "module"
            and len(pid) == 4
            and isinstance(pid[1], type)
            and issubclass(pid[1], PickledModule)
        ):
            return pid[1]  # the class source text saved beside it is ignored
        if kind == "storage" and len(pid) == 6 and isinstance(pid[1], _StorageKind) and pid[5] is None:
            dtype, key, count = pid[1].dtype, pid[2], pid[4]
            nbytes = int(count) * torch.empty((), dtype=dtype).element_size()
            if key not in self.reader.storages:
                self.reader.claimed += nbytes
                if not 0 <= nbytes <= self.reader.claimed <= self.reader.size:
                    raise pickle.UnpicklingError("the tensors claim more bytes than the file holds")
                self.reader.storages[key] = (dtype, torch.zeros(nbytes, dtype=torch.uint8))
            dtype, buffer = self.reader.storages[key]
            return _Storage(dtype, buffer)
        raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")


def _as_tensors(obj: Any, path: Path) -> TorchFile:
    """A state dict from what the file held: a mapping of tensors (maybe wrapped), or a pickled module."""
    for key in _KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), (Mapping, PickledModule)):
            obj = obj[key]
    if isinstance(obj, PickledModule):
        return TorchFile(_module_state(obj, path), obj.pickled_class)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return TorchFile({str(k): v.detach() for k, v in obj.items()})
    raise PretrainedError(f"{path}: not a state dict (a mapping of names to tensors) nor a pickled DenseNet")


def _module_state(root: PickledModule, path: Path) -> dict[str, torch.Tensor]:
    """What `root.state_dict()` would give: parameters and persistent buffers, named by module path."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def visit(node: Any, prefix: str) -> None:
        attributes = getattr(node, "attributes", None)
        if not isinstance(node, PickledModule) or not isinstance(attributes, dict) or id(node) in seen:
            raise PretrainedError(f"{path}: the pickled module {prefix.rstrip('.') or 'root'} is malformed")
        seen.add(id(node))
        skip = attributes.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            values = attributes.get(kind) or {}
            if not isinstance(values, Mapping):
                raise PretrainedError(f"{path}: {prefix}{kind} of the pickled module is malformed")
            for name, tensor in values.items():
                if tensor is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(tensor, torch.Tensor):
                    raise PretrainedError(f"{path}: {prefix}{name} is not a tensor")
                out[f"{prefix}{name}"] = tensor.detach()
        children = attributes.get("_modules") or {}
        if not isinstance(children, Mapping):
            raise PretrainedError(f"{path}: {prefix}_modules of the pickled module is malformed")
        for name, child in children.items():
            if child is not None:
                visit(child, f"{prefix}{name}.")

    visit(root, "")
    return out
