"""Fine-tuning: a LightningModule around `TwoViewNet` + `MultiViewLoss`, run by a Lightning Trainer.

`fit(settings)` runs a Lightning Trainer, so checkpoints, progress bars, mixed precision and
multi-GPU / multi-node DDP come from the framework. A run folder holds `best.safetensors` and
`last.safetensors` (our format, with thresholds and provenance in the config), Lightning's
`checkpoints/last.ckpt` (for `--resume`), live logs per attempt in `logs/` (see `pipeline.runs`),
and at the end `metrics.csv`, `curves.png`, `report.md` and `report.json`. The data side (manifests,
patient split, loaders) is `pipeline.datamodule`; the starting network is `pipeline.start_model`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torchmetrics.aggregation import CatMetric

from models import checkpoint
from models.atomic import write_atomic
from models.losses import HeadWeights, LossSchedule, MultiViewLoss, class_pos_weight, view_dropout
from models.names import OUTPUTS, Route
from models.twoview import TwoViewNet, fast_dtype
from pipeline.data import ViewBatch
from pipeline.datamodule import StudyDataModule, all_synthetic
from pipeline.errors import TrainError
from pipeline.evaluate import score
from pipeline.manifest import read_manifest
from pipeline.metrics import EvaluationReport, evaluation_report
from pipeline.plots import plot_training_curves
from pipeline.runs import MONITOR, next_attempt, write_merged_metrics
from pipeline.settings import TrainSettings
from pipeline.start_model import build_start_model

__all__ = ["TrainError", "TrainResult", "TrainSettings", "TwoViewModule", "fit"]

log = logging.getLogger(__name__)

# Importing `lightning` gives its logger a console handler of its own; where the program configured
# logging already (the CLI does), that printed every Lightning message twice. Ours prints them once,
# without the advertising tip Lightning logs at each fit.
if logging.getLogger().handlers:
    logging.getLogger("lightning").handlers.clear()
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB}")
)

#: On a GPU, each view's rows are padded to a multiple of this (`TwoViewNet.shape_bucket`), so a batch of
#: 64 gives cuDNN at most 8 shapes per branch to tune for instead of a new one nearly every step.
SHAPE_BUCKET = 8
#: On a GPU, how often (in steps) logged values are read back from it for the logs and the progress bar:
#: reading one waits for the GPU to finish every queued step.
GPU_LOG_EVERY = 25


class TwoViewModule(pl.LightningModule):
    """`TwoViewNet` + `MultiViewLoss` with AdamW, warm-up + cosine LR, view dropout and AUROC per head.

    Takes the network it trains; the hyper-parameters' defaults live in `TrainSettings` alone. `compile`:
    `torch.compile` options for the network's parts (`TwoViewNet.compile`) when training starts; None
    trains it eagerly.
    """

    def __init__(
        self,
        net: TwoViewNet,
        *,
        pos_weight: list[float] | None,
        lr: float,
        weight_decay: float,
        warmup_epochs: float,
        head_weights_start: tuple[float, float, float],
        head_weights_end: tuple[float, float, float],
        ramp_epochs: int,
        view_dropout: float,
        compile: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        # Lightning keeps the mode it is given, and a loaded checkpoint is in eval mode: batch norm would
        # fine-tune on frozen statistics and dropout stay off.
        self.net = net.train()
        self.config = net.config
        schedule = LossSchedule(HeadWeights(*head_weights_start), HeadWeights(*head_weights_end), ramp_epochs)
        self.loss = MultiViewLoss(schedule, None if pos_weight is None else torch.tensor(pos_weight))
        self.val_probs = torch.nn.ModuleDict({h: CatMetric(nan_strategy="disable") for h in OUTPUTS})
        self.val_labels = CatMetric(nan_strategy="disable")
        self.val_routes = CatMetric(nan_strategy="disable")
        self.last_report: EvaluationReport | None = None

    @classmethod
    def from_settings(
        cls, net: TwoViewNet, settings: TrainSettings, pos_weight: list[float] | None
    ) -> TwoViewModule:
        """The module for one run's settings."""
        return cls(
            net,
            pos_weight=pos_weight,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            warmup_epochs=settings.warmup_epochs,
            head_weights_start=tuple(settings.head_weights_start),
            head_weights_end=tuple(settings.head_weights_end),
            ramp_epochs=settings.ramp_epochs,
            view_dropout=settings.view_dropout,
            compile={} if settings.compile else None,
        )

    def forward(self, batch: ViewBatch):
        return self.net(batch.frontal, batch.lateral, batch.has_frontal, batch.has_lateral)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """On a GPU, images and labels go there (asynchronously, from pinned memory); the view masks stay
        on the CPU, so view dropout and the choice of rows need no wait for the GPU (see `TwoViewNet`)."""
        if not isinstance(batch, ViewBatch) or device.type == "cpu":
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return replace(
            batch, frontal=move(batch.frontal), lateral=move(batch.lateral), labels=move(batch.labels)
        )

    def setup(self, stage: str) -> None:
        # Before the Trainer moves the network and wraps it for DDP, whose gradient buckets take the
        # parameters' layout: channels-last is the faster one for training on CPUs and GPUs alike.
        if stage == "fit":
            self.net.channels_last()
            if self.hparams.compile is not None:
                self.net.compile(**self.hparams.compile)

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self.net.channels_last(False)

    def on_fit_start(self) -> None:
        self.net.shape_bucket = SHAPE_BUCKET if self.device.type == "cuda" else None

    def on_fit_end(self) -> None:
        self.net.shape_bucket = None

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
    if settings.compile:
        _check_compiler()
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    labels = _manifest_labels(settings)
    net = build_start_model(settings, labels)
    data = StudyDataModule(settings, net.config)
    pos_weight = (
        class_pos_weight(torch.from_numpy(data.train_manifest.labels)).tolist() if settings.balance else None
    )
    module = TwoViewModule.from_settings(net, settings, pos_weight)
    if not resume:
        settings.save(out / "settings.json")
    trainer = _trainer(settings, out, callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=str(last_ckpt) if resume else None)
    if not trainer.is_global_zero:
        return None  # rank 0 writes the report
    return _finish(settings, out, data, trainer)


