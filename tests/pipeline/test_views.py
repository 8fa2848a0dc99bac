"""pipeline.views: each kind of evidence, its priority, and the pixel step."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from pipeline.dicom import XrayImage, read_image
from pipeline.view_classifier import load_classifier
from pipeline.views import View, ViewDecision, detect_view, view_from_pixels, view_from_text

F, L = View.FRONTAL, View.LATERAL


def _image(pixels: np.ndarray | None = None, name: str = "image.dcm", **tags: str) -> XrayImage:
    """An XrayImage with only the given tags."""
    empty = np.zeros((0, 0), dtype=np.float32)
    return XrayImage(pixels=empty if pixels is None else pixels, path=Path(name), **tags)


@pytest.fixture(scope="module")
def rg1_untagged() -> list[XrayImage]:
    """RG1 (uncompressed and lossy J2K) with every view tag and description removed."""
    images = [read_image(get_testdata_file(name)) for name in ("RG1_UNCR.dcm", "RG1_J2KI.dcm")]
    return [replace(i, view_position="", patient_orientation="", path=Path("x.dcm")) for i in images]


@pytest.mark.parametrize(
    ("value", "view"),
    [
        ("PA", F),
        ("AP", F),
        ("pa", F),
        ("AP SUPINE", F),
        ("LL", L),
        ("RL", L),
        ("LAT", L),
        ("LATERAL", L),
        ("LLD", L),
        ("RLD", L),
    ],
)
def test_view_position(value: str, view: View) -> None:
    decision = detect_view(_image(view_position=value, series_description="frontal"))
    assert decision.view is view
    assert f"'{value.upper()}'" in decision.reason and "ViewPosition" in decision.reason
    assert 0.5 <= decision.confidence <= 1.0


def test_oblique_view_position_is_unknown() -> None:
    assert detect_view(_image(view_position="RAO")).view is None


@pytest.mark.parametrize(
    ("orientation", "view"),
    [
        ("L\\F", F),
        ("R\\F", F),
        ("RH\\F", F),
        ("F\\L", F),
        ("A\\F", L),
        ("P\\F", L),
        ("H\\P", L),
        ("L\\P", None),
        ("L", None),
    ],
)
def test_patient_orientation(orientation: str, view: View | None) -> None:
    decision = detect_view(_image(view_position="XYZ", patient_orientation=orientation), use_pixels=False)
    assert decision.view is view
    if view is not None:
        assert "Patient Orientation" in decision.reason


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("THORAX PA", F),
        ("Thorax p.a.", F),
        ("Chest PA erect", F),
        ("Chest AP portable", F),
        ("Thorax a.p. liegend", F),
        ("postero-anterior", F),
        ("Posteroanterior chest", F),
        ("Tórax frente", F),
        ("Radiographie thoracique de face", F),
        ("Torace frontale", F),
        ("CHEST LAT", L),
        ("Chest lateral", L),
        ("Thorax seitlich", L),
        ("Thorax seitl.", L),
        ("Poumons profil", L),
        ("Thorax latéral", L),
        ("Tórax perfil", L),
        ("Torace laterale", L),
        ("paediatric chest", None),
        ("Pediatric chest", None),
        ("Bilateral hands", None),
        ("Capacity test", None),
        ("PA + LAT", None),
        ("Thorax 2 Ebenen", None),
        ("", None),
    ],
)
def test_description_keywords(text: str, view: View | None) -> None:
    decision = detect_view(_image(series_description=text), use_pixels=False)
    assert decision.view is view, decision.reason
    if view is not None:
        assert "series description" in decision.reason and decision.confidence == pytest.approx(0.8)


def test_protocol_name_used_when_series_description_is_silent() -> None:
    decision = detect_view(_image(series_description="Chest", protocol_name="Thorax seitlich"))
    assert decision.view is L and "protocol name" in decision.reason


def test_view_code_sequence_meaning() -> None:
    decision = detect_view(_image(view_code_meaning="postero-anterior", series_description="lateral"))
    assert decision.view is F and "View Code" in decision.reason


@pytest.mark.parametrize(
    ("name", "view"), [("view1_frontal.jpg", F), ("patient7_lat.png", L), ("scan_0001.png", None)]
)
def test_file_name(name: str, view: View | None) -> None:
    decision = detect_view(_image(name=name), use_pixels=False)
    assert decision.view is view
    if view is not None:
        assert decision.confidence < 0.8


def test_tags_outrank_orientation_and_descriptions() -> None:
    image = _image(view_position="LL", patient_orientation="L\\F", series_description="Thorax PA")
    assert detect_view(image).view is L
    image = _image(patient_orientation="A\\F", series_description="Thorax PA", name="frontal.dcm")
    assert detect_view(image).view is L


def test_no_evidence_at_all_is_unknown() -> None:
    decision = detect_view(_image())
    assert decision.view is None and decision.confidence == 0.0


def test_rg1_without_tags_is_frontal_from_pixels(rg1_untagged: list[XrayImage]) -> None:
    """The real PA film, every view tag removed: the view classifier calls it frontal."""
    for image in rg1_untagged:
        decision = detect_view(image)
        assert decision.view is F, decision.reason
        assert decision.reason.startswith("no view tags; the view classifier says frontal")
        assert load_classifier().config.threshold <= decision.confidence <= 1.0


def test_rg1_on_its_side_is_not_called_a_view(rg1_untagged: list[XrayImage]) -> None:
    """A film turned 90 degrees is no upright chest film: the user is asked, nothing is guessed."""
    decision = view_from_pixels(np.rot90(rg1_untagged[0].pixels))
    assert decision.view is None and "confirm the view" in decision.reason


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((300, 240), np.float32), np.random.default_rng(0).random((256, 256), dtype=np.float32)],
    ids=["blank", "noise"],
)
def test_blank_or_noise_is_unknown_with_the_reason(pixels: np.ndarray) -> None:
    decision = detect_view(_image(pixels))
    assert decision.view is None
    assert decision.reason.startswith("no view tags") and decision.reason.endswith("confirm the view")


def test_phantom_views_from_pixels() -> None:
    """Held-out phantom patients (a seed training never used): every film gets its own view."""
    phantom = pytest.importorskip("sample_data.phantom")
    anatomy = pytest.importorskip("sample_data.anatomy")
    for seed in range(1000, 1006):
        views = phantom.simulate(anatomy.random_patient(np.random.default_rng(seed)), size=256)
        assert view_from_pixels(views.frontal).view is F, seed
        assert view_from_pixels(views.lateral).view is L, seed


@given(st.text(max_size=60))
def test_view_from_text_never_fails(text: str) -> None:
    decision = view_from_text(text, "series description")
    assert decision is None or (0.0 <= decision.confidence <= 1.0 and isinstance(decision.reason, str))


def test_views_from_weak_evidence_ask_for_confirmation():
    assert ViewDecision(None, "no tags", 0.0).needs_confirmation
    assert ViewDecision(L, "file name", 0.7).needs_confirmation
    assert not ViewDecision(F, "ViewPosition PA", 0.98).needs_confirmation
    assert not ViewDecision(L, "set by the user", 1.0).needs_confirmation
