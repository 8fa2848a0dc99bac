"""`TrainSettings`: everything `twoview train` takes, with its defaults, flags and help in one place.

The CLI builds its `train` options from these fields and the app's Fine-tune page takes its defaults
from them, so a default is written once. Torch-free: `twoview --help` stays quick.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.atomic import write_atomic
from pipeline.errors import TwoviewError

__all__ = ["ARCHITECTURES", "TrainSettings", "TrainSettingsError", "cli_flag", "option"]

#: Network sizes a new model can be built with.
ARCHITECTURES = ("densenet121", "tiny")


class TrainSettingsError(TwoviewError):
    """Run settings that cannot be read back."""


def option(default: Any, help: str, **cli: Any) -> Any:
    """A settings field with its command-line help; `cli` adds argparse details (flag, metavar, choices, ...)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainSettings:
    """Everything `twoview train` takes; saved as `settings.json` in the run folder for `--resume`."""

    manifest: str = option("", "training manifest CSV (study_id, frontal, lateral, one column per label)")
    out_dir: str = option("", "run folder for checkpoints, metrics and the report", flag="--out")
    images_dir: str | None = option(
        None, "folder the manifest's paths are relative to (default: the manifest's folder)", flag="--images"
    )
    val_manifest: str | None = option(
        None, "validation manifest (default: a patient-level split of --manifest)"
    )
    val_fraction: float = option(0.2, "share of studies for validation when splitting --manifest")
    start: str = option(
        "imagenet",
        "starting weights: 'imagenet' (torchvision's ImageNet DenseNet121, downloaded once), 'demo' (the "
        "bundled demo model, trained on synthetic phantoms only), 'scratch', a twoview .safetensors, or "
        "DenseNet121 weights (a file from 'twoview import-weights', a state dict, or a URL)",
    )
    pretrained_sha256: str | None = option(None, "SHA-256 of the --start weights (required for a URL)")
    arch: str = option(
        "densenet121",
        "network size when the start is not a twoview checkpoint (scratch or DenseNet121 weights)",
        choices=ARCHITECTURES,
    )
    image_size: int | None = option(None, "input size in pixels (default: the starting model's)")
    epochs: int = option(20, "most epochs to train (early stopping may end sooner)")
    batch_size: int = option(16, "studies per training step")
    lr: float = option(3e-4, "peak learning rate of AdamW")
    weight_decay: float = option(1e-4, "AdamW weight decay (not on norms and biases)")
    warmup_epochs: float = option(1.0, "epochs of linear learning-rate warm-up before the cosine decay")
    head_weights_start: tuple[float, float, float] = option(
        (0.3, 1.0, 1.0),
        "loss weight of each head at the first epoch",
        metavar=("JOINT", "FRONTAL", "LATERAL"),
    )
    head_weights_end: tuple[float, float, float] = option(
        (1.0, 0.3, 0.3),
        "loss weight of each head after --ramp-epochs",
        metavar=("JOINT", "FRONTAL", "LATERAL"),
    )
    ramp_epochs: int = option(5, "epochs over which the head weights move from start to end")
    view_dropout: float = option(0.2, "share of two-view studies trained with one view dropped")
    balance: bool = option(
        True, "class-balanced positive weights from the training labels", flag="--no-balance"
    )
    grad_clip: float = option(1.0, "gradient norm clipping (0: none)")
    precision: str | None = option(
        None,
        "Lightning precision, e.g. 32-true, bf16-mixed (default: mixed on a GPU or a CPU with fast bf16)",
    )
    accelerator: str = option("auto", "auto, cpu or gpu")
    devices: str = option("auto", "number of devices or a list like 0,1")
    num_nodes: int = option(1, "machines taking part (multi-node DDP)")
    strategy: str = option("auto", "auto or ddp (multi-GPU / multi-node)")
    workers: int = option(2, "DataLoader workers per process")
    compile: bool = option(
        False,
        "compile the network with torch.compile: minutes of compiling first, then faster steps (1.15x on "
        "a small CPU, where it needs a C++ compiler; on GPUs not measured yet), so for long runs",
    )
    patience: int = option(5, "epochs without a validation AUROC gain before stopping")
    seed: int = option(0, "random seed of the split, the augmentation and the initialisation")
    cache_dir: str | None = option(None, "decoded-image cache (default: RUN_DIR/cache)")

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainSettings:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TrainSettingsError(f"cannot read the run settings {path}: {err}") from err
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default value, by name."""
        return {f.name: _default(f) for f in fields(cls)}

    def changed(self) -> dict[str, Any]:
        """The fields whose values differ from their defaults."""
        base = self.defaults()
        return {name: value for name, value in asdict(self).items() if _plain(value) != _plain(base[name])}

    def to_args(self) -> list[str]:
        """The `twoview train` options that give these settings (defaults left out)."""
        args: list[str] = []
        for name, value in self.changed().items():
            flag = cli_flag(name)
            if isinstance(value, bool):
                args.append(flag)  # a bool option flips its default
            elif isinstance(value, (list, tuple)):
                args += [flag, *map(str, value)]
            elif value is not None:
                args += [flag, str(value)]
        return args


def cli_flag(name: str) -> str:
    """The command-line flag of a settings field: `--out` for out_dir, `--no-balance` for balance, ..."""
    f = next((f for f in fields(TrainSettings) if f.name == name), None)
    if f is None:
        raise KeyError(f"no training setting called {name!r}")
    return f.metadata.get("flag", "--" + name.replace("_", "-"))


def _default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
