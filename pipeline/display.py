"""Window/level for a viewer: an image's own grey values (`dicom.read_values`) as 8-bit grey.

A radiograph holds more grey levels than a screen shows; the window (centre and width, in the
image's own units) picks the range spread over black to white. Presets are chosen on each image's
own histogram, so they mean the same on a 12-bit DICOM and an 8-bit JPEG.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pipeline.dicom import ImageValues

__all__ = ["PRESETS", "Window", "presets", "window"]

#: Preset name -> the share of pixels, least dense first, that the window spans.
PRESETS: dict[str, tuple[float, float] | None] = {
    "file default": None,  # the file's own window, else the 0.5-99.5 percentiles
    "full range": (0.0, 100.0),
    "lungs (least dense 70 %)": (0.5, 70.0),
    "mediastinum and bone (densest 50 %)": (50.0, 99.9),
}
_SAMPLES = 2**18


class Window(NamedTuple):
    """Centre and width in the image's own units."""

    centre: float
    width: float


def presets(image: ImageValues) -> dict[str, Window]:
    """Every preset's window for this image; densest means lowest values on a MONOCHROME1 image."""
    step = max(1, int(np.sqrt(image.values.size / _SAMPLES)))
    sample = image.values[::step, ::step].ravel()
    out: dict[str, Window] = {}
    for name, share in PRESETS.items():
        if share is None:
            out[name] = Window(float(image.centre), float(image.width))
            continue
        low, high = share
        if image.monochrome1:
            low, high = 100.0 - high, 100.0 - low
        lo, hi = np.percentile(sample, [low, high])
        out[name] = Window(float(lo + hi) / 2, float(hi - lo) if hi > lo else 1.0)
    return out


def window(values: np.ndarray, centre: float, width: float, *, invert: bool = False) -> np.ndarray:
    """8-bit grey: `centre - width/2` black, `centre + width/2` white (the other way round if `invert`)."""
    low = centre - width / 2
    scaled = (np.asarray(values, dtype=np.float32) - low) * (255.0 / max(width, 1e-6))
    grey = np.clip(scaled, 0.0, 255.0)
    if invert:
        grey = 255.0 - grey
    return (grey + 0.5).astype(np.uint8)
