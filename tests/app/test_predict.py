"""The Predict page: sample picker, uploads (files, zips, pictures, broken files), view overrides, heatmaps."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.dicom import read_image
from tests.app.conftest import SAMPLE, THRESHOLDS, button, texts

STUDY = SAMPLE / "TV000000000" / "ST00000"
FRONTAL, LATERAL = STUDY / "SE001" / "1.dcm", STUDY / "SE002" / "2.dcm"
EDITOR = "views-sample:TV000000000"


def pick_sample(at, name: str = "TV000000000"):
    at.radio[0].set_value("A bundled sample study").run()
    at.selectbox(key="sample").set_value(name).run()
    return at


def predict(at):
    button(at, "Predict").click().run()
    assert not at.exception, at.exception
    return at


def results(at) -> list[dict]:
    return at.table[0].value.to_dict("records")


def captions(at) -> list[str]:
    return [c for image in at.get("image") for c in image.captions]


def test_no_model_says_how_to_get_one(open_page, monkeypatch, tmp_path):
    monkeypatch.setenv("TWOVIEW_MODEL", str(tmp_path / "missing.safetensors"))
    at = pick_sample(open_page("predict"))
    assert any("No model is available" in w and "Model" in w for w in texts(at, "warning"))
    assert button(at, "Predict").disabled


def test_sample_study_shows_every_head_against_its_threshold(open_page):
    at = pick_sample(open_page("predict"))
    files = at.dataframe[0].value
    assert list(files["view"]) == ["frontal", "lateral"]
    assert all("ViewPosition" in reason for reason in files["why"])
    predict(at)
    assert any("joint" in m for m in texts(at, "markdown") if m.startswith("**Route:**"))
    rows = results(at)
    assert [r["label"] for r in rows] == [
        "pleural_effusion",
        "nodule",
        "cardiomegaly",
        "pneumothorax",
        "consolidation",
    ]
    for row in rows:
        assert all(0.0 <= row[h] <= 1.0 for h in ("frontal", "lateral", "joint", "final"))
        assert row["final"] == pytest.approx(row["joint"])
        assert row["threshold"] == THRESHOLDS.get(row["label"], 0.5)
        assert row["call"] == ("positive" if row["final"] >= row["threshold"] else "negative")
    assert captions(at) == ["frontal: ST00000/SE001/1.dcm", "lateral: ST00000/SE002/2.dcm"]
    assert {b.label for b in at.get("download_button")} == {"Download CSV", "Download JSON Lines"}


def test_excluding_the_lateral_routes_to_the_frontal_head(open_page):
    at = pick_sample(open_page("predict"))
    at.session_state[EDITOR] = {"edited_rows": {1: {"view": "exclude"}}, "added_rows": [], "deleted_rows": []}
    predict(at.run())
    assert any("frontal only" in m for m in texts(at, "markdown"))
    for row in results(at):
        assert row["final"] == pytest.approx(row["frontal"])
        assert row["lateral"] is None and row["joint"] is None
    aside = at.dataframe[1].value
    assert list(aside["reason"]) == ["excluded by the user"]
    assert captions(at) == ["frontal: ST00000/SE001/1.dcm"]


def test_swapping_views_swaps_the_images(open_page):
    at = pick_sample(open_page("predict"))
    edits = {0: {"view": "lateral"}, 1: {"view": "frontal"}}
    at.session_state[EDITOR] = {"edited_rows": edits, "added_rows": [], "deleted_rows": []}
    predict(at.run())
    assert captions(at) == ["frontal: ST00000/SE002/2.dcm", "lateral: ST00000/SE001/1.dcm"]


def test_uploaded_study_predicts_and_a_broken_file_gets_its_own_message(open_page):
    at = open_page("predict")
    uploader = at.file_uploader[0]
    uploader.upload("IM0001", FRONTAL.read_bytes(), "application/dicom")
    uploader.upload("2.dcm", LATERAL.read_bytes(), "application/dicom")
    uploader.upload("notes.txt", b"these are not pixels", "text/plain")
    at.run()
    errors = texts(at, "error")
    assert len(errors) == 1 and "notes.txt" in errors[0] and "DICOM" in errors[0]
    predict(at)
    assert len(results(at)) == 5
    assert any("joint" in m for m in texts(at, "markdown") if m.startswith("**Route:**"))


def test_zip_members_cannot_escape_the_upload_folder(open_page, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("study/SE001/IM0001", FRONTAL.read_bytes())
        archive.writestr("../../escape.dcm", LATERAL.read_bytes())
    at = open_page("predict")
    at.file_uploader[0].upload("study.zip", buffer.getvalue(), "application/zip").run()
    root = at.session_state["upload_folder"].root
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == ["study/escape.dcm", "study/study/SE001/IM0001"]
    predict(at)
    assert captions(at) == ["frontal: study/study/SE001/IM0001", "lateral: study/escape.dcm"]


def test_loose_pictures_form_one_study(open_page):
    def png(path: Path) -> bytes:
        out = io.BytesIO()
        Image.fromarray((read_image(path).pixels * 255).astype(np.uint8)).save(out, format="PNG")
        return out.getvalue()

    at = open_page("predict")
    at.file_uploader[0].upload("chest_pa.png", png(FRONTAL), "image/png")
    at.file_uploader[0].upload("chest_lateral.png", png(LATERAL), "image/png")
    predict(at.run())
    assert list(at.dataframe[0].value["study"]) == ["upload", "upload"]
    assert any("joint" in m for m in texts(at, "markdown") if m.startswith("**Route:**"))


def test_a_new_upload_removes_the_previous_folder(open_page):
    at = open_page("predict")
    at.file_uploader[0].upload("IM0001", FRONTAL.read_bytes(), "application/dicom").run()
    first = at.session_state["upload_folder"].root
    assert first.is_dir()
    at.file_uploader[0].clear().upload("2.dcm", LATERAL.read_bytes(), "application/dicom").run()
    assert not first.exists()
    assert at.session_state["upload_folder"].root.is_dir()


def test_heatmap_toggle_overlays_each_view(open_page):
    at = predict(pick_sample(open_page("predict")))
    at.toggle(key="show_heat").set_value(True).run()
    at.selectbox(key="heat_label").set_value("nodule").run()
    assert not at.exception, at.exception
    shown = captions(at)
    assert [c.split(" — ")[0] for c in shown] == [
        "frontal: ST00000/SE001/1.dcm",
        "lateral: ST00000/SE002/2.dcm",
    ]
    heatmaps = [heat for key, heat in at.session_state["heatmaps"].items() if key[-1] == "nodule"]
    assert len(heatmaps) == 2
    for caption, heat, path in zip(shown, heatmaps, (FRONTAL, LATERAL), strict=True):
        assert "— Grad-CAM for nodule" in caption
        assert heat.shape == read_image(path).pixels.shape
        assert ("no region raises it" in caption) == (heat.max() == 0.0)
