"""The Predict page: sample picker, uploads (files, zips, pictures, broken files), view overrides, heatmaps."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import common, markup
from pipeline.deidentify import DEIDENTIFY_KEY_ENV, Deidentifier
from pipeline.dicom import read_image
from pipeline.views import ViewDecision
from tests.app.conftest import SAMPLE, THRESHOLDS, button, texts
from tests.hardening.attacks import (
    GiB,
    MiB,
    dicom_header,
    huge_dicom,
    markup_dicom,
    png_bomb,
    understated_zip,
    zeros_zip,
)

STUDY = SAMPLE / "TV000000000" / "ST00000"
FRONTAL, LATERAL = STUDY / "SE001" / "1.dcm", STUDY / "SE002" / "2.dcm"
REAL = Path(
    os.environ.get("TWOVIEW_REAL_DEV", Path(__file__).resolve().parents[2] / ".." / "shared" / "real-dev")
)
IMAGE_TITLE = re.compile(r"^\*\*(frontal|lateral)\*\*: (.+)$")


def pick_sample(at, name: str = "TV000000000"):
    at.radio(key="mode").set_value("A bundled sample study").run()
    at.selectbox(key="sample").set_value(name).run()
    return at


def predict(at):
    button(at, "Predict").click().run()
    assert not at.exception, at.exception
    return at


def results(at) -> list[dict]:
    """The probability table, its label names unescaped (st.table renders Markdown, so the page escapes them)."""
    rows = at.table[0].value.to_dict("records")
    return [{**row, "label": row["label"].replace("\\", "")} for row in rows]


def captions(at) -> list[str]:
    """The images the viewer shows, as "view: file"."""
    found = [IMAGE_TITLE.match(m) for m in texts(at, "markdown")]
    return [f"{m.group(1)}: {m.group(2).replace(chr(92), '')}" for m in found if m]


def view_controls(at) -> dict[str, object]:
    """File name -> the view control of its row in "Files and views"."""
    return {r.key.split("|", 2)[2]: r for r in at.radio if r.key and r.key.startswith("view|")}


def set_view(at, name: str, view: str):
    view_controls(at)[name].set_value(view)
    return at.run()


def uploads(at):
    at.radio(key="mode").set_value("Upload files").run()
    return at


def test_no_model_says_how_to_get_one(open_page, monkeypatch, tmp_path):
    monkeypatch.setenv("TWOVIEW_MODEL", str(tmp_path / "missing.safetensors"))
    at = pick_sample(open_page("predict"))
    assert any("No model is available" in w and "Model" in w for w in texts(at, "warning"))
    assert button(at, "Predict").disabled


def test_landing_names_the_app_and_model_and_one_click_predicts_a_sample(open_page, tiny_model):
    at = open_page("predict")  # no choice made: a sample study is already there
    assert at.title[0].value.startswith("twoview")
    assert any("frontal and/or lateral chest X-ray" in m for m in texts(at, "markdown"))
    assert any(m.startswith("Active model: **tiny.safetensors**, trained on") for m in texts(at, "markdown"))
    assert at.radio(key="mode").value == "A bundled sample study"
    assert not button(at, "Predict").disabled
    predict(at)
    assert len(results(at)) == 5
    assert any(m == "#### Study: sample TV000000000" for m in texts(at, "markdown"))
    assert any("Study UID" in c for c in texts(at, "caption"))


def test_sample_study_shows_every_head_against_its_threshold(open_page):
    at = pick_sample(open_page("predict"))
    controls = view_controls(at)
    assert [c.value for c in controls.values()] == ["frontal", "lateral"]
    reasons = [c for c in texts(at, "caption") if "ViewPosition" in c]
    assert len(reasons) == 2
    assert sum("confidence 98% (confident)" in m for m in texts(at, "markdown")) == 2
    assert len(at.get("image")) == 2  # a thumbnail per row
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
    at = set_view(pick_sample(open_page("predict")), "ST00000/SE002/2.dcm", "exclude")
    assert any("excluded by you" in m for m in texts(at, "markdown"))
    predict(at)
    assert any("frontal only" in m for m in texts(at, "markdown"))
    for row in results(at):
        assert row["final"] == pytest.approx(row["frontal"])
        assert row["lateral"] is None and row["joint"] is None
    assert captions(at) == ["frontal: ST00000/SE001/1.dcm"]


def test_swapping_views_swaps_the_images(open_page):
    at = pick_sample(open_page("predict"))
    set_view(at, "ST00000/SE001/1.dcm", "lateral")
    set_view(at, "ST00000/SE002/2.dcm", "frontal")
    predict(at)
    assert captions(at) == ["frontal: ST00000/SE002/2.dcm", "lateral: ST00000/SE001/1.dcm"]


def test_a_second_view_of_one_kind_says_set_aside_in_its_row(open_page):
    at = set_view(pick_sample(open_page("predict")), "ST00000/SE002/2.dcm", "frontal")
    shown = texts(at, "markdown")
    assert any("set aside: second frontal view" in m.replace("\\", "") for m in shown)
    assert any("used as the frontal view" in m for m in shown)


@pytest.fixture
def real_pair(tmp_path) -> tuple[bytes, bytes]:
    """A real frontal and lateral film of one patient (rp01, rp02), copied under neutral names."""
    if not (REAL / "rp01.jpg").is_file() or not (REAL / "rp02.jpg").is_file():
        pytest.skip(f"the real development radiographs are not at {REAL}")
    for name, copy in (("rp01.jpg", "a.jpg"), ("rp02.jpg", "b.jpg")):
        shutil.copy(REAL / name, tmp_path / copy)
    return (tmp_path / "a.jpg").read_bytes(), (tmp_path / "b.jpg").read_bytes()


def test_a_real_pair_under_neutral_names_is_never_predicted_with_a_wrong_view(open_page, real_pair):
    """The app used to predict "frontal only" on a real lateral film called b.jpg. Now each view is
    either the right one or left for the user to choose, and Predict waits for that choice."""
    frontal, lateral = real_pair
    truth = {"a.jpg": "frontal", "b.jpg": "lateral"}
    at = open_page("predict")
    at.radio(key="mode").set_value("Upload files").run()
    at.file_uploader[0].upload("a.jpg", frontal, "image/jpeg").upload("b.jpg", lateral, "image/jpeg").run()
    controls = view_controls(at)
    assert set(controls) == set(truth)
    assert all(c.value in (None, truth[name]) for name, c in controls.items())  # never a wrong guess
    unconfirmed = [name for name, c in controls.items() if c.value is None]
    assert button(at, "Predict").disabled == bool(unconfirmed)
    for name in unconfirmed:
        set_view(at, name, truth[name])
    assert not button(at, "Predict").disabled
    predict(at)
    assert any("joint: both views" in m for m in texts(at, "markdown"))
    assert captions(at) == ["frontal: a.jpg", "lateral: b.jpg"]
    assert f"#### Study: {markup.text('a.jpg + b.jpg')}" in texts(at, "markdown")


def test_a_picture_the_classifier_cannot_place_waits_for_the_user(open_page):
    """Noise is no chest film: its view starts unset, the warning says so, Predict waits for the choice."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (200, 160), dtype=np.uint8)).save(buffer, "PNG")
    at = open_page("predict")
    at.radio(key="mode").set_value("Upload files").run()
    at.file_uploader[0].upload("b.png", buffer.getvalue(), "image/png").run()
    assert view_controls(at)["b.png"].value is None  # nothing chosen for the user
    assert button(at, "Predict").disabled
    assert any("Confirm the view of 1 file(s)" in w for w in texts(at, "warning"))
    set_view(at, "b.png", "lateral")
    assert not button(at, "Predict").disabled


