"""What a viewer shows: an image's own values, windowed; the model card; the heads' disagreement rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.config import SYNTHETIC_NOTICE, ModelConfig
from pipeline.dicom import read_image, read_values, shrink
from pipeline.display import PRESETS, presets, window
from pipeline.isolate import read_pixels
from pipeline.modelcard import card_sections, summarise
from pipeline.predict import DEMO_MODEL
from pipeline.records import DISAGREE_AT, StudyPrediction

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
FRONTAL = SAMPLE / "TV000000000" / "ST00000" / "SE001" / "1.dcm"


def test_dicom_values_are_modality_values_with_the_files_window():
    ds = pydicom.dcmread(FRONTAL)
    image = read_values(FRONTAL)
    stored = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    assert np.array_equal(image.values, stored)
    if "WindowCenter" in ds:
        assert (image.centre, image.width) == (float(ds.WindowCenter), float(ds.WindowWidth))
        assert image.window_from == "the file's window (VOI)"
    assert image.values.shape == read_image(FRONTAL).pixels.shape


def test_shrunk_values_line_up_with_the_shrunk_pixels_grad_cam_explains():
    values, pixels = read_values(FRONTAL, 200).values, read_pixels(FRONTAL, 200)
    assert values.shape == pixels.shape and max(values.shape) <= 200
    assert np.corrcoef(values.ravel(), pixels.ravel())[0, 1] > 0.9  # the same picture


def test_a_16_bit_png_keeps_its_levels_and_gets_a_percentile_window(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    image = read_values(tmp_path / "ramp.png")
    assert np.array_equal(image.values, ramp.astype(np.float32))
    assert image.window_from.startswith("the image's") and 0 < image.centre < 65535 and image.width > 0


def test_window_maps_centre_and_width_to_black_and_white_and_inverts():
    values = np.array([[0.0, 50.0, 100.0, 200.0]])
    assert window(values, 100, 100).tolist() == [[0, 0, 128, 255]]
    assert window(values, 100, 100, invert=True).tolist() == [[255, 255, 128, 0]]


def test_presets_span_their_share_of_the_histogram_and_flip_for_monochrome1():
    image = read_values(FRONTAL)
    windows = presets(image)
    assert list(windows) == list(PRESETS)
    assert windows["file default"] == (image.centre, image.width)
    lungs, dense = windows["lungs (least dense 70 %)"], windows["mediastinum and bone (densest 50 %)"]
    assert lungs.centre < dense.centre
    flipped = presets(type(image)(image.values, image.path, image.centre, image.width, "", monochrome1=True))
    assert flipped["lungs (least dense 70 %)"].centre > flipped["mediastinum and bone (densest 50 %)"].centre


def test_shrink_cuts_to_whole_blocks():
    assert shrink(np.ones((10, 7), np.float32), 5).shape == (5, 3)
    assert shrink(np.ones((4, 4), np.float32), 8).shape == (4, 4)


def prediction(frontal: float | None, lateral: float | None) -> StudyPrediction:
    return StudyPrediction(
        "s", "joint", {"a": 0.5}, {"a": frontal}, {"a": lateral}, {"a": 0.5}, {}, None, None
    )


@pytest.mark.parametrize(
    ("frontal", "lateral", "flagged"),
    [(0.98, 0.47, True), (0.25, 0.75, True), (0.9, 0.5, False), (0.9, None, False)],
)
def test_strong_disagreement_between_the_view_heads(frontal, lateral, flagged):
    assert DISAGREE_AT == 0.5
    assert bool(prediction(frontal, lateral).disagreements()) == flagged


def test_the_demo_model_carries_the_notice_and_its_card():
    from models.checkpoint import read_config

    summary = summarise(DEMO_MODEL, read_config(DEMO_MODEL))
    assert summary.notice == SYNTHETIC_NOTICE and summary.is_demo and "synthetic" in summary.trained_on
    assert "## Known limits" in card_sections(summary.card, "known limits")
    aurocs = card_sections(summary.card, "AUROC")
    assert aurocs.startswith("## Held-out test AUROC") and "### What the lateral view adds" in aurocs
    assert "Known limits" not in aurocs


def test_a_model_of_its_own_says_what_it_was_trained_on(tmp_path):
    path = tmp_path / "mine.safetensors"
    plain = summarise(path, ModelConfig.tiny())
    assert (
        plain.notice is None and plain.card is None and plain.trained_on == "not recorded in the checkpoint"
    )
    flagged = summarise(path, ModelConfig.tiny(trained_on="900 studies from a.csv", synthetic_only=True))
    assert (
        flagged.notice == SYNTHETIC_NOTICE
        and flagged.trained_on == "900 studies from a.csv (synthetic phantoms only)"
    )
