"""Fine-tuning: a LightningModule around `TwoViewNet` + `MultiViewLoss`, a DataModule around `StudyDataset`.

`fit(settings)` runs a Lightning Trainer, so checkpoints, progress bars, mixed precision and
multi-GPU / multi-node DDP come from the framework. A run folder holds `best.safetensors` and
`last.safetensors` (our format, with thresholds and provenance in the config), Lightning's
`checkpoints/last.ckpt` (for `--resume`), live logs per attempt in `logs/` (see `pipeline.runs`),
and at the end `metrics.csv`, `curves.png`, `report.md` and `report.json`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader
from torchmetrics.aggregation import CatMetric

from models import checkpoint
from models.atomic import write_atomic
from models.config import ModelConfig
from models.errors import CheckpointError
from models.losses import HeadWeights, LossSchedule, MultiViewLoss, class_pos_weight, view_dropout
from models.names import OUTPUTS, Route
from models.pretrained import load_pretrained
from models.twoview import TwoViewNet
from pipeline.data import StudyDataset, ViewBatch, collate
from pipeline.errors import TwoviewError
from pipeline.evaluate import score
from pipeline.manifest import Manifest, read_manifest
from pipeline.metrics import EvaluationReport, evaluation_report
from pipeline.plots import plot_training_curves
from pipeline.predict import DEMO_MODEL
from pipeline.runs import next_attempt, write_merged_metrics

__all__ = ["DEMO_MODEL", "StudyDataModule", "TrainError", "TrainSettings", "TwoViewModule", "fit"]

log = logging.getLogger(__name__)

MONITOR = "val/auroc"  # macro AUROC of the final prediction


class TrainError(TwoviewError):
    """Training cannot start or go on: bad settings, unusable labels, a run folder that cannot resume."""


@dataclass
class TrainSettings:
    """Everything `twoview train` takes; saved as `settings.json` in the run folder for `--resume`."""

    manifest: str
    out_dir: str
    images_dir: str | None = None
    val_manifest: str | None = None  # else a patient-level split of `manifest`
    val_fraction: float = 0.2
    start: str = "demo"  # "demo", "scratch", a twoview .safetensors, or a DenseNet121 state dict / URL
    pretrained_sha256: str | None = None
    arch: str = "densenet121"  # or "tiny" (tests and smoke runs)
    image_size: int | None = None  # None: the starting model's size
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    head_weights_start: tuple[float, float, float] = (0.3, 1.0, 1.0)  # joint, frontal, lateral
    head_weights_end: tuple[float, float, float] = (1.0, 0.3, 0.3)
    ramp_epochs: int = 5
    view_dropout: float = 0.2
    balance: bool = True  # class-balanced pos_weight from the training labels
    grad_clip: float = 1.0
    precision: str | None = None  # None: bf16/16 mixed on GPU, 32 on CPU
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    workers: int = 2
    patience: int = 5
    seed: int = 0
    cache_dir: str | None = None  # decoded-image cache; default <out_dir>/cache

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainSettings:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TrainError(f"cannot read the run settings {path}: {err}") from err
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


class TwoViewModule(pl.LightningModule):
    """`TwoViewNet` + `MultiViewLoss` with AdamW, warm-up + cosine LR, view dropout and AUROC per head."""

    def __init__(
        self,
        config: dict[str, Any],
        pos_weight: list[float] | None = None,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        head_weights_start: tuple[float, float, float] = (0.3, 1.0, 1.0),
        head_weights_end: tuple[float, float, float] = (1.0, 0.3, 0.3),
        ramp_epochs: int = 5,
        view_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = ModelConfig.from_json(json.dumps(config))
        self.net = TwoViewNet(self.config)
        schedule = LossSchedule(HeadWeights(*head_weights_start), HeadWeights(*head_weights_end), ramp_epochs)
        self.loss = MultiViewLoss(schedule, None if pos_weight is None else torch.tensor(pos_weight))
        self.val_probs = torch.nn.ModuleDict({h: CatMetric(nan_strategy="disable") for h in OUTPUTS})
        self.val_labels = CatMetric(nan_strategy="disable")
        self.val_routes = CatMetric(nan_strategy="disable")
        self.last_report: EvaluationReport | None = None

    def forward(self, batch: ViewBatch):
        return self.net(batch.frontal, batch.lateral, batch.has_frontal, batch.has_lateral)

    def training_step(self, batch: ViewBatch, batch_idx: int):
        if len(batch) == 0:
            return None  # every study of the batch failed to decode; Lightning skips the step
        has_f, has_l = view_dropout(batch.has_frontal, batch.has_lateral, self.hparams.view_dropout)
        logits = self.net(batch.frontal, batch.lateral, has_f, has_l)
        terms = self.loss(logits, batch.labels, epoch=self.current_epoch)
        self.log("train/loss", terms.total, prog_bar=True, batch_size=len(batch))
        for head, value in terms.heads.items():
            self.log(f"train/loss_{head}", value, batch_size=len(batch))
        return terms.total

    def validation_step(self, batch: ViewBatch, batch_idx: int) -> None:
        if len(batch) == 0:
            return
        logits = self(batch)
        terms = self.loss(logits, batch.labels, epoch=self.current_epoch)
        self.log("val/loss", terms.total, prog_bar=True, batch_size=len(batch), sync_dist=True)
        probs = logits.sigmoid()
        for head in OUTPUTS:
            self.val_probs[head].update(probs.head(head))
        self.val_labels.update(batch.labels)
        self.val_routes.update(logits.route.float())

    def on_validation_epoch_end(self) -> None:
        if self.val_labels.update_count == 0:
            return
        k = self.config.num_labels
        heads = {h: self.val_probs[h].compute().reshape(-1, k).cpu() for h in OUTPUTS}
        labels = self.val_labels.compute().reshape(-1, k).cpu()
        routes = [Route(int(c)).label for c in self.val_routes.compute().reshape(-1).tolist()]
        for metric in (*self.val_probs.values(), self.val_labels, self.val_routes):
            metric.reset()
        report = evaluation_report(heads, labels, routes, self.config.labels)
        self.last_report = report
        for head, metrics in report.heads.items():
            value = metrics.macro if metrics.macro is not None else float("nan")
            self.log(f"val/auroc_{head}", value, sync_dist=True)  # same on every rank
            if head == "final":
                for label, auc in metrics.auroc.items():
                    self.log(
                        f"val/auroc_final_{label}", auc if auc is not None else float("nan"), sync_dist=True
                    )
        final = report.heads["final"].macro
        self.log(MONITOR, final if final is not None else 0.5, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.net.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(self.trainer.max_epochs or 1, 1)
        warmup = min(int(self.hparams.warmup_epochs * total / epochs), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StudyDataModule(pl.LightningDataModule):
    """Owns the manifests, the patient-level split, and the train/validation datasets and loaders."""

    def __init__(self, settings: TrainSettings, config: ModelConfig) -> None:
        super().__init__()
        self.settings = settings
        self.config = config
        self.train_set: StudyDataset | None = None
        self.val_set: StudyDataset | None = None
        self.train_manifest, self.val_manifest = split_manifests(settings, config.labels)

    def setup(self, stage: str | None = None) -> None:
        cache = self.settings.cache_dir or str(Path(self.settings.out_dir) / "cache")
        if self.train_set is None:
            self.train_set = StudyDataset.from_manifest(
                self.train_manifest, config=self.config, train=True, cache_dir=cache
            )
            self.val_set = StudyDataset.from_manifest(self.val_manifest, config=self.config, cache_dir=cache)

    def _loader(self, dataset: StudyDataset, shuffle: bool) -> DataLoader:
        workers = self.settings.workers
        return DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            drop_last=shuffle and len(dataset) > self.settings.batch_size,  # no 1-row BatchNorm batches
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


def split_manifests(settings: TrainSettings, labels: tuple[str, ...]) -> tuple[Manifest, Manifest]:
    """The training and validation manifests: a given validation manifest, or a patient-level split."""
    train = read_manifest(settings.manifest, settings.images_dir, labels=list(labels))
    if settings.val_manifest:
        val = read_manifest(settings.val_manifest, settings.images_dir, labels=list(labels))
    else:
        train, val = patient_split(train, settings.val_fraction, settings.seed)
    _check_validatable(train, val, labels)
    return train, val


def patient_split(manifest: Manifest, fraction: float, seed: int) -> tuple[Manifest, Manifest]:
    """Split by patient (no patient on both sides), about `fraction` of studies to validation.

    Patients are taken in a seeded order, preferring ones that bring a label's first positive or
    negative to the validation side, so small sets still validate every label they can.
    """
    if not 0.0 < fraction < 1.0:
        raise TrainError(f"the validation fraction must be between 0 and 1, got {fraction}")
    by_patient: dict[str, list[int]] = {}
    for i, patient in enumerate(manifest.patient_ids):
        by_patient.setdefault(patient, []).append(i)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    target = max(1, round(fraction * len(manifest)))
    labels = np.nan_to_num(manifest.labels, nan=-1.0)
    chosen: list[str] = []
    have_pos = np.zeros(labels.shape[1], bool)
    have_neg = np.zeros(labels.shape[1], bool)
    size = 0
    while size < target and len(chosen) < len(patients) - 1:
        remaining = [p for p in patients if p not in chosen]
        gains = [_coverage_gain(labels[by_patient[p]], have_pos, have_neg) for p in remaining]
        best = remaining[gains.index(max(gains))]  # ties keep the seeded order
        chosen.append(best)
        rows = labels[by_patient[best]]
        have_pos |= (rows == 1).any(0)
        have_neg |= (rows == 0).any(0)
        size += len(by_patient[best])
    val_rows = sorted(i for p in chosen for i in by_patient[p])
    train_rows = sorted(set(range(len(manifest))) - set(val_rows))
    return _subset(manifest, train_rows), _subset(manifest, val_rows)


def _coverage_gain(rows: np.ndarray, have_pos: np.ndarray, have_neg: np.ndarray) -> int:
    """How many labels would gain their first validation positive or negative from these rows."""
    return int(((rows == 1).any(0) & ~have_pos).sum() + ((rows == 0).any(0) & ~have_neg).sum())


def _subset(manifest: Manifest, rows: list[int]) -> Manifest:
    return replace(
        manifest,
        studies=tuple(manifest.studies[i] for i in rows),
        labels=manifest.labels[rows],
        patient_ids=tuple(manifest.patient_ids[i] for i in rows),
    )


def _check_validatable(train: Manifest, val: Manifest, labels: tuple[str, ...]) -> None:
    """Refuse a split where no label can be both learnt and validated; name the labels that cannot be."""
    if len(train) == 0 or len(val) == 0:
        raise TrainError(f"need studies on both sides: {len(train)} for training, {len(val)} for validation")
    lacking = []
    for j, name in enumerate(labels):
        seen, held_out = train.labels[:, j], val.labels[:, j]
        if not ((seen == 1).any() and (held_out == 1).any() and (held_out == 0).any()):
            lacking.append(name)
    if len(lacking) == len(labels):
        raise TrainError(
            "too few positives to validate: no label has a positive study to train on and both a positive "
            f"and a negative study among the {len(val)} validation studies. Add labelled studies or give "
            "--val-manifest."
        )
    if lacking:
        log.warning(
            "%s cannot be both trained and validated (too few positives); their AUROC will be n/a",
            ", ".join(lacking),
        )


def build_model(settings: TrainSettings, labels: tuple[str, ...]) -> TwoViewNet:
    """The starting network: demo model, a twoview checkpoint, a pretrained DenseNet121, or scratch."""
    start = settings.start
    if start == "demo":
        if not DEMO_MODEL.is_file():
            raise TrainError(f"the demo model {DEMO_MODEL} is not there; use --start scratch or a checkpoint")
        start = str(DEMO_MODEL)
    if start not in ("scratch",) and start.endswith(".safetensors") and _is_twoview(start):
        return _from_checkpoint(Path(start), labels, settings.image_size)
    base = ModelConfig.tiny() if settings.arch == "tiny" else ModelConfig()
    if settings.arch not in ("tiny", "densenet121"):
        raise TrainError(f"unknown architecture {settings.arch!r}; choose one of: densenet121, tiny")
    config = replace(base, labels=labels, image_size=settings.image_size or base.image_size)
    net = TwoViewNet(config)
    if start != "scratch":
        report = load_pretrained(net, start, sha256=settings.pretrained_sha256)
        log.info(report.summary())
    return net


def _is_twoview(path: str) -> bool:
    try:
        checkpoint.read_metadata(path)
    except CheckpointError:
        return False
    return True


def _from_checkpoint(path: Path, labels: tuple[str, ...], image_size: int | None) -> TwoViewNet:
    """A checkpoint's network; heads for a different label set start fresh (and we say so)."""
    old = checkpoint.load(path)
    config = replace(
        old.config.with_labels(labels), image_size=image_size or old.config.image_size, provenance={}
    )
    net = TwoViewNet(config)
    state = old.state_dict()
    if config.labels != old.config.labels:
        log.info(
            "new heads for labels %s (the start model predicts %s)", list(labels), list(old.config.labels)
        )
        state = {k: v for k, v in state.items() if ".head.out." not in k}
    net.load_state_dict(state, strict=False)
    log.info("starting from %s", path)
    return net


