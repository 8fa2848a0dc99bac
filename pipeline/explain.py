"""Grad-CAM heatmaps: where in one view did a head look for one label? Pure computation, no drawing.

MONAI's `GradCAM` runs on a private copy of the model (its hooks stay on the modules they are put
on, so the shared model is never touched). A view's own head is explained on its branch's last
features (`tail.norm5`); the joint head on the view's block-3 features, through the fusion block.
The map is computed at the model's input size, cut back to the image's area and resized to it.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from torch import Tensor, nn

from models.names import HEADS
from models.twoview import TwoViewNet
from pipeline.errors import TwoviewError
from pipeline.transforms import normalise_transform, preprocess
from pipeline.views import View

__all__ = ["ExplainError", "Explainer", "gradcam"]


class ExplainError(TwoviewError):
    """A heatmap that cannot be computed: unknown label, a view the study lacks, a head that did not run."""


class _ViewHead(nn.Module):
    """One branch end to end: image -> that view's head logits."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return self.branch.head(self.branch.tail(self.branch.trunk(x)))  # [1, K]


class _JointHead(nn.Module):
    """The joint head as a function of one view's image, the other view's block-3 maps held fixed."""

    def __init__(self, net: TwoViewNet, view: View) -> None:
        super().__init__()
        self.view = view
        self.branch = getattr(net, view.value)
        self.joint = net.joint
        self.other_maps: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        maps = self.branch.trunk(x)  # [1, C, S/16, S/16]
        pair = (maps, self.other_maps) if self.view is View.FRONTAL else (self.other_maps, maps)
        return self.joint(*pair)  # [1, K]


class Explainer:
    """Grad-CAM for one model; safe to share between threads (one heatmap at a time)."""

    def __init__(self, model: TwoViewNet) -> None:
        self.net = copy.deepcopy(model).plain().float().cpu().eval()  # heatmaps run on the CPU
        self.config = self.net.config
        self._normalise = normalise_transform(self.config)
        self._cams: dict[tuple[View, str], tuple[nn.Module, GradCAM]] = {}
        self._lock = threading.Lock()

    def heatmap(
        self,
        view: View | str,
        label: str,
        frontal: np.ndarray | None,
        lateral: np.ndarray | None,
        head: str | None = None,
    ) -> np.ndarray:
        """A float32 [H, W] map in [0, 1] over `view`'s image (pixels as `read_image` gives them).

        `head` defaults to the one giving the study's final prediction: joint with both views, else the view's own.
        """
        view = View(view)
        images = {View.FRONTAL: frontal, View.LATERAL: lateral}
        if images[view] is None:
            raise ExplainError(f"the study has no {view.value} view to explain")
        if label not in self.config.labels:
            raise ExplainError(f"unknown label {label!r}; choose one of: {', '.join(self.config.labels)}")
        both = frontal is not None and lateral is not None
        head = head or ("joint" if both else view.value)
        if head not in HEADS or head not in ("joint", view.value):
            raise ExplainError(f"the {head} head cannot be explained on the {view.value} view")
        if head == "joint" and not both:
            raise ExplainError("the joint head needs both a frontal and a lateral view")
        pixels = np.asarray(images[view], dtype=np.float32)
        with self._lock, torch.enable_grad():
            module, cam = self._cam(view, head)
            if isinstance(module, _JointHead):
                other = View.LATERAL if view is View.FRONTAL else View.FRONTAL
                with torch.no_grad():
                    module.other_maps = getattr(self.net, other.value).trunk(self._input(images[other]))
            try:
                square = cam(self._input(pixels), class_idx=self.config.labels.index(label))  # [1, 1, S, S]
            finally:
                module.other_maps = None
        return _to_image(square.detach()[0, 0], pixels.shape)

    def _input(self, pixels: np.ndarray) -> Tensor:
        return self._normalise(preprocess(pixels, self.config))[None]  # [1, 1, S, S]

    def _cam(self, view: View, head: str) -> tuple[nn.Module, GradCAM]:
        """The wrapper and GradCAM of one (view, head), made once: MONAI's hooks are never removed."""
        if (view, head) not in self._cams:
            branch = getattr(self.net, view.value)
            if head == "joint":
                module, layer = _JointHead(self.net, view), "branch.trunk.denseblock3"
            else:
                module, layer = _ViewHead(branch), "branch.tail.norm5"
            # MONAI's default post-processing maps the strongest evidence to 0; `_to_image` rescales instead.
            cam = GradCAM(nn_module=module, target_layers=layer, postprocessing=_unchanged)
            self._cams[(view, head)] = (module, cam)
        return self._cams[(view, head)]


def gradcam(
    model: TwoViewNet,
    view: View | str,
    label: str,
    frontal: np.ndarray | None,
    lateral: np.ndarray | None,
    head: str | None = None,
) -> np.ndarray:
    """One heatmap without keeping an `Explainer` (which copies the model once)."""
    return Explainer(model).heatmap(view, label, frontal, lateral, head)


def _unchanged(x: Tensor) -> Tensor:
    return x


def _to_image(square: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Undo resize-and-pad: crop the padded square to the image's area, resize to [H, W], rescale to [0, 1]."""
    rows, cols = shape
    size = square.shape[-1]
    scale = size / max(rows, cols)
    inner_r, inner_c = (min(size, max(1, int(round(n * scale)))) for n in (rows, cols))
    top, left = (size - inner_r) // 2, (size - inner_c) // 2
    inner = square[top : top + inner_r, left : left + inner_c].float()
    resized = F.interpolate(inner[None, None], size=(rows, cols), mode="bilinear", align_corners=False)[0, 0]
    values = torch.nan_to_num(resized, nan=0.0)
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.zeros((rows, cols), dtype=np.float32)
    return ((values - low) / (high - low)).numpy().astype(np.float32)
