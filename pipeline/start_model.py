"""The network a training run starts from: the demo model, a twoview checkpoint, DenseNet121 weights, or scratch."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from models import checkpoint
from models.config import ModelConfig
from models.errors import CheckpointError
from models.pretrained import load_pretrained
from models.twoview import TwoViewNet
from pipeline.errors import TrainError
from pipeline.predict import DEMO_MODEL
from pipeline.settings import ARCHITECTURES, TrainSettings

__all__ = ["build_start_model"]

log = logging.getLogger(__name__)


def build_start_model(settings: TrainSettings, labels: tuple[str, ...]) -> TwoViewNet:
    """The starting network: demo model, a twoview checkpoint, a pretrained DenseNet121, or scratch."""
    start = settings.start
    if start == "demo":
        if not DEMO_MODEL.is_file():
            raise TrainError(f"the demo model {DEMO_MODEL} is not there; use --start scratch or a checkpoint")
        start = str(DEMO_MODEL)
    if start != "scratch" and start.endswith(".safetensors") and _is_twoview(start):
        if settings.arch != TrainSettings.defaults()["arch"]:
            raise TrainError(
                f"--arch {settings.arch} cannot apply: {start} is a twoview checkpoint and brings its own "
                "network; use --arch with --start scratch or a DenseNet121 weights file"
            )
        return _from_checkpoint(Path(start), labels, settings.image_size)
    if settings.arch not in ARCHITECTURES:
        raise TrainError(f"unknown architecture {settings.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    base = ModelConfig.tiny() if settings.arch == "tiny" else ModelConfig()
    config = replace(base, labels=labels, image_size=settings.image_size or base.image_size)
    net = TwoViewNet(config)
    if start != "scratch":
        report = load_pretrained(net, start, sha256=settings.pretrained_sha256)
        log.info(report.summary())
    return net


def _is_twoview(path: str) -> bool:
    try:
        checkpoint.read_metadata(path)
    except CheckpointError:
        return False
    return True


def _from_checkpoint(path: Path, labels: tuple[str, ...], image_size: int | None) -> TwoViewNet:
    """A checkpoint's network; heads for a different label set start fresh (and we say so)."""
    old = checkpoint.load(path)
    config = replace(
        old.config.with_labels(labels), image_size=image_size or old.config.image_size, provenance={}
    )
    log.info("starting from %s", path)
    if config.labels == old.config.labels:
        old.config = config  # the image size and provenance are the config's alone, not the weights'
        return old
    log.warning(
        "the manifest's labels %s differ from the start model's %s: their heads start from random weights",
        list(labels),
        list(old.config.labels),
    )
    net = TwoViewNet(config)
    net.load_state_dict({k: v for k, v in old.state_dict().items() if ".head.out." not in k}, strict=False)
    return net
