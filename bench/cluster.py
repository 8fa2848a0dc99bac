"""`twoview predict --engine ray` throughput against the local path, with 1 and 2 model actors, on this machine.

Copies the 24 sample studies (new UIDs) until there are N, then times in one run, each into a fresh
output: the local path (`predict_folder`, DataLoader decoding workers) and Ray Data on a local Ray
instance with each number of model actors (decoding in CPU tasks). Ray's start-up (`ray.init`) is
timed apart; each Ray run includes starting its decoding workers and actors, as a real run does.
The runs take turns for `--rounds` rounds and the best of each is kept (other jobs on a shared
machine slow single runs down at random).

    python bench/cluster.py [--studies 48] [--actors 1 2] [--rounds 2] [--model demo] [--ray-cpus N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pydicom
import torch
from pydicom.uid import generate_uid

from pipeline.predict import DEMO_MODEL, default_workers, predict_folder
from pipeline.ray_engine import predict_folder_ray

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "studies"


def copy_studies(folder: Path, count: int) -> Path:
    """`count` studies: the sample studies again and again, each copy with fresh UIDs."""
    originals = sorted(p for p in SAMPLES.iterdir() if p.is_dir())
    for index in range(count):
        source = originals[index % len(originals)]
        study_uid, series = generate_uid(), {}
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            out = folder / f"S{index:05d}" / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(out, enforce_file_format=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--ray-cpus", type=int, help="logical CPUs of the local Ray (default: max actors + 1)"
    )
    args = parser.parse_args()
    import ray

    cores = len(os.sched_getaffinity(0))
    ray_cpus = args.ray_cpus or max(args.actors) + 1
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {cores} cores, torch {torch.__version__}, ray {ray.__version__}")
    threads = torch.get_num_threads()
    results: dict[str, float] = {}

    def keep(name: str, predicted: int, seconds: float) -> None:
        results[name] = max(results.get(name, 0.0), predicted / seconds)

    with tempfile.TemporaryDirectory(prefix="twoview-cluster-") as tmp:
        folder = copy_studies(Path(tmp) / "studies", args.studies)
        start = time.perf_counter()
        ray.init(num_cpus=ray_cpus, include_dashboard=False, logging_level="WARNING")
        print(f"ray.init (local, {ray_cpus} logical CPUs): {time.perf_counter() - start:.1f} s")
        try:
            for round_ in range(args.rounds):
                for n in sorted({threads, 1}, reverse=True):  # 1 thread: what each Ray actor gets
                    torch.set_num_threads(n)
                    start = time.perf_counter()
                    out = Path(tmp) / f"local{n}-{round_}.csv"
                    summary = predict_folder(folder, out, args.model, batch_size=args.batch_size)
                    name = f"local, {default_workers()} decoding worker(s), {n} torch thread(s)"
                    keep(name, summary.predicted, time.perf_counter() - start)
                torch.set_num_threads(threads)
                for actors in args.actors:
                    start = time.perf_counter()
                    out = Path(tmp) / f"ray{actors}-{round_}.csv"
                    summary = predict_folder_ray(
                        folder, out, args.model, actors=actors, batch_size=args.batch_size
                    )
                    keep(f"ray, {actors} model actor(s)", summary.predicted, time.perf_counter() - start)
        finally:
            ray.shutdown()
    print(
        f"\n{args.studies} studies (copies of the sample studies), batch {args.batch_size}, "
        f"model {Path(args.model).name}, best of {args.rounds} rounds"
    )
    print("| engine | studies/s |\n|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.2f} |")
    best_local = max(rate for name, rate in results.items() if name.startswith("local"))
    for name, rate in results.items():
        if name.startswith("ray"):
            print(f"{name} / best local: {rate / best_local:.2f}x")


if __name__ == "__main__":
    main()
