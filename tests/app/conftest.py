"""AppTest fixtures: a tiny checkpoint as the active model, a private app folder, and a page opener."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet

ENTRY = Path(__file__).resolve().parents[2] / "app" / "Home.py"
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
THRESHOLDS = {"nodule": 0.3}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint with one threshold set (the others default to 0.5)."""
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(thresholds=THRESHOLDS))
    return save(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path) -> Path:
    """The tiny model as TWOVIEW_MODEL and a fresh app folder (each AppTest session starts on the default model)."""
    monkeypatch.setenv("TWOVIEW_MODEL", str(tiny_model))
    monkeypatch.setenv("TWOVIEW_APP_DIR", str(tmp_path / "appdir"))
    return tmp_path / "appdir"


@pytest.fixture
def open_page(app_env: Path) -> Iterator[Callable[[str], AppTest]]:
    """Open one page ("predict", "batch", "finetune", "model") through the app's navigation."""

    opened: list[AppTest] = []

    def opener(name: str) -> AppTest:
        at = AppTest.from_file(str(ENTRY), default_timeout=60)
        opened.append(at)
        at.run()
        at.switch_page(f"screens/{name}.py").run()
        assert not at.exception, at.exception
        return at

    yield opener
    for at in opened:  # an AppTest session never disconnects: end its upload folder and reader here
        if "session" in at.session_state:
            at.session_state["session"].close()


def texts(at: AppTest, kind: str) -> list[str]:
    """The values of every element of one kind (error, warning, markdown, ...)."""
    return [str(e.value) for e in getattr(at, kind)]


def button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}; have {[b.label for b in at.button]}"
    return found[0]
