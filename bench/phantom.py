"""Phantom speed: two-view studies rendered per second on one core (the training-set budget is >= 5/s).

Each study draws a patient, findings and an exam (AP/PA, rotation, arms, devices, film look) exactly
as ``sample_data.generate`` does, so the figure covers the variants' cost.

``python bench/phantom.py --picture sample_data/phantom.png`` also redraws the README picture: a clean
generated PA | the same patient's lateral | a bedside AP of another patient with devices and
markers | its lateral | the real RG1 PA from pydicom's test data, for comparison.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sample_data.anatomy import Patient, random_patient
from sample_data.findings import random_findings
from sample_data.phantom import simulate
from sample_data.variants import Exam, Film, random_exam

__all__ = ["main", "picture"]

_PICTURE_PATIENT = Patient(seed=3, sex="F")
_BEDSIDE = (
    Patient(seed=8, sex="M", habitus="obese", soft_tissue_mm=40.0, inspiration=-0.3),
    Exam(
        projection="AP_supine",
        rotation_deg=8.0,
        arms="down",
        facing="right",
        devices=("ecg", "pacemaker", "ett", "ngt", "central_line"),
        film=Film(seed=2, marker=True, text=("AP SUPINE", "PORTABLE"), collimation="black", cropped=True),
    ),
)


def _reference(height: int) -> np.ndarray | None:
    """The real RG1 PA chest (bright = dense), or None where pydicom's test data is missing."""
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCR.dcm")
        if path is None:
            return None
        ds = pydicom.dcmread(path)
    except (ImportError, OSError, ValueError):
        return None
    img = ds.pixel_array.astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 1.0 - img
    width = round(img.shape[1] * height / img.shape[0])
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))


def _height(img: np.ndarray, height: int) -> np.ndarray:
    width = round(img.shape[1] * height / img.shape[0])
    return np.asarray(Image.fromarray(img.astype(np.float32)).resize((width, height), Image.BILINEAR))


def picture(path: str | Path, size: int = 400) -> None:
    """Write clean PA | lateral | bedside AP | lateral | real RG1 PA side by side as an 8-bit PNG."""
    clean = simulate(_PICTURE_PATIENT, [], size=size)
    bedside = simulate(_BEDSIDE[0], [], size=size, exam=_BEDSIDE[1])
    panels = [clean.frontal, clean.lateral, bedside.frontal, bedside.lateral]
    ref = _reference(size)
    if ref is not None:
        panels.append(ref)
    row = np.concatenate([_height(p, size) for p in panels], axis=1)
    Image.fromarray(np.round(np.clip(row, 0, 1) * 255).astype(np.uint8)).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Render ``--studies`` random two-view studies at ``--size`` px and print studies per second."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--picture", type=Path, help="also write the side-by-side picture here")
    args = parser.parse_args(argv)
    if args.picture is not None:
        picture(args.picture)
    rng = np.random.default_rng(0)
    cases = [(random_patient(rng), random_findings(rng), random_exam(rng)) for _ in range(args.studies)]
    simulate(*cases[0][:2], size=args.size, exam=cases[0][2])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for patient, findings, exam in cases:
        simulate(patient, findings, size=args.size, exam=exam)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    # CPU time as well: on a shared machine the wall clock also counts other people's work.
    print(
        f"phantom: {args.studies / seconds:.2f} two-view studies/s at {args.size} px "
        f"({args.studies / cpu:.2f}/s of CPU time; OMP_NUM_THREADS={threads})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