def test_views_that_need_confirmation_are_those_of_view_decision(open_page, real_pair):
    frontal, _ = real_pair
    at = open_page("predict")
    at.radio(key="mode").set_value("Upload files").run()
    at.file_uploader[0].upload("a.jpg", frontal, "image/jpeg").run()
    [source] = at.session_state["sources"]
    decision = ViewDecision(source.view, source.view_reason, source.view_confidence)
    assert (view_controls(at)["a.jpg"].value is None) == decision.needs_confirmation
    assert button(at, "Predict").disabled == decision.needs_confirmation


def test_uploaded_study_predicts_and_a_broken_file_gets_its_own_message(open_page):
    at = uploads(open_page("predict"))
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
    at = uploads(open_page("predict"))
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

    at = uploads(open_page("predict"))
    at.file_uploader[0].upload("chest_pa.png", png(FRONTAL), "image/png")
    at.file_uploader[0].upload("chest_lateral.png", png(LATERAL), "image/png").run()
    assert button(at, "Predict").disabled  # views from file names alone are for the user to confirm
    set_view(at, "chest_pa.png", "frontal")
    predict(set_view(at, "chest_lateral.png", "lateral"))
    assert [s.study_id for s in at.session_state["sources"]] == ["upload", "upload"]
    assert any("joint" in m for m in texts(at, "markdown") if m.startswith("**Route:**"))


def test_a_new_upload_removes_the_previous_folder(open_page):
    at = uploads(open_page("predict"))
    at.file_uploader[0].upload("IM0001", FRONTAL.read_bytes(), "application/dicom").run()
    first = at.session_state["upload_folder"].root
    assert first.is_dir()
    at.file_uploader[0].clear().upload("2.dcm", LATERAL.read_bytes(), "application/dicom").run()
    assert not first.exists()
    assert at.session_state["upload_folder"].root.is_dir()


