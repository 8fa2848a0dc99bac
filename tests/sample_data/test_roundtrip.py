"""Generated studies read back through `pipeline` give the views and labels that were written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.dicom import read_image
from pipeline.manifest import read_manifest
from pipeline.studies import scan_folder
from pipeline.views import View, detect_view
from sample_data.generate import write_dataset

COMMITTED = Path(__file__).resolve().parents[2] / "sample_data" / "studies"


@pytest.mark.parametrize("source", ["committed", "fresh"])
def test_scan_matches_the_manifest(tmp_path, source):
    root = COMMITTED if source == "committed" else tmp_path / "gen"
    if source == "fresh":
        write_dataset(root, n_studies=16, seed=11, size=256)
    scan = scan_folder(root)
    manifest = read_manifest(root / "labels.csv")
    assert [s.study_id for s in scan.studies] == sorted(s.study_id for s in manifest.studies)
    scanned = {s.study_id: s for s in scan.studies}
    for listed in manifest.studies:
        study = scanned[listed.study_id]
        for view in ("frontal", "lateral"):
            want, got = getattr(listed, view), getattr(study, view)
            assert (want is None) == (got is None), (listed.study_id, view)
            if want is not None:
                assert got.path.resolve() == want.path.resolve(), (listed.study_id, view)
        assert study.patient_id == listed.patient_id
    # The only files set aside are the extra frontal repeats, each named as a duplicate.
    assert scan.set_aside and all(a.kind == "duplicate" for a in scan.set_aside)


def _built_for_the_pixel_rule(truth: dict[str, str], view: View) -> bool:
    """The films the mirror-symmetry pixel rule was built for: upright, centred, unrotated frontals with
    a straight spine, and laterals with the arms raised. Rotated (5-15 degrees), scoliotic, tilted or
    off-centre frontals and arms-down laterals look like real ones and defeat it; the learned view
    classifier replaces that rule."""
    if view is View.LATERAL:
        return truth["arms"] == "up"
    return (
        abs(float(truth["rotation_deg"])) < 5.0
        and float(truth["scoliosis_deg"]) == 0.0
        and truth["tilted"] == truth["off_centre"] == "0"
    )


def test_views_come_back_from_tags_and_from_pixels_alone():
    manifest = read_manifest(COMMITTED / "labels.csv")
    with (COMMITTED / "truth.csv").open(newline="") as fh:
        truth = {row["study_id"]: row for row in csv.DictReader(fh)}
    by_pixels = {"right": 0, "unknown": 0, "wrong": 0}
    for study in manifest.studies:
        for view, source in ((View.FRONTAL, study.frontal), (View.LATERAL, study.lateral)):
            if source is None:
                continue
            image = read_image(source.path)
            tagged = detect_view(image)
            assert tagged.view is view, (source.path, tagged)
            if not _built_for_the_pixel_rule(truth[study.study_id], view):
                continue
            untagged = image.__class__(pixels=image.pixels, path=image.path)  # every tag removed
            decided = detect_view(untagged).view
            by_pixels["unknown" if decided is None else "right" if decided is view else "wrong"] += 1
    assert sum(by_pixels.values()) >= 20, by_pixels
    assert by_pixels["wrong"] == 0 and by_pixels["right"] >= 0.8 * sum(by_pixels.values()), by_pixels
