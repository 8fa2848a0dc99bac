"""Where a training run starts: ImageNet weights by default (downloaded once, checked), else it says what it used."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from models import checkpoint, pretrained
from models.config import ModelConfig
from models.pretrained import PinnedWeights
from models.twoview import TwoViewNet
from pipeline.settings import TrainSettings
from pipeline.start_model import build_start_model
from pipeline.train import TwoViewModule

LABELS = ("effusion", "nodule")


def tiny_torchvision_state() -> dict[str, torch.Tensor]:
    """A torchvision-layout state dict of a tiny DenseNet (what `densenet121-a639ec97.pth` is at full size)."""
    torch.manual_seed(3)
    branch = TwoViewNet(ModelConfig.tiny()).frontal
    state = {f"features.{k}": v for k, v in branch.trunk.state_dict().items()}
    state.update({f"features.{k}": v for k, v in branch.tail.state_dict().items()})
    return {k.replace(".layers.", "."): v for k, v in state.items()}


def settings(**overrides) -> TrainSettings:
    return TrainSettings(
        **{"manifest": "m.csv", "out_dir": "run", "arch": "tiny", "image_size": 64, **overrides}
    )


def test_imagenet_is_the_default_start():
    assert TrainSettings().start == "imagenet"


def test_imagenet_weights_are_downloaded_once_and_checked(server, tmp_path, monkeypatch):
    root, base, hits = server
    torch.save(tiny_torchvision_state(), root / "densenet.pth")
    digest = hashlib.sha256((root / "densenet.pth").read_bytes()).hexdigest()
    pinned = PinnedWeights("test ImageNet DenseNet", f"{base}/densenet.pth", digest[:8], "torchvision")
    monkeypatch.setattr(pretrained, "IMAGENET_DENSENET121", pinned)
    monkeypatch.setattr("pipeline.start_model.IMAGENET_DENSENET121", pinned)
    monkeypatch.setenv("TWOVIEW_CACHE", str(tmp_path / "cache"))
    first = build_start_model(settings(), LABELS)
    second = build_start_model(settings(), LABELS)
    assert hits == ["/densenet.pth"]  # the second start reads the cache
    expected = tiny_torchvision_state()["features.conv0.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(first.frontal.trunk.conv0.weight, expected)
    assert torch.equal(first.lateral.trunk.conv0.weight, second.lateral.trunk.conv0.weight)
    assert first.config.provenance["start"] == "test ImageNet DenseNet"
    assert (first.config.norm_mean, first.config.norm_std) == (0.449, 0.226)  # ImageNet's scale

    tampered = PinnedWeights("tampered", f"{base}/densenet.pth", "00000000", "torchvision")
    monkeypatch.setattr("pipeline.start_model.IMAGENET_DENSENET121", tampered)
    with pytest.raises(pretrained.PretrainedError, match="SHA-256 is"):
        build_start_model(settings(), LABELS)  # a wrong file is an error, never a silent fallback


def test_without_a_network_the_run_says_what_it_used_and_how_to_choose(tmp_path, monkeypatch, caplog):
    unreachable = PinnedWeights(
        "ImageNet DenseNet121", "http://127.0.0.1:9/densenet.pth", "a639ec97", "torchvision"
    )
    monkeypatch.setattr("pipeline.start_model.IMAGENET_DENSENET121", unreachable)
    monkeypatch.setenv("TWOVIEW_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        net = build_start_model(settings(), LABELS)
    assert "cannot download" in caplog.text and "training starts from random weights" in caplog.text
    assert "--start" in caplog.text and "'demo'" in caplog.text and "'scratch'" in caplog.text
    assert net.config.provenance["start"].startswith(
        "scratch (random weights: ImageNet DenseNet121 could not"
    )


def test_the_demo_start_is_still_there_by_name():
    net = build_start_model(settings(start="demo", arch="densenet121", image_size=None), LABELS)
    assert net.config.labels == LABELS and net.config.provenance["start"] == "demo"


def test_a_checkpoint_start_trains_in_training_mode(tmp_path):
    """A loaded checkpoint is in eval mode; Lightning keeps a module's mode, so batch norm would fine-tune on
    frozen statistics (and dropout stay off) unless the training module switches it back."""
    path = tmp_path / "start.safetensors"
    checkpoint.save(TwoViewNet(ModelConfig.tiny(labels=LABELS)), path)
    assert not checkpoint.load(path).training
    for labels in (LABELS, ("effusion",)):  # the same heads, and fresh heads for other labels
        net = build_start_model(settings(start=str(path), arch="densenet121", image_size=None), labels)
        trained = TwoViewModule.from_settings(net, settings(), pos_weight=None)
        assert all(module.training for module in trained.modules())
