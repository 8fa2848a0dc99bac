"""Decoded-image cache benchmark: what a second epoch gains from `StudyDataset`'s on-disk cache.

Writes N synthetic ~2000x2000 12-bit DICOM radiographs (uncompressed, the cheapest kind to decode,
so the figure is a lower bound; JPEG 2000 files gain far more), then times, in one run:
  decode      read_image + resize-and-pad to the model size, every epoch (no cache)
  first       the first epoch with a cache: decode + preprocess + write the entry
  cached      later epochs: read the small cached array
Files are read right after being written, so both paths read from the page cache, not the disk.
Prints images per second and the cached / decode ratio (target: >= 10x).

    python bench/cache.py [--n 24] [--side 2000] [--image-size 224] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.config import ModelConfig
from pipeline.data import StudyDataset
from pipeline.studies import ImageSource, Study
from pipeline.views import View

_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def write_radiograph(path: Path, side: int, rng: np.random.Generator) -> Path:
    """A smooth body-like 12-bit MONOCHROME2 DX image with noise, side x (0.8 side)."""
    rows, cols = side, int(side * 0.8)
    y, x = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
    body = np.exp(-(x**2 + y**2) * 1.5) * 3000 + 500
    pixels = np.clip(body + rng.normal(0, 60, size=body.shape), 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _DX_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def epoch(dataset: StudyDataset) -> float:
    """Seconds to load (decode or read from the cache) every view once."""
    start = time.perf_counter()
    for study in dataset.studies:
        if dataset.load_view(study.frontal) is None:
            raise SystemExit(f"{study.frontal.path} failed to load")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="images")
    parser.add_argument("--side", type=int, default=2000, help="source image height in pixels")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = ModelConfig(image_size=args.image_size)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        studies = []
        for i in range(args.n):
            path = write_radiograph(folder / f"img{i:03d}.dcm", args.side, rng)
            source = ImageSource(path, View.FRONTAL, "bench", 1.0, study_id=str(i))
            studies.append(Study(str(i), frontal=source))
        plain = StudyDataset(studies, config=config)
        cached = StudyDataset(studies, config=config, cache_dir=folder / "cache")
        first = epoch(cached)
        decode, read = [], []
        for _ in range(args.rounds):
            decode.append(epoch(plain))
            read.append(epoch(cached))
        if cached.cache.misses != args.n:
            raise SystemExit(f"expected {args.n} cache misses, got {cached.cache.misses}")
    rate = {
        "decode": args.n / statistics.median(decode),
        "first": args.n / first,
        "cached": args.n / statistics.median(read),
    }
    print(f"{platform.processor() or platform.machine()}, torch threads 1, {args.n} images")
    print(
        f"source {int(args.side * 0.8)}x{args.side} 12-bit DICOM -> {args.image_size} px, median of {args.rounds}"
    )
    for name, value in rate.items():
        print(f"  {name:<8} {value:8.1f} images/s")
    print(f"cached / decode: {rate['cached'] / rate['decode']:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
