"""MONAI transforms from a `ModelConfig`: deterministic resize-and-pad (cached), then augment and normalise.

Arrays are channel-first `[1, H, W]` float32 in [0, 1]. `preprocess` runs once per file (its output is
what the decoded-image cache keeps); `augment` (training only) and `normalise` run on that small array
every epoch. `PerViewd` applies an array transform to the `frontal` and `lateral` keys of a sample with
an independent random draw per view (MONAI's own `*d` transforms share one draw across keys).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureType,
    MapTransform,
    NormalizeIntensity,
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    Randomizable,
    Resize,
    SpatialPad,
)

from models.config import ModelConfig

__all__ = [
    "VIEW_KEYS",
    "AugmentSettings",
    "PerViewd",
    "augment_transform",
    "epoch_transform",
    "preprocess",
    "preprocess_settings",
    "pad_square",
    "preprocess_transform",
    "resize_reduced",
    "normalise_transform",
]

#: The sample keys that hold one view's image each.
VIEW_KEYS: tuple[str, ...] = ("frontal", "lateral")
#: Bump when `preprocess_transform` changes what it outputs, so old cache entries stop matching.
PREPROCESS_VERSION = 1
#: Up to this many times the model size, `resize_reduced` resizes faster than MONAI's transform (torch's
#: adaptive pooling) on one core: 0.26 against 1.58 ms at 256 px, 0.76 against 1.77 at 512, 1.41 against
#: 2.54 at 900; at 1,200 px they tie, and at 2,000 MONAI's takes half the time.
NUMPY_RESIZE_BELOW = 4


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation strengths: small, plausible changes of positioning and exposure."""

    rotate_degrees: float = 10.0  # patients stand slightly rotated
    scale: float = 0.10  # distance to the detector varies
    translate: float = 0.05  # fraction of the image side
    gamma: tuple[float, float] = (0.8, 1.25)  # exposure / processing differences
    noise_std: float = 0.02  # quantum noise, on the [0, 1] scale
    prob: float = 0.8  # each augmentation fires with this probability


def preprocess_settings(config: ModelConfig) -> dict[str, Any]:
    """What determines the preprocessed array; part of every cache key."""
    return {
        "version": PREPROCESS_VERSION,
        "image_size": config.image_size,
        "mode": "area",
        "pad": "symmetric",
    }


def preprocess_transform(config: ModelConfig) -> Compose:
    """Resize so the longer side is `image_size` (aspect ratio kept), pad with 0 (air) to a square."""
    return _preprocess_transform(config.image_size)


@functools.lru_cache(maxsize=8)
def _preprocess_transform(size: int) -> Compose:
    """Built once per size: the transforms are deterministic, and building them costs more than running them."""
    return Compose(
        [
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
            Resize(spatial_size=size, size_mode="longest", mode="area"),
            SpatialPad(spatial_size=(size, size), method="symmetric", mode="constant", value=0.0),
            EnsureType(data_type="numpy", dtype=np.float32, track_meta=False),
        ]
    )


def preprocess(
    pixels: np.ndarray, config: ModelConfig, *, full_size: tuple[int, int] | None = None, reduction: int = 1
) -> np.ndarray:
    """One decoded `[H, W]` (or `[1, H, W]`) image to the cached `[1, S, S]` float32 array.

    A reduced image (`read_image(target_size=)`: `reduction` > 1 and the original's `full_size`) is
    resized as its full-size original would be (see `resize_reduced`), then padded the same way. Images
    below `NUMPY_RESIZE_BELOW` times the model size (all the model path sees) take the same numpy resize,
    faster there than MONAI's; larger ones (full resolution, for display) take `preprocess_transform`.
    Both give the same numbers (to float rounding; tested).
    """
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] != 1:
        raise ValueError(f"expected a [H, W] or [1, H, W] image, got shape {array.shape}")
    size = config.image_size
    if reduction > 1:
        if full_size is None:
            raise ValueError("a reduced image needs the full image's size")
        return pad_square(resize_reduced(array[0], full_size, reduction, size), size)
    if max(array.shape[1:]) < NUMPY_RESIZE_BELOW * size:
        return pad_square(resize_reduced(array[0], array.shape[1:], 1, size), size)
    return np.ascontiguousarray(preprocess_transform(config)(array), dtype=np.float32)


