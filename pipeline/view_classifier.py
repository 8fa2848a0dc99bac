"""The pixel step of view detection: the bundled `ViewNet` on one image, calibrated, averaged over a flip.

The image is shrunk to fit `image_size` (aspect ratio kept), its grey levels stretched so that its
0.5th and 99.5th percentiles become black and white (exposure and window do not matter; training
augments the look-up table), and padded with black. The network runs on it
and on its mirror image (laterals face either way; a mirrored frontal is still frontal), the logits
are averaged and divided by the calibration temperature. The weights load once per process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.viewnet import ViewNet, load_viewnet

__all__ = [
    "VIEW_CLASSIFIER",
    "ViewScores",
    "calibrated_probabilities",
    "classify",
    "decide",
    "flip_averaged_logits",
    "load_classifier",
    "prepare",
    "to_input",
]

#: The bundled weights; `TWOVIEW_VIEW_CLASSIFIER` names another file (a retrained one, say).
VIEW_CLASSIFIER = (
    Path(__file__).resolve().parents[1] / "sample_data" / "models" / "view_classifier.safetensors"
)
_PERCENTILES = (0.5, 99.5)  # the grey levels that become black and white
# A picture whose "other" probability reaches this is no chest film; otherwise the view is judged
# by its probability given a chest film, so doubt about "chest film or not" does not dilute it.
OTHER_BELOW = 0.5


@dataclass(frozen=True)
class ViewScores:
    """Calibrated probability per class ("frontal", "lateral", "other") and the abstention threshold."""

    probabilities: dict[str, float]
    threshold: float

    @property
    def chest_film(self) -> bool:
        """False when "other" (no upright chest film) is at least as likely as both views together."""
        return self.probabilities["other"] < OTHER_BELOW

    @property
    def view(self) -> tuple[str, float]:
        """The likelier view and its probability given that the picture is a chest film."""
        frontal, lateral = self.probabilities["frontal"], self.probabilities["lateral"]
        total = max(frontal + lateral, 1e-12)
        return ("frontal", frontal / total) if frontal >= lateral else ("lateral", lateral / total)


def decide(probs: torch.Tensor, threshold: float) -> np.ndarray:
    """Per row of `[N, 3]` probabilities: 0 frontal, 1 lateral, -1 unknown (no chest film, or the view's
    probability given a chest film below `threshold`). The rule `view_from_pixels` applies to one image."""
    view_probs = probs[:, :2] / probs[:, :2].sum(dim=1, keepdim=True).clamp_min(1e-12)
    known = (probs[:, 2] < OTHER_BELOW) & (view_probs.max(dim=1).values >= threshold)
    return torch.where(known, view_probs.argmax(dim=1), -1).numpy()


def _weights_path() -> Path:
    return Path(os.environ.get("TWOVIEW_VIEW_CLASSIFIER") or VIEW_CLASSIFIER)


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> ViewNet:
    return load_viewnet(path)


def load_classifier(path: str | Path | None = None) -> ViewNet:
    """The view classifier at `path` (default: the bundled one), loaded once per process and path."""
    return _load(Path(path) if path is not None else _weights_path())


def prepare(pixels: np.ndarray, size: int) -> np.ndarray:
    """`[H, W]` pixels -> `[size, size]` float32 in [0, 1]: shrunk (aspect kept), percentile-scaled, padded black."""
    array = np.nan_to_num(np.asarray(pixels, dtype=np.float32))
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty [H, W] image, got shape {array.shape}")
    rows, cols = array.shape
    scale = size / max(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    small = np.asarray(Image.fromarray(array).resize((new_cols, new_rows), Image.BOX), dtype=np.float32)
    lo, hi = np.percentile(small, _PERCENTILES)
    scaled = np.clip((small - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(small)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = scaled
    return out


def to_input(pixels: np.ndarray, model: ViewNet) -> torch.Tensor:
    """One image as the network's normalised `[1, S, S]` input."""
    config = model.config
    prepared = prepare(pixels, config.image_size)
    return torch.from_numpy((prepared - config.norm_mean) / config.norm_std)[None]


def flip_averaged_logits(model: ViewNet, batch: torch.Tensor) -> torch.Tensor:
    """`[B, 1, S, S]` inputs -> `[B, K]` logits averaged over the image and its mirror (uncalibrated)."""
    with torch.inference_mode():
        return (model(batch) + model(batch.flip(-1))) / 2


def calibrated_probabilities(model: ViewNet, batch: torch.Tensor) -> torch.Tensor:
    """`[B, 1, S, S]` inputs -> `[B, K]` probabilities, flip-averaged and temperature-scaled."""
    return torch.softmax(flip_averaged_logits(model, batch) / model.config.temperature, dim=1)


def classify(pixels: np.ndarray, model: ViewNet | None = None) -> ViewScores:
    """Calibrated class probabilities of one image (`XrayImage.pixels`), by the bundled classifier by default."""
    model = model or load_classifier()
    probs = calibrated_probabilities(model, to_input(pixels, model)[None])[0]
    return ViewScores(
        {name: float(p) for name, p in zip(model.config.classes, probs, strict=True)},
        model.config.threshold,
    )