def _check_compiler() -> None:
    """`torch.compile` builds C++ (CPU) or Triton (GPU) kernels with the machine's C/C++ compiler."""
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        raise TrainError(
            "--compile needs a C++ compiler (c++, g++ or clang++ on the PATH, or CXX set), and none was "
            "found; install one (Debian: apt install g++) or train without --compile"
        )


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
    gpu = _uses_gpu(settings.accelerator)
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
            TQDMProgressBar(refresh_rate=GPU_LOG_EVERY if gpu else 1),
            *extra,
        ],
        log_every_n_steps=GPU_LOG_EVERY if gpu else 1,
        benchmark=gpu,  # cuDNN autotuning: pays off now that batch shapes repeat
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


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _default_precision(accelerator: str) -> str:
    """Mixed precision where the hardware runs it fast: GPUs, and CPUs with AVX512-BF16 or AMX (a
    DenseNet121 pair's training step 2.1x faster than float32 there; see bench/RESULTS.md)."""
    if _uses_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if fast_dtype(torch.device("cpu")) == torch.bfloat16 else "32-true"


def _finish(settings: TrainSettings, out: Path, data: StudyDataModule, trainer: pl.Trainer) -> TrainResult:
    """Score the best weights on validation, store thresholds and provenance in them, write the report."""
    best_path = out / "best.safetensors"
    if not best_path.exists():
        raise TrainError(f"training ended before any validation; no model was written to {out}")
    net = checkpoint.load(best_path)
    report = score(net, data.val_set, batch_size=settings.batch_size, bootstrap=200)
    synthetic = all_synthetic(data.train_manifest.studies + data.val_manifest.studies)
    start = net.config.provenance.get("start", settings.start)
    trained_on = (
        f"{len(data.train_manifest)} training and {len(data.val_manifest)} validation studies from "
        f"{Path(settings.manifest).name}{' (synthetic phantoms)' if synthetic else ''}, "
        f"starting from {start}"
    )
    provenance = {
        "manifest": str(settings.manifest),
        "train_studies": len(data.train_manifest),
        "val_studies": len(data.val_manifest),
        "epochs_run": trainer.current_epoch,
        "start": start,
        "val_auroc_macro": report.heads["final"].macro,
        "val_auroc": report.heads["final"].auroc,
    }
    config = replace(
        net.config,
        thresholds=report.thresholds,
        provenance=provenance,
        trained_on=trained_on,
        synthetic_only=synthetic,
    )
    checkpoint.save(net, best_path, config=config)
    report.notice = config.notice
    write_atomic(out / "report.json", json.dumps(report.to_dict(), indent=2))
    write_atomic(out / "report.md", report.to_markdown(f"Validation report: {out.name}"))
    write_merged_metrics(out)
    plot_training_curves(out, out / "curves.png")
    macro = report.heads["final"].macro
    log.info(
        "best model: %s (validation macro AUROC %s)", best_path, "n/a" if macro is None else f"{macro:.3f}"
    )
    return TrainResult(out, best_path, report, trainer.current_epoch)
