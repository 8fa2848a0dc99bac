"""Generated studies read back through `pipeline` give the views and labels that were written."""

from __future__ import annotations

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


def test_views_come_back_from_tags_and_from_pixels_alone():
    """Every committed film read back with and without its tags; the view classifier never swaps a view."""
    manifest = read_manifest(COMMITTED / "labels.csv")
    by_pixels = {"right": 0, "unknown": 0, "wrong": 0}
    for study in manifest.studies:
        for view, source in ((View.FRONTAL, study.frontal), (View.LATERAL, study.lateral)):
            if source is None:
                continue
            image = read_image(source.path)
            tagged = detect_view(image)
            assert tagged.view is view, (source.path, tagged)
            untagged = image.__class__(pixels=image.pixels, path=image.path)  # every tag removed
            decided = detect_view(untagged).view
            by_pixels["unknown" if decided is None else "right" if decided is view else "wrong"] += 1
    assert sum(by_pixels.values()) >= 20, by_pixels
    assert by_pixels["wrong"] == 0 and by_pixels["right"] >= 0.8 * sum(by_pixels.values()), by_pixels
