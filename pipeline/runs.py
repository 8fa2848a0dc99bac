"""A training run's folder: its settings, and its metrics gathered across resumed attempts.

Lightning's CSV logger starts a fresh file per process start, so each attempt logs into
`logs/attempt-N/metrics.csv`; `read_metrics` joins them, dropping the epochs an attempt was
killed in and the next one redid, and `write_merged_metrics` leaves the result as `metrics.csv`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from models.atomic import atomic_open

__all__ = [
    "MONITOR",
    "attempt_dirs",
    "best_epoch",
    "next_attempt",
    "read_metrics",
    "read_rows",
    "write_merged_metrics",
]

Series = dict[str, list[tuple[int, float]]]
MONITOR = "val/auroc"  # macro AUROC of the final prediction: what picks the best epoch


def attempt_dirs(run_dir: Path) -> list[Path]:
    """The attempt log folders of a run, oldest first."""
    logs = Path(run_dir) / "logs"
    found = [p for p in logs.glob("attempt-*") if p.name.removeprefix("attempt-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("attempt-")))


def next_attempt(run_dir: Path) -> str:
    """The version name for the logger of a new attempt."""
    existing = attempt_dirs(run_dir)
    return f"attempt-{int(existing[-1].name.removeprefix('attempt-')) + 1 if existing else 0}"


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    """Every logged row of a run (or one metrics CSV), attempts joined in order."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return _read_csv(run_dir)
    attempts = [_read_csv(d / "metrics.csv") for d in attempt_dirs(run_dir)]
    if not attempts:
        return _read_csv(run_dir / "metrics.csv")
    rows: list[dict[str, str]] = []
    for i, attempt in enumerate(attempts):
        later = [int(r["epoch"]) for a in attempts[i + 1 :] for r in a if r.get("epoch")]
        redone_from = min(later) if later else math.inf
        rows += [r for r in attempt if not r.get("epoch") or int(r["epoch"]) < redone_from]
    return rows


def read_metrics(run_dir_or_csv: Path) -> Series:
    """{metric: [(epoch, value), ...]} with blanks and non-finite values skipped."""
    series: Series = {}
    epoch = 0
    for row in read_rows(Path(run_dir_or_csv)):
        if row.get("epoch"):
            epoch = int(float(row["epoch"]))
        for name, text in row.items():
            if name in ("epoch", "step") or not text:
                continue
            value = float(text)
            if math.isfinite(value):
                series.setdefault(name, []).append((epoch, value))
    return series


def best_epoch(series: Series, metric: str = MONITOR) -> tuple[int, float] | None:
    """The epoch (counted from 0, as logged) with the highest `metric`, and that value; the first on ties."""
    points = series.get(metric, [])
    return max(points, key=lambda p: (p[1], -p[0])) if points else None


def write_merged_metrics(run_dir: Path) -> Path:
    """Write all attempts' rows as `metrics.csv` in the run folder (atomically)."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("epoch", "step"), k))
    out = run_dir / "metrics.csv"
    with atomic_open(out) as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return out
