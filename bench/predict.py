"""`twoview predict` throughput: end to end against the model alone, the data path alone and a naive script.

Writes N two-view studies of ~2048 px phantom radiographs (a few made by `sample_data.generate.write_dataset`,
cloned with new UIDs; uncompressed unless `--compression as-generated`), builds a default-size
`ModelConfig()` model (DenseNet121 pair at 224 px, random weights) and times, in interleaved rounds:
  twoview   `predict_folder` end to end: scan, decode in DataLoader workers, fast model, write CSV
  overlap   the same with the workers decoding while the model runs (on the CPU, where `twoview` has
            them take turns with the model: `pipeline.parallel.Gate`), and one worker fewer
  ceiling   the fast model alone on batches decoded beforehand (no file work at all)
  data      the data path alone: the same workers and batches as `twoview`, without the model
  naive     pydicom `pixel_array` + PIL resize, one study at a time, float32 model (CPU only; --no-naive skips)
and once: decoding per core (one process, one thread, read + preprocess at the model path's resolution)
and `twoview predict` in a fresh process: seconds to its first batch's model call, to its first written
rows, and in all.
Prints the ratios (CPU targets: twoview >= 70 % of the ceiling and >= 3x naive; GPU: >= 50 % of the
ceiling) and, without a GPU here, the data path per core times 16 against the H200 model ceiling
measured on 2026-11-30 (a projection, not a measurement). `--memory 50 500` also prints peak RSS.

On the CPU it also prints twoview against its own time in model calls. This VM's speed drifts up to 2x
within a minute, which a ceiling timed in a separate run cannot follow; the model calls inside twoview
are timed against the ceiling too, so a data path that slowed the model would show there. 96 studies by
default: 24 are three batches, and a quarter of their time is the start (scan, workers, first decode).
Each twoview run also reports its main thread's CPU (outside the model calls on the CPU; launches
included on CUDA): that one thread receives every study from the workers, batches them and writes the
rows, so near 100 % busy it, not the workers or the GPU, limits predict.

    python bench/predict.py [--device cpu] [--studies 96] [--workers N] [--batch-size N] [--rounds 3]
    python bench/predict.py --first-batch 5     # only the fresh-process start, five times
"""

from __future__ import annotations

import argparse
import compileall
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline.data import StudyDataset
from pipeline.outputs import errors_path
from pipeline.parallel import Gate
from pipeline.predict import Predictor, default_batch_size, default_workers, predict_folder
from pipeline.studies import Study, scan_folder
from sample_data.generate import write_dataset

VIEWS = ("frontal", "lateral")
#: The fast demo-size model alone on one H200 (torch 2.11, bf16), measured 2026-11-30 (shared/perf/gpu-2026-11-30.md).
GPU_CEILING_STUDIES = 1751.0  # two-view studies/s at batch 64
GPU_CEILING_IMAGES = 9516.0  # images/s at batch 512
PROJECTED_CORES = 16


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


class ModelClock:
    """Seconds `predictor` spends in its model calls while inside the block (on the CPU, where a call
    returns when it is done), and the calling thread's CPU seconds in them (on CUDA: the launches)."""

    def __init__(self, predictor: Predictor) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self._predictor = predictor
        self._launch = predictor._launch

    def __enter__(self) -> ModelClock:
        self._predictor._launch = self  # an instance attribute: `_stream` calls it in place of the method
        return self

    def __exit__(self, *exc: object) -> None:
        del self._predictor._launch

    def __call__(self, batch):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._launch(batch)
        finally:
            self.seconds += time.perf_counter() - start
            self.cpu += time.thread_time() - cpu


def run_twoview(
    folder: Path,
    predictor: Predictor,
    args: argparse.Namespace,
    out: Path,
    model_rates: list[float] | None = None,
    main_thread: list[MainThread] | None = None,
) -> float:
    """Studies per second of `predict_folder`, scan and CSV writing included. With `model_rates`, the
    model's own rate within the run (studies / seconds in model calls) is appended to it; with
    `main_thread`, what the run cost the main thread."""
    out.unlink(missing_ok=True)
    errors_path(out).unlink(missing_ok=True)
    with ModelClock(predictor) as clock:
        start, cpu = time.perf_counter(), time.thread_time()
        summary = predict_folder(
            folder, out, batch_size=args.batch_size, workers=args.workers, predictor=predictor
        )
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    if summary.predicted != args.studies or summary.routes["joint"] != args.studies:
        raise SystemExit(f"expected {args.studies} two-view predictions, got {summary}")
    if model_rates is not None:
        model_rates.append(args.studies / clock.seconds)
    if main_thread is not None:
        main_thread.append(MainThread(seconds, cpu, clock.cpu, args.studies))
    return args.studies / seconds


