"""What every page shares: the app's folders, this session's active model (loaded once per process), the
model's notice, each browser session's upload folder and file reader, bounded image caches, and error display.

The active model is each browser session's own (README, "Whose model"): choosing one on the Model page
or after Fine-tune never changes what another user's predictions come from.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from app import markup
from models.checkpoint import read_config
from models.config import ModelConfig
from models.errors import ModelError
from pipeline.errors import TwoviewError
from pipeline.explain import Explainer
from pipeline.isolate import Isolated
from pipeline.modelcard import ModelSummary, summarise
from pipeline.predict import DEMO_MODEL, Predictor

logger = logging.getLogger("twoview.app")

#: Torch threads per prediction in the app (`$TWOVIEW_APP_THREADS`, default 1). The app predicts one
#: study at a time for each of several sessions; on a shared 2-core machine two OpenMP threads made
#: Predict 11 s instead of 0.13 s and two heatmaps 42 s instead of 0.75 s (bench/app_pages.py).
APP_THREADS = int(os.environ.get("TWOVIEW_APP_THREADS") or 1)
torch.set_num_threads(APP_THREADS)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_STUDIES = REPO / "sample_data" / "studies"
BUNDLED_MODELS = REPO / "sample_data" / "models"
APP_NAME = "twoview"
APP_LINE = (
    "Finds five chest findings on a frontal and/or lateral chest X-ray, shows what each view's head "
    "thinks, and where it looked (Grad-CAM)."
)
DISPLAY_SIDE = 2048  # images are kept (and explained) at most this big: the browser shows 1024
CACHE_BYTES = 128 * 2**20  # each session's decoded images, and its heatmaps, at most this much each


def app_dir() -> Path:
    """Where the app keeps runs, uploaded models and job records: `$TWOVIEW_APP_DIR`, else ~/.twoview/app."""
    path = Path(os.environ.get("TWOVIEW_APP_DIR") or Path.home() / ".twoview" / "app")
    path.mkdir(parents=True, exist_ok=True)
    return path


def folder(name: str) -> Path:
    """A sub-folder of the app folder: runs, models, jobs, batch."""
    path = app_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_model() -> Path:
    """`$TWOVIEW_MODEL` if set, else the bundled demo model."""
    env = os.environ.get("TWOVIEW_MODEL")
    return Path(env) if env else DEMO_MODEL


def active_model() -> Path:
    """The model this browser session picked (Model or Fine-tune page), else the default."""
    chosen = st.session_state.get("active_model")
    return Path(chosen) if chosen else default_model()


def set_active_model(path: Path | None) -> None:
    """Make `path` the active model of this browser session only (None: back to the default)."""
    if path is None:
        st.session_state.pop("active_model", None)
    else:
        st.session_state["active_model"] = str(path)
    logger.info("active model of a session: %s", active_model())


def model_ready(path: Path) -> bool:
    return path.is_file()


def no_model_message(path: Path) -> str:
    return (
        f"No model is available: {markup.text(path)} does not exist. Pick or upload a `.safetensors` checkpoint on the "
        "**Model** page, train one on **Fine-tune**, or start the app with `twoview app --model PATH` "
        "(or set `TWOVIEW_MODEL`)."
    )


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError as err:
        raise TwoviewError(f"{path}: model file not found") from err


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _predictor(path: str, mtime_ns: int) -> Predictor:
    predictor = Predictor(Path(path), fast=True)  # reads the checkpoint itself: no copy of a loaded model
    _ = predictor.model  # now, under the spinner (a damaged file is refused here)
    logger.info("loaded model %s", path)
    return predictor


@st.cache_resource(max_entries=2, show_spinner=False)
def _explainer(path: str, mtime_ns: int) -> Explainer:
    return Explainer(_predictor(path, mtime_ns).model)


def predictor(path: Path) -> Predictor:
    """The model at `path`, loaded once per process (reloaded when the file changes)."""
    return _predictor(str(path), _stamp(path))


def explainer(path: Path) -> Explainer:
    """Grad-CAM for the model at `path`, made once per process."""
    return _explainer(str(path), _stamp(path))


def model_config(path: Path) -> ModelConfig:
    return read_config(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _summary(path: str, mtime_ns: int) -> ModelSummary:
    return summarise(path, read_config(path))


def model_summary(path: Path) -> ModelSummary:
    """What the model at `path` was trained on, its synthetic-only notice and its card."""
    return _summary(str(path), _stamp(path))


def show_notice(path: Path) -> None:
    """The model's synthetic-only notice, if it has one: every page that shows or makes its outputs calls this."""
    if model_ready(path):
        notice = model_summary(path).notice
        if notice:
            st.warning(f"**{markup.text(notice)}**", icon=":material/science:")


def model_line(path: Path) -> str:
    """One Markdown line: the active model's file name and what it was trained on (escaped)."""
    if not model_ready(path):
        return f"Active model: none ({markup.text(path)} does not exist)"
    summary = model_summary(path)
    return f"Active model: **{markup.text(path.name)}**, trained on {markup.text(summary.trained_on)}"


class Session:
    """What one browser session holds on the server: a folder for its uploads and a killable file reader."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="twoview-session-"))
        self.reader = Isolated()  # $TWOVIEW_READ_SECONDS per file
        self._finalizer = weakref.finalize(self, _end_session, self.root, self.reader)

    def close(self) -> None:
        """Remove the upload folder and end the reader's child process."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


def _end_session(root: Path, reader: Isolated) -> None:
    reader.close()
    shutil.rmtree(root, ignore_errors=True)
    logger.info("session ended: removed %s", root)


@st.cache_resource(scope="session", on_release=Session.close, show_spinner=False, max_entries=1)
def _session(token: str) -> Session:
    return Session()


def session() -> Session:
    """This browser session's `Session`; released (its folder removed) when the session disconnects.

    Keyed by a token in the session's state as well as by the session: a new state (a new tab, or
    each AppTest) gets its own even where two share a session id.
    """
    token = st.session_state.setdefault("session_token", uuid.uuid4().hex)
    current = _session(token)
    st.session_state["session"] = current
    return current


class BoundedCache:
    """Arrays (or objects with a `values` array) kept for a session by key, the least recently used
    dropped past `limit` bytes."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        while len(self._items) > 1 and self.nbytes > self.limit:
            self._items.popitem(last=False)
        return value

    @property
    def nbytes(self) -> int:
        return sum(getattr(v, "nbytes", None) or v.values.nbytes for v in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return self._items.items()


@contextmanager
def user_errors() -> Iterator[None]:
    """Show twoview's own errors as a message (its text escaped), never as a traceback."""
    try:
        yield
    except (TwoviewError, ModelError) as err:
        st.error(markup.text(err))


def to_display(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] float pixels (already windowed by `read_image`) as 8-bit grey for the browser."""
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def fit(picture: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """A picture no bigger than `max_side` on its long side, so big films stay quick to send."""
    rows, cols = picture.shape[:2]
    step = max(1, -(-max(rows, cols) // max_side))
    return picture[::step, ::step]
