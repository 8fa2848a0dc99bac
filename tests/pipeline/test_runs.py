"""Run folders: attempts numbered in order, metrics joined across resumed attempts, merged atomically."""

from __future__ import annotations

import math

from pipeline.runs import (
    MONITOR,
    attempt_dirs,
    best_epoch,
    next_attempt,
    read_metrics,
    read_rows,
    write_merged_metrics,
)


def write_attempt(run, number: int, text: str) -> None:
    folder = run / "logs" / f"attempt-{number}"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(text)


def test_attempts_are_numbered_and_ordered_numerically(tmp_path):
    assert next_attempt(tmp_path) == "attempt-0"
    for n in (0, 2, 10):
        (tmp_path / "logs" / f"attempt-{n}").mkdir(parents=True)
    (tmp_path / "logs" / "attempt-x").mkdir()
    assert [p.name for p in attempt_dirs(tmp_path)] == ["attempt-0", "attempt-2", "attempt-10"]
    assert next_attempt(tmp_path) == "attempt-11"


def test_a_resumed_run_drops_the_epoch_the_killed_attempt_was_in(tmp_path):
    write_attempt(tmp_path, 0, "epoch,step,train/loss\n0,1,1.0\n1,2,0.9\n1,3,0.8\n")
    write_attempt(tmp_path, 1, "epoch,step,train/loss\n1,2,0.7\n2,3,0.6\n")
    rows = read_rows(tmp_path)
    assert [(r["epoch"], r["train/loss"]) for r in rows] == [("0", "1.0"), ("1", "0.7"), ("2", "0.6")]
    out = write_merged_metrics(tmp_path)
    assert out.read_text().splitlines()[0].startswith("epoch,step")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert read_metrics(out)["train/loss"] == [(0, 1.0), (1, 0.7), (2, 0.6)]


def test_metrics_skip_blanks_and_non_finite_values(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,val/auroc,train/loss\n0,1,,nan\n0,2,0.5,inf\n1,3,0.6,0.4\n")
    series = read_metrics(csv)
    assert series == {"val/auroc": [(0, 0.5), (1, 0.6)], "train/loss": [(1, 0.4)]}
    assert all(math.isfinite(v) for points in series.values() for _, v in points)


def test_the_best_epoch_is_the_highest_monitored_value_first_on_ties():
    series = {MONITOR: [(0, 0.6), (1, 0.8), (2, 0.8), (3, 0.7)], "val/loss": [(0, 1.0)]}
    assert best_epoch(series) == (1, 0.8)
    assert best_epoch({"val/loss": [(0, 1.0)]}) is None