@dataclass
class MainThread:
    """The main thread's CPU seconds in one twoview run: in all, and inside model calls."""

    wall: float
    cpu: float
    in_model: float
    studies: int

    def describe(self, device: str) -> str:
        """Busy share and CPU per study: outside the model calls on the CPU (where the model's compute
        shares this thread), in all on CUDA (where the calls only launch work). Near 100 %, this one
        thread limits the run."""
        busy = self.cpu - self.in_model if device == "cpu" else self.cpu
        return f"{100 * busy / self.wall:.0f} % busy, {1000 * busy / self.studies:.2f} ms per study"


def run_overlap(folder: Path, predictor: Predictor, args: argparse.Namespace, out: Path) -> float:
    """`run_twoview` with the workers decoding while the model runs (no `Gate`) and one worker fewer:
    what `twoview predict` did before the gate, so the gain is measured side by side."""
    overlapping = argparse.Namespace(**{**vars(args), "workers": max(args.workers - 1, 1)})
    gate = Predictor.gate
    Predictor.gate = lambda self, workers, passing=0: Gate(active=False)
    try:
        return run_twoview(folder, predictor, overlapping, out)
    finally:
        Predictor.gate = gate


def run_data(studies: tuple[Study, ...], predictor: Predictor, args: argparse.Namespace) -> float:
    """Studies per second of the data path alone: the same workers and batches, no model."""
    start = time.perf_counter()
    count = sum(
        len(b.indices) for b in predictor.batches(studies, batch_size=args.batch_size, workers=args.workers)
    )
    return count / (time.perf_counter() - start)


def run_ceiling(batches: list, predictor: Predictor, count: int) -> float:
    """Studies per second of the fast model alone on batches decoded beforehand."""
    predictor.predict_batch(batches[0])  # warm-up: kernels are picked on the first call
    start = time.perf_counter()
    for batch in batches:
        predictor.predict_batch(batch)
    return count / (time.perf_counter() - start)


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
        for study in sorted(p for p in folder.iterdir() if p.is_dir()):
            frontal, lateral = (naive_image(study / f"{v}.dcm", config.image_size, config) for v in VIEWS)
            torch.sigmoid(model(frontal, lateral, yes, yes).final)
    return count / (time.perf_counter() - start)


def decode_per_core(studies: tuple[Study, ...], config: ModelConfig) -> float:
    """Images per second of read + preprocess (the model path) in this process on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = StudyDataset(studies, config=config)
        dataset[0]
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        return 2 * len(dataset) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def _per_round(times: dict[str, list[float]], other: str, *, percent: bool = False) -> str:
    """twoview against `other` within each round (runs minutes apart), and their median: steadier than
    the ratio of medians where the machine's speed drifts during the run."""
    ratios = [mine / theirs for mine, theirs in zip(times["twoview"], times[other], strict=True)]
    shown = [f"{100 * r:.0f} %" if percent else f"{r:.2f}x" for r in (*ratios, statistics.median(ratios))]
    return f"{', '.join(shown[:-1])}; median {shown[-1]}"


#: Runs `twoview predict` (argv) in this process, writing the wall-clock time of its first model call to
#: the file $TWOVIEW_FIRST_BATCH: `Predictor._launch` is wrapped once `pipeline.predict` has been
#: imported, by the command itself (importing it here first would change what is timed).
_TIMED = """
import builtins, os, sys, time
_import = builtins.__import__
def _watch(name, *args, **kwargs):
    module = _import(name, *args, **kwargs)
    predict = sys.modules.get("pipeline.predict")
    if predict is not None and hasattr(predict, "Predictor"):
        builtins.__import__ = _import
        launch = predict.Predictor._launch
        def first(self, batch):
            stamp = os.environ["TWOVIEW_FIRST_BATCH"]
            if not os.path.exists(stamp):
                with open(stamp, "w") as f:
                    f.write(repr(time.time()))
            return launch(self, batch)
        predict.Predictor._launch = first
    return module
builtins.__import__ = _watch
"""

