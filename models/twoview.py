"""`TwoViewNet`: two DenseNet121 branches (frontal, lateral) and a joint head, routed per sample.

Each branch is MONAI's DenseNet split after dense block 3 into a `trunk` and a `tail`. A batch
row runs only the trunks of the views it has; two-view rows also concatenate their block-3 maps
and run the `joint` fusion path. Heads that did not run on a row give NaN there.

On a GPU, pass the view masks on the CPU (the images on the GPU): the rows are then chosen on the
host, with no wait for the GPU, and `shape_bucket` pads each view's rows to a multiple of it (by
repeating the last row, whose extra outputs are dropped) so cuDNN and compiled graphs see a few
batch shapes instead of a new one each step.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets import DenseNet
from torch import Tensor, nn

from models.config import ModelConfig
from models.errors import ModelError
from models.names import HEADS, OUTPUTS, Route

__all__ = ["HEADS", "Route", "RoutingError", "TwoViewNet", "ViewLogits"]


class RoutingError(ModelError, ValueError):
    """A batch row that has neither view, or masks that do not fit the batch."""


@dataclass
class ViewLogits:
    """Per-head logits `[B, K]` (NaN where a head did not run), the final logits and each row's route."""

    frontal: Tensor
    lateral: Tensor
    joint: Tensor
    final: Tensor
    route: Tensor  # [B] int64 codes of `Route`

    def head(self, name: str) -> Tensor:
        if name not in OUTPUTS:
            raise KeyError(f"unknown head {name!r}; choose one of: {', '.join(OUTPUTS)}")
        return getattr(self, name)

    @property
    def routes(self) -> list[str]:
        return [Route(code).label for code in self.route.tolist()]

    def sigmoid(self) -> ViewLogits:
        """The same structure holding probabilities (NaN stays NaN)."""
        return ViewLogits(*(torch.sigmoid(getattr(self, n)) for n in (*HEADS, "final")), route=self.route)

    def detach(self) -> ViewLogits:
        return ViewLogits(*(getattr(self, n).detach() for n in (*HEADS, "final")), route=self.route.detach())


class _Head(nn.Sequential):
    """relu -> global average pool -> dropout -> linear: DenseNet's classifier, one logit per label."""

    def __init__(self, channels: int, num_labels: int, dropout: float) -> None:
        super().__init__(
            OrderedDict(
                relu=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                dropout=nn.Dropout(dropout),
                out=nn.Linear(channels, num_labels),
            )
        )
        nn.init.zeros_(self.out.bias)


class _Branch(nn.Module):
    """One view's DenseNet: `trunk` (stem .. dense block 3), `tail` (transition 3, block 4, norm), `head`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        densenet = DenseNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.num_labels,
            init_features=config.init_features,
            growth_rate=config.growth_rate,
            block_config=config.block_config,
            bn_size=config.bn_size,
            dropout_prob=config.dropout,
        )
        layers = OrderedDict(densenet.features.named_children())
        tail_names = ("transition3", "denseblock4", "norm5")
        self.trunk = nn.Sequential(OrderedDict((k, v) for k, v in layers.items() if k not in tail_names))
        self.tail = nn.Sequential(OrderedDict((k, layers[k]) for k in tail_names))
        self.head = _Head(densenet.class_layers.out.in_features, config.num_labels, config.head_dropout)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Block-3 maps `[B, C, H/16, W/16]` (the fusion's input) and this view's logits `[B, K]`."""
        maps = self.trunk(images)
        return maps, self.head(self.tail(maps))


