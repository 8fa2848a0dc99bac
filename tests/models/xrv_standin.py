"""Stand-ins for TorchXRayVision release files, made the way its releases were.

`write_package` writes a fake `torchxrayvision` package whose `models.py` has TorchXRayVision's
DenseNet class names and structure (`DenseNet`, `_DenseBlock`, `_DenseLayer`, `_Transition`, as in
its PyPI package). `save_release` builds that model in a subprocess where the package is importable
and saves it with `torch.save(model, path)`, as TorchXRayVision's training script did, beside a
`.reference.safetensors` of the module's own `state_dict()`. `era="2019"` writes what torch < 1.6
wrote (its releases say so: they lack `_non_persistent_buffers_set`): the legacy non-zip format,
modules with torch <= 1.2's `_backend` and without newer attributes, storages on `cuda:0`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MODELS_PY = """
from collections import OrderedDict

import torch
from torch import nn


class _DenseLayer(nn.Sequential):
    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate):
        super().__init__()
        width = bn_size * growth_rate
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv2d(num_input_features, width, kernel_size=1, stride=1, bias=False))
        self.add_module("norm2", nn.BatchNorm2d(width))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(width, growth_rate, kernel_size=3, stride=1, padding=1, bias=False))
        self.drop_rate = drop_rate


class _DenseBlock(nn.Sequential):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module("denselayer%d" % (i + 1), layer)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 drop_rate=0, num_classes=18, in_channels=1, weights=None, op_threshs=None, apply_sigmoid=False):
        super().__init__()
        self.apply_sigmoid = apply_sigmoid
        self.weights = weights
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module("transition%d" % (i + 1), _Transition(num_features, num_features // 2))
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        self.register_buffer("op_threshs", op_threshs)
"""

SAVE_PY = r"""
import json, sys
import torch
from safetensors.torch import save_file
import torchxrayvision as xrv

path, sizes, era, payload = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.manual_seed(3)
model = xrv.models.DenseNet(**sizes)
with torch.no_grad():
    for name, value in model.state_dict().items():
        if name.endswith("running_var"):
            value.copy_(torch.rand_like(value) + 0.5)
        elif name.endswith("num_batches_tracked"):
            value.fill_(1234)
        else:
            value.copy_(torch.randn_like(value))
model.pathologies = ["Atelectasis", "Consolidation", "Effusion"]
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path + ".reference.safetensors")
if payload:  # a forged release: one more attribute whose unpickling runs a command
    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (payload,))
    model.notes = Payload()
if era == "2019":
    class Backend:  # what torch <= 1.2 pickled as every module's `_backend`
        def __reduce__(self):
            from torch.nn.backends import thnn
            return (thnn._get_thnn_function_backend, ())
    newer = ("_non_persistent_buffers_set", "_is_full_backward_hook", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
             "_state_dict_pre_hooks", "_load_state_dict_post_hooks")
    for module in model.modules():
        for attribute in newer:
            module.__dict__.pop(attribute, None)
        module.__dict__["_backend"] = Backend()
    torch.serialization.location_tag = lambda storage: "cuda:0"  # trained and saved on a GPU
torch.save(model, path, _use_new_zipfile_serialization=(era != "2019"))
"""

#: A DenseNet with `ModelConfig.tiny()`'s sizes, in TorchXRayVision's argument names.
TINY = {"growth_rate": 4, "block_config": [1, 1, 2, 1], "num_init_features": 8, "bn_size": 2}


def write_package(root: Path) -> Path:
    """A folder holding a fake `torchxrayvision` package (put it on PYTHONPATH to import it)."""
    package = root / "torchxrayvision"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("from . import models\n")
    (package / "models.py").write_text(MODELS_PY)
    return root


def save_release(path: Path, sizes: dict | None = None, era: str = "2024", payload: str = "") -> Path:
    """Save a stand-in release to `path` (sizes: DenseNet121's unless given); returns `path`."""
    root = write_package(path.parent / "fake-xrv")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    args = [str(path), json.dumps(sizes or {}), era, payload]
    done = subprocess.run(
        [sys.executable, "-c", SAVE_PY, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return path


#: Run Python with torchxrayvision and torchvision impossible to import (as on a CPU machine).
WITHOUT_XRV = "import sys; sys.modules['torchxrayvision'] = None; sys.modules['torchvision'] = None; "


def run_without_xrv(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import torchxrayvision` fails."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_XRV + code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