def resize_reduced(pixels: np.ndarray, full_size: tuple[int, int], reduction: int, size: int) -> np.ndarray:
    """MONAI's "area" resize of the full image (longest side to `size`), computed from its block means
    (`reduction` 1: from the image itself).

    That resize (torch's adaptive average pooling) averages, for output row i, the input rows
    floor(i * H / h) .. ceil((i + 1) * H / h) - 1. Each reduced pixel stands for a `reduction`-wide
    block, so the same average is the reduced pixels weighted by how much of each block the range
    covers: exact where the blocks are uniform. Each output row or column mixes a few neighbours.
    """
    scale = size / max(full_size)
    out_size = tuple(int(round(s * scale)) for s in full_size)  # as MONAI's Resize(size_mode="longest")
    (row_index, row_weight), (col_index, col_weight) = (
        _pooling_band(full, reduced, reduction, out)
        for full, reduced, out in zip(full_size, pixels.shape, out_size, strict=True)
    )
    pixels = pixels.astype(np.float32, copy=False)
    rows = sum(row_weight[:, k, None] * pixels[row_index[:, k]] for k in range(row_index.shape[1]))
    return sum(col_weight[None, :, k] * rows[:, col_index[:, k]] for k in range(col_index.shape[1]))


@functools.lru_cache(maxsize=64)
def _pooling_band(full: int, reduced: int, reduction: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Output i's adaptive-pooling range of `full` pixels as weights over the blocks it overlaps.

    Returns `[out, K]` block indices and weights (summing to 1), K the most blocks any range overlaps.
    """
    i = np.arange(out)
    start, stop = (i * full) // out, -((-(i + 1) * full) // out)
    first, last = start // reduction, np.minimum((stop - 1) // reduction, reduced - 1)
    index = first[:, None] + np.arange(int((last - first).max()) + 1)[None]
    lo, hi = index * reduction, np.minimum((index + 1) * reduction, full)
    overlap = np.minimum(stop[:, None], hi) - np.maximum(start[:, None], lo)
    weight = np.where(index <= last[:, None], np.clip(overlap, 0, None), 0).astype(np.float64)
    weight /= weight.sum(axis=1, keepdims=True)
    return np.minimum(index, reduced - 1), weight.astype(np.float32)


def pad_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """`[h, w]` to `[1, size, size]` with zeros (air) around it, split as MONAI's symmetric `SpatialPad`
    does (the smaller half first); the same numbers, without its conversions (a tenth of the time)."""
    rows, cols = pixels.shape
    top, left = (size - rows) // 2, (size - cols) // 2
    out = np.zeros((1, size, size), dtype=np.float32)
    out[0, top : top + rows, left : left + cols] = pixels
    return out


def augment_transform(config: ModelConfig, settings: AugmentSettings | None = None) -> Compose:
    """Random affine (rotation, scale, translation), contrast (gamma) and Gaussian noise."""
    s = settings or AugmentSettings()
    shift = s.translate * config.image_size
    return Compose(
        [
            RandAffine(
                prob=s.prob,
                rotate_range=(math.radians(s.rotate_degrees),),
                scale_range=(s.scale, s.scale),
                translate_range=(shift, shift),
                mode="bilinear",
                padding_mode="zeros",
            ),
            RandAdjustContrast(prob=s.prob, gamma=s.gamma),
            RandGaussianNoise(prob=s.prob, mean=0.0, std=s.noise_std),
        ]
    )


def normalise_transform(config: ModelConfig) -> Compose:
    """`(x - norm_mean) / norm_std`, returned as a plain float32 tensor."""
    return Compose(
        [
            NormalizeIntensity(subtrahend=config.norm_mean, divisor=config.norm_std),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def epoch_transform(config: ModelConfig, *, train: bool, augment: AugmentSettings | None = None) -> Compose:
    """What runs on each cached `[1, S, S]` array every epoch: augment (training only), then normalise."""
    steps: list[Callable] = [EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False)]
    if train:
        steps.append(augment_transform(config, augment))
    steps.append(normalise_transform(config))
    return Compose(steps)


class PerViewd(MapTransform, Randomizable):
    """Apply an array transform to each view key, with its own copy and random draws per key.

    Keys whose value is missing or None (a study without that view) are left as they are.
    """

    def __init__(self, transform: Callable, keys: Sequence[str] = VIEW_KEYS) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.transforms = {key: copy.deepcopy(transform) for key in self.keys}

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> PerViewd:
        super().set_random_state(seed, state)
        for transform in self.transforms.values():
            if isinstance(transform, Randomizable):
                transform.set_random_state(seed=int(self.R.randint(2**31)))
        return self

    def randomize(self, data: Any = None) -> None:
        """Draws happen inside each key's own transform."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            if out[key] is not None:
                out[key] = self.transforms[key](out[key])
        return out
