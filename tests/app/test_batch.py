"""The Batch page: predict the bundled studies folder in the background, live table, set-aside files."""

from __future__ import annotations

import time

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


def test_batch_predicts_the_sample_folder_and_lists_files_set_aside(open_page, tmp_path):
    at = open_page("batch")
    output = tmp_path / "out" / "predictions.csv"
    at.text_input[0].set_value(str(SAMPLE))
    at.text_input[1].set_value(str(output)).run()
    button(at, "Start").click().run()
    assert not at.exception, at.exception
    wait_until_done(at)
    assert not at.exception, at.exception
    assert not texts(at, "error")
    job = at.session_state["batch_job"]
    assert job.phase == "done" and job.studies == 24
    predictions = at.dataframe[0].value
    assert len(predictions) == 24 and set(predictions["route"]) == {"joint", "frontal", "lateral"}
    assert output.read_text().count("\n") == 25
    aside = at.dataframe[1].value
    assert len(aside) >= 1 and all(aside["reason"].str.len() > 0)
    assert any("Done" in str(p.proto.text) for p in at.get("progress"))
    assert [b.label for b in at.get("download_button")] == ["Download the predictions"]


def test_batch_reports_a_missing_folder(open_page, tmp_path):
    at = open_page("batch")
    at.text_input[0].set_value(str(tmp_path / "nowhere")).run()
    button(at, "Start").click().run()
    assert not at.exception, at.exception
    assert any("no such folder" in e for e in texts(at, "error"))
