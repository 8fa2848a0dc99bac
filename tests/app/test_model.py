"""The Model page: the active model's card, picking a checkpoint, uploads (pickles refused)."""

from __future__ import annotations

import io
import json
import re
import struct

import pytest
import torch

from app import common, markup
from models.checkpoint import save
from models.config import SYNTHETIC_NOTICE, ModelConfig
from models.twoview import TwoViewNet
from pipeline.predict import DEMO_MODEL
from tests.app.conftest import button, texts
from tests.hardening.attacks import pickle_bytes


def test_card_shows_labels_thresholds_and_network(open_page, tiny_model):
    at = open_page("model")
    labels = at.dataframe[0].value
    assert list(labels["label"]) == list(ModelConfig().labels)
    assert dict(zip(labels["label"], labels["threshold"], strict=True))["nodule"] == 0.3
    assert any("image size: 64 px" in m for m in texts(at, "markdown"))
    assert any(markup.text(tiny_model) in m for m in texts(at, "markdown"))


def test_missing_model_points_to_the_picker(open_page, monkeypatch, tmp_path):
    monkeypatch.setenv("TWOVIEW_MODEL", str(tmp_path / "gone.safetensors"))
    at = open_page("model")
    assert any("No model is available" in w for w in texts(at, "warning"))


def test_a_pickle_upload_is_refused_with_the_reason(open_page):
    at = open_page("model")
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    at.file_uploader(key="model_upload").upload("weights.pt", buffer.getvalue()).run()
    errors = texts(at, "error")
    assert len(errors) == 1 and "PyTorch pickle" in errors[0] and "weights.pt" in errors[0]
    assert not list((common.folder("models")).iterdir())


def test_an_uploaded_checkpoint_can_become_the_active_model(open_page, tmp_path):
    other = save(TwoViewNet(ModelConfig.tiny(labels=("a", "b"))), tmp_path / "mine.safetensors")
    at = open_page("model")
    at.file_uploader(key="model_upload").upload("mine.safetensors", other.read_bytes()).run()
    assert any("Saved as" in s for s in texts(at, "success"))
    choice = at.selectbox[0]
    assert "uploaded: mine.safetensors" in choice.options
    choice.set_value("uploaded: mine.safetensors").run()
    button(at, "Use this model").click().run()
    assert at.session_state["active_model"] == str(common.folder("models") / "mine.safetensors")
    assert list(at.dataframe[0].value["label"]) == ["a", "b"]
    button(at, "Back to the default model").click().run()
    assert "active_model" not in at.session_state


BIG = dict(
    init_features=1024, growth_rate=256, block_config=(128, 128, 128, 128), bn_size=16, fusion_layers=64
)


def forged(tmp_path, change: str) -> bytes:
    """A checkpoint the config validator accepts but a prediction would fail on."""
    path = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "real.safetensors")
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + size]), raw[8 + size :]
    if change == "173 G parameters":
        header = {"__metadata__": {**header["__metadata__"], "config": ModelConfig(**BIG).to_json()}}
        data = b""
    elif change == "a huge declared tensor":
        header["frontal.head.out.weight"]["shape"] = [2**20, 2**20]
    elif change == "a header longer than the file":
        return struct.pack("<Q", len(raw) * 4) + raw[8:]
    elif change == "a config without weights":
        header, data = {"__metadata__": header["__metadata__"]}, b""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("173 G parameters", "173,471.2 M parameters"),
        ("a huge declared tensor", "wrong shape"),
        ("a header longer than the file", "header claims"),
        ("a config without weights", "missing weights"),
    ],
)
def test_a_checkpoint_that_would_fail_at_predict_is_refused_at_upload(open_page, tmp_path, change, message):
    """These were saved and selectable, and failed only at Predict (the first took the server down)."""
    at = open_page("model")
    at.file_uploader(key="model_upload").upload("evil.safetensors", forged(tmp_path, change)).run()
    errors = texts(at, "error")
    assert len(errors) == 1 and message in errors[0] and "evil.safetensors" in errors[0]
    assert not list(common.folder("models").iterdir())
    assert not any("evil" in option for option in at.selectbox[0].options)


def test_a_pickle_renamed_safetensors_is_refused(open_page):
    at = open_page("model")
    at.file_uploader(key="model_upload").upload("weights.safetensors", pickle_bytes()).run()
    errors = texts(at, "error")
    assert len(errors) == 1 and "PyTorch pickle" in errors[0]
    assert not list(common.folder("models").iterdir())


