"""A Grad-CAM heatmap blended over its radiograph as an RGB picture (for the app and DICOM captures)."""

from __future__ import annotations

import numpy as np

__all__ = ["overlay"]


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB picture in [0, 1]: the grey image with the heatmap blended in (jet colours, stronger where hotter)."""
    from matplotlib import colormaps

    grey = np.repeat(np.clip(pixels, 0, 1)[..., None], 3, axis=2)
    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    weight = alpha * np.clip(heat, 0, 1)[..., None] ** 0.5
    return ((1 - weight) * grey + weight * colours).clip(0, 1)
