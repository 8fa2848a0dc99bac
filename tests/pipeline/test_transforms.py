from __future__ import annotations

import numpy as np
import pytest
import torch

from models.config import ModelConfig
from pipeline.transforms import PerViewd, epoch_transform, preprocess, preprocess_settings

SIZE = 64


@pytest.fixture
def config() -> ModelConfig:
    return ModelConfig.tiny(image_size=SIZE, norm_mean=0.4, norm_std=0.2)


@pytest.mark.parametrize(
    ("shape", "content"),
    [
        ((200, 100), (SIZE, SIZE // 2)),
        ((100, 200), (SIZE // 2, SIZE)),
        ((90, 90), (SIZE, SIZE)),
        ((32, 48), (43, SIZE)),
    ],
)
def test_preprocess_keeps_aspect_ratio_and_pads_to_square(
    config: ModelConfig, shape: tuple[int, int], content: tuple[int, int]
) -> None:
    out = preprocess(np.ones(shape, dtype=np.float32), config)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (1, SIZE, SIZE)
    rows = np.flatnonzero(out[0].max(axis=1) > 0)
    cols = np.flatnonzero(out[0].max(axis=0) > 0)
    assert (len(rows), len(cols)) == content
    # padding is symmetric: equal borders (within one pixel) on both sides
    assert abs(rows[0] - (SIZE - 1 - rows[-1])) <= 1 and abs(cols[0] - (SIZE - 1 - cols[-1])) <= 1
    np.testing.assert_allclose(out[0][rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1.0, atol=1e-6)


def test_preprocess_accepts_channel_first_and_keeps_the_range(config: ModelConfig) -> None:
    pixels = np.random.default_rng(0).random((1, 128, 128), dtype=np.float32)
    out = preprocess(pixels, config)
    assert out.shape == (1, SIZE, SIZE)
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(out.mean(), pixels.mean(), atol=1e-3)  # area averaging keeps the mean


def test_preprocess_settings_follow_the_image_size(config: ModelConfig) -> None:
    assert preprocess_settings(config) != preprocess_settings(ModelConfig.tiny(image_size=96))
    assert preprocess_settings(config) == preprocess_settings(
        ModelConfig.tiny(image_size=SIZE, norm_mean=0.1)
    )


def test_eval_normalises_per_config_and_is_deterministic(config: ModelConfig) -> None:
    image = np.full((1, SIZE, SIZE), 0.8, dtype=np.float32)
    transform = epoch_transform(config, train=False)
    a, b = transform(image), transform(image)
    assert isinstance(a, torch.Tensor) and type(a) is torch.Tensor and a.dtype == torch.float32
    torch.testing.assert_close(a, torch.full((1, SIZE, SIZE), (0.8 - 0.4) / 0.2))
    torch.testing.assert_close(a, b)


def test_training_augmentation_differs_per_draw_and_is_seedable(config: ModelConfig) -> None:
    image = np.random.default_rng(0).random((1, SIZE, SIZE), dtype=np.float32)
    transform = epoch_transform(config, train=True)
    transform.set_random_state(seed=7)
    draws = [transform(image) for _ in range(4)]
    assert all(not torch.equal(draws[0], d) for d in draws[1:])
    assert all(d.shape == (1, SIZE, SIZE) and d.dtype == torch.float32 for d in draws)
    transform.set_random_state(seed=7)
    torch.testing.assert_close(transform(image), draws[0])


def test_per_view_wrapper_draws_independently_and_skips_missing_views(config: ModelConfig) -> None:
    image = np.random.default_rng(1).random((1, SIZE, SIZE), dtype=np.float32)
    wrapper = PerViewd(epoch_transform(config, train=True))
    wrapper.set_random_state(seed=3)
    out = wrapper({"frontal": image, "lateral": image.copy(), "study_id": "A"})
    assert not torch.equal(out["frontal"], out["lateral"])
    assert out["study_id"] == "A"
    assert wrapper({"frontal": image, "lateral": None})["lateral"] is None
    assert wrapper({"lateral": image})["lateral"].shape == (1, SIZE, SIZE)

    frozen = PerViewd(epoch_transform(config, train=False))
    out = frozen({"frontal": image, "lateral": image.copy()})
    torch.testing.assert_close(out["frontal"], out["lateral"])
