"""View detection from pixels: confusion tables on real films and held-out phantoms, and the classifier's speed.

Real films: every image in `../shared/real-dev` (or `$TWOVIEW_REAL_DEV`) through `detect_view`, as
a JPEG export without tags gives it (skipped with a message where the folder is absent). Phantoms:
patients never used in training (`--seed`), clean and with one draw of the training augmentation
(which also makes "other" pictures). Speed: images/s of `classify` on a decoded 512 px JPEG and on
a 2000 px DICOM-sized image, beside `read_image` of the same JPEG, one core, interleaved rounds.
Run: `python bench/views.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy/torch start their pools

import argparse  # noqa: E402
import csv  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.dicom import read_image  # noqa: E402
from pipeline.view_classifier import (  # noqa: E402
    calibrated_probabilities,
    classify,
    decide,
    load_classifier,
    to_input,
)
from pipeline.views import detect_view  # noqa: E402
from sample_data.view_set import CLASSES, augment, other_film, render_films  # noqa: E402

__all__ = ["main", "phantom_tables", "real_dev_table", "real_dev_folder"]

COLUMNS = ("frontal", "lateral", "unknown")  # indexed by `decide`: 0, 1, and -1 for unknown
REPO = Path(__file__).resolve().parents[1]


def real_dev_folder() -> Path:
    """`$TWOVIEW_REAL_DEV`, else `../shared/real-dev` beside the repository."""
    return Path(os.environ.get("TWOVIEW_REAL_DEV") or REPO.parent / "shared" / "real-dev")


def real_dev_table(folder: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Confusion table (true view x called view) of `detect_view` on the listed films, and each miss."""
    table = {view: dict.fromkeys(COLUMNS, 0) for view in ("frontal", "lateral")}
    misses = []
    with open(folder / "views.csv", newline="") as f:
        for row in csv.DictReader(f):
            decision = detect_view(read_image(folder / row["file"]))
            called = decision.view.value if decision.view else "unknown"
            table[row["view"]][called] += 1
            if called != row["view"]:
                misses.append(f"{row['file']} ({row['view']}): {decision.reason}")
    return table, misses


def phantom_tables(patients: int, seed: int, size: int = 256) -> dict[str, dict[str, dict[str, int]]]:
    """Confusion tables on held-out phantom patients: clean films, and augmented films plus "other" pictures."""
    model = load_classifier()
    films = render_films(patients, seed, size)
    rng = np.random.default_rng([seed, 99])
    sets = {
        "clean": (list(films.images), list(films.labels)),
        "augmented": (
            [augment(f, rng, regularise=False) for f in films.images]
            + [other_film(films.images, rng) for _ in range(patients // 2)],
            [*films.labels, *[CLASSES.index("other")] * (patients // 2)],
        ),
    }
    tables = {}
    for name, (images, labels) in sets.items():
        batch = torch.stack(
            [to_input(image if image.dtype != np.uint8 else image / 255.0, model) for image in images]
        )
        called = decide(calibrated_probabilities(model, batch), model.config.threshold)
        table = {CLASSES[c]: dict.fromkeys(COLUMNS, 0) for c in sorted(set(labels))}
        for view, label in zip(called, labels, strict=True):
            table[CLASSES[label]][COLUMNS[view]] += 1
        tables[name] = table
    return tables


def speed(rounds: int) -> dict[str, float]:
    """Median images/s: decoding a 512 px JPEG, and classifying it and a 2000 px image (one core)."""
    folder = real_dev_folder()
    jpeg = next(iter(sorted(folder.glob("*.jpg"))), None) if folder.is_dir() else None
    small = read_image(jpeg).pixels if jpeg else np.random.default_rng(0).random((512, 512), np.float32)
    big = np.asarray(np.kron(small, np.ones((4, 4), np.float32)), np.float32)  # ~2000 px
    tasks = {
        "classify 512 px": lambda: classify(small),
        "classify 2048 px": lambda: classify(big),
    }
    if jpeg:
        tasks["read_image 512 px JPEG (for scale)"] = lambda: read_image(jpeg)
    for task in tasks.values():
        task()
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            times[name].append(time.perf_counter() - start)
    return {name: 1.0 / float(np.median(t)) for name, t in times.items()}


def print_table(title: str, table: dict[str, dict[str, int]]) -> None:
    print(f"\n{title}\n")
    print("| true \\ called | " + " | ".join(COLUMNS) + " | right |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for view, row in table.items():
        total = sum(row.values())
        right = row.get(view, 0) / total if total else 0.0
        print(f"| {view} | " + " | ".join(str(row[c]) for c in COLUMNS) + f" | {right:.1%} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=200, help="held-out phantom patients (two films each)")
    p.add_argument("--seed", type=int, default=2026, help="phantom seed; training uses 0 and 1")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_classifier()
    print(f"view classifier: threshold {model.config.threshold}, temperature {model.config.temperature}")
    folder = real_dev_folder()
    if (folder / "views.csv").is_file():
        table, misses = real_dev_table(folder)
        print_table(f"Real films ({folder})", table)
        for miss in misses:
            print(f"- {miss}")
    else:
        print(f"\nReal films: skipped, {folder} is absent (set TWOVIEW_REAL_DEV)")
    for name, table in phantom_tables(args.patients, args.seed).items():
        print_table(f"Held-out phantoms, {name} ({args.patients} patients, seed {args.seed})", table)
    print("\n| task (one core) | images/s |\n|---|---|")
    for name, rate in speed(args.rounds).items():
        print(f"| {name} | {rate:.1f} |")


if __name__ == "__main__":
    main()
