"""The phantom: deterministic patients, and findings that show on the views they should."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sample_data.anatomy import Patient
from sample_data.findings import Finding, FindingError
from sample_data.phantom import simulate
from sample_data.variants import Exam

PATIENT = Patient(seed=3, sex="F")


def _change(finding: Finding, size: int = 256) -> tuple[float, float]:
    """Peak change of each rendered view (same patient, same noise), smoothed over ~8 mm."""
    base = simulate(PATIENT, [], size=size, noise_seed=1)
    with_ = simulate(PATIENT, [finding], size=size, noise_seed=1)
    return tuple(
        float(ndimage.uniform_filter(np.abs(getattr(with_, v) - getattr(base, v)), 5).max())
        for v in ("frontal", "lateral")
    )


def test_same_patient_same_pixels_and_different_seeds_differ():
    a = simulate(Patient(seed=5), [], size=128)
    b = simulate(Patient(seed=5), [], size=128)
    c = simulate(Patient(seed=6, scale=1.08), [], size=128)
    assert np.array_equal(a.frontal, b.frontal) and np.array_equal(a.lateral, b.lateral)
    assert not np.array_equal(a.frontal, c.frontal)
    assert a.frontal.dtype == np.float32 and 0.0 <= a.frontal.min() and a.frontal.max() <= 1.0


def _body_band(profile: np.ndarray, lo: float, hi: float) -> float:
    """Mean of a column profile over a fraction [lo, hi] of the body's extent (where it is not air)."""
    body = np.flatnonzero(profile > 0.3)
    a, b = body[0], body[-1]
    return float(profile[a + int(lo * (b - a)) : a + int(hi * (b - a)) + 1].mean())


def test_orientation_bright_is_dense_and_heart_on_patient_left():
    r = simulate(PATIENT, [], size=128)
    f = r.frontal
    assert f[:8, :4].mean() < 0.1 and f[:8, -4:].mean() < 0.1  # air above the shoulders is dark
    rows = slice(70, 95)  # heart level
    assert f[rows, 64:90].mean() > f[rows, 38:64].mean()  # heart bulges to the image right (patient left)
    # Lateral: the heart sits in front, the retrocardiac lung behind it is darker (anterior = image left).
    profile = r.lateral[rows].mean(axis=0)
    assert _body_band(profile, 0.15, 0.4) > _body_band(profile, 0.45, 0.65) + 0.05


def test_lateral_facing_right_is_the_mirror_image():
    left = simulate(PATIENT, [], size=96, views=("lateral",), exam=Exam(facing="left"))
    right = simulate(PATIENT, [], size=96, views=("lateral",), exam=Exam(facing="right"))
    assert np.array_equal(left.lateral[:, ::-1], right.lateral)


def test_small_retrocardiac_nodule_shows_on_lateral_more_than_frontal():
    finding = Finding("nodule", 0.15, "retrocardiac")
    frontal, lateral = _change(finding)
    assert lateral > 1.5 * frontal
    truth = simulate(PATIENT, [finding], size=64).truth[0]
    assert truth.contrast_lateral > 1.5 * truth.contrast_frontal
    assert truth.visible_frontal is False


def test_small_effusion_shows_on_lateral_more_than_frontal():
    finding = Finding("pleural_effusion", 0.05, "left")
    frontal, lateral = _change(finding)
    assert lateral > 1.5 * frontal
    truth = simulate(PATIENT, [finding], size=64).truth[0]
    assert truth.visible_lateral and not truth.visible_frontal
    assert 5.0 < truth.size < 150.0  # mL


@pytest.mark.parametrize(
    "severity,low_ml,high_ml,frontal", [(0.12, 40.0, 65.0, False), (0.3, 150.0, 250.0, True)]
)
def test_effusion_volume_and_which_views_show_it(severity, low_ml, high_ml, frontal):
    """About 50 mL shows on the lateral only; about 200 mL blunts the PA's angle too."""
    truth = simulate(PATIENT, [Finding("pleural_effusion", severity, "left")], size=64).truth[0]
    assert low_ml < truth.size < high_ml
    assert truth.visible_lateral and truth.visible_frontal is frontal


def test_lateral_is_not_mirror_symmetric_like_a_frontal():
    """Heart in front, spine behind: a lateral's column profile is lopsided, a PA's is not."""
    r = simulate(PATIENT, [], size=128)
    rows = slice(40, 80)  # mid-chest

    def lopsided(img: np.ndarray) -> float:
        profile = img[rows].mean(axis=0)
        return float(np.abs(profile - profile[::-1]).mean())

    assert lopsided(r.lateral) > 2.0 * lopsided(r.frontal)


def test_cardiomegaly_raises_ctr_and_widens_frontal_heart():
    normal = simulate(PATIENT, [], size=128)
    big = simulate(PATIENT, [Finding("cardiomegaly", 0.5, "heart")], size=128)
    assert normal.cardiothoracic_ratio < 0.5 < big.cardiothoracic_ratio
    assert big.truth[0].size == pytest.approx(big.cardiothoracic_ratio, abs=1e-3)
    assert big.truth[0].visible_frontal


@pytest.mark.parametrize(
    "label,site", [("pneumothorax", "right"), ("consolidation", "RUL"), ("nodule", "upper")]
)
def test_other_findings_are_visible_somewhere(label, site):
    truth = simulate(PATIENT, [Finding(label, 0.6, site)], size=64).truth[0]
    assert truth.visible_frontal or truth.visible_lateral
    if label == "pneumothorax":
        assert truth.contrast_frontal > truth.contrast_lateral


@pytest.mark.parametrize(
    "kwargs", [dict(label="edema", severity=0.5, site="left"), dict(label="nodule", severity=0.0, site="any")]
)
def test_bad_findings_raise(kwargs):
    with pytest.raises(FindingError):
        Finding(**kwargs)