class _Fusion(nn.Module):
    """The joint path: concatenated block-3 maps -> transition -> dense block -> norm -> head."""

    def __init__(self, config: ModelConfig, trunk_channels: int) -> None:
        super().__init__()
        mid = trunk_channels // 2  # as DenseNet's transition 3, so block 4 weights can start it
        out = mid + config.fusion_layers * config.growth_rate
        self.fusion = nn.Sequential(
            OrderedDict(
                transition=_transition(2 * trunk_channels, mid),
                denseblock=_dense_block(config, mid),
                norm=nn.BatchNorm2d(out),
            )
        )
        self.head = _Head(out, config.num_labels, config.head_dropout)
        for m in self.fusion.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, frontal_maps: Tensor, lateral_maps: Tensor) -> Tensor:
        x = torch.cat([frontal_maps, lateral_maps], dim=1)  # [Bj, 2C, H/16, W/16]
        return self.head(self.fusion(x))  # [Bj, K]


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """DenseNet's transition (norm, relu, 1x1 conv, 2x2 average pool), with MONAI's layer names.

    Ours quarters the channels of the concatenated maps where DenseNet's halve them, so MONAI's
    (private) transition class cannot be reused through its public network.
    """
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm2d(in_channels),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            pool=nn.AvgPool2d(kernel_size=2, stride=2),
        )
    )


def _dense_block(config: ModelConfig, in_channels: int) -> nn.Module:
    """A dense block of `config.fusion_layers` layers on `in_channels`, taken from MONAI's public DenseNet.

    A one-block DenseNet whose stem gives `in_channels` features has exactly this block as `denseblock1`.
    """
    donor = DenseNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        init_features=in_channels,
        growth_rate=config.growth_rate,
        block_config=(config.fusion_layers,),
        bn_size=config.bn_size,
        dropout_prob=config.dropout,
    )
    return donor.features.denseblock1


def trunk_channels(config: ModelConfig) -> int:
    """Channels of the block-3 feature map of a DenseNet with this config."""
    channels = config.init_features
    for i, layers in enumerate(config.block_config[:3]):
        channels += layers * config.growth_rate
        if i < 2:
            channels //= 2
    return channels


