"""App jobs: the train command line, job records, batch jobs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from app.jobs import BatchJob, JobError, TrainJob, command_text, latest_job, train_command
from pipeline.cli import _train_settings, build_parser
from pipeline.errors import TwoviewError
from pipeline.outputs import OutputError
from pipeline.settings import TrainSettings

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "studies"


def test_train_command_spells_flags_like_the_cli():
    settings = TrainSettings(
        manifest="m.csv", out_dir="run", epochs=2, head_weights_start=(0.3, 1.0, 0.5), balance=False
    )
    command = train_command(settings)
    assert command[:4] == [sys.executable, "-m", "pipeline.cli", "train"]
    assert command[4:] == [
        "--manifest", "m.csv", "--out", "run", "--epochs", "2",
        "--head-weights-start", "0.3", "1.0", "0.5", "--no-balance",
    ]  # fmt: skip
    assert command_text(command).startswith("twoview train --manifest m.csv")
    parsed = build_parser().parse_args(command[3:])
    assert _train_settings(parsed) == settings


def test_a_record_of_a_dead_process_reads_as_failed_or_stopped(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    job = TrainJob("r1", str(run), 2**22 + 12345, ["x"], 1.0, record=str(tmp_path / "jobs" / "r1.json"))
    job.save()
    loaded = latest_job(tmp_path / "jobs")
    assert loaded == job and not loaded.running and loaded.state == "failed"
    loaded.stop()
    assert TrainJob.load(job.record).state == "stopped"
    (run / "report.md").write_text("# done")
    assert TrainJob.load(job.record).state == "finished"


def test_a_live_unrelated_pid_is_not_taken_for_the_run(tmp_path):
    job = TrainJob("r", str(tmp_path / "run"), os.getpid(), [], 0.0, record=str(tmp_path / "r.json"))
    assert not job.running


def test_broken_record_is_a_job_error(tmp_path):
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(JobError):
        TrainJob.load(tmp_path / "x.json")


def test_batch_job_refuses_bad_paths_up_front(tmp_path):
    with pytest.raises(OutputError):
        BatchJob(SAMPLE, tmp_path / "out.txt", predictor=None)
    with pytest.raises(TwoviewError, match="no such folder"):
        BatchJob(tmp_path / "missing", tmp_path / "out.csv", predictor=None)


BAR = "\u2588" * 10
LIGHTNING_LOG = (
    "INFO lightning.pytorch.utilities.rank_zero: GPU available: False, used: False\n"
    "\rSanity Checking: |          | 0/? [00:00<?, ?it/s]/venv/lightning/data_connector.py:378: "
    "You have overridden `transfer_batch_to_device`\n"
    f"\rSanity Checking DataLoader 0: 100%|{BAR}| 1/1 [00:00<00:00, 31.28it/s]\r\n"
    "\rValidation: |          | 0/? [00:00<?, ?it/s]\x1b[A\n"
    f"\r                                  \x1b[A\rEpoch 0: 100%|{BAR}| 2/2 [00:00<00:00,  4.20it/s, "
    "v_num=pt-0, train/loss=3.210]\rEpoch 1:  50%|#####     | 3/6 [00:01<00:01, 2.1it/s, v_num=pt-0]\n"
    "INFO pipeline.train: best model: run/best.safetensors (validation macro AUROC 0.183)\n"
)


def test_the_training_log_is_shown_without_progress_bars_and_their_progress_is_read(tmp_path):
    (tmp_path / "train.log").write_text(LIGHTNING_LOG)
    job = TrainJob("run", str(tmp_path), 1, [], 0.0)
    log = job.log_tail(30)
    assert "\r" not in log and "\x1b" not in log and "%|" not in log and BAR not in log
    assert log.splitlines() == [
        "INFO lightning.pytorch.utilities.rank_zero: GPU available: False, used: False",
        "/venv/lightning/data_connector.py:378: You have overridden `transfer_batch_to_device`",
        "INFO pipeline.train: best model: run/best.safetensors (validation macro AUROC 0.183)",
    ]
    assert job.progress() == (2, 3, 6)  # epoch 1 of Lightning is the second: counted from 1
