"""Errors raised by `models`; their messages are shown to users as they are."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DownloadError", "ModelError", "PretrainedError"]


class ModelError(Exception):
    """Base of every error `models` raises on purpose."""


class ConfigError(ModelError, ValueError):
    """A `ModelConfig` value that cannot build a network."""


class CheckpointError(ModelError):
    """A checkpoint that cannot be loaded: wrong format, forged metadata, or mismatched shapes."""


class PretrainedError(ModelError):
    """Pretrained weights that cannot be fetched, verified or mapped onto the network."""


class DownloadError(PretrainedError):
    """Weights that could not be downloaded at all (no network, server down): not a bad file."""
