"""Training benchmark: images per second, and the share of step time spent waiting for data after epoch 1.

Generates phantom studies, then runs `twoview train`'s own Trainer setup for a few epochs with a
callback that times each step and the gap before it (the DataLoader wait). Epoch 0 fills the
decoded-image cache; later epochs read it. Then times the cached data path alone in this process on
one thread (what one DataLoader worker does per study: cache read, augmentation, normalisation) and
prints it per core and times 12 workers, against the GPU target of 1,500 images/s. Last, the training
step alone (forward, loss, backward, AdamW) on a fixed mixed batch, with the network's weights in
channels-last memory (what `twoview train` uses) against contiguous, interleaved, in float32 and, where
the CPU has fast bf16, bf16 autocast (`bf16-mixed`). `--compile` trains compiled (`twoview train
--compile`); with `--steps-only` it times the compiled step against the eager one instead of the layouts.

    python bench/train.py [--studies 64] [--epochs 3] [--size 224] [--arch densenet121] [--workers 2]
    python bench/train.py --steps-only [--step-rounds 5] [--step-device cuda --batch-size 64]
    python bench/train.py --steps-only --compile [--compile-backend inductor] [--step-device cuda ...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from models.config import ModelConfig
from models.losses import MultiViewLoss
from models.twoview import TwoViewNet, fast_dtype
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
    parser.add_argument(
        "--step-rounds", type=int, default=3, help="interleaved rounds of the step alone (0: none)"
    )
    parser.add_argument("--steps-only", action="store_true", help="only the training step alone")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train compiled (twoview train --compile); with --steps-only, the compiled step against eager",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the step alone (default: inductor)",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="inductor's mode for the step alone (reduce-overhead: CUDA graphs, one per sub-batch shape)",
    )
    parser.add_argument(
        "--step-device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the step alone runs (default: the GPU if there is one)",
    )
    args = parser.parse_args()
    if not args.steps_only:
        run_trainer(args)
    if args.step_rounds > 0:
        print_compiled(args) if args.compile and args.steps_only else print_layouts(args)


def run_trainer(args: argparse.Namespace) -> None:
    """`twoview train`'s Trainer on phantom studies: images/s and data wait per epoch."""
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
            compile=args.compile,
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


def step_rate(
    net: TwoViewNet, batch: tuple[torch.Tensor, ...], dtype: torch.dtype | None, steps: int
) -> float:
    """Images per second of whole training steps (after one untimed step) in the net's current layout,
    on the images' device (the view masks stay on the CPU, as the Trainer keeps them)."""
    frontal, lateral, has_frontal, has_lateral, labels = batch
    device = frontal.device
    loss_fn = MultiViewLoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> None:
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA graphs (reduce-overhead)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(net(frontal, lateral, has_frontal, has_lateral), labels).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def done() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    done()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    done()
    images = int(has_frontal.sum() + has_lateral.sum())
    return steps * images / (time.perf_counter() - start)


def step_setup(args: argparse.Namespace) -> tuple[torch.device, TwoViewNet, tuple[torch.Tensor, ...], int]:
    """The device, a network set up as the Trainer runs it there, a fixed mixed batch and the step count."""
    device = torch.device(args.step_device)
    base = ModelConfig.tiny() if args.arch == "tiny" else ModelConfig()
    config = dataclasses.replace(base, image_size=args.size)
    torch.manual_seed(0)
    net = TwoViewNet(config).train().to(device)
    if device.type == "cuda":  # as the Trainer runs there: cuDNN autotuning, rows padded to a multiple of 8
        torch.backends.cudnn.benchmark = True
        net.shape_bucket = training.SHAPE_BUCKET
    b, side = args.batch_size, config.image_size
    has_frontal = torch.arange(b) % 8 != 7  # 6 in 8 two-view, 1 frontal-only, 1 lateral-only
    has_lateral = torch.arange(b) % 8 != 6
    batch = (
        torch.rand(b, 1, side, side, device=device),
        torch.rand(b, 1, side, side, device=device),
        has_frontal,
        has_lateral,
        (torch.rand(b, config.num_labels, device=device) > 0.7).float(),
    )
    return device, net, batch, 20 if device.type == "cuda" else 2


def print_layouts(args: argparse.Namespace) -> None:
    """The training step alone, channels-last against contiguous weights, interleaved rounds."""
    device, net, batch, steps = step_setup(args)
    b, side = args.batch_size, net.config.image_size
    precisions = {"32-true": None}
    if fast_dtype(device) == torch.bfloat16:
        precisions["bf16-mixed"] = torch.bfloat16
    rates: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.step_rounds):
        for name, dtype in precisions.items():
            for last in (False, True):
                net.channels_last(last)
                rates.setdefault((name, last), []).append(step_rate(net, batch, dtype, steps))
    where = "GPU" if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"training step alone: {args.arch} at {side} px, batch {b} (6 in 8 two-view), {steps} steps x "
        f"{args.step_rounds} interleaved rounds, {device.type} ({where}), load {os.getloadavg()[0]:.1f}"
    )
    for name in precisions:
        contiguous, last = rates[(name, False)], rates[(name, True)]
        ratios = [c / p for c, p in zip(last, contiguous, strict=True)]
        print(
            f"  {name:10s} contiguous {statistics.median(contiguous):6.1f} images/s, channels-last "
            f"{statistics.median(last):6.1f}: {statistics.median(ratios):.2f}x "
            f"(per round {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    if len(precisions) > 1:
        fp32, bf16 = rates[("32-true", True)], rates[("bf16-mixed", True)]
        ratios = [b / f for b, f in zip(bf16, fp32, strict=True)]
        print(f"  bf16-mixed / 32-true, channels-last: {statistics.median(ratios):.2f}x")
    if device.type == "cuda":
        print("  GPU training target: >= 1,500 images/s")


def print_compiled(args: argparse.Namespace) -> None:
    """The training step alone, eager against compiled (`twoview train --compile`), channels-last, in the
    device's fast precision, interleaved rounds; the first compiled step (the compiling) is timed apart."""
    device, eager, batch, steps = step_setup(args)
    eager.channels_last()
    dtype = fast_dtype(device)
    compiled = copy.deepcopy(eager)
    mode = {} if args.compile_mode == "default" else {"mode": args.compile_mode}
    compiled.compile(backend=args.compile_backend, **mode)
    start = time.perf_counter()
    step_rate(compiled, batch, dtype, 1)  # its untimed first step compiles the forward and backward graphs
    compiling = time.perf_counter() - start
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.step_rounds):
        rates["eager"].append(step_rate(eager, batch, dtype, steps))
        rates["compiled"].append(step_rate(compiled, batch, dtype, steps))
    ratios = [c / e for c, e in zip(rates["compiled"], rates["eager"], strict=True)]
    print(
        f"training step alone, compiled ({args.compile_backend}, {args.compile_mode}) against eager: {args.arch} at "
        f"{eager.config.image_size} px, batch {args.batch_size}, {dtype or 'float32'}, channels-last, {steps} "
        f"steps x {args.step_rounds} interleaved rounds, {device.type}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"  first compiled step (compiling): {compiling:.1f} s")
    print(
        f"  eager {statistics.median(rates['eager']):6.1f} images/s, compiled "
        f"{statistics.median(rates['compiled']):6.1f}: {statistics.median(ratios):.2f}x "
        f"(per round {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    if device.type == "cuda":
        print("  GPU training target: >= 1,500 images/s")


if __name__ == "__main__":
    main()