class TwoViewNet(nn.Module):
    """Frontal and lateral DenseNet branches with a joint head; each batch row takes its own route."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.frontal = _Branch(self.config)
        self.lateral = copy.deepcopy(self.frontal)  # same start, independent parameters
        self.joint = _Fusion(self.config, trunk_channels(self.config))
        self.inference_dtype: torch.dtype | None = None
        self.memory_format = torch.contiguous_format
        # Pad each view's rows to a multiple of this (None: exact sizes). In training the repeated rows
        # take part in BatchNorm's batch statistics (a row counted up to twice); their outputs are dropped.
        self.shape_bucket: int | None = None

    def forward(
        self, frontal: Tensor, lateral: Tensor, has_frontal: Tensor, has_lateral: Tensor
    ) -> ViewLogits:
        """Run each row through the branches of the views it has; see the module docstring."""
        has_frontal, has_lateral = self._check_masks(frontal, lateral, has_frontal, has_lateral)
        with self._autocast(frontal.device):
            heads, route = self._route(frontal, lateral, has_frontal, has_lateral)
        return ViewLogits(**heads, route=route)

    def _route(self, frontal: Tensor, lateral: Tensor, has_frontal: Tensor, has_lateral: Tensor):
        batch, k, device = has_frontal.shape[0], self.config.num_labels, frontal.device
        both = has_frontal & has_lateral  # on the masks' device: the CPU, when given there
        blank = torch.full((batch, k), float("nan"), device=device)
        heads = {name: blank for name in HEADS}
        maps = {}
        for name, images, present in (("frontal", frontal, has_frontal), ("lateral", lateral, has_lateral)):
            rows, count = self._rows(present.nonzero().squeeze(1), device)
            if count == 0:
                continue
            maps[name], logits = getattr(self, name)(self._prepare(images.index_select(0, rows)))
            heads[name] = blank.index_copy(0, rows[:count], logits[:count].float())
        if both.any():
            # Two-view rows, as positions inside each view's subset of the batch.
            in_frontal, count = self._rows((has_frontal.cumsum(0) - 1)[both], device)
            in_lateral, _ = self._rows((has_lateral.cumsum(0) - 1)[both], device)
            joint = self.joint(
                maps["frontal"].index_select(0, in_frontal), maps["lateral"].index_select(0, in_lateral)
            )[:count]
            heads["joint"] = blank.index_copy(0, both.nonzero().squeeze(1).to(device), joint.float())
        has_frontal, both = has_frontal.to(device, non_blocking=True), both.to(device, non_blocking=True)
        single = torch.where(has_frontal.unsqueeze(1), heads["frontal"], heads["lateral"])
        heads["final"] = torch.where(both.unsqueeze(1), heads["joint"], single)
        route = torch.where(both, Route.JOINT, torch.where(has_frontal, Route.FRONTAL, Route.LATERAL))
        return heads, route

    def _rows(self, rows: Tensor, device: torch.device) -> tuple[Tensor, int]:
        """Row indices moved to `device`, padded to a multiple of `shape_bucket`; and how many are real."""
        count = rows.numel()
        if self.shape_bucket and count % self.shape_bucket:
            padded = -(-count // self.shape_bucket) * self.shape_bucket
            rows = torch.cat([rows, rows[-1:].expand(padded - count)])
        return rows.to(device, non_blocking=True), count

    @staticmethod
    def _check_masks(frontal: Tensor, lateral: Tensor, has_frontal: Tensor, has_lateral: Tensor):
        has_frontal, has_lateral = has_frontal.bool(), has_lateral.bool()
        batch = has_frontal.shape[0]
        if has_frontal.shape != (batch,) or has_lateral.shape != (batch,):
            raise RoutingError(
                f"view masks must both be [B]; got {tuple(has_frontal.shape)} and {tuple(has_lateral.shape)}"
            )
        for name, images in (("frontal", frontal), ("lateral", lateral)):
            if images.ndim != 4 or images.shape[0] != batch:
                raise RoutingError(f"{name} images must be [B={batch}, C, H, W]; got {tuple(images.shape)}")
        empty = (~(has_frontal | has_lateral)).nonzero().flatten().tolist()
        if empty:
            raise RoutingError(f"batch rows {empty} have neither a frontal nor a lateral view")
        return has_frontal, has_lateral

    def _prepare(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=self.memory_format)

    def _autocast(self, device: torch.device):
        if self.inference_dtype is None or self.training:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.inference_dtype)

    def fast(self, dtype: torch.dtype | None = None) -> TwoViewNet:
        """Switch to the inference fast path: eval mode, channels-last, low-precision autocast.

        `dtype` defaults to bfloat16 where the device supports it (CUDA with bf16, CPUs with AVX512-BF16
        or AMX), else float16 on CUDA, else none (channels-last float32 only).
        """
        device = next(self.parameters()).device
        self.inference_dtype = dtype if dtype is not None else fast_dtype(device)
        self.eval()
        return self.channels_last()

    def plain(self) -> TwoViewNet:
        """Undo `fast()`: float32, contiguous memory."""
        self.inference_dtype = None
        return self.channels_last(False)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """`torch.compile` each branch and the fusion in place, leaving the routing between them eager.

        Which rows take which branch depends on each batch's views, so a graph of the whole network would
        break at every routing step; each part alone is one graph. Arguments go to `torch.compile`. The
        state-dict keys stay as they are, so checkpoints do not change.
        """
        for part in (self.frontal, self.lateral, self.joint):
            part.compile(*args, **kwargs)

    def channels_last(self, on: bool = True) -> TwoViewNet:
        """Weights, and the images `forward` is given, in channels-last memory (or back to contiguous).

        oneDNN and cuDNN pick their fastest convolutions for it, in training as in inference: a
        DenseNet121 pair's training step on a bf16 CPU ran 1.6-1.9x faster (see bench/RESULTS.md).
        """
        self.memory_format = torch.channels_last if on else torch.contiguous_format
        return self.to(memory_format=self.memory_format)


def fast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype that speeds inference up on this device, or None where none does."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def _cpu_has_fast_bf16() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False
