"""Benchmark: images per second per core to read a ~2000x2000 radiograph and preprocess it to 224 px.

Three paths side by side in one run, single-threaded, on RG1 (1955x1841, 15-bit CR) uncompressed and
JPEG 2000 lossless, and RG1 brought to 12 bits uncompressed (Bits Stored 12, as most CR and DX films): the model path (`StudyDataset`'s decode: `read_image(target_size=2 x 224)`, which
drops JPEG 2000 resolution levels or block-averages, then `preprocess` from the reduced pixels), the
full-resolution path (`read_image` + `preprocess`, what the viewer decodes) and what a naive script does
(`ds.pixel_array` -> float64 min-max -> PIL resize). Targets for the model path: >= 150 images/s
uncompressed, >= 10 JPEG 2000. Run: `python bench/decode.py`. The decoded-image cache's second-epoch
speed-up is measured by `bench/cache.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy/torch start their pools

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from models.config import ModelConfig  # noqa: E402
from pipeline.data import DECODE_OVERSAMPLING  # noqa: E402
from pipeline.dicom import read_image  # noqa: E402
from pipeline.transforms import preprocess  # noqa: E402

__all__ = ["Method", "naive", "full_resolution", "model_path", "measure", "main"]

Method = Callable[[Path], np.ndarray]
FILES = {"uncompressed": "RG1_UNCR.dcm", "jpeg2000-lossless": "RG1_J2KR.dcm"}
SIZE = ModelConfig().image_size


def naive(path: Path) -> np.ndarray:
    """What a first script does: pixel_array, float64 min-max, MONOCHROME1 flip, PIL resize."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float64)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = 1.0 - pixels
    return np.asarray(Image.fromarray(pixels.astype(np.float32)).resize((SIZE, SIZE), Image.BILINEAR))


def full_resolution(path: Path) -> np.ndarray:
    """The project's full-resolution path: checked decode, LUTs, robust scaling, then the MONAI preprocess."""
    return preprocess(read_image(path).pixels, ModelConfig())


def model_path(path: Path) -> np.ndarray:
    """What `StudyDataset` does: decode at the lowest resolution that keeps 2 x 224 px, then preprocess."""
    image = read_image(path, target_size=DECODE_OVERSAMPLING * SIZE)
    full_size = (image.rows, image.columns)
    return preprocess(image.pixels, ModelConfig(), full_size=full_size, reduction=image.reduction)


def twelve_bit(folder: Path) -> Path:
    """RG1 uncompressed with its 15-bit values shifted to 12 bits (window scaled alike), saved in `folder`."""
    ds = pydicom.dcmread(get_testdata_file(FILES["uncompressed"]))
    ds.PixelData = (ds.pixel_array >> 3).astype(np.uint16).tobytes()
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = ds.WindowCenter / 8, ds.WindowWidth / 8
    path = folder / "RG1_UNCR_12bit.dcm"
    ds.save_as(path)
    return path


def measure(methods: dict[str, Method], path: Path, rounds: int) -> dict[str, float]:
    """Median images/s per method, the methods interleaved round by round so load affects all alike."""
    for method in methods.values():
        method(path)
    times: dict[str, list[float]] = {label: [] for label in methods}
    for _ in range(rounds):
        for label, method in methods.items():
            start = time.perf_counter()
            method(path)
            times[label].append(time.perf_counter() - start)
    return {label: 1.0 / float(np.median(spent)) for label, spent in times.items()}


def main(argv: list[str] | None = None) -> None:
    """Print images/s per method and encoding, and each method's ratio to the naive script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per method and encoding")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    methods: dict[str, Method] = {
        "naive": naive,
        "full-resolution": full_resolution,
        "model path": model_path,
    }
    print(f"read + preprocess to {SIZE} px, one core (torch threads {torch.get_num_threads()})")
    print(f"{'encoding':<20}{'method':<16}{'images/s':>10}{'x naive':>10}{'x full':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {encoding: Path(get_testdata_file(name)) for encoding, name in FILES.items()}
        paths["uncompressed 12-bit"] = twelve_bit(Path(tmp))
        for encoding, path in paths.items():
            rates = measure(methods, path, args.rounds)
            for label, rate in rates.items():
                ratios = f"{rate / rates['naive']:>10.2f}{rate / rates['full-resolution']:>10.2f}"
                print(f"{encoding:<20}{label:<16}{rate:>10.1f}{ratios}")


if __name__ == "__main__":
    main()
