"""The Fine-tune page: a tiny real `twoview train` run started, watched, reported and made the active model."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest

from app import common
from app.jobs import list_jobs
from tests.app.conftest import button, texts


def widget(elements, label: str):
    found = [e for e in elements if e.label == label]
    assert found, f"no widget {label!r}; have {[e.label for e in elements]}"
    return found[0]


def fill_tiny_run(at):
    widget(at.selectbox, "Starting model").set_value("scratch (random weights)").run()
    widget(at.selectbox, "Network").set_value("tiny")
    widget(at.checkbox, "Set the image size").check()
    at.run()
    for label, value in (("Epochs", 1), ("Batch size", 8), ("Image size (px)", 64), ("Decoding workers", 0)):
        widget(at.number_input, label).set_value(value)
    return at.run()


def wait_for(at, state: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        if any(f"— **{state}**" in m for m in texts(at, "markdown")):
            return at
        time.sleep(1.0)
    raise AssertionError(f"training not {state} after {timeout} s: {texts(at, 'markdown')[:3]}")


def test_tiny_training_runs_reports_and_becomes_the_active_model(open_page):
    at = fill_tiny_run(open_page("finetune"))
    button(at, "Start training").click().run()
    assert not at.exception, at.exception
    [job] = list_jobs(common.folder("jobs"))
    assert "--arch tiny" in " ".join(job.command) and "--image-size 64" in " ".join(job.command)
    manifest = job.command[job.command.index("--manifest") + 1]
    assert manifest == str(common.folder("manifests") / "labels.csv")  # the copy the app checked and wrote
    wait_for(at, "finished", timeout=150)
    assert not at.exception, at.exception
    assert any(m.startswith("### Validation report") for m in texts(at, "markdown"))
    assert any("Validation AUROC" in m for m in texts(at, "markdown"))
    assert any(m.startswith("**Best epoch so far: 1**") for m in texts(at, "markdown"))
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2
    for chart in charts:  # one epoch is a visible point, on an axis from 1
        spec = json.loads(chart.proto.spec)
        assert spec["mark"]["type"] == "line" and spec["mark"]["point"]
        assert spec["encoding"]["x"]["axis"]["format"] == "d"
        assert spec["encoding"]["x"]["scale"]["domain"][0] == 1
        frames = [pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets]
        assert {int(e) for frame in frames for e in frame["epoch"]} == {1}
    [small] = [w for w in texts(at, "warning") if "Validation too small to trust" in w]
    assert "fewer than 50" in small
    assert "unreliable" in job.report()
    assert "\r" not in job.log_tail(200) and "%|" not in job.log_tail(200)
    button(at, "Use this model").click().run()
    assert at.session_state["active_model"] == str(job.best)
    assert any("is now the active model of this browser session" in s for s in texts(at, "success"))


def test_a_reload_reattaches_and_stop_ends_the_run(open_page):
    at = fill_tiny_run(open_page("finetune"))
    widget(at.number_input, "Epochs").set_value(200).run()
    button(at, "Start training").click().run()
    reloaded = open_page("finetune")  # a new session: finds the running job from its record
    assert any("— **running**" in m for m in texts(reloaded, "markdown"))
    button(reloaded, "Stop").click().run()
    assert not reloaded.exception, reloaded.exception
    [job] = list_jobs(common.folder("jobs"))
    assert job.state == "stopped" and not job.running
    assert any("— **stopped**" in m for m in texts(reloaded, "markdown"))


def manifest_with(folder, frontal: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "evil.csv"
    path.write_text(f"study_id,frontal,lateral,nodule\ns1,{frontal},,1\ns2,{frontal},,0\n")
    return str(path)


@pytest.mark.parametrize("image", ["../../../../../../../etc/shadow", "/etc/passwd", "/nonexistent/x.dcm"])
def test_a_manifest_naming_server_files_is_refused_before_they_are_opened(
    open_page, monkeypatch, tmp_path, image
):
    """Fine-tune accepted manifests whose image paths were ../../../etc/shadow or /etc/passwd and opened them."""
    monkeypatch.setenv("TWOVIEW_DATA_DIRS", str(tmp_path / "data"))
    at = open_page("finetune")
    widget(
        at.text_input, "Manifest (study_id, patient_id, frontal, lateral, one column per label)"
    ).set_value(manifest_with(tmp_path / "data", image)).run()
    button(at, "Start training").click().run()
    errors = texts(at, "error")
    assert len(errors) == 1 and "line 2, column 'frontal'" in errors[0] and "data folders" in errors[0]
    assert "not found" not in errors[0]  # the same answer whether the file exists or not
    assert not list_jobs(common.folder("jobs"))


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        (
            {"Manifest (study_id, patient_id, frontal, lateral, one column per label)": "/etc/passwd"},
            "data folders",
        ),
        ({"Checkpoint path or URL": "/etc/passwd"}, "data folders"),
        ({"Checkpoint path or URL": "http://169.254.169.254/latest/meta-data"}, "does not download"),
    ],
)
def test_server_paths_and_urls_in_other_fields_are_refused(open_page, fill, message):
    at = open_page("finetune")
    if "Checkpoint path or URL" in fill:
        widget(at.selectbox, "Starting model").set_value(
            "another checkpoint, DenseNet121 weights or URL"
        ).run()
    for label, value in fill.items():
        widget(at.text_input, label).set_value(value)
    at.run()
    button(at, "Start training").click().run()
    errors = texts(at, "error")
    assert len(errors) == 1 and message in errors[0]
    assert not list_jobs(common.folder("jobs"))


def test_a_folder_and_labels_outside_the_data_folders_are_refused(open_page):
    at = open_page("finetune")
    at.radio[0].set_value("A folder and a labels CSV").run()
    widget(at.text_input, "Folder of studies (scanned recursively)").set_value("/etc")
    widget(at.text_input, "Labels CSV (study_id + one column per label: 1, 0 or blank)").set_value(
        "/etc/passwd"
    )
    at.run()
    button(at, "Start training").click().run()
    assert any("data folders" in e for e in texts(at, "error"))
    assert not list_jobs(common.folder("jobs"))


def test_the_image_size_follows_the_starting_model_unless_set(open_page):
    at = open_page("finetune")
    widget(at.selectbox, "Starting model").set_value("the active model").run()
    assert any("the starting model's (64 px)" in c for c in texts(at, "caption"))  # the tiny model's
    widget(at.number_input, "Epochs").set_value(200)
    widget(at.number_input, "Decoding workers").set_value(0)
    button(at.run(), "Start training").click().run()
    assert not at.exception, at.exception
    [job] = list_jobs(common.folder("jobs"))
    assert "--image-size" not in job.command
    job.stop()
