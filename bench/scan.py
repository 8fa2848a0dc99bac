"""Folder scan: files per second reading headers on every core against one process, side by side.

Writes N phantom DICOM files (~`--side` px, uncompressed, cloned with fresh UIDs) with a few bad files
among them (empty, text, cut short), then times `scan_folder(workers=1)` and `scan_folder()` (one worker
process per usable core) in interleaved rounds, checks both give the same result, and prints files/s,
the ratio (targets: >= 1.6x on 2 cores, >= 4x on 16) and the bytes the scan read per file.

    python bench/scan.py [--files 3000] [--side 512] [--rounds 3] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.parallel import usable_cores
from pipeline.studies import scan_folder
from sample_data.generate import write_dataset


def write_folder(folder: Path, files: int, side: int) -> Path:
    """`files` DICOM files cloned from a few phantoms, and one bad file in 25."""
    seed = folder / "seed"
    write_dataset(seed, n_studies=4, seed=0, size=side, showcase=False)
    templates = []
    for path in sorted(seed.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
            ds.decompress()
        templates.append(ds)
    out = folder / "scan"
    for index in range(files):
        path = out / f"P{index // 20:03d}" / f"{index:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        if index % 25 == 7:  # bad files: each must be set aside, not stop the scan
            kind = (index // 25) % 3
            data = [b"", b"not an image\n", templates[0].PixelData[:1000]][kind]
            path.write_bytes(data)
            continue
        ds = templates[index % len(templates)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(path, enforce_file_format=True)
    return out


def read_bytes() -> int:
    """Bytes this process has read through read() so far (Linux), else 0."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--side", type=int, default=512, help="phantom size in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=usable_cores(), help="default: the usable cores")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        folder = write_folder(Path(name), args.files, args.side)
        paths = [p for p in folder.rglob("*") if p.is_file()]
        mean_size = sum(p.stat().st_size for p in paths) / len(paths)
        before = read_bytes()
        reference = scan_folder(folder, workers=1)  # warm-up (page cache, imports) and the result to match
        per_file = (read_bytes() - before) / len(paths)
        scan_folder(folder, workers=args.workers)  # warm-up: starts the forkserver
        rates: dict[str, list[float]] = {"serial": [], "parallel": []}
        for _ in range(args.rounds):
            for label, workers in (("serial", 1), ("parallel", args.workers)):
                start = time.perf_counter()
                result = scan_folder(folder, workers=workers)
                rates[label].append(len(paths) / (time.perf_counter() - start))
                if result != reference:
                    raise SystemExit(f"{label} scan differs from the serial scan")
    median = {label: statistics.median(values) for label, values in rates.items()}
    print(
        f"{platform.machine()}, {os.cpu_count()} cores ({usable_cores()} usable), load {os.getloadavg()[0]:.1f}; "
        f"{len(paths)} files ({len(reference.set_aside)} set aside) of {mean_size / 2**20:.1f} MiB on average; "
        f"median of {args.rounds} interleaved rounds"
    )
    for label, values in rates.items():
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"  {label:<9} {median[label]:7.0f} files/s  (range {spread})")
    print(
        f"parallel ({args.workers} workers) / serial: {median['parallel'] / median['serial']:.2f}x "
        "(targets: >= 1.6x on 2 cores, >= 4x on 16)"
    )
    print(f"read per file: {per_file / 1024:.1f} KiB of {mean_size / 1024:.0f} KiB (headers only)")


if __name__ == "__main__":
    main()
