"""DICOM results: the SR of each predicted study reads back to the output's numbers, passes dciodvfy, de-identifies."""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import torch

from models.checkpoint import save
from models.config import DEFAULT_LABELS, SYNTHETIC_NOTICE, ModelConfig
from models.names import HEADS
from models.twoview import TwoViewNet
from pipeline import cli
from pipeline.deidentify import Deidentifier
from pipeline.dicom_results import DicomResults
from pipeline.explain import Explainer
from pipeline.predict import load_model, predict_folder
from pipeline.sr import LOCAL_SCHEME, ModelIdentity, read_sr
from tests.pipeline.conftest import write_png

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
LABELS = (*DEFAULT_LABELS, "rib_fracture")  # the last one has no SNOMED code here: local scheme
THRESHOLDS = {"pleural_effusion": 0.0, "nodule": 1.0, "rib_fracture": 0.5}  # present, absent, computed
KEY = "a-test-key-of-32-characters-long!"
NEEDS_DCIODVFY = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install dicom3tools)"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig.tiny(
        labels=LABELS, thresholds=THRESHOLDS, synthetic_only=True, trained_on="phantoms"
    )
    return save(TwoViewNet(config).eval(), tmp_path_factory.mktemp("model") / "tiny-phantom.safetensors")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Three sample studies: two views (TV000000000), frontal only (TV000000006), lateral only (TV000000007)."""
    root = tmp_path_factory.mktemp("studies")
    for name in ("TV000000000", "TV000000006", "TV000000007"):
        shutil.copytree(SAMPLES / name, root / name)
    return root


def run(studies: Path, checkpoint: Path, out: Path, *, deidentify=None, heatmaps=False):
    model, path = load_model(checkpoint)
    results = DicomResults(
        out / "dicom",
        ModelIdentity.from_checkpoint(path, model.config),
        model.config.thresholds,
        deidentify=deidentify,
        explainer=Explainer(model) if heatmaps else None,
    )
    summary = predict_folder(
        studies,
        out / "out.csv",
        path,
        device="cpu",
        workers=0,
        fast=False,
        deidentify=deidentify.under(studies) if deidentify else None,
        sink=results,
    )
    return summary, results, list(csv.DictReader((out / "out.csv").open(newline="")))


def dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def test_each_study_gets_an_sr_that_reads_back_to_the_same_numbers(studies, checkpoint, tmp_path):
    summary, results, rows = run(studies, checkpoint, tmp_path)
    assert summary.predicted == 3 and results.studies == 3
    sha = ModelIdentity.from_checkpoint(checkpoint, ModelConfig.tiny(labels=LABELS)).sha256
    for row in rows:
        path = tmp_path / "dicom" / f"{row['study_id']}.sr.dcm"
        sr = read_sr(path)
        used = [Path(row[k]) for k in ("frontal_file", "lateral_file") if row[k]]
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in used]
        assert sr.study_uid == row["study_id"] == sources[0].StudyInstanceUID
        assert sr.referenced_sop_uids == tuple(s.SOPInstanceUID for s in sources)
        assert sr.series_uid not in {s.SeriesInstanceUID for s in sources}
        assert sr.route == row["route"]
        assert (sr.model_name, sr.model_version) == ("tiny-phantom", f"sha256:{sha[:16]}")
        assert "not for diagnosis" in sr.series_description and "phantom-only" in sr.series_description
        assert SYNTHETIC_NOTICE in sr.comments
        assert set(sr.final) == set(LABELS)
        for label in LABELS:
            assert sr.final[label] == pytest.approx(float(row[label]), abs=1e-6)
            for head in HEADS:
                cell = row[f"{label}_{head}"]
                assert (label in sr.heads.get(head, {})) == (cell != ""), (row["route"], head)
                if cell:
                    assert sr.heads[head][label] == pytest.approx(float(cell), abs=1e-6)
        assert sr.thresholds == pytest.approx(THRESHOLDS)
        assert sr.calls == {label: int(row[f"{label}_call"]) for label in THRESHOLDS}
        assert sr.calls["pleural_effusion"] == 1 and sr.calls["nodule"] == 0
        ds = pydicom.dcmread(path)
        assert ds.Modality == "SR" and ds.PatientID == sources[0].PatientID
        assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME
        assert ds.SOPInstanceUID.startswith("2.25.")


def test_a_rerun_rewrites_the_same_objects_and_a_resumed_run_adds_none(studies, checkpoint, tmp_path):
    run(studies, checkpoint, tmp_path)
    first = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "dicom").iterdir()}
    again = tmp_path / "again"
    run(studies, checkpoint, again)
    assert {p.name: pydicom.dcmread(p).SOPInstanceUID for p in (again / "dicom").iterdir()} == first
    summary, results, _ = run(studies, checkpoint, tmp_path)  # resumed: everything is done
    assert summary.skipped == 3 and results.studies == 0


@NEEDS_DCIODVFY
def test_dciodvfy_finds_no_errors_in_the_sr_and_the_heatmap_captures(studies, checkpoint, tmp_path):
    _, _, rows = run(studies, checkpoint, tmp_path, heatmaps=True)
    files = sorted((tmp_path / "dicom").iterdir())
    captures = [p for p in files if ".gradcam." in p.name]
    assert len([p for p in files if p.name.endswith(".sr.dcm")]) == 3
    expected = {  # one capture per positive call and view used
        f"{row['study_id']}.gradcam.{label}.{view}.dcm"
        for row in rows
        for label in THRESHOLDS
        for view in ("frontal", "lateral")
        if row[f"{label}_call"] == "1" and row[f"{view}_file"]
    }
    assert {p.name for p in captures} == expected and len(expected) >= 4  # effusion: 2 + 1 + 1
    for path in files:
        assert dciodvfy_errors(path) == [], path
    sc = pydicom.dcmread(captures[0])
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in sc.SeriesDescription
    assert "NOT FOR DIAGNOSIS" in sc.ImageComments and sc.PhotometricInterpretation == "RGB"
    assert sc.pixel_array.shape[2] == 3 and sc.pixel_array[:5].max() > 200  # the banner's text


def test_deidentified_srs_carry_pseudonyms_and_no_dates(studies, checkpoint, tmp_path):
    deid = Deidentifier(KEY)
    _, _, rows = run(studies, checkpoint, tmp_path, deidentify=deid)
    originals = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(studies.rglob("*")) if p.is_file()
    ]
    secrets = {str(getattr(ds, k)) for ds in originals for k in ("StudyInstanceUID", "SOPInstanceUID",
               "SeriesInstanceUID", "PatientID", "AccessionNumber", "StudyDate")}  # fmt: skip
    secrets |= {str(ds.PatientName) for ds in originals} | {"PHANTOM"}
    files = sorted((tmp_path / "dicom").iterdir())
    assert {p.name.split(".")[0] for p in files} == {r["study_id"] for r in rows}
    for path in files:
        text = path.read_bytes()
        assert not [s for s in secrets if s.encode() in text], path
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyDate == "" and ds.PatientBirthDate == ""
        assert shutil.which("dciodvfy") is None or dciodvfy_errors(path) == [], path
    sr = read_sr(next(p for p in files if p.name.endswith(".sr.dcm")))
    study = next(ds for ds in originals if Deidentifier(KEY).uid(ds.StudyInstanceUID) == sr.study_uid)
    assert sr.study_uid.startswith("2.25.")
    assert Deidentifier(KEY).uid(study.SOPInstanceUID) in sr.referenced_sop_uids


def test_cli_dicom_out_and_studies_without_dicom(studies, checkpoint, tmp_path, caplog):
    write_png(tmp_path / "pngs" / "s1" / "pa.png")
    folder = tmp_path / "mixed"
    shutil.copytree(studies / "TV000000006", folder / "TV000000006")
    shutil.copytree(tmp_path / "pngs", folder / "pngs")
    out, dicom = tmp_path / "o.csv", tmp_path / "dicom"
    argv = ["predict", str(folder), "--model", str(checkpoint), "-o", str(out), "--workers", "0"]
    caplog.set_level(logging.WARNING)
    assert cli.main([*argv, "--dicom-out", str(dicom), "--device", "cpu"]) == 0
    assert len(out.read_text().splitlines()) == 3  # header + the DICOM study + the PNG study
    assert [p.name.split(".")[-2] for p in dicom.iterdir()] == ["sr"]
    assert "not DICOM files, so it gets no SR" in caplog.text


def test_cli_refuses_heatmaps_without_dicom_out_or_with_deidentify(
    studies, checkpoint, tmp_path, monkeypatch, capsys
):
    argv = ["predict", str(studies), "--model", str(checkpoint), "-o", str(tmp_path / "o.csv")]
    assert cli.main([*argv, "--dicom-heatmaps"]) == 2
    assert "give --dicom-out" in capsys.readouterr().err
    monkeypatch.setenv("TWOVIEW_DEIDENTIFY_KEY", KEY)
    assert cli.main([*argv, "--dicom-heatmaps", "--dicom-out", str(tmp_path / "d"), "--deidentify"]) == 2
    assert "does not de-identify pixels" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
