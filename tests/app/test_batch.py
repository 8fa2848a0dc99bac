"""The Batch page: predict a data folder in the background, live table, set-aside files, and the attacks on it.

Server paths: only folders inside the data folders are read, outputs go inside the app folder, a file
the job did not write is never shown, served or changed, one job per output, and Cancel.
"""

from __future__ import annotations

import csv
import shutil
import threading
import time
from pathlib import Path

import pytest

from app import common, jobs, markup
from app.jobs import BatchJob, JobError
from pipeline.deidentify import DEIDENTIFY_KEY_ENV
from tests.app.conftest import SAMPLE, button, texts


def wait_until_done(at, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = at.session_state["batch_job"]
        if not job.running:
            return at.run()
        time.sleep(0.3)
        at.run()
    raise AssertionError(f"batch job still {job.phase} after {timeout} s")


def start(at, folder: str, output: str):
    at.text_input[0].set_value(folder)
    at.text_input[1].set_value(output).run()
    button(at, "Start").click().run()
    assert not at.exception, at.exception
    return at


def everything_shown(at) -> str:
    """Every text the page shows, tables included."""
    shown = [texts(at, kind) for kind in ("markdown", "error", "warning", "success", "info", "caption")]
    tables = [frame.value.to_csv() for frame in at.dataframe]
    return "\n".join([*(t for group in shown for t in group), *tables])


def test_batch_predicts_the_sample_folder_and_lists_files_set_aside(open_page, app_env):
    at = start(open_page("batch"), str(SAMPLE), "run1.csv")  # a bare name goes into the app's batch folder
    wait_until_done(at)
    assert not at.exception, at.exception
    assert not texts(at, "error")
    job = at.session_state["batch_job"]
    assert job.phase == "done" and job.studies == 24 and job.accepted
    assert job.output == (app_env / "batch" / "run1.csv").resolve()
    predictions = at.dataframe[0].value
    assert len(predictions) == 24 and set(predictions["route"]) == {"joint", "frontal", "lateral"}
    assert "study_id" not in predictions and "nodule_frontal" not in predictions  # the readable columns
    assert job.output.read_text().count("\n") == 25
    aside = at.dataframe[1].value
    assert len(aside) >= 1 and all(aside["reason"].str.len() > 0)
    assert any("Done" in str(p.proto.text) for p in at.get("progress"))
    assert [b.label for b in at.get("download_button")] == [
        "Download the set-aside list",
        "Download the predictions",
    ]
    assert all(len(study) <= 13 for study in predictions["study"])  # short ids; the download has them whole


def test_batch_reports_a_missing_folder(open_page):
    at = start(open_page("batch"), str(SAMPLE / "nowhere"), "x.csv")
    assert any("no such folder" in e for e in texts(at, "error"))


@pytest.mark.parametrize("folder", ["/etc", "/usr", "/", "/proc", "../../", "~", "/root/.ssh"])
def test_server_folders_outside_the_data_folders_are_refused(open_page, folder):
    """/etc showed 1,114 server paths and /usr 'predicted' 776 icons; /, /proc and ../../ aborted on errors."""
    at = start(open_page("batch"), folder, "x.csv")
    errors = texts(at, "error")
    assert len(errors) == 1 and "reads only inside its data folders" in errors[0]
    assert "batch_job" not in at.session_state and not at.dataframe and not at.get("download_button")


def test_a_link_out_of_a_data_folder_is_refused(open_page, monkeypatch, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "etc").symlink_to("/etc", target_is_directory=True)
    monkeypatch.setenv("TWOVIEW_DATA_DIRS", str(data))
    at = start(open_page("batch"), str(data / "etc"), "x.csv")
    assert any("reads only inside its data folders" in e for e in texts(at, "error"))
    at = start(open_page("batch"), str(SAMPLE), "x.csv")  # configured folders replace the samples
    assert any("reads only inside its data folders" in e for e in texts(at, "error"))


@pytest.mark.parametrize("output", ["/etc/passwd.csv", "/tmp/newdir/deep/x.csv", "../../../x.csv"])
def test_outputs_outside_the_app_folder_are_refused_and_nothing_is_created(open_page, output):
    """`newdir/deep/x.csv` used to be created anywhere."""
    at = start(open_page("batch"), str(SAMPLE), output)
    assert any("outputs are written only inside the app folder" in e for e in texts(at, "error"))
    assert "batch_job" not in at.session_state
    assert not Path("/tmp/newdir").exists() and not Path("/etc/passwd.csv").exists()


def test_a_file_the_job_did_not_write_is_never_shown_served_or_changed(open_page, app_env, tmp_path):
    """A credentials CSV as output was shown as a table and offered for download, and lost its last row."""
    secret = common.folder("batch") / "accounts.csv"
    secret.write_bytes(b"user,password\nadmin,hunter2")  # no trailing newline: a resume cut this row
    outside = tmp_path / "shadow.csv"
    outside.write_text("root,$6$secret\n")
    (common.folder("batch") / "link.csv").symlink_to(outside)
    for output in (str(secret), "link.csv"):
        at = start(open_page("batch"), str(SAMPLE), output)
        assert texts(at, "error"), f"{output} was accepted"
        shown = everything_shown(at)
        assert "hunter2" not in shown and "password" not in shown and "secret" not in shown
        assert not at.get("download_button") and not at.dataframe
    assert secret.read_bytes() == b"user,password\nadmin,hunter2"
    assert outside.read_text() == "root,$6$secret\n"


def test_two_jobs_on_one_output_never_write_a_study_twice(open_page, app_env, monkeypatch):
    """Two Batch jobs writing the same output produced every study twice."""
    release, predict = threading.Event(), jobs.predict_folder
    monkeypatch.setattr(jobs, "predict_folder", lambda *a, **k: release.wait(60) and predict(*a, **k))
    first = start(open_page("batch"), str(SAMPLE), "shared.csv")  # held before predicting until released
    try:
        second = open_page("batch")  # another session is shown the running job, and cannot start one
        assert button(second, "Start").disabled and button(second, "Stop")
        job = first.session_state["batch_job"]
        with pytest.raises(JobError, match="being written by another"):
            BatchJob(SAMPLE, job.output, job.predictor).start()
    finally:
        release.set()
    wait_until_done(first)
    again = start(open_page("batch"), str(SAMPLE), "shared.csv")  # after the first: resumes, adds nothing
    wait_until_done(again)
    assert again.session_state["batch_job"].summary.skipped == 24
    with (app_env / "batch" / "shared.csv").open(newline="") as f:
        ids = [row["study_id"] for row in csv.DictReader(f)]
    assert len(ids) == 24 == len(set(ids))


def test_cancel_stops_the_job_and_a_rerun_resumes(open_page, app_env, monkeypatch, tmp_path):
    data = tmp_path / "data"
    for copy in range(
        8
    ):  # copies of the sample studies (set aside as duplicates): a scan long enough to cancel
        shutil.copytree(SAMPLE, data / f"copy{copy}")
    monkeypatch.setenv("TWOVIEW_DATA_DIRS", str(data))
    at = start(open_page("batch"), str(data), "cancelled.csv")
    job = at.session_state["batch_job"]
    button(at, "Stop").click().run()
    deadline = time.monotonic() + 30
    while job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.phase == "cancelled", job.phase
    at.run()
    assert not at.exception and any("Stopped" in str(p.proto.text) for p in at.get("progress"))
    written = (app_env / "batch" / "cancelled.csv").read_text().count("\n") - 1
    assert written < 24
    again = wait_until_done(start(open_page("batch"), str(data), "cancelled.csv"), timeout=300)
    assert again.session_state["batch_job"].summary.skipped == written
    assert (app_env / "batch" / "cancelled.csv").read_text().count("\n") == 25


def test_paths_and_messages_are_escaped(open_page, monkeypatch, tmp_path):
    data = tmp_path / "![x](x.png)"
    data.mkdir()
    monkeypatch.setenv("TWOVIEW_DATA_DIRS", str(data))
    at = open_page("batch")
    caption = texts(at, "caption")[0]
    assert markup.text(data) in caption and "![" not in caption


def copies(tmp_path: Path, n: int = 8) -> Path:
    data = tmp_path / "data"
    for copy in range(n):  # copies of the sample studies (set aside as duplicates): a scan that takes a while
        shutil.copytree(SAMPLE, data / f"copy{copy}")
    return data


def test_a_reload_during_a_run_shows_the_running_job_and_it_can_be_stopped(open_page, monkeypatch, tmp_path):
    data = copies(tmp_path)
    monkeypatch.setenv("TWOVIEW_DATA_DIRS", str(data))
    held, predict = threading.Event(), BatchJob._predict

    def held_back(job, scan):  # the run is still going when the page reloads, however fast predict is
        held.wait(30)
        return predict(job, scan)

    monkeypatch.setattr(BatchJob, "_predict", held_back)
    first = start(open_page("batch"), str(data), "reload.csv")
    job = first.session_state["batch_job"]
    reloaded = open_page("batch")  # a reload is a new session: it finds the job of this app
    assert "batch_job" not in reloaded.session_state
    texts_shown = [str(p.proto.text) for p in reloaded.get("progress")]
    assert len(texts_shown) == 1 and ("Reading files" in texts_shown[0] or "Predicting" in texts_shown[0])
    assert "left" in texts_shown[0]  # an estimate, or that one is being made
    assert button(reloaded, "Start").disabled
    button(reloaded, "Stop").click().run()
    held.set()
    deadline = time.monotonic() + 30
    while job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.phase == "cancelled"
    assert any("Stopped" in str(p.proto.text) for p in reloaded.run().get("progress"))


def test_the_time_left_follows_the_pace(app_env):
    job = BatchJob.__new__(BatchJob)  # the estimate alone: no folder, no thread
    job.phase, job.started, job.files_done, job.files_total = "scanning", time.time() - 10, 50, 150
    assert job.seconds_left(0) == pytest.approx(20, rel=0.05)
    job.phase, job.predicting_since, job.done_before, job.studies = "predicting", time.time() - 30, 10, 110
    assert job.seconds_left(40) == pytest.approx(70, rel=0.05)  # 30 done in 30 s, 70 to go
    assert job.seconds_left(10) is None


def test_a_deidentified_batch_writes_the_predict_keys_pseudonyms(open_page, app_env, monkeypatch):
    key = "k" * 32
    monkeypatch.setenv(DEIDENTIFY_KEY_ENV, key)
    at = open_page("batch")
    at.checkbox(key="batch_deidentify").check()
    wait_until_done(start(at, str(SAMPLE), "deid.csv"))
    written = (app_env / "batch" / "deid.csv").read_text() + (
        app_env / "batch" / "deid.errors.csv"
    ).read_text()
    assert "TV000000000" not in written and "ST00000" not in written
    with (app_env / "batch" / "deid.csv").open(newline="") as f:
        ids = {row["study_id"] for row in csv.DictReader(f)}
    assert len(ids) == 24 and all(i.startswith("s") and len(i) == 17 for i in ids)
