"""The Fine-tune page: a tiny real `twoview train` run started, watched, reported and made the active model."""

from __future__ import annotations

import time

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
    wait_for(at, "finished", timeout=150)
    assert not at.exception, at.exception
    assert any(m.startswith("### Validation report") for m in texts(at, "markdown"))
    assert any("Validation AUROC" in m for m in texts(at, "markdown"))
    button(at, "Use this model").click().run()
    assert common.active_model() == job.best
    assert any("is now the active model" in s for s in texts(at, "success"))


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
