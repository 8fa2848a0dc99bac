"""models.viewnet: the view classifier's network, config and safetensors checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import load, save
from models.config import ModelConfig
from models.errors import CheckpointError, ConfigError
from models.twoview import TwoViewNet
from models.viewnet import ViewNet, ViewNetConfig, load_viewnet, save_viewnet

TINY = ViewNetConfig(
    image_size=32, resolutions=(8, 12), hidden=5, temperature=1.7, threshold=0.85, provenance={"seed": 3}
)


def test_one_logit_per_class_from_members_averaged() -> None:
    net = ViewNet(TINY).eval()
    x = torch.rand(3, 1, 32, 32)
    assert net(x).shape == (3, 3)
    assert torch.allclose(net(x), (net.members[0](x) + net.members[1](x)) / 2)


def test_float16_round_trip_keeps_config_and_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    net = ViewNet(TINY).eval()
    path = save_viewnet(net, tmp_path / "views.safetensors")
    again = load_viewnet(path)
    assert again.config == TINY and not again.training
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(again(x), net(x), atol=1e-2)


def test_other_checkpoints_are_refused_both_ways(tmp_path) -> None:
    twoview = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a twoview view classifier"):
        load_viewnet(twoview)
    views = save_viewnet(ViewNet(TINY), tmp_path / "views.safetensors")
    with pytest.raises(CheckpointError, match="not a twoview checkpoint"):
        load(views)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"format": "twoview-viewnet", "format_version": "2"}, "config is invalid"),
        ({"format": "twoview-viewnet", "format_version": "1", "config": "{}"}, "format '1'"),
        ({"format": "twoview-viewnet", "format_version": "2", "config": '{"evil": 1}'}, "unknown fields"),
        ({"format": "twoview-viewnet", "format_version": "2", "config": '{"threshold": 3}'}, "threshold"),
        ({"format": "twoview-viewnet", "format_version": "2", "config": "{}"}, "do not match"),
    ],
)
def test_forged_files_are_refused(tmp_path, metadata, message) -> None:
    path = tmp_path / "forged.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=message):
        load_viewnet(path)


def test_pickle_and_missing_files_are_refused(tmp_path) -> None:
    path = tmp_path / "views.pt"
    torch.save(ViewNet(TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_viewnet(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_viewnet(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    "bad",
    [
        {"classes": ("frontal",)},
        {"image_size": 8},
        {"resolutions": ()},
        {"resolutions": (200,)},
        {"temperature": 0.0},
        {"dropout": 1.0},
    ],
)
def test_config_validation(bad) -> None:
    with pytest.raises(ConfigError):
        ViewNetConfig(**bad)
