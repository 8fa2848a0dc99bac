"""The main thread's CPU per study in `twoview predict`, the part that a GPU does not take off it.

On a GPU the model's compute leaves the main thread, but that thread still receives every study from
the decoding workers, stacks the batches, reads the probabilities back, builds the rows and writes
them. At the H200 model ceiling of 1,751 two-view studies/s (measured 2026-11-30), the target of 50 %
leaves it ~1.14 ms per study for all of that. This runs `predict_folder` on N two-view studies with a
tiny network standing in for a GPU's model (its compute is timed and left out), and prints the main
thread's CPU per study outside the model calls, split into its parts, and the studies/s that thread
alone could sustain against the GPU target: on this machine's CPU, which may be slower or faster
per thread than the GPU machine's.

    python bench/main_thread.py [--studies 256] [--side 512] [--workers 2] [--batch-size 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.data.dataloader as dataloader
from predict import GPU_CEILING_STUDIES, templates, write_studies

import pipeline.predict as predict
from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline.predict import Predictor, predict_folder

#: The parts of the main thread's work, and where each is timed.
PARTS: dict[str, tuple[object, str]] = {
    "receive": (dataloader._MultiProcessingDataLoaderIter, "_next_data"),  # a study from a worker
    "collate": (predict, "collate"),
    "read back": (Predictor, "_predictions"),  # probabilities to Python values, one prediction per study
    "write": (predict.PredictionOutput, "write"),  # rows to the CSV
    "scan": (predict, "gather"),  # the folder scan (a fixed cost, spread over the studies)
}  # "other": the rest (starting the workers, batching, progress; partly fixed costs)
MODEL = (Predictor, "_launch")


class Clocks:
    """Thread CPU seconds spent inside each timed function while installed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._saved: list[tuple[object, str, Callable]] = []

    def __enter__(self) -> Clocks:
        for name, (owner, attribute) in {**PARTS, "model": MODEL}.items():
            self._wrap(name, owner, attribute)
        return self

    def _wrap(self, name: str, owner: object, attribute: str) -> None:
        real = getattr(owner, attribute)
        self._saved.append((owner, attribute, real))

        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.thread_time() - start

        setattr(owner, attribute, timed)

    def __exit__(self, *exc: object) -> None:
        for owner, attribute, real in reversed(self._saved):
            setattr(owner, attribute, real)


def run(folder: Path, out: Path, predictor: Predictor, args: argparse.Namespace) -> dict[str, float]:
    """One `predict_folder` run: ms of main-thread CPU per study, outside the model calls, in all and by part."""
    out.unlink(missing_ok=True)
    with Clocks() as clocks:
        start = time.thread_time()
        summary = predict_folder(
            folder, out, batch_size=args.batch_size, workers=args.workers, predictor=predictor
        )
        total = time.thread_time() - start
    if summary.predicted != args.studies:
        raise SystemExit(f"expected {args.studies} predictions, got {summary}")
    per_study = {name: 1000 * clocks.seconds.get(name, 0.0) / args.studies for name in PARTS}
    per_study["all"] = 1000 * (total - clocks.seconds.get("model", 0.0)) / args.studies
    per_study["other"] = per_study["all"] - sum(per_study[name] for name in PARTS)
    return per_study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=256)
    parser.add_argument(
        "--side", type=int, default=512, help="phantom size in pixels (decoding is not timed)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.tiny(), image_size=ModelConfig().image_size)
    predictor = Predictor(TwoViewNet(config).eval(), device="cpu")
    # As on the H200: the batches carry the dtype its model computes in, whatever this CPU would pick.
    predictor.model.fast(torch.bfloat16)
    predictor.batch_dtype = torch.bfloat16
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        folder = write_studies(tmp / "studies", args.studies, templates(tmp / "seed", args.side, True))
        runs = [run(folder, tmp / "out.csv", predictor, args) for _ in range(args.rounds)]
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
        f"python {sys.version.split()[0]}; {args.studies} two-view studies of ~{args.side} px at "
        f"{config.image_size} px, batch {args.batch_size}, {args.workers} workers, {args.rounds} runs"
    )
    print("main thread CPU per study outside the model calls (ms; median, range):")
    for name in ("all", *PARTS, "other"):
        values = [r[name] for r in runs]
        print(f"  {name:<10} {statistics.median(values):6.3f}  ({min(values):.3f}-{max(values):.3f})")
    best = statistics.median(r["all"] for r in runs)
    budget = 1000 / (GPU_CEILING_STUDIES / 2)
    print(
        f"this thread alone could sustain {1000 / best:.0f} studies/s: {100 * 1000 / best / GPU_CEILING_STUDIES:.0f} % "
        f"of the H200 model ceiling ({GPU_CEILING_STUDIES:.0f} studies/s; the 50 % target leaves "
        f"{budget:.2f} ms per study). A projection from this CPU, not a GPU measurement."
    )


if __name__ == "__main__":
    main()
