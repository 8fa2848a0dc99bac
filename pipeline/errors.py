"""The errors twoview raises on purpose: every message is written to be shown to users."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "TwoviewError",
    "ImageError",
    "NotAnImageError",
    "NoPixelDataError",
    "TruncatedPixelDataError",
    "UnsupportedModalityError",
    "UnsupportedSyntaxError",
    "DimensionsError",
    "EmptyImageError",
    "ReaderStoppedError",
    "ManifestError",
]


class TwoviewError(Exception):
    """Base of every error twoview raises on purpose; its message is shown to users."""


class ImageError(TwoviewError):
    """One image file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.reason)  # picklable, so a reader in a child process can raise it


class NotAnImageError(ImageError):
    """The file is neither DICOM nor a PNG/JPEG picture (empty, text, a folder, ...)."""


class NoPixelDataError(ImageError):
    """A DICOM file with no image in it (a report, a structured report, a header only)."""


class TruncatedPixelDataError(ImageError):
    """The pixel data is shorter than the header declares, or cannot be decoded."""


class UnsupportedModalityError(ImageError):
    """A DICOM image that is not a radiograph (CT, MR, ultrasound, ...)."""


class UnsupportedSyntaxError(ImageError):
    """A DICOM compression (transfer syntax) that no installed decoder can read."""


class DimensionsError(ImageError):
    """Image dimensions out of range: too small to be a radiograph, or too big to load."""


class EmptyImageError(ImageError):
    """The image carries no information: every pixel has the same value."""


class ReaderStoppedError(ImageError):
    """Reading the file was stopped: it took too long, or its reader ran out of memory or crashed."""


class ManifestError(TwoviewError):
    """A manifest CSV that cannot be used; the message names the file, the row and the fix."""


class TrainError(TwoviewError):
    """Training cannot start or go on: bad settings, unusable labels, a run folder that cannot resume."""
