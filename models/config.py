"""`ModelConfig`: everything needed to rebuild a model and its preprocessing, saved in every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from models.errors import ConfigError

__all__ = ["DEFAULT_LABELS", "FUSIONS", "SYNTHETIC_NOTICE", "ModelConfig"]

#: The findings the bundled phantom data and demo model know.
DEFAULT_LABELS: tuple[str, ...] = (
    "pleural_effusion",
    "nodule",
    "cardiomegaly",
    "pneumothorax",
    "consolidation",
)
#: How the joint path merges the two block-3 feature maps.
FUSIONS = ("concat",)
#: What every output of a model trained on synthetic data alone says, in one plain sentence.
SYNTHETIC_NOTICE = (
    "This model was trained on synthetic phantom images only and has never seen a real patient: "
    "its probabilities mean nothing for real radiographs."
)


@dataclass(frozen=True)
class ModelConfig:
    """Labels, input size, DenseNet sizes, fusion and normalisation of a `TwoViewNet`."""

    labels: tuple[str, ...] = DEFAULT_LABELS  # one sigmoid output per label, in this order
    image_size: int = 224  # square input side in pixels, after resize-and-pad
    in_channels: int = 1  # radiographs are grey; a 3-channel start is summed into 1
    init_features: int = 64  # DenseNet121 stem width
    growth_rate: int = 32  # DenseNet121 growth rate
    block_config: tuple[int, ...] = (6, 12, 24, 16)  # layers per dense block (121 = these + stem/transitions)
    bn_size: int = 4  # bottleneck width multiplier inside dense layers
    fusion: str = "concat"  # how the joint path merges the two block-3 maps
    fusion_layers: int = 16  # dense layers in the fusion block (DenseNet121's block 4 has 16)
    dropout: float = 0.0  # dropout inside dense layers
    head_dropout: float = 0.0  # dropout before each linear head
    norm_mean: float = 0.5  # pixels in [0, 1] are normalised as (x - mean) / std
    norm_std: float = 0.25
    thresholds: dict[str, float] = field(default_factory=dict)  # per-label decision thresholds
    trained_on: str = ""  # what the weights were trained on, in words ("" for untrained weights)
    synthetic_only: bool = False  # every training study was synthetic: outputs mean nothing for patients
    provenance: dict[str, Any] = field(default_factory=dict)  # training data, metrics, where it came from

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "block_config", tuple(int(b) for b in self.block_config))
        self.validate()

    def validate(self) -> None:
        """Refuse values that cannot build a network, with a message that says what to change."""
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels must be a non-empty list of distinct names, got {list(self.labels)}")
        if not all(isinstance(name, str) and name for name in self.labels):
            raise ConfigError("every label must be a non-empty string")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose one of: {', '.join(FUSIONS)}")
        if len(self.block_config) != 4:
            raise ConfigError(
                f"block_config needs 4 dense blocks (split after the 3rd), got {self.block_config}"
            )
        limits = {
            "image_size": (32, 4096),
            "in_channels": (1, 1),
            "init_features": (1, 1024),
            "growth_rate": (1, 256),
            "bn_size": (1, 16),
            "fusion_layers": (1, 64),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not all(1 <= b <= 128 for b in self.block_config):
            raise ConfigError(f"each dense block needs 1 to 128 layers, got {self.block_config}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.head_dropout < 1.0):
            raise ConfigError("dropout and head_dropout must be in [0, 1)")
        if not self.norm_std > 0:
            raise ConfigError(f"norm_std must be positive, got {self.norm_std}")
        if not isinstance(self.trained_on, str) or not isinstance(self.synthetic_only, bool):
            raise ConfigError("trained_on must be text and synthetic_only true or false")
        unknown = set(self.thresholds) - set(self.labels)
        if unknown:
            raise ConfigError(f"thresholds given for unknown labels: {sorted(unknown)}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def notice(self) -> str | None:
        """The sentence every display of this model's outputs must carry, if any."""
        return SYNTHETIC_NOTICE if self.synthetic_only else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Rebuild a config from `to_json`; unknown keys are an error, missing ones take defaults."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"model config is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"model config has unknown fields {sorted(unknown)}; is it from a newer twoview?"
            )
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"model config is malformed: {err}") from err

    def with_labels(self, labels: tuple[str, ...] | list[str]) -> ModelConfig:
        """The same architecture for another label set (thresholds of dropped labels are forgotten)."""
        kept = {k: v for k, v in self.thresholds.items() if k in labels}
        return replace(self, labels=tuple(labels), thresholds=kept)

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """A very small network with DenseNet121's shape, for tests and quick experiments."""
        base = dict(
            image_size=64,
            init_features=8,
            growth_rate=4,
            block_config=(1, 1, 2, 1),
            bn_size=2,
            fusion_layers=2,
        )
        base.update(overrides)
        return cls(**base)
