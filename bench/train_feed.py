"""The training process's main-thread CPU per study, taking in batches: bfloat16 against float32 batches.

Under `bf16-mixed` (what `twoview train` uses on GPUs and on CPUs with fast bfloat16) the workers cast
each study's images to bfloat16, the dtype autocast gives the first convolution, so the training process
receives and stacks half the bytes. This loads phantom studies through `StudyDataModule`'s training
loader as a Trainer of each precision would get them (cached epochs, persistent workers), alternating
`bf16-mixed` and `32-true`, and prints that thread's CPU per study. On a GPU that thread also launches
every step's kernels, so what it spends taking in studies comes out of the training speed.

    python bench/train_feed.py [--studies 160] [--size 512] [--workers 2] [--batch-size 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from models.config import ModelConfig
from pipeline.datamodule import StudyDataModule
from pipeline.manifest import read_manifest
from pipeline.settings import TrainSettings
from sample_data.generate import write_dataset

PRECISIONS = ("bf16-mixed", "32-true")


def per_study(settings: TrainSettings, config: ModelConfig, precision: str, epochs: int) -> float:
    """Main-thread CPU ms per study over `epochs` passes of the training loader, after its first batch."""
    data = StudyDataModule(settings, config)
    data.trainer = SimpleNamespace(precision=precision, distributed_sampler_kwargs=None)
    data.setup()
    loader = data.train_dataloader()
    batches = iter(loader)
    next(batches)  # the workers' start and the first batch are not timed
    start = time.thread_time()
    studies = sum(len(batch) for batch in batches)  # the rest of the first pass
    for _ in range(epochs - 1):
        studies += sum(len(batch) for batch in loader)
    return (time.thread_time() - start) / studies * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=160)
    parser.add_argument("--size", type=int, default=512, help="phantom size in pixels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are printed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        write_dataset(tmp / "studies", n_studies=args.studies, seed=0, size=args.size, showcase=False)
        manifest = tmp / "studies" / "labels.csv"
        labels = tuple(read_manifest(manifest).label_names)
        config = ModelConfig.tiny(image_size=ModelConfig().image_size, labels=labels)
        settings = TrainSettings(
            manifest=str(manifest),
            out_dir=str(tmp / "run"),
            arch="tiny",
            start="scratch",
            image_size=config.image_size,
            batch_size=args.batch_size,
            workers=args.workers,
            cache_dir=str(tmp / "cache"),
        )
        per_study(settings, config, "32-true", 1)  # fills the decoded-image cache
        results: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                results[precision].append(per_study(settings, config, precision, 2))
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}; "
        f"{args.studies} phantom studies at {config.image_size} px, batch {args.batch_size}, "
        f"{args.workers} workers, cached, {args.rounds} alternating rounds"
    )
    print("main thread CPU per study taking in training batches (ms):")
    for precision, values in results.items():
        print(
            f"  {precision:<11} median {statistics.median(values):.3f}  "
            f"({', '.join(f'{v:.3f}' for v in values)})"
        )
    ratio = statistics.median(results["bf16-mixed"]) / statistics.median(results["32-true"])
    print(f"bfloat16 / float32 batches: {ratio:.2f}x")


if __name__ == "__main__":
    main()
