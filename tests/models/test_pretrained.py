"""Pretrained starts in MONAI, torchvision and TorchXRayVision layouts, from files and from a local server."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
from monai.networks.nets import DenseNet
from safetensors.torch import save_file

from models import ModelConfig, PretrainedError, TwoViewNet
from models.pretrained import INPUT_NORMS, fetch, load_pretrained

CONFIG = ModelConfig.tiny()


def source_densenet(in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A MONAI DenseNet state dict with CONFIG's sizes and recognisable random weights."""
    torch.manual_seed(7)
    net = DenseNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=14,
        init_features=CONFIG.init_features,
        growth_rate=CONFIG.growth_rate,
        block_config=CONFIG.block_config,
        bn_size=CONFIG.bn_size,
    )
    state = net.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.copy_(torch.rand_like(value) + 0.5)
        elif value.is_floating_point():
            value.copy_(torch.randn_like(value))
    return state


def as_torchvision(state, old_style=False):
    out = {}
    for key, value in state.items():
        key = key.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
        if old_style:
            key = re.sub(r"(denselayer\d+\.(?:norm|conv))(\d)\.", r"\1.\2.", key)
        out[key] = value
    return out


def write_layout(tmp_path, layout):
    state = source_densenet(in_channels=1 if layout == "xrv" else 3)
    if layout == "monai":
        path = tmp_path / "monai.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "torchvision_old":
        path = tmp_path / "densenet121-old.pth"
        torch.save(as_torchvision(state, old_style=True), path)
    elif layout == "torchvision":
        path = tmp_path / "densenet121.pth"
        torch.save({"state_dict": {"module." + k: v for k, v in as_torchvision(state).items()}}, path)
    else:
        path = tmp_path / "xrv-densenet121.pt"
        torch.save({**as_torchvision(state), "op_threshs": torch.rand(14)}, path)
    return path, state


@pytest.mark.parametrize(
    ("layout", "name"),
    [
        ("monai", "MONAI"),
        ("torchvision", "torchvision"),
        ("torchvision_old", "torchvision"),
        ("xrv", "TorchXRayVision"),
    ],
)
def test_each_layout_loads_into_both_branches(tmp_path, layout, name):
    path, state = write_layout(tmp_path, layout)
    net = TwoViewNet(CONFIG)
    report = load_pretrained(net, path)
    assert report.layout == name
    # The model takes the input scale the layout's published weights were trained with.
    assert (net.config.norm_mean, net.config.norm_std) == (INPUT_NORMS[name].mean, INPUT_NORMS[name].std)
    ours = net.state_dict()
    stem = state["features.conv0.weight"]
    for branch in ("frontal", "lateral"):
        torch.testing.assert_close(ours[f"{branch}.trunk.conv0.weight"], stem.sum(1, keepdim=True))
        torch.testing.assert_close(
            ours[f"{branch}.trunk.denseblock2.denselayer1.layers.conv1.weight"],
            state["features.denseblock2.denselayer1.layers.conv1.weight"],
        )
        torch.testing.assert_close(
            ours[f"{branch}.tail.norm5.running_var"], state["features.norm5.running_var"]
        )
    # The fusion block starts from dense block 4; its transition averages the two views' transition 3.
    torch.testing.assert_close(
        ours["joint.fusion.denseblock.denselayer1.layers.conv2.weight"],
        state["features.denseblock4.denselayer1.layers.conv2.weight"],
    )
    t3 = state["features.transition3.conv.weight"]
    torch.testing.assert_close(ours["joint.fusion.transition.conv.weight"], torch.cat([t3, t3], 1) / 2)
    # The heads (new labels) stay fresh; the source classifier is reported as not used.
    assert "frontal.head.out.weight" in report.fresh and "joint.head.out.weight" in report.fresh
    assert not any(k.startswith(("frontal.trunk", "lateral.tail")) for k in report.fresh)
    assert any("classifier" in k or "class_layers" in k for k in report.dropped)
    assert "weights loaded" in report.summary()
    assert ours["frontal.trunk.conv0.weight"].data_ptr() != ours["lateral.trunk.conv0.weight"].data_ptr()


def test_fused_start_gives_the_average_of_branch_transitions(tmp_path):
    """With pretrained weights, the fusion transition of identical inputs equals the branch's transition 3."""
    path, _ = write_layout(tmp_path, "monai")
    net = TwoViewNet(CONFIG).eval()
    load_pretrained(net, path)
    maps = torch.randn(2, net.frontal.tail.transition3.conv.in_channels, 4, 4)
    with torch.no_grad():
        fused = net.joint.fusion.transition(torch.cat([maps, maps], 1))
        single = net.frontal.tail.transition3(maps)
    torch.testing.assert_close(fused, single)


def test_unrelated_weights_are_an_error(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({"layer1.0.conv1.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(PretrainedError, match="no weight matched"):
        load_pretrained(TwoViewNet(CONFIG), path)
    with pytest.raises(PretrainedError, match="not found"):
        load_pretrained(TwoViewNet(CONFIG), tmp_path / "nope.pth")


def test_download_is_cached_and_checked(tmp_path, server):
    root, base, hits = server
    path, _ = write_layout(root, "torchvision")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    url = f"{base}/{path.name}"
    first = fetch(url, digest, cache)
    second = fetch(url, digest, cache)
    assert first == second and first.read_bytes() == path.read_bytes()
    assert hits == [f"/{path.name}"]  # the second call used the cache
    report = load_pretrained(TwoViewNet(CONFIG), url, sha256=digest, cache_dir=cache)
    assert report.layout == "torchvision" and len(hits) == 1

    with pytest.raises(PretrainedError, match="SHA-256 is"):
        fetch(url, "0" * 64, tmp_path / "other")
    assert not [p for p in (tmp_path / "other").iterdir()]  # nothing half-kept
    with pytest.raises(PretrainedError, match="a SHA-256"):
        fetch(url, "", cache)
    with pytest.raises(PretrainedError, match="cannot download"):
        fetch(f"{base}/missing.pth", digest, cache)


def test_a_pickled_model_object_other_than_torchxrayvisions_is_refused(tmp_path):
    path = tmp_path / "whole-model.pt"
    torch.save(DenseNet(spatial_dims=2, in_channels=1, out_channels=2, block_config=(1, 1, 1, 1)), path)
    with pytest.raises(PretrainedError, match=r"refused: the file asks for `monai\.networks\.nets\.densenet"):
        load_pretrained(TwoViewNet(CONFIG), path)