def heat_on(at):
    [toggle] = [t for t in at.toggle if t.key.startswith("heat|") and t.key.endswith("|on")]
    toggle.set_value(True)
    return at.run()


def widget_by_key_end(elements, end: str):
    [found] = [e for e in elements if e.key and e.key.endswith(end)]
    return found


def figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_heatmap_defaults_to_the_most_probable_positive_finding_and_names_its_head(open_page):
    at = heat_on(predict(pick_sample(open_page("predict"))))
    assert not at.exception, at.exception
    item = at.session_state["predictions"]["items"][0]
    final = item.final
    positive = [label for label, p in final.items() if p >= THRESHOLDS.get(label, 0.5)]
    expected = max(positive or final, key=final.__getitem__)
    assert widget_by_key_end(at.selectbox, "|label").value == expected
    shown = [c for c in texts(at, "caption") if c.startswith("Grad-CAM of")]
    assert len(shown) == 2 and all(f"**joint head** for **{markup.text(expected)}**" in c for c in shown)
    heatmaps = [heat for key, heat in at.session_state["heatmaps"].items() if key[-2:] == (expected, "joint")]
    assert [h.shape for h in heatmaps] == [read_image(p).pixels.shape for p in (FRONTAL, LATERAL)]
    for spec in figures(at):
        assert [trace["type"] for trace in spec["data"]] == ["image", "heatmap"]
        assert (
            spec["data"][1]["opacity"] == 0.45 and spec["data"][1]["colorbar"]["title"]["text"] == "Grad-CAM"
        )
    widget_by_key_end(at.selectbox, "|head").set_value("own").run()
    widget_by_key_end(at.slider, "|opacity").set_value(0.8).run()
    widget_by_key_end(at.selectbox, "|colours").set_value("Inferno").run()
    shown = [c for c in texts(at, "caption") if c.startswith("Grad-CAM of")]
    assert "**frontal head**" in shown[0] and "**lateral head**" in shown[1]
    assert {spec["data"][1]["opacity"] for spec in figures(at)} == {0.8}


def test_the_viewer_windows_the_full_resolution_values_with_presets_invert_and_reset(open_page):
    at = predict(pick_sample(open_page("predict")))
    key = f"wl|{FRONTAL}"
    first = figures(at)[0]["data"][0]["source"]
    picture = Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1])))
    assert picture.size[::-1] == read_image(FRONTAL).pixels.shape  # the film's own size, not the 224 px input
    default = (at.session_state[f"{key}|centre"], at.session_state[f"{key}|width"])
    at.selectbox(key=f"{key}|preset").set_value("lungs (least dense 70 %)").run()
    lungs = (at.session_state[f"{key}|centre"], at.session_state[f"{key}|width"])
    assert lungs != default and at.slider(key=f"{key}|centre").value == lungs[0]
    assert figures(at)[0]["data"][0]["source"] != first
    at.slider(key=f"{key}|width").set_value(default[1] / 4).run()
    at.toggle(key=f"{key}|invert").set_value(True).run()
    assert figures(at)[0]["data"][0]["source"] != first
    at.button(key=f"{key}|reset").click().run()
    assert (at.session_state[f"{key}|centre"], at.session_state[f"{key}|width"]) == default
    assert not at.session_state[f"{key}|invert"]
    assert figures(at)[0]["data"][0]["source"] == first
    assert figures(at)[0]["layout"]["dragmode"] == "pan"


def test_strong_disagreement_between_the_view_heads_is_flagged(open_page):
    at = predict(pick_sample(open_page("predict")))
    assert not [w for w in texts(at, "warning") if "heads disagree" in w]
    results = at.session_state["predictions"]
    item = results["items"][0]
    forced = replace(item, frontal={**item.frontal, "nodule": 0.98}, lateral={**item.lateral, "nodule": 0.47})
    at.session_state["predictions"] = {**results, "items": [forced]}
    at.run()
    [flag] = [w for w in texts(at, "warning") if "heads disagree" in w]
    assert "nodule" in flag and "frontal 0.98 vs lateral 0.47" in flag


def test_downloads_can_be_deidentified_with_the_predict_keys_pseudonyms(open_page, monkeypatch):
    key = "k" * 32
    monkeypatch.setenv(DEIDENTIFY_KEY_ENV, key)
    at = predict(pick_sample(open_page("predict")))
    uid = at.session_state["predictions"]["items"][0].study_id
    assert uid in at.session_state["downloads"]["csv"].decode()
    at.checkbox(key="deidentify").check().run()
    assert not at.exception, at.exception
    plain = at.session_state["downloads"]["csv"].decode() + at.session_state["downloads"]["jsonl"].decode()
    assert uid not in plain and "ST00000" not in plain
    assert Deidentifier(key).study_id(uid) in plain
    assert {b.proto.label for b in at.get("download_button")} == {"Download CSV", "Download JSON Lines"}


