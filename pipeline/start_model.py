"""The network a training run starts from: ImageNet or other DenseNet121 weights, the demo model, a checkpoint, or scratch."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from models import checkpoint
from models.config import ModelConfig
from models.errors import CheckpointError, DownloadError
from models.pretrained import IMAGENET_DENSENET121, fetch_pinned, load_pretrained
from models.twoview import TwoViewNet
from pipeline.errors import TrainError
from pipeline.predict import DEMO_MODEL
from pipeline.settings import ARCHITECTURES, TrainSettings

__all__ = ["STARTS", "build_start_model"]

#: Starts named by a word rather than a file.
STARTS = ("imagenet", "demo", "scratch")

log = logging.getLogger(__name__)


def build_start_model(settings: TrainSettings, labels: tuple[str, ...]) -> TwoViewNet:
    """The starting network: ImageNet or other DenseNet121 weights, the demo model, a checkpoint, or scratch.

    What was used, in words, is left in `config.provenance["start"]`.
    """
    start = settings.start
    if start == "demo":
        if not DEMO_MODEL.is_file():
            raise TrainError(f"the demo model {DEMO_MODEL} is not there; use --start scratch or a checkpoint")
        start = str(DEMO_MODEL)
    if start not in STARTS and start.endswith(".safetensors") and _is_twoview(start):
        if settings.arch != TrainSettings.defaults()["arch"]:
            raise TrainError(
                f"--arch {settings.arch} cannot apply: {start} is a twoview checkpoint and brings its own "
                "network; use --arch with --start scratch or a DenseNet121 weights file"
            )
        return _with_start(_from_checkpoint(Path(start), labels, settings.image_size), settings.start)
    if settings.arch not in ARCHITECTURES:
        raise TrainError(f"unknown architecture {settings.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    base = ModelConfig.tiny() if settings.arch == "tiny" else ModelConfig()
    config = replace(base, labels=labels, image_size=settings.image_size or base.image_size)
    net = TwoViewNet(config)
    if start == "scratch":
        return _with_start(net, "scratch (random weights)")
    if start == "imagenet":
        try:
            source = str(fetch_pinned(IMAGENET_DENSENET121))
        except DownloadError as err:
            log.warning(
                "%s; training starts from random weights instead. To choose, pass --start: DenseNet121 "
                "weights (a file from 'twoview import-weights', or a URL with --pretrained-sha256), 'demo' "
                "(the synthetic demo model) or 'scratch'",
                err,
            )
            return _with_start(
                net, f"scratch (random weights: {IMAGENET_DENSENET121.name} could not be downloaded)"
            )
        report = load_pretrained(net, source)
        described = IMAGENET_DENSENET121.name
    else:
        report = load_pretrained(net, start, sha256=settings.pretrained_sha256)
        described = f"{start} ({report.layout} DenseNet weights)"
    log.info(report.summary())
    return _with_start(net, described)


def _with_start(net: TwoViewNet, described: str) -> TwoViewNet:
    net.config = replace(net.config, provenance={"start": described})
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
