"""The training data: manifests, the patient-level split, and the train/validation datasets and loaders.

A Lightning DataModule owns the split (no patient on both sides) and the datasets' transforms, so
the LightningModule sees only batches.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from models.config import ModelConfig
from pipeline.data import InDtype, StudyDataset, ViewBatch, batched, collate, study_loader
from pipeline.dicom import read_header
from pipeline.errors import ImageError, TrainError
from pipeline.manifest import Manifest, read_manifest
from pipeline.settings import TrainSettings
from pipeline.studies import Study

__all__ = [
    "MIXED_PRECISION_INPUTS",
    "PHANTOM_DEVICE",
    "StudyBatches",
    "StudyDataModule",
    "all_synthetic",
    "patient_split",
    "split_manifests",
]

#: Manufacturer and ManufacturerModelName that `twoview sample-data` writes into every phantom file.
PHANTOM_DEVICE = "twoview phantom"
_SYNTHETIC_SAMPLE = 200  # files whose headers are read to tell a phantom dataset

log = logging.getLogger(__name__)

#: Lightning's mixed precisions, and the dtype in which each runs a model's first convolution.
MIXED_PRECISION_INPUTS = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


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

    def _loader(self, dataset: StudyDataset, shuffle: bool) -> StudyBatches:
        workers, size = self.settings.workers, self.settings.batch_size
        sampler = self._sampler(dataset, shuffle)
        if shuffle and len(sampler) > size:  # training: whole batches only (no 1-row BatchNorm batch)
            sampler = _Leading(sampler, len(sampler) // size * size)
        images = InDtype(dataset, self.input_dtype())
        loader = study_loader(
            images, batch_size=size, workers=workers, sampler=sampler, persistent_workers=workers > 0
        )
        return StudyBatches(loader, size, pin=torch.cuda.is_available())

    def input_dtype(self) -> torch.dtype:
        """The dtype of the images in the batches: what the trainer's mixed precision casts them to
        before the first convolution (autocast), else float32."""
        precision = str(self.trainer.precision) if self.trainer is not None else "32-true"
        return MIXED_PRECISION_INPUTS.get(precision, torch.float32)

    def _sampler(self, dataset: StudyDataset, shuffle: bool) -> Sampler:
        """This process's share of the studies: all of them, or under DDP one rank's (what Lightning
        would give a DataLoader of batches; `StudyBatches` is not one, so it is made here)."""
        distributed = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if distributed:
            return DistributedSampler(dataset, shuffle=shuffle, seed=self.settings.seed, **distributed)
        return RandomSampler(dataset) if shuffle else SequentialSampler(dataset)

    def train_dataloader(self) -> StudyBatches:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> StudyBatches:
        return self._loader(self.val_set, shuffle=False)


class StudyBatches:
    """Batches made in this process from a DataLoader whose workers load one study per task.

    With a whole batch per task, each worker starts an epoch on a batch of its own, and the first batch
    comes only when one worker has loaded all of it (at batch 64, about 0.5 s, several GPU steps); with
    a study per task the workers share every batch. Lightning reads `sampler` (to set its epoch) and
    `batch_sampler`, as on a DataLoader.
    """

    def __init__(self, loader: DataLoader, batch_size: int, *, pin: bool) -> None:
        self.loader = loader
        self.sampler = loader.sampler
        self.batch_sampler = None
        self.batch_size = batch_size
        self.pin = pin

    def __iter__(self) -> Iterator[ViewBatch]:
        for samples in batched(self.loader, self.batch_size):
            yield collate(samples, pin=self.pin)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)


class _Leading(Sampler[int]):
    """The first `count` indices of each pass of `sampler`: the studies of the whole batches, so none
    is loaded in vain for a last batch that would be dropped."""

    def __init__(self, sampler: Sampler[int], count: int) -> None:
        self.sampler = sampler
        self.count = count

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.count)

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        """Passed on to a DistributedSampler, which shuffles by epoch."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


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


def all_synthetic(studies: Sequence[Study], sample: int = _SYNTHETIC_SAMPLE) -> bool:
    """True when the studies are our synthetic phantoms (tagged `PHANTOM_DEVICE`), judged on up to `sample`
    files spread over the list. Unreadable files and pictures without tags do not count as synthetic."""
    sources = [source for study in studies for source in study.sources]
    if not sources:
        return False
    step = max(1, len(sources) // sample)
    for source in sources[::step]:
        try:
            if read_header(source.path).device != PHANTOM_DEVICE:
                return False
        except ImageError:
            return False
    return True
