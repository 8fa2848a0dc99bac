"""App jobs: the train command line, job records, manifests from a folder and a labels table, batch jobs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline.errors import ManifestError, TwoviewError
from pipeline.jobs import (
    BatchJob,
    JobError,
    TrainJob,
    command_text,
    latest_job,
    manifest_from_folder,
    train_command,
)
from pipeline.manifest import read_manifest
from pipeline.outputs import OutputError

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "studies"


def test_train_command_spells_flags_like_the_cli():
    command = train_command(
        "m.csv",
        "run",
        {"epochs": 2, "head_weights_start": [0.3, 1.0, 1.0], "no_balance": True, "image_size": None},
    )
    assert command[:4] == [sys.executable, "-m", "pipeline.cli", "train"]
    assert command[4:] == [
        "--manifest", "m.csv", "--out", "run", "--epochs", "2",
        "--head-weights-start", "0.3", "1.0", "1.0", "--no-balance",
    ]  # fmt: skip
    assert command_text(command).startswith("twoview train --manifest m.csv")


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


def test_manifest_from_a_folder_and_a_labels_table(tmp_path):
    table = tmp_path / "labels.csv"
    source = (SAMPLE / "labels.csv").read_text().splitlines()
    table.write_text("\n".join(source[:5]) + "\n")
    out = manifest_from_folder(SAMPLE, table, tmp_path / "manifest.csv")
    manifest = read_manifest(out)
    assert manifest.label_names == (
        "pleural_effusion",
        "nodule",
        "cardiomegaly",
        "pneumothorax",
        "consolidation",
    )
    known = (~(manifest.labels != manifest.labels)).any(axis=1)  # rows with any known label
    assert known.sum() == 4 and len(manifest) >= 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,a\n1,1\n", "needs a study_id"),
        ("study_id,frontal\n1,x\n", "no label columns"),
        ("study_id,a\n1,maybe\n", "line 2"),
    ],
)
def test_bad_label_tables_say_what_to_fix(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(ManifestError, match=message):
        manifest_from_folder(SAMPLE, tmp_path / "t.csv", tmp_path / "m.csv")


def test_batch_job_refuses_bad_paths_up_front(tmp_path):
    with pytest.raises(OutputError):
        BatchJob(SAMPLE, tmp_path / "out.txt", predictor=None)
    with pytest.raises(TwoviewError, match="no such folder"):
        BatchJob(tmp_path / "missing", tmp_path / "out.csv", predictor=None)