def test_deidentify_is_off_without_a_key(open_page, monkeypatch):
    monkeypatch.delenv(DEIDENTIFY_KEY_ENV, raising=False)
    at = predict(pick_sample(open_page("predict")))
    assert at.checkbox(key="deidentify").disabled


def zip_of(tmp_path: Path, name: str, members: list[tuple[str, bytes, int]]) -> bytes:
    return zeros_zip(tmp_path / name, members).read_bytes()


def all_text(at) -> list[str]:
    return [*(texts(at, k) for k in ("markdown", "error", "warning", "caption", "success", "info"))]


def test_a_header_followed_by_zeros_is_set_aside_in_seconds(open_page, tmp_path):
    """pydicom walked the zeros for 12.5 minutes with no way to cancel; now the read budget stops it."""
    header = dicom_header()
    at = uploads(open_page("predict"))
    at.file_uploader[0].upload("zeros.zip", zip_of(tmp_path, "z.zip", [("IM0001", header, 200 * MiB)])).run()
    errors = texts(at, "error")
    assert len(errors) == 1 and "elements" in errors[0] and "IM0001" in errors[0]


def test_images_past_the_upload_pixel_budget_are_not_decoded(open_page, tmp_path):
    """Four 16384 px films took the server from 2.9 to 5.3 GB; pixels are now capped per upload, from headers."""
    header, zeros = huge_dicom(8192)  # 67 M pixels each: two fit in 150 M
    members = [(f"IM{i}", header, zeros) for i in range(4)]
    at = uploads(open_page("predict"))
    at.file_uploader[0].upload("films.zip", zip_of(tmp_path, "f.zip", members)).run()
    errors = texts(at, "error")
    assert len(errors) == 4
    assert sum("past 150 megapixels" in e for e in errors) == 2
    assert sum("same value" in e for e in errors) == 2  # decoded (in the reader) and found blank


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("bomb.png", lambda tmp: png_bomb(30000), "too large to load"),
        ("wide.dcm", lambda tmp: dicom_header(65535, 65535), "more than 16384 on a side"),
        (
            "bomb.zip",
            lambda tmp: zip_of(tmp, "b.zip", [("zeros.dcm", b"", 4 * GiB)]),
            "holds a file of 4.0 GiB",
        ),
        ("liar.zip", lambda tmp: understated_zip(tmp / "liar.zip").read_bytes(), "Bad CRC"),
        (
            "four.zip",
            lambda tmp: zip_of(tmp, "four.zip", [(f"IM{i}", *huge_dicom(16384)) for i in range(4)]),
            "holds a file of 512 MiB",
        ),
    ],
)
def test_hostile_uploads_are_refused_with_a_message(open_page, tmp_path, name, make, message):
    at = uploads(open_page("predict"))
    at.file_uploader[0].upload(name, make(tmp_path)).run()
    assert not at.exception, at.exception
    errors = texts(at, "error")
    assert len(errors) == 1 and message in errors[0] and name.split(".")[0] in errors[0]
    root = at.session_state["upload_folder"].root
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 10 * MiB  # nothing big was kept


def test_a_reader_past_its_time_limit_is_stopped_and_named(open_page, monkeypatch):
    monkeypatch.setenv("TWOVIEW_READ_SECONDS", "0.001")
    at = uploads(open_page("predict"))
    at.file_uploader[0].upload("IM0001", FRONTAL.read_bytes(), "application/dicom").run()
    errors = texts(at, "error")
    assert len(errors) == 1 and "took longer than 0.001 s" in errors[0]


def test_markup_in_dicom_tags_is_shown_as_text(open_page):
    """A Modality or StudyInstanceUID of `![x](url)` made the browser fetch the URL."""
    at = uploads(open_page("predict"))
    at.file_uploader[0].upload("refused.dcm", markup_dicom("http://127.0.0.1:9"), "application/dicom")
    at.file_uploader[0].upload(
        "read.dcm", markup_dicom("http://127.0.0.1:9", readable=True), "application/dicom"
    )
    predict(at.run())
    shown = [t for group in all_text(at) for t in group]
    assert any("\\!\\[M\\]" in t for t in shown)  # the refusal names the Modality (upper case), escaped
    assert any(t.startswith("Study UID") and "\\!\\[s\\]" in t for t in shown)
    assert not [t for t in shown if "![" in t or "<img" in t]
    assert not [c for c in captions(at) if "![" in c]


def test_the_session_image_cache_stays_bounded(open_page):
    at = heat_on(predict(pick_sample(open_page("predict"))))
    for name in ("TV000000001", "TV000000002", "TV000000003"):
        predict(pick_sample(at, name))
    assert at.session_state["pixels"].nbytes <= common.CACHE_BYTES
    assert at.session_state["heatmaps"].nbytes <= common.CACHE_BYTES
