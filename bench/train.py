"""Training benchmark: images per second, and the share of step time spent waiting for data after epoch 1.

Generates phantom studies, then runs `twoview train`'s own Trainer setup for a few epochs with a
callback that times each step and the gap before it (the DataLoader wait). Epoch 0 fills the
decoded-image cache; later epochs read it. Then times the cached data path alone in this process on
one thread (what one DataLoader worker does per study: cache read, augmentation, normalisation) and
prints it per core and times 12 workers, against the GPU target of 1,500 images/s.

    python bench/train.py [--studies 64] [--epochs 3] [--size 224] [--arch densenet121] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from pipeline import train as training
from pipeline.data import StudyDataset, worker_init
from pipeline.datamodule import StudyDataModule
from sample_data.generate import write_dataset


class StepTimer(pl.Callback):
    """Per epoch: seconds waiting for batches, seconds in steps, and images seen."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, float]] = {}
        self._end: float | None = None
        self._start = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        stats = self.epochs.setdefault(trainer.current_epoch, {"wait": 0.0, "step": 0.0, "images": 0.0})
        stats["wait"] += self._start - (self._end or self._start)
        stats["images"] += float(batch.has_frontal.sum() + batch.has_lateral.sum())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        self.epochs[trainer.current_epoch]["step"] += self._end - self._start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", default="densenet121", choices=["densenet121", "tiny"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a bf16 CPU, else 32-true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, n_studies=args.studies, seed=7, size=1024)
        settings = training.TrainSettings(
            manifest=str(data / "labels.csv"),
            out_dir=str(Path(tmp) / "run"),
            start="scratch",
            arch=args.arch,
            image_size=args.size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            workers=args.workers,
            patience=args.epochs,
            precision=args.precision or ("bf16-mixed" if torch.backends.mkldnn.is_available() else "32-true"),
        )
        timer = StepTimer()
        training.fit(settings, callbacks=[timer])
        per_core = cached_rate(settings)
    print(
        f"{args.arch} at {args.size} px, batch {args.batch_size}, {args.workers} workers, {settings.precision}; "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    for epoch, s in sorted(timer.epochs.items()):
        share = s["wait"] / (s["wait"] + s["step"])
        print(
            f"  epoch {epoch}: {s['images'] / (s['wait'] + s['step']):6.1f} images/s, "
            f"waiting for data {100 * share:5.1f} % of step time"
        )
    later = [s["wait"] / (s["wait"] + s["step"]) for e, s in timer.epochs.items() if e >= 1]
    if later:
        print(f"after epoch 1: data wait {100 * statistics.mean(later):.1f} % (target < 10 %)")
    print(
        f"cached data path, one worker's work on one thread: {per_core:.0f} images/s; x 12 workers = "
        f"{12 * per_core:.0f} images/s (GPU training target 1,500 images/s; a projection, not a measurement)"
    )


def cached_rate(settings: training.TrainSettings) -> float:
    """Images per second of `StudyDataset[i]` on the training set with a warm cache, as in a worker."""
    from models.checkpoint import load

    config = load(Path(settings.out_dir) / "last.safetensors").config
    data = StudyDataModule(settings, config)
    data.setup()
    dataset: StudyDataset = data.train_set
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    worker_init(0)  # what each DataLoader worker runs first
    try:
        images = 0
        start = time.perf_counter()
        for index in range(len(dataset)):
            sample = dataset[index]
            images += (sample.frontal is not None) + (sample.lateral is not None)
        return images / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