#: `twoview predict` as the console script runs it, and with MONAI imported whole first (so
#: `models.lean_imports` cannot trim it): the before.
_TWOVIEW = _TIMED + "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
_FULL_MONAI = _TIMED + "import monai; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Start:
    """Seconds from starting `twoview predict` (a fresh process) to its first batch's model call, to its
    first written row, and to its end."""

    into_model: float
    written: float
    total: float


def compile_sources() -> None:
    """Compile twoview's modules as `scripts/install.sh` does, so a fresh process is timed as a user's runs
    are, not with the compiler (this checkout is imported in place; where PYTHONDONTWRITEBYTECODE is set,
    as here, no run would write the bytecode, and each would spend ~0.1 s compiling)."""
    root = Path(__file__).resolve().parents[1]
    for package in ("app", "models", "pipeline", "sample_data"):
        compileall.compile_dir(root / package, quiet=2, workers=0)


def first_batch(
    folder: Path, checkpoint: Path, args: argparse.Namespace, out: Path, *, full_monai: bool = False
) -> Start:
    """Time a fresh `twoview predict` process (see `Start`); `main` has run `compile_sources` before."""
    out.unlink(missing_ok=True)
    errors_path(out).unlink(missing_ok=True)
    stamp = out.with_suffix(".first")
    stamp.unlink(missing_ok=True)
    command = [sys.executable, "-c", _FULL_MONAI if full_monai else _TWOVIEW, "predict", str(folder)]
    command += ["--model", str(checkpoint), "-o", str(out), "--device", args.device]
    command += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    env = dict(os.environ, TWOVIEW_FIRST_BATCH=str(stamp))
    started, start = time.time(), time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    written = None
    while process.poll() is None:
        if written is None and out.exists() and out.read_text().count("\n") >= 2:
            written = time.perf_counter() - start
        time.sleep(0.01)
    total = time.perf_counter() - start
    if process.returncode != 0 or not stamp.exists():
        raise SystemExit(f"twoview predict failed ({process.returncode}): {' '.join(command)}")
    into_model = float(stamp.read_text()) - started
    return Start(into_model, written if written is not None else total, total)


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
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--studies", type=int, default=96, help="two-view studies to time (default: 96)")
    parser.add_argument("--side", type=int, default=2048, help="phantom size in pixels (default: 2048)")
    parser.add_argument(
        "--batch-size", type=int, help="default: as `twoview predict` (8 on the CPU, 64 on CUDA)"
    )
    parser.add_argument("--workers", type=int, help="decoding workers (default: as `twoview predict`)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--compression", choices=("none", "as-generated"), default="none")
    parser.add_argument(
        "--naive", action=argparse.BooleanOptionalAction, default=None, help="default: on CPU"
    )
    parser.add_argument(
        "--memory", type=int, nargs="*", default=[], help="study counts for peak RSS, e.g. 50 500"
    )
    parser.add_argument(
        "--first-batch",
        type=int,
        default=0,
        metavar="RUNS",
        help="only time a fresh `twoview predict` to its first batch (into the model, and written), RUNS "
        "times, against the same command with MONAI imported whole",
    )
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = default_workers(args.device)
    if args.batch_size is None:
        args.batch_size = default_batch_size(args.device)
    naive = args.device == "cpu" if args.naive is None else args.naive
    torch.manual_seed(0)
    model = TwoViewNet(ModelConfig()).eval()
    predictor = Predictor(model, device=args.device, fast=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        sources = templates(tmp / "seed", args.side, args.compression == "none")
        folder = write_studies(tmp / "studies", args.studies, sources)
        compile_sources()
        if args.first_batch:
            checkpoint = save(model, tmp / "model.safetensors")
            starts: dict[str, list[Start]] = {"twoview": [], "MONAI imported whole": []}
            for _ in range(args.first_batch):  # interleaved
                for name, full in (("twoview", False), ("MONAI imported whole", True)):
                    starts[name].append(
                        first_batch(folder, checkpoint, args, tmp / "cli.csv", full_monai=full)
                    )
            print(
                f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}: seconds from the start of "
                f"`twoview predict` on {args.studies} studies (median, range)"
            )
            for name, values in starts.items():
                print(
                    f"  {name:<21} first batch into the model {_spread([v.into_model for v in values])}, "
                    f"first rows written {_spread([v.written for v in values])}"
                )
            return
        studies = scan_folder(folder).studies
        per_core = decode_per_core(studies, model.config)
        batches = [b.batch for b in predictor.batches(studies, batch_size=args.batch_size, workers=0)]
        in_run: list[float] = []  # the model's rate inside each twoview run
        main_thread: list[MainThread] = []
        runs = {
            "twoview": lambda: run_twoview(folder, predictor, args, tmp / "out.csv", in_run, main_thread),
            "ceiling": lambda: run_ceiling(batches, predictor, args.studies),
            "data": lambda: run_data(studies, predictor, args),
        }
        if args.device == "cpu" and args.workers:
            runs["overlap"] = lambda: run_overlap(folder, predictor, args, tmp / "out.csv")
        if naive:
            runs["naive"] = lambda: run_naive(folder, model, args.studies)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved, so load from other jobs hits every path alike
            for name, run in runs.items():
                times[name].append(run())
        checkpoint = save(model, tmp / "model.safetensors")
        start = first_batch(folder, checkpoint, args, tmp / "cli.csv")
        if args.memory:
            print("peak memory of `predict_folder` in a fresh process:")
            memory(tmp, sources, model, args)
    rate = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
        f"{args.device}, {torch.get_num_threads()} threads; {args.studies} two-view studies of ~{args.side} px "
        f"({args.compression}), DenseNet121 x2 at 224 px; batch {args.batch_size}, {args.workers} workers; "
        f"median of {args.rounds} interleaved rounds"
    )
    for name, value in rate.items():
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        print(f"  {name:<8} {value:7.2f} studies/s  {2 * value:7.1f} images/s  (range {spread} studies/s)")
    print(f"  decoding per core (one process, one thread): {per_core:.1f} images/s")
    print(
        f"twoview / ceiling: {100 * rate['twoview'] / rate['ceiling']:.0f} % (target >= 70 % on CPU, >= 50 % on GPU); "
        f"per round: {_per_round(times, 'ceiling', percent=True)}"
    )
    if args.device == "cpu":
        times["in run"] = in_run
        print(
            f"twoview / its own model time: {_per_round(times, 'in run', percent=True)} (the share of each "
            f"twoview run spent in model calls: the ratio to the ceiling without the machine's drift between runs)"
        )
        model_speed = [mine / alone for mine, alone in zip(in_run, times["ceiling"], strict=True)]
        print(
            "model calls inside twoview / ceiling: "
            f"{', '.join(f'{r:.2f}x' for r in model_speed)}; median {statistics.median(model_speed):.2f}x "
            "(1x: the data path does not slow the model)"
        )
    if "overlap" in rate:
        print(
            f"twoview / overlap: {rate['twoview'] / rate['overlap']:.2f}x (workers taking turns with the model, "
            f"against decoding alongside it with {max(args.workers - 1, 1)} worker(s)); "
            f"per round: {_per_round(times, 'overlap')}"
        )
    if naive:
        print(
            f"twoview / naive:   {rate['twoview'] / rate['naive']:.2f}x (target >= 3x on CPU); "
            f"per round: {_per_round(times, 'naive')}"
        )
    outside = "outside model calls" if args.device == "cpu" else "model launches included"
    print(
        f"main thread during twoview ({outside}): "
        f"{'; '.join(m.describe(args.device) for m in main_thread)} (near 100 %: this thread limits predict)"
    )
    print(
        f"`twoview predict`, fresh process: first batch into the model after {start.into_model:.2f} s, "
        f"written after {start.written:.2f} s, done after {start.total:.2f} s"
    )
    if args.device == "cpu":
        projected = per_core * PROJECTED_CORES
        share = min(projected / (2 * GPU_CEILING_STUDIES), 1.0)
        print(
            f"projection (not a measurement): data path {per_core:.0f} images/s per core x {PROJECTED_CORES} = "
            f"{projected:.0f} images/s against the H200 model ceiling of {2 * GPU_CEILING_STUDIES:.0f} images/s "
            f"({GPU_CEILING_STUDIES:.0f} two-view studies/s, batch 64; {GPU_CEILING_IMAGES:.0f} at batch 512): "
            f"predict could reach {100 * share:.0f} % of it (target >= 50 %)"
        )


if __name__ == "__main__":
    main()