class SafetensorsExport(Callback):
    """After each validation, write `last.safetensors` and, when the monitored AUROC improved, `best`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.best: float | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: TwoViewModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        score = trainer.callback_metrics.get(MONITOR)
        extra = {
            "epoch": str(trainer.current_epoch),
            MONITOR: f"{float(score):.6f}" if score is not None else "",
        }
        checkpoint.save(module.net, self.out_dir / "last.safetensors", extra=extra)
        if score is not None and (self.best is None or float(score) > self.best):
            self.best = float(score)
            checkpoint.save(module.net, self.out_dir / "best.safetensors", extra=extra)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


@dataclass
class TrainResult:
    """Where a finished run put its files, and its validation report."""

    out_dir: Path
    best: Path
    report: EvaluationReport
    epochs_run: int
    metrics: dict[str, float] = field(default_factory=dict)


def fit(
    settings: TrainSettings, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> TrainResult | None:
    """Train (or resume) a run; see the module docstring for what the run folder holds.

    `callbacks` are added to the Trainer's own (benchmarks time steps this way). Returns the result
    on the process of global rank 0, None on the other DDP processes.
    """
    out = Path(settings.out_dir)
    last_ckpt = out / "checkpoints" / "last.ckpt"
    if resume:
        if not last_ckpt.is_file():
            raise TrainError(f"{out} has no checkpoints/last.ckpt to resume from")
        settings = TrainSettings.load(out / "settings.json")
    elif last_ckpt.exists():
        raise TrainError(f"{out} already holds a run; use --resume {out} to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    labels = _manifest_labels(settings)
    net = build_model(settings, labels)
    data = StudyDataModule(settings, net.config)
    pos_weight = (
        class_pos_weight(torch.from_numpy(data.train_manifest.labels)).tolist() if settings.balance else None
    )
    module = TwoViewModule(
        json.loads(net.config.to_json()),
        pos_weight=pos_weight,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_epochs=settings.warmup_epochs,
        head_weights_start=tuple(settings.head_weights_start),
        head_weights_end=tuple(settings.head_weights_end),
        ramp_epochs=settings.ramp_epochs,
        view_dropout=settings.view_dropout,
    )
    module.net.load_state_dict(net.state_dict())
    if not resume:
        settings.save(out / "settings.json")
    trainer = _trainer(settings, out, callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=str(last_ckpt) if resume else None)
    if not trainer.is_global_zero:
        return None  # rank 0 writes the report
    return _finish(settings, out, data, trainer)


def _manifest_labels(settings: TrainSettings) -> tuple[str, ...]:
    labels = read_manifest(settings.manifest, settings.images_dir).label_names
    if not labels:
        raise TrainError(f"{settings.manifest} has no label columns to train on")
    return tuple(labels)


def _trainer(settings: TrainSettings, out: Path, extra: Sequence[Callback] = ()) -> pl.Trainer:
    strategy: Any = settings.strategy
    if strategy == "ddp":
        # A batch without two-view studies leaves the fusion block unused; DDP must allow that.
        strategy = DDPStrategy(find_unused_parameters=True)
    precision = settings.precision or _default_precision(settings.accelerator)
    return pl.Trainer(
        default_root_dir=out,
        max_epochs=settings.epochs,
        accelerator=settings.accelerator,
        devices=_devices(settings.devices),
        num_nodes=settings.num_nodes,
        strategy=strategy,
        precision=precision,
        gradient_clip_val=settings.grad_clip or None,
        logger=CSVLogger(out, name="logs", version=next_attempt(out), flush_logs_every_n_steps=1),
        callbacks=[
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                filename="last",
                save_top_k=1,
                monitor=None,
                enable_version_counter=False,
            ),
            SafetensorsExport(out),
            EarlyStopping(monitor=MONITOR, mode="max", patience=settings.patience),
            LearningRateMonitor(logging_interval="epoch"),
            *extra,
        ],
        log_every_n_steps=1,
        deterministic=False,
        enable_model_summary=False,
    )


def _devices(devices: str) -> int | str | list[int]:
    if devices == "auto":
        return "auto"
    if devices.isdigit():
        return int(devices)
    try:
        return [int(d) for d in devices.split(",") if d]
    except ValueError as err:
        raise TrainError(f"--devices must be 'auto', a count, or a list like 0,1; got {devices!r}") from err


def _default_precision(accelerator: str) -> str:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _finish(settings: TrainSettings, out: Path, data: StudyDataModule, trainer: pl.Trainer) -> TrainResult:
    """Score the best weights on validation, store thresholds and provenance in them, write the report."""
    best_path = out / "best.safetensors"
    if not best_path.exists():
        raise TrainError(f"training ended before any validation; no model was written to {out}")
    net = checkpoint.load(best_path)
    report = score(net, data.val_set, batch_size=settings.batch_size, bootstrap=200)
    provenance = {
        "trained_on": str(settings.manifest),
        "train_studies": len(data.train_manifest),
        "val_studies": len(data.val_manifest),
        "epochs_run": trainer.current_epoch,
        "start": settings.start,
        "val_auroc_macro": report.heads["final"].macro,
        "val_auroc": report.heads["final"].auroc,
    }
    config = replace(net.config, thresholds=report.thresholds, provenance=provenance)
    checkpoint.save(net, best_path, config=config)
    write_atomic(out / "report.json", json.dumps(report.to_dict(), indent=2))
    write_atomic(out / "report.md", report.to_markdown(f"Validation report: {out.name}"))
    write_merged_metrics(out)
    plot_training_curves(out, out / "curves.png")
    log.info("best model: %s (validation macro AUROC %s)", best_path, report.heads["final"].macro)
    return TrainResult(out, best_path, report, trainer.current_epoch)
