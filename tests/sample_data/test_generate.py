"""Written datasets: deterministic bytes, valid DICOM, and CSVs that agree with the files."""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sample_data.findings import LABELS
from sample_data.generate import LABELS_HEADER, GenerateError, write_dataset

N = 14  # the whole showcase: every route, compression and oddity
SIZE = 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("ds")
    return out, write_dataset(out, N, seed=7, size=SIZE)


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _dicoms(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".csv"))


def test_same_seed_same_bytes_other_seed_other_patients(dataset, tmp_path):
    out, summary = dataset
    again = write_dataset(tmp_path / "again", N, seed=7, size=SIZE)
    assert _digest(out) == _digest(tmp_path / "again")
    assert again.files == summary.files
    other = write_dataset(tmp_path / "other", 3, seed=8, size=SIZE)
    first = {r["study_id"] for r in _rows(out / "labels.csv")}
    assert first.isdisjoint(r["study_id"] for r in _rows(tmp_path / "other" / "labels.csv"))
    assert other.studies == 3


def test_summary_and_mix(dataset):
    out, summary = dataset
    assert summary.studies == N and sum(summary.routes.values()) == N
    assert min(summary.routes.values()) >= 2
    assert summary.files == len(_dicoms(out))
    assert all(summary.findings[label] >= 1 for label in LABELS)


def test_labels_csv_matches_files(dataset):
    out, _ = dataset
    rows = _rows(out / "labels.csv")
    assert tuple(rows[0].keys()) == LABELS_HEADER
    listed = set()
    for row in rows:
        assert row["frontal"] or row["lateral"]
        for view in ("frontal", "lateral"):
            if not row[view]:
                continue
            ds = pydicom.dcmread(out / row[view])
            listed.add(row[view])
            assert ds.StudyInstanceUID == row["study_id"] and ds.PatientID == row["patient_id"]
            assert ds.BodyPartExamined == "CHEST"
            position = ds.get("ViewPosition")
            assert position in ({"PA", "AP", None} if view == "frontal" else {"LL"})
            # A lateral runs front-to-back either way round: anterior on the image's left (P) or right (A).
            assert list(ds.PatientOrientation) in (
                [["L", "F"]] if view == "frontal" else [["P", "F"], ["A", "F"]]
            )
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert all(row[label] in ("0", "1") for label in LABELS)
    extras = {p.relative_to(out).as_posix() for p in _dicoms(out)} - listed
    assert extras, "the showcase has one study with an extra frontal that labels.csv leaves out"
    for extra in extras:
        ds = pydicom.dcmread(out / extra)
        assert ds.StudyInstanceUID in {r["study_id"] for r in rows}


def test_truth_csv_agrees_with_labels(dataset):
    out, _ = dataset
    labels = {r["study_id"]: r for r in _rows(out / "labels.csv")}
    truth = _rows(out / "truth.csv")
    assert len(truth) == len(labels) * len(LABELS)
    for t in truth:
        assert labels[t["study_id"]][t["finding"]] == t["present"]
        if t["present"] == "0":
            assert t["visible_frontal"] == t["visible_lateral"] == "0"
    hidden = [
        t
        for t in truth
        if t["present"] == "1" and t["visible_lateral"] == "1" and t["visible_frontal"] == "0"
    ]
    assert hidden, "the showcase holds findings only the lateral shows"


def test_file_variants(dataset):
    out, _ = dataset
    seen = {"ts": set(), "photometric": set(), "no_view": 0, "ap": 0, "sizes": set(), "no_ext": 0}
    for path in _dicoms(out):
        ds = pydicom.dcmread(path)
        seen["ts"].add(ds.file_meta.TransferSyntaxUID.name)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["no_view"] += "ViewPosition" not in ds
        seen["ap"] += ds.get("ViewPosition") == "AP"
        seen["sizes"].add((ds.Rows, ds.Columns))
        seen["no_ext"] += path.suffix != ".dcm"
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16 and pixels.max() < 2**ds.BitsStored
        assert 12 <= ds.BitsStored <= 16 and ds.SOPClassUID in (
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.5.1.4.1.1.1.1",
        )
    assert len(seen["ts"]) == 4 and seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["no_view"] >= 1 and seen["ap"] >= 1 and len(seen["sizes"]) > 3 and seen["no_ext"] >= 1


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install dicom3tools)"
)
def test_dciodvfy_finds_no_errors(dataset):
    out, _ = dataset
    for path in _dicoms(out):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [
            line
            for line in result.stderr.splitlines() + result.stdout.splitlines()
            if line.startswith("Error")
        ]
        assert result.returncode == 0 and not errors, f"{path}: {errors}"


@pytest.mark.parametrize("kwargs", [dict(n_studies=0), dict(n_studies=1, size=10)])
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(GenerateError):
        write_dataset(tmp_path, seed=0, **kwargs)
