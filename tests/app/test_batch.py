"""The Batch page: predict a data folder in the background, live table, set-aside files, and the attacks on it.

Server paths: only folders inside the data folders are read, outputs go inside the app folder, a file
the job did not write is never shown, served or changed, one job per output, and Cancel.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import pytest

from app import common, markup
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
    assert job.output.read_text().count("\n") == 25
    aside = at.dataframe[1].value
    assert len(aside) >= 1 and all(aside["reason"].str.len() > 0)
    assert any("Done" in str(p.proto.text) for p in at.get("progress"))
    assert [b.label for b in at.get("download_button")] == ["Download the predictions"]


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


def test_two_jobs_on_one_output_never_write_a_study_twice(open_page, app_env):
    """Two Batch jobs writing the same output produced every study twice."""
    first = start(open_page("batch"), str(SAMPLE), "shared.csv")
    second = start(open_page("batch"), str(SAMPLE), "shared.csv")  # another session, same output
    errors = texts(second, "error")
    assert len(errors) == 1 and "being written by another" in errors[0]
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
    button(at, "Cancel").click().run()
    deadline = time.monotonic() + 30
    while job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.phase == "cancelled", job.phase
    at.run()
    assert not at.exception and any("Cancelled" in str(p.proto.text) for p in at.get("progress"))
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
