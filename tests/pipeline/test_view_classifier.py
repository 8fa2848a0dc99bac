"""pipeline.view_classifier: the bundled weights, preprocessing, calibration, and the real-film check."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models.viewnet import ViewNet, ViewNetConfig, save_viewnet
from pipeline import view_classifier
from pipeline.dicom import read_image
from pipeline.view_classifier import VIEW_CLASSIFIER, classify, load_classifier, prepare
from pipeline.views import detect_view

REAL_DEV = Path(
    os.environ.get("TWOVIEW_REAL_DEV") or Path(__file__).resolve().parents[2].parent / "shared" / "real-dev"
)


@pytest.fixture(scope="module")
def frontal_film() -> np.ndarray:
    from sample_data.anatomy import random_patient
    from sample_data.phantom import simulate

    return simulate(random_patient(np.random.default_rng(1234)), size=256, views=("frontal",)).frontal


def test_bundled_weights_are_small_calibrated_and_loaded_once() -> None:
    assert VIEW_CLASSIFIER.stat().st_size <= 5 * 2**20
    model = load_classifier()
    assert load_classifier() is model and not model.training
    config = model.config
    assert config.classes == ("frontal", "lateral", "other")
    assert 0.5 < config.threshold < 1.0 and config.temperature > 0
    assert {"seed", "train_patients", "val_confusion"} <= set(config.provenance)


def test_prepare_keeps_aspect_and_ignores_exposure() -> None:
    rng = np.random.default_rng(0)
    tall = rng.random((400, 200), dtype=np.float32)
    out = prepare(tall, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert not out[:, :16].any() and not out[:, -16:].any() and out[:, 16:48].any()  # black side bars
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(prepare(0.2 + 0.5 * tall, 64), out, atol=1e-5)  # linear exposure change
    with pytest.raises(ValueError, match="non-empty"):
        prepare(np.zeros((0, 5), np.float32), 64)


def test_classify_is_deterministic_mirror_symmetric_and_exposure_robust(frontal_film: np.ndarray) -> None:
    first = classify(frontal_film)
    assert classify(frontal_film) == first
    assert (
        first.chest_film
        and first.view[0] == "frontal"
        and sum(first.probabilities.values()) == pytest.approx(1.0)
    )
    mirrored = classify(np.ascontiguousarray(frontal_film[:, ::-1])).probabilities
    for name, p in first.probabilities.items():
        assert mirrored[name] == pytest.approx(p, abs=1e-4)
    darker = classify(frontal_film**1.6)  # another look-up table
    assert darker.view[0] == "frontal"


def test_another_weights_file_can_be_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frontal_film
) -> None:
    """`TWOVIEW_VIEW_CLASSIFIER` swaps in retrained weights; a net at threshold 1.0 never decides."""
    net = ViewNet(ViewNetConfig(image_size=32, resolutions=(8,), hidden=4, threshold=1.0))
    with torch.no_grad():  # leaning to "frontal" whatever the film, so the reason is fixed, not the init's
        net.members[0].out.weight.zero_()
        net.members[0].out.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    path = save_viewnet(net, tmp_path / "v.safetensors")
    monkeypatch.setenv("TWOVIEW_VIEW_CLASSIFIER", str(path))
    assert load_classifier().config.resolutions == (8,)
    from pipeline.dicom import XrayImage

    decision = detect_view(XrayImage(pixels=frontal_film, path=Path("x.png")))
    assert decision.view is None and "is unsure (frontal " in decision.reason


def test_missing_weights_leave_the_view_unknown_with_the_reason(tmp_path, monkeypatch, frontal_film) -> None:
    monkeypatch.setattr(view_classifier, "VIEW_CLASSIFIER", tmp_path / "gone.safetensors")
    monkeypatch.delenv("TWOVIEW_VIEW_CLASSIFIER", raising=False)
    from pipeline.dicom import XrayImage

    decision = detect_view(XrayImage(pixels=frontal_film, path=Path("x.png")))
    assert decision.view is None
    assert "view classifier cannot run" in decision.reason and "gone.safetensors" in decision.reason


@pytest.mark.skipif(not (REAL_DEV / "views.csv").is_file(), reason=f"no real films at {REAL_DEV}")
def test_real_dev_films_targets() -> None:
    """The real development films (JPEG, no tags, neutral names): all laterals right, >= 53/55 frontals, none swapped."""
    table = {view: {"frontal": 0, "lateral": 0, "unknown": 0} for view in ("frontal", "lateral")}
    misses = []
    with open(REAL_DEV / "views.csv", newline="") as f:
        for row in csv.DictReader(f):
            decision = detect_view(read_image(REAL_DEV / row["file"]))
            called = decision.view.value if decision.view else "unknown"
            table[row["view"]][called] += 1
            if called != row["view"]:
                misses.append(f"{row['file']} ({row['view']}): {decision.reason}")
    print("\ntrue \\ called  frontal  lateral  unknown")
    for view, row in table.items():
        print(f"{view:<14} {row['frontal']:>7}  {row['lateral']:>7}  {row['unknown']:>7}")
    print("\n".join(misses))
    assert table["lateral"]["lateral"] == sum(table["lateral"].values()), misses
    assert table["frontal"]["lateral"] == 0, misses
    assert table["frontal"]["frontal"] >= sum(table["frontal"].values()) - 2, misses
