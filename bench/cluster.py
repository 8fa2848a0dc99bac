"""`twoview predict --engine ray` throughput against the local path, with 1 and 2 model actors, on this machine.

Copies the 24 sample studies (new UIDs) until there are N, then times in one run, each into a fresh
output: the local path (`predict_folder`, DataLoader decoding workers) and Ray Data on a local Ray
instance with each number of model actors (decoding in CPU tasks). Ray's start-up (`ray.init`) is
timed apart; each Ray run includes starting its decoding workers and actors, as a real run does.

    python bench/cluster.py [--studies 48] [--actors 1 2] [--model demo] [--ray-cpus N]
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
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--ray-cpus", type=int, help="logical CPUs of the local Ray (default: max actors + 1)"
    )
    args = parser.parse_args()
    import ray

    cores = len(os.sched_getaffinity(0))
    ray_cpus = args.ray_cpus or max(args.actors) + 1
    print(
        f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, ray {ray.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="twoview-cluster-") as tmp:
        folder = copy_studies(Path(tmp) / "studies", args.studies)
        results = {}
        start = time.perf_counter()
        summary = predict_folder(folder, Path(tmp) / "local.csv", args.model, batch_size=args.batch_size)
        results[
            f"local ({default_workers()} decoding worker(s), {torch.get_num_threads()} torch threads)"
        ] = summary.predicted / (time.perf_counter() - start)
        start = time.perf_counter()
        ray.init(num_cpus=ray_cpus, include_dashboard=False, logging_level="WARNING")
        print(f"ray.init (local, {ray_cpus} logical CPUs): {time.perf_counter() - start:.1f} s")
        try:
            for actors in args.actors:
                start = time.perf_counter()
                summary = predict_folder_ray(
                    folder,
                    Path(tmp) / f"ray{actors}.csv",
                    args.model,
                    actors=actors,
                    batch_size=args.batch_size,
                )
                results[f"ray, {actors} model actor(s)"] = summary.predicted / (time.perf_counter() - start)
        finally:
            ray.shutdown()
    print(
        f"\n{args.studies} studies (copies of the sample studies), batch {args.batch_size}, model {Path(args.model).name}"
    )
    print("| engine | studies/s |\n|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.2f} |")
    local = next(iter(results.values()))
    for name, rate in list(results.items())[1:]:
        print(f"{name} / local: {rate / local:.2f}x")


if __name__ == "__main__":
    main()
