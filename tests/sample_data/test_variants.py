"""Real-film variants: each drawn at its share, seed-stable, recorded in truth.csv, and rendered sanely."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from sample_data.anatomy import HABITUS, HABITUS_SHARES, SCOLIOSIS_SHARE, Patient, random_patient
from sample_data.findings import SUBTLE_SHARE, Finding, random_findings
from sample_data.generate import TRUTH_HEADER, write_dataset
from sample_data.phantom import exam_patient, simulate
from sample_data.variants import DEVICES, SHARES, Exam, Film, exam_columns, random_exam

DRAWS = 400
PATIENT = Patient(seed=11, sex="M")


def _close(count: int, share: float, n: int = DRAWS) -> bool:
    """Within 4 binomial standard deviations (and 2 counts) of the expected count."""
    expected = share * n
    return abs(count - expected) <= 4.0 * np.sqrt(n * share * (1.0 - share)) + 2.0


@pytest.fixture(scope="module")
def exams() -> list[Exam]:
    return [random_exam(np.random.default_rng([4, i])) for i in range(DRAWS)]


def test_each_exam_variant_appears_at_its_share(exams):
    for name, share in SHARES["projection"].items():
        assert _close(sum(e.projection == name for e in exams), share), name
    for name, share in SHARES["collimation"].items():
        assert _close(sum(e.film.collimation == name for e in exams), share), name
    flags = {
        "rotated": lambda e: abs(e.rotation_deg) >= 5.0,
        "arms_down": lambda e: e.arms == "down",
        "facing_right": lambda e: e.facing == "right",
        "marker": lambda e: e.film.marker,
        "text": lambda e: bool(e.film.text),
        "tilted": lambda e: e.film.tilted,
        "off_centre": lambda e: e.film.off_centre,
        "soft": lambda e: e.film.soft,
        "grain": lambda e: e.film.grain,
        **{d: (lambda e, d=d: d in e.devices) for d in DEVICES},
    }
    for name, has in flags.items():
        assert _close(sum(map(has, exams)), SHARES[name]), name
    assert max(abs(e.rotation_deg) for e in exams) <= 15.0


def test_patient_and_finding_variants_appear_at_their_shares():
    patients = [random_patient(np.random.default_rng([5, i])) for i in range(DRAWS)]
    for name, share in zip(HABITUS, HABITUS_SHARES, strict=True):
        assert _close(sum(p.habitus == name for p in patients), share), name
    assert _close(sum(p.scoliosis_deg != 0.0 for p in patients), SCOLIOSIS_SHARE)
    assert all(p.scoliosis_deg == 0.0 or 8.0 <= abs(p.scoliosis_deg) <= 20.0 for p in patients)
    found = [f for i in range(DRAWS) for f in random_findings(np.random.default_rng([6, i]))]
    assert _close(sum(f.severity <= 0.12 for f in found), SUBTLE_SHARE + 0.05, len(found))
    assert min(f.density for f in found) < 0.4 < 0.9 < max(f.density for f in found)


def test_same_seed_same_exam_and_same_pixels():
    a, b = random_exam(np.random.default_rng(9)), random_exam(np.random.default_rng(9))
    assert a == b and a != random_exam(np.random.default_rng(10))
    exam = replace(a, devices=DEVICES, film=replace(a.film, marker=True, text=("PORTABLE",), tilted=True))
    first = simulate(PATIENT, [Finding("nodule", 0.4, "upper")], size=96, exam=exam)
    again = simulate(PATIENT, [Finding("nodule", 0.4, "upper")], size=96, exam=exam)
    assert np.array_equal(first.frontal, again.frontal) and np.array_equal(first.lateral, again.lateral)


_VARIANTS = {
    "AP erect": Exam(projection="AP_erect"),
    "AP supine": Exam(projection="AP_supine"),
    "rotated": Exam(rotation_deg=15.0, lateral_rotation_deg=-6.0),
    "arms down": Exam(arms="down"),
    "facing right": Exam(facing="right"),
    **{d: Exam(devices=(d,)) for d in DEVICES},
    "marker and text": Exam(
        film=Film(seed=3, marker=True, text=("AP SUPINE", "WARD 7B", "2019-03-04 07:12"))
    ),
    "black borders": Exam(film=Film(seed=4, collimation="black")),
    "white borders": Exam(film=Film(seed=4, collimation="white")),
    "tilted, off centre": Exam(film=Film(seed=5, cropped=True, tilted=True, off_centre=True)),
    "soft and grainy": Exam(film=Film(seed=6, soft=True, grain=True, gamma=1.05, contrast=2.8, equalize=0.4)),
}
_PATIENTS = {
    "thin": replace(PATIENT, habitus="thin", soft_tissue_mm=8.0),
    "obese": replace(PATIENT, habitus="obese", soft_tissue_mm=56.0, scale=1.05),
    "obese woman": replace(PATIENT, sex="F", habitus="obese", soft_tissue_mm=50.0),
    "scoliosis": replace(PATIENT, scoliosis_deg=-20.0),
}


@pytest.mark.parametrize(
    ("patient", "exam"),
    [(PATIENT, e) for e in _VARIANTS.values()] + [(p, Exam()) for p in _PATIENTS.values()],
    ids=list(_VARIANTS) + list(_PATIENTS),
)
def test_every_variant_renders_a_finite_image_in_range(patient, exam):
    r = simulate(patient, [Finding("pleural_effusion", 0.3, "right")], size=96, exam=exam)
    for img in (r.frontal, r.lateral):
        assert img.dtype == np.float32 and img.ndim == 2 and min(img.shape) >= 48
        assert np.isfinite(img).all() and 0.0 <= img.min() and img.max() <= 1.0
        assert img.std() > 0.1  # a chest, not a blank
    assert np.isfinite([r.truth[0].contrast_frontal, r.truth[0].contrast_lateral]).all()


def _lopsided(img: np.ndarray) -> float:
    """Mean left-right difference of the mid-chest column profile (0 for a mirror-symmetric film)."""
    profile = img[img.shape[0] * 3 // 10 : img.shape[0] * 6 // 10].mean(axis=0)
    return float(np.abs(profile - profile[::-1]).mean())


def test_variants_change_the_film_the_way_they_should():
    plain = simulate(PATIENT, [], size=128)
    # A rotated frontal is less mirror-symmetric.
    turned = simulate(PATIENT, [], size=128, views=("frontal",), exam=Exam(rotation_deg=15.0))
    assert _lopsided(turned.frontal) > _lopsided(plain.frontal) + 0.03
    # A pacemaker's can is a bright block over the upper chest (at 128 px about 15 x 15 pixels).
    paced = simulate(PATIENT, [], size=128, views=("frontal",), exam=Exam(devices=("pacemaker",)))
    assert ((paced.frontal - plain.frontal)[:64] > 0.2).sum() > 100
    # Black collimator borders darken at least one edge.
    bordered = simulate(
        PATIENT, [], size=128, views=("frontal",), exam=Exam(film=Film(seed=4, collimation="black"))
    )
    edges = [bordered.frontal[:, :2], bordered.frontal[:, -2:], bordered.frontal[:2], bordered.frontal[-2:]]
    assert min(float(e.mean()) for e in edges) < 0.06
    # Supine films catch a shallower breath; the lateral's field spans the chest's depth, not a fixed width.
    assert exam_patient(PATIENT, Exam(projection="AP_supine")).inspiration < PATIENT.inspiration
    assert plain.lateral.shape != plain.frontal.shape


def test_truth_csv_records_the_variants(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, 18, seed=21, size=64)
    with (out / "truth.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with (out / "labels.csv").open(newline="") as fh:
        labels = {r["study_id"]: r for r in csv.DictReader(fh)}
    assert tuple(rows[0].keys()) == TRUTH_HEADER
    assert set(exam_columns(Exam())) <= set(TRUTH_HEADER) and {"density", "subtlety", "habitus"} <= set(
        TRUTH_HEADER
    )
    seen = set()
    for row in rows:
        study = labels[row["study_id"]]
        assert row["projection"] in SHARES["projection"] and row["habitus"] in HABITUS
        assert all(row[d] in ("0", "1") for d in DEVICES)
        assert (row["subtlety"] in ("occult", "subtle", "obvious")) == (row["present"] == "1")
        seen.add((row["projection"], row["facing"]))
        if study["frontal"]:
            ds = pydicom.dcmread(out / study["frontal"])
            if "ViewPosition" in ds:
                assert ds.ViewPosition == ("PA" if row["projection"] == "PA" else "AP")
            if row["burned_in_text"]:
                assert ds.BurnedInAnnotation == "YES"
        if study["lateral"]:
            ds = pydicom.dcmread(out / study["lateral"])
            assert list(ds.PatientOrientation) == (["A", "F"] if row["facing"] == "right" else ["P", "F"])
    assert len({p for p, _ in seen}) >= 2 and len({f for _, f in seen}) == 2