def test_a_bad_file_placed_in_the_models_folder_cannot_become_the_active_model(open_page, tmp_path):
    (common.folder("models") / "placed.safetensors").write_bytes(forged(tmp_path, "173 G parameters"))
    at = open_page("model")
    at.selectbox[0].set_value("uploaded: placed.safetensors").run()
    button(at, "Use this model").click().run()
    assert any("173,471.2 M parameters" in e for e in texts(at, "error"))
    assert "active_model" not in at.session_state


def test_markup_in_checkpoint_metadata_and_labels_is_shown_as_text(open_page, tmp_path):
    url = "http://127.0.0.1:9/x.png"
    config = ModelConfig.tiny(
        labels=(f"![l]({url})", "b"), trained_on=f"<img src='{url}'>", provenance={"site": f"![p]({url})"}
    )
    path = save(TwoViewNet(config), tmp_path / "m.safetensors", extra={"note": f"[click]({url})"})
    at = open_page("model")
    at.file_uploader(key="model_upload").upload("m.safetensors", path.read_bytes()).run()
    at.selectbox[0].set_value("uploaded: m.safetensors").run()
    button(at, "Use this model").click().run()
    shown = [t for kind in ("markdown", "caption", "error", "success", "warning") for t in texts(at, kind)]
    assert any("\\!\\[p\\]" in t for t in shown) and any("\\[click\\]" in t for t in shown)
    assert not [t for t in shown if "![" in t or re.search(r"(?<!\\)<img", t) or "](" in t]
    assert any("\\<img" in t for t in shown)  # trained_on is shown, escaped


def test_choosing_a_model_changes_this_session_only(open_page, tmp_path):
    other = save(TwoViewNet(ModelConfig.tiny(labels=("a", "b"))), tmp_path / "mine.safetensors")
    mine = open_page("model")
    mine.file_uploader(key="model_upload").upload("mine.safetensors", other.read_bytes()).run()
    mine.selectbox[0].set_value("uploaded: mine.safetensors").run()
    button(mine, "Use this model").click().run()
    assert any("this browser session only" in c for c in texts(mine, "caption"))
    theirs = open_page("predict")  # another user's session
    assert any("tiny.safetensors" in m for m in texts(theirs, "markdown") if m.startswith("Active model"))
    mine.switch_page("screens/predict.py").run()
    assert any("mine.safetensors" in m for m in texts(mine, "markdown") if m.startswith("Active model"))


def test_the_demo_model_is_listed_once(open_page, monkeypatch):
    monkeypatch.setenv("TWOVIEW_MODEL", str(DEMO_MODEL))
    at = open_page("model")
    assert [o for o in at.selectbox[0].options if "demo.safetensors" in o] == ["default: demo.safetensors"]


@pytest.mark.parametrize("page", ["predict", "batch", "model"])
def test_the_synthetic_only_notice_is_on_screen_whenever_the_demo_model_is_active(
    open_page, monkeypatch, page
):
    monkeypatch.setenv("TWOVIEW_MODEL", str(DEMO_MODEL))
    at = open_page(page)
    assert any(SYNTHETIC_NOTICE in w for w in (w.replace("\\", "") for w in texts(at, "warning")))


def test_a_model_flagged_synthetic_only_carries_the_notice_and_a_real_one_does_not(open_page, tmp_path):
    flagged = save(TwoViewNet(ModelConfig.tiny(synthetic_only=True)), tmp_path / "phantom.safetensors")
    at = open_page("model")
    assert not any("synthetic phantom images only" in w for w in texts(at, "warning"))  # the tiny model
    at.file_uploader(key="model_upload").upload("phantom.safetensors", flagged.read_bytes()).run()
    at.selectbox[0].set_value("uploaded: phantom.safetensors").run()
    button(at, "Use this model").click().run()
    assert any("synthetic phantom images only" in w for w in texts(at, "warning"))


def test_the_demo_models_card_shows_its_known_limits_and_held_out_aurocs(open_page, monkeypatch):
    monkeypatch.setenv("TWOVIEW_MODEL", str(DEMO_MODEL))
    at = open_page("model")
    card = (DEMO_MODEL.parent / "README.md").read_text()
    shown = "\n".join(texts(at, "markdown"))
    assert "Known limits" in shown and "Held-out test AUROC" in shown
    first_row = next(line for line in card.splitlines() if line.startswith("| final |"))
    assert first_row.split("|")[3].strip() in shown.replace("\\", "")  # a number read from the card
    assert any(m.startswith("**Trained on:**") and "synthetic" in m for m in texts(at, "markdown"))
