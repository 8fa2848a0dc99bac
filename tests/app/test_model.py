"""The Model page: the active model's card, picking a checkpoint, uploads (pickles refused)."""

from __future__ import annotations

import io

import torch

from app import common
from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from tests.app.conftest import button, texts


def test_card_shows_labels_thresholds_and_network(open_page, tiny_model):
    at = open_page("model")
    labels = at.dataframe[0].value
    assert list(labels["label"]) == list(ModelConfig().labels)
    assert dict(zip(labels["label"], labels["threshold"], strict=True))["nodule"] == 0.3
    assert any("image size: 64 px" in m for m in texts(at, "markdown"))
    assert any(str(tiny_model) in m for m in texts(at, "markdown"))


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
    assert common.active_model() == common.folder("models") / "mine.safetensors"
    assert list(at.dataframe[0].value["label"]) == ["a", "b"]
    button(at, "Back to the default model").click().run()
    assert common.active_model() == common.default_model()
