"""Grad-CAM heatmaps: the right branch and layer, mapped back onto the image, the shared model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline.explain import Explainer, ExplainError, _to_image, gradcam
from pipeline.transforms import normalise_transform, preprocess

CONFIG = ModelConfig.tiny()


@pytest.fixture(scope="module")
def net() -> TwoViewNet:
    torch.manual_seed(3)
    return TwoViewNet(CONFIG).eval()


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((90, 70), dtype=np.float32), rng.random((80, 100), dtype=np.float32)


def manual_view_cam(net: TwoViewNet, pixels: np.ndarray, view: str, label: int) -> np.ndarray:
    """Grad-CAM written out by hand on a square image: grads of tail.norm5, averaged, weighted, ReLU."""
    branch = getattr(net, view)
    x = normalise_transform(CONFIG)(preprocess(pixels, CONFIG))[None]
    with torch.enable_grad():
        features = branch.tail(branch.trunk(x))
        features.retain_grad()
        branch.head(features)[0, label].backward()
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=pixels.shape, mode="bilinear", align_corners=False)[0, 0].detach()
    low, high = float(cam.min()), float(cam.max())
    return ((cam - low) / (high - low)).numpy() if high > low else np.zeros(pixels.shape, np.float32)


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_view_head_map_matches_grad_cam_written_by_hand(net, view):
    square = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    explainer = Explainer(net)
    checked = 0
    for index, label in enumerate(CONFIG.labels):
        expected = manual_view_cam(net, square, view, index)
        found = explainer.heatmap(
            view, label, square if view == "frontal" else None, square if view == "lateral" else None
        )
        np.testing.assert_allclose(found, expected, atol=1e-4)
        checked += bool(expected.max() > 0)
    assert checked >= 2  # most labels give a non-empty map, so the comparison means something


@pytest.mark.parametrize("view", ["frontal", "lateral"])
@pytest.mark.parametrize("head", [None, "joint", "own"])
def test_maps_have_the_image_size_and_range(net, images, view, head):
    frontal, lateral = images
    head = view if head == "own" else head
    heat = gradcam(net, view, "nodule", frontal, lateral, head=head)
    assert heat.shape == (frontal if view == "frontal" else lateral).shape
    assert heat.dtype == np.float32 and heat.min() >= 0.0 and heat.max() <= 1.0


def test_the_joint_head_explains_differently_from_the_view_head(net, images):
    explainer = Explainer(net)
    maps = [
        explainer.heatmap("frontal", label, *images, head=h)
        for label in CONFIG.labels
        for h in ("joint", "frontal")
    ]
    assert any(not np.allclose(a, b) for a, b in zip(maps[::2], maps[1::2], strict=True))


def test_padding_is_cut_off_before_resizing():
    square = torch.zeros(64, 64)
    square[8:16, 16:24] = 1.0  # a 100x50 image becomes 64x32 inside the square, columns 16-47
    heat = _to_image(square, (100, 50))
    rows, cols = np.unravel_index(np.argmax(heat), heat.shape)
    assert heat.shape == (100, 50)
    assert 10 <= rows <= 26 and cols <= 14
    assert heat[:, 30:].max() == 0.0


def test_the_shared_model_gets_no_hooks_and_keeps_its_outputs(net, images):
    x = torch.zeros(1, 1, 64, 64)
    mask = torch.tensor([True])
    before = net(x, x, mask, mask).final
    explainer = Explainer(net)
    for view in ("frontal", "lateral"):
        explainer.heatmap(view, "nodule", *images)
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    torch.testing.assert_close(net(x, x, mask, mask).final, before)


@pytest.mark.parametrize(
    ("view", "label", "frontal", "lateral", "head", "message"),
    [
        ("frontal", "nodule", None, True, None, "no frontal view"),
        ("lateral", "fracture", True, True, None, "unknown label 'fracture'"),
        ("frontal", "nodule", True, None, "joint", "needs both"),
        ("frontal", "nodule", True, True, "lateral", "cannot be explained on the frontal view"),
    ],
)
def test_impossible_requests_say_why(net, images, view, label, frontal, lateral, head, message):
    f, lat = images
    with pytest.raises(ExplainError, match=message):
        gradcam(net, view, label, f if frontal else None, lat if lateral else None, head=head)
