"""Crash safety: `twoview predict` and `twoview train` killed with SIGKILL at seeded random moments, then restarted.

After every kill each output parses (at most one cut-off last line, which the next run removes) and
each `.safetensors` loads; once a restarted run finishes, nothing is lost or duplicated.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models.checkpoint import load, save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline.runs import read_metrics
from tests.pipeline.conftest import write_dicom

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STUDIES = 24
KILLS = 3
SEED = 20261124

pytestmark = pytest.mark.slow


def run_until_killed(argv: list[str], trigger: Callable[[], bool], extra_delay: float) -> int:
    """Start `argv`; once `trigger()` holds, wait `extra_delay` s and SIGKILL it. Returns its exit code."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and not trigger():
            time.sleep(0.005)
        time.sleep(extra_delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return proc.returncode


# --- predict -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kill-archive")
    for i in range(STUDIES):
        write_dicom(root / f"s{i:02d}" / "pa.dcm", study_uid=f"1.5.{i}", view_position="PA", seed=i)
        if i % 3:
            write_dicom(root / f"s{i:02d}" / "ll.dcm", study_uid=f"1.5.{i}", view_position="LL", seed=100 + i)
    torch.manual_seed(0)
    model = save(
        TwoViewNet(ModelConfig.tiny(labels=("effusion", "nodule"))), root.parent / "kill.safetensors"
    )
    return root, model


def complete_rows(path: Path) -> list[dict[str, str]]:
    """The rows of an output that a kill may have cut: every whole line must parse; a partial last one is ignored."""
    if not path.exists():
        return []
    text = path.read_text()
    whole = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(whole.splitlines()))
    for row in rows:
        assert None not in row and all(v is not None for v in row.values()), row  # no short or long row
        float(row["effusion"]), float(row["nodule"])
    return rows


def test_predict_killed_at_random_moments_loses_and_repeats_nothing(archive, tmp_path):
    root, model = archive
    base = ["twoview", "predict", str(root), "--model", str(model), "--batch-size", "1", "--workers", "0"]
    reference = tmp_path / "reference.csv"
    done = subprocess.run([*base, "-o", str(reference)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = {r["study_id"]: r for r in complete_rows(reference)}
    assert len(expected) == STUDIES

    out = tmp_path / "killed.csv"
    rng = random.Random(SEED)
    kills = 0
    for _ in range(KILLS):
        lines = rng.randint(1, STUDIES - 2)  # kill once this many lines are written, plus a random delay

        def written(lines: int = lines) -> bool:
            return out.exists() and out.read_text().count("\n") >= lines

        code = run_until_killed([*base, "-o", str(out)], written, rng.uniform(0, 0.05))
        kills += code == -signal.SIGKILL
        rows = complete_rows(out)
        ids = [r["study_id"] for r in rows]
        assert len(ids) == len(set(ids)) and set(ids) <= set(expected)
    assert kills >= 2, "the runs ended before they could be killed"
    done = subprocess.run([*base, "-o", str(out)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.endswith("\n")
    rows = complete_rows(out)
    assert sorted(r["study_id"] for r in rows) == sorted(expected)
    assert all(row == expected[row["study_id"]] for row in rows)  # the same values as one clean run
    print(f"\npredict: {kills} kills survived, {STUDIES} studies each written once")


# --- train ---------------------------------------------------------------------------------------


def check_run(out: Path) -> None:
    """Whatever a kill left: every .safetensors loads, the Lightning checkpoint loads, the metrics parse."""
    for path in out.glob("*.safetensors"):
        load(path)
    last = out / "checkpoints" / "last.ckpt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)  # our own file, written by Lightning
        assert "state_dict" in state and "epoch" in state
    read_metrics(out)


def train_argv(out: Path, epochs: int) -> list[str]:
    """A new tiny run on the sample studies (64 px, CPU), or `--resume` once it has a checkpoint."""
    if (out / "checkpoints" / "last.ckpt").exists():
        return ["twoview", "train", "--resume", str(out)]
    return [
        "twoview", "train", "--manifest", str(SAMPLES / "labels.csv"), "--out", str(out),
        "--arch", "tiny", "--start", "scratch", "--image-size", "64", "--batch-size", "4",
        "--workers", "0", "--epochs", str(epochs), "--patience", str(epochs),
    ]  # fmt: skip


def writes_of(path: Path, count: int) -> Callable[[], bool]:
    """A trigger that holds once `path` has been (re)written `count` times since now."""
    stamps = {path.stat().st_mtime_ns if path.exists() else None}

    def trigger() -> bool:
        if path.exists():
            stamps.add(path.stat().st_mtime_ns)
        return len(stamps) > count

    return trigger


def test_train_killed_at_random_moments_ends_in_one_complete_run(tmp_path):
    out, epochs = tmp_path / "run", 10
    watched = [out / "last.safetensors", out / "best.safetensors", out / "checkpoints" / "last.ckpt"]
    rng = random.Random(SEED)
    kills, codes = 0, []
    for _ in range(KILLS):
        trigger = writes_of(rng.choice(watched[:2]), rng.randint(1, 4))
        code = run_until_killed(train_argv(out, epochs), trigger, rng.uniform(0, 0.2))
        codes.append(code)
        kills += code == -signal.SIGKILL
        check_run(out)
    assert kills >= 2, f"the runs ended before they could be killed (exit codes {codes})"
    done = subprocess.run(train_argv(out, epochs), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    check_run(out)
    assert (out / "report.md").exists() and load(out / "best.safetensors")
    metrics = read_metrics(out)
    assert sorted(e for e, _ in metrics["val/auroc"]) == list(range(epochs))  # each epoch once
    assert {e for e, _ in metrics["train/loss"]} == set(range(epochs))
    stray = sorted(p.name for p in out.rglob("*.tmp"))  # left by a kill inside an atomic save
    print(f"\ntrain: {kills} kills survived; {epochs} epochs each recorded once; stray temp files: {stray}")


def test_a_run_killed_after_two_epochs_resumes_from_them(tmp_path):
    out, epochs = tmp_path / "run", 6
    code = run_until_killed(train_argv(out, epochs), writes_of(out / "last.safetensors", 2), 0.3)
    assert code == -signal.SIGKILL, "the run ended before it could be killed"
    check_run(out)
    assert (out / "checkpoints" / "last.ckpt").exists(), "two epochs done, nothing to resume from"
