"""`twoview predict` throughput: the streaming pipeline against a naive script and against the model alone.

Writes N two-view studies of ~2048 px phantom radiographs (a few made by `sample_data.generate.write_dataset`,
cloned with new UIDs; uncompressed unless `--compression as-generated`), builds a default-size
`ModelConfig()` model (224 px, random weights) and times, in one run:
  twoview   `predict_folder` end to end: scan, decode in DataLoader workers, fast model, write CSV
  naive     pydicom `pixel_array` + PIL resize, one study at a time through the float32 model
  ceiling   the fast model alone on pre-decoded batches (no file work at all)
  decode    decoding + preprocessing alone, one process (what the workers must keep up with)
Prints studies per second and the ratios (targets: twoview >= 3x naive and >= 70 % of the ceiling).
`--memory 50 500` also runs `predict_folder` on that many studies in fresh processes and prints the
peak RSS of the main process and of its decoding workers (takes several minutes and ~7 GB of disk).
The defaults (24 studies, 3 rounds, no memory run) finish in about three minutes on 2 cores.

    python bench/predict.py [--studies 24] [--rounds 3] [--batch-size 8] [--workers N] [--memory 50 500]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline.data import StudyDataset, collate
from pipeline.outputs import errors_path
from pipeline.predict import Predictor, default_workers, predict_folder
from pipeline.studies import scan_folder
from sample_data.generate import write_dataset

VIEWS = ("frontal", "lateral")


def templates(folder: Path, side: int, uncompressed: bool) -> list[dict[str, pydicom.Dataset]]:
    """Two-view phantom studies from `write_dataset`, read back as datasets to clone."""
    found: list[dict[str, pydicom.Dataset]] = []
    seed = 0
    while len(found) < 2:
        out = folder / f"seed{seed}"
        write_dataset(out, n_studies=4, seed=seed, size=side, showcase=False)
        for row in csv.DictReader((out / "labels.csv").open(newline="")):
            if row["frontal"] and row["lateral"]:
                found.append({view: _read(out / row[view], uncompressed) for view in VIEWS})
        seed += 1
    return found


def _read(path: Path, uncompressed: bool) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    if uncompressed and ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        ds.decompress()
    return ds


def write_studies(folder: Path, count: int, sources: list[dict[str, pydicom.Dataset]]) -> Path:
    """`count` studies as `S00000/frontal.dcm` + `lateral.dcm`, each a template with fresh UIDs."""
    for index in range(count):
        study_uid = generate_uid()
        for view, ds in sources[index % len(sources)].items():
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            path = folder / f"S{index:05d}" / f"{view}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
    os.sync()  # so the timed runs' fsyncs do not pay for writing these files back
    return folder


def run_twoview(folder: Path, model: TwoViewNet, args: argparse.Namespace, out: Path) -> float:
    """Studies per second of `predict_folder`, scan and CSV writing included."""
    predictor = Predictor(model, device="cpu", fast=True)
    out.unlink(missing_ok=True)
    errors_path(out).unlink(missing_ok=True)
    start = time.perf_counter()
    summary = predict_folder(
        folder, out, batch_size=args.batch_size, workers=args.workers, predictor=predictor
    )
    seconds = time.perf_counter() - start
    if summary.predicted != args.studies or summary.routes["joint"] != args.studies:
        raise SystemExit(f"expected {args.studies} two-view predictions, got {summary}")
    return args.studies / seconds


def naive_image(path: Path, size: int, config: ModelConfig) -> torch.Tensor:
    """What a first script does: pixel_array, min-max scale, PIL resize (squashing the aspect), normalise."""
    pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
    pixels = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1e-6)
    small = np.asarray(Image.fromarray(pixels, mode="F").resize((size, size), Image.BILINEAR))
    return torch.from_numpy((small - config.norm_mean) / config.norm_std)[None, None]


def run_naive(folder: Path, model: TwoViewNet, count: int) -> float:
    """Studies per second of the naive loop: one study at a time, float32, decoding in the same thread."""
    model.plain().eval()
    config, yes = model.config, torch.ones(1, dtype=torch.bool)
    start = time.perf_counter()
    with torch.no_grad():
        for study in sorted(folder.iterdir()):
            frontal, lateral = (naive_image(study / f"{v}.dcm", config.image_size, config) for v in VIEWS)
            torch.sigmoid(model(frontal, lateral, yes, yes).final)
    return count / (time.perf_counter() - start)


def run_decode(folder: Path, config: ModelConfig, count: int) -> float:
    """Studies per second of decoding + preprocessing alone, in this one process."""
    dataset = StudyDataset(scan_folder(folder).studies, config=config)
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return count / (time.perf_counter() - start)


def run_ceiling(folder: Path, model: TwoViewNet, batch_size: int, count: int) -> float:
    """Studies per second of the fast model alone on batches decoded beforehand."""
    studies = scan_folder(folder).studies
    dataset = StudyDataset(studies, config=model.config)
    batches = [
        collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        for start in range(0, len(dataset), batch_size)
    ]
    predictor = Predictor(model, device="cpu", fast=True)
    predictor.predict_batch(batches[0])  # warm-up: oneDNN picks its kernels on the first call
    start = time.perf_counter()
    for batch in batches:
        predictor.predict_batch(batch)
    return count / (time.perf_counter() - start)


_CHILD = """
import json, resource, sys, torch
from pipeline.predict import predict_folder
folder, out, model, batch, workers = sys.argv[1:6]
summary = predict_folder(folder, out, model, batch_size=int(batch), workers=int(workers), device="cpu")
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"predicted": summary.predicted, "main_kib": own, "worker_kib": workers_peak}))
"""


def peak_rss(folder: Path, checkpoint: Path, args: argparse.Namespace, out: Path) -> dict[str, int]:
    """Peak RSS (KiB) of a fresh process running `predict_folder`, and of its largest worker."""
    command = [sys.executable, "-c", _CHILD, str(folder), str(out), str(checkpoint)]
    done = subprocess.run(
        [*command, str(args.batch_size), str(args.workers)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(tmp: Path, sources, model: TwoViewNet, args: argparse.Namespace) -> None:
    checkpoint = save(model, tmp / "model.safetensors")
    for count in args.memory:
        folder = write_studies(tmp / f"mem{count}", count, sources)
        result = peak_rss(folder, checkpoint, args, tmp / f"mem{count}.csv")
        print(
            f"  {count:>5} studies: peak RSS main {result['main_kib'] / 1024:7.0f} MiB, "
            f"largest worker {result['worker_kib'] / 1024:6.0f} MiB ({result['predicted']} predicted)"
        )
        for path in folder.rglob("*.dcm"):
            path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=24, help="two-view studies to time (default: 24)")
    parser.add_argument("--side", type=int, default=2048, help="phantom size in pixels (default: 2048)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=default_workers(), help="decoding workers")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--compression", choices=("none", "as-generated"), default="none")
    parser.add_argument(
        "--memory", type=int, nargs="*", default=[], help="study counts for peak RSS, e.g. 50 500"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = TwoViewNet(ModelConfig()).eval()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        sources = templates(tmp / "seed", args.side, args.compression == "none")
        folder = write_studies(tmp / "studies", args.studies, sources)
        runs = {
            "twoview": lambda: run_twoview(folder, model, args, tmp / "out.csv"),
            "naive": lambda: run_naive(folder, model, args.studies),
            "ceiling": lambda: run_ceiling(folder, model, args.batch_size, args.studies),
            "decode": lambda: run_decode(folder, model.config, args.studies),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved, so load from other jobs hits every path alike
            for name, run in runs.items():
                times[name].append(run())
        rate = {name: statistics.median(values) for name, values in times.items()}
        cores = len(os.sched_getaffinity(0))
        bound = cores / (cores / rate["ceiling"] + 1 / rate["decode"])
        print(
            f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; {args.studies} two-view studies of ~{args.side} px "
            f"({args.compression}), DenseNet121 x2 at 224 px; batch {args.batch_size}, {args.workers} workers; "
            f"median of {args.rounds} interleaved rounds"
        )
        for name, value in rate.items():
            print(f"  {name:<8} {value:7.2f} studies/s")
        print(f"twoview / naive:   {rate['twoview'] / rate['naive']:.2f}x (target >= 3x)")
        print(f"twoview / ceiling: {100 * rate['twoview'] / rate['ceiling']:.0f} % (target >= 70 %)")
        print(
            f"CPU-time bound with {cores} cores (model on all cores + decode, perfectly overlapped): "
            f"{bound:.2f} studies/s = {100 * bound / rate['ceiling']:.0f} % of the ceiling"
        )
        if args.memory:
            print("peak memory of `predict_folder` in a fresh process:")
            memory(tmp, sources, model, args)


if __name__ == "__main__":
    main()
