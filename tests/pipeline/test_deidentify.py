"""`twoview predict --deidentify`: no patient name, folder name, UID or date reaches the outputs or the logs."""

from __future__ import annotations

import csv
import logging
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline import cli
from pipeline.deidentify import DEIDENTIFY_KEY_ENV, Deidentifier, DeidentifyError
from tests.pipeline.conftest import phantom_film, write_dicom, write_png

NAME = "ZZSENTINEL^PATIENTNAME"  # PatientName in every file
FOLDER = "Sentinel_Doe_John"  # a patient-named folder
SECRETS = (NAME, "ZZSENTINEL", FOLDER, "PATIENTID77", "19770707", "1.2.840.99.")
KEY = "correct horse battery staple 2026"
PSEUDO_ID = re.compile(r"s[0-9a-f]{16}")
PSEUDO_PATH = re.compile(r"(d[0-9a-f]{16}/)*f[0-9a-f]{16}(\.[A-Za-z0-9]{1,5})?")


def _tag(path: Path) -> Path:
    """Add the identifying tags twoview never needs: PatientName, StudyDate."""
    ds = pydicom.dcmread(path)
    ds.PatientName = NAME
    ds.StudyDate = "19770707"
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(labels=("effusion", "nodule"), thresholds={"nodule": 0.5}))
    return save(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Patient-named folders: a two-view study, a duplicate frontal, a cut file, a warning, a PNG."""
    root = tmp_path_factory.mktemp("archive")
    patient = root / FOLDER
    uid = "1.2.840.99.1"
    common = {"patient_id": "PATIENTID77"}
    _tag(write_dicom(patient / "study1" / "pa.dcm", study_uid=uid, view_position="PA", seed=1, **common))
    _tag(write_dicom(patient / "study1" / "ll.dcm", study_uid=uid, view_position="LL", seed=2, **common))
    _tag(write_dicom(patient / "study1" / "ap.dcm", study_uid=uid, view_position="AP", seed=3, **common))
    _tag(write_dicom(patient / "study2" / "img", study_uid="1.2.840.99.2", modality="", seed=4, **common))
    cut = _tag(write_dicom(patient / "study3" / "pa.dcm", study_uid="1.2.840.99.3", seed=5, **common))
    cut.write_bytes(cut.read_bytes()[:3000])
    write_png(
        patient / "loose" / "ZZSENTINEL_chest.png", phantom_film("frontal").astype(np.float32) / 4000 * 255
    )
    return root


def _texts(out: Path) -> str:
    return out.read_text() + out.with_name(f"{out.stem}.errors.csv").read_text()


def _predict(archive: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    return cli.main(
        ["predict", str(archive), "--model", str(checkpoint), "-o", str(out), "--workers", "0", *extra]
    )


def test_outputs_and_logs_hold_no_identifier(archive, checkpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(DEIDENTIFY_KEY_ENV, KEY)
    out = tmp_path / "deid.csv"
    with caplog.at_level(logging.DEBUG):
        assert _predict(archive, checkpoint, out, "--deidentify") == 0
    logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "no Modality tag" in logs and "already there" not in logs  # the warnings were logged, scrubbed
    text = _texts(out)
    for secret in (*SECRETS, f"{archive}/"):
        assert secret not in text, secret
        assert secret not in logs, secret
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3  # study1 (joint), study2 (frontal), the PNG; study3's only file is cut
    for row in rows:
        assert PSEUDO_ID.fullmatch(row["study_id"]), row["study_id"]
        for column in ("frontal_file", "lateral_file"):
            assert not row[column] or PSEUDO_PATH.fullmatch(row[column]), row[column]
    errors = list(csv.DictReader(out.with_name("deid.errors.csv").open()))
    assert {e["kind"] for e in errors} == {"duplicate", "unreadable"}
    assert all(PSEUDO_PATH.fullmatch(e["path"]) for e in errors)
    assert all(PSEUDO_ID.fullmatch(e["study_id"]) for e in errors if e["study_id"])

    # Same key: the rerun finds every study already there (resume works on pseudonyms).
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _predict(archive, checkpoint, out, "--deidentify") == 0
    assert f"3 of 4 studies are already in {out}" in caplog.text and f"scanning {archive}" in caplog.text
    assert len(list(csv.DictReader(out.open()))) == 3


def test_without_deidentify_the_same_outputs_do_name_the_patient(archive, checkpoint, tmp_path):
    """The check above can fail: the plain outputs carry the folder name and the UIDs."""
    out = tmp_path / "plain.csv"
    assert _predict(archive, checkpoint, out) == 0
    text = _texts(out)
    assert FOLDER in text and "1.2.840.99.1" in text


def test_pseudonyms_are_keyed_stable_and_relative(tmp_path):
    a, b = Deidentifier(KEY, tmp_path), Deidentifier(KEY + "!", tmp_path)
    assert a.study_id("1.2.3") == Deidentifier(KEY).study_id("1.2.3") != b.study_id("1.2.3")
    path = a.path(tmp_path / FOLDER / "x" / "IM0001.dcm")
    assert PSEUDO_PATH.fullmatch(path) and path.count("/") == 2 and path.endswith(".dcm")
    assert a.path(tmp_path / "other" / "IM0001.dcm").split("/")[-1] == path.split("/")[-1]
    assert FOLDER not in a.text(f"cannot read {tmp_path}/{FOLDER}/y/z.dcm: damaged")


@pytest.mark.parametrize("key", ["", "short"])
def test_a_missing_or_short_key_is_a_clear_error(key, archive, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DEIDENTIFY_KEY_ENV, key)
    assert _predict(archive, checkpoint, tmp_path / "x.csv", "--deidentify") == 2
    assert DEIDENTIFY_KEY_ENV in capsys.readouterr().err
    with pytest.raises(DeidentifyError):
        Deidentifier("short")


def test_the_command_with_a_decoding_worker_logs_no_identifier(archive, checkpoint, tmp_path):
    out = tmp_path / "worker.jsonl"
    env = {**os.environ, DEIDENTIFY_KEY_ENV: KEY, "OMP_NUM_THREADS": "1"}
    argv = ["twoview", "--debug", "predict", str(archive), "--model", str(checkpoint), "-o", str(out)]
    done = subprocess.run(
        [*argv, "--deidentify", "--workers", "1"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "dropped" in done.stderr  # the cut file's warning, from the worker process
    for secret in (*SECRETS, f"{archive}/"):
        assert secret not in done.stderr + done.stdout, secret
        assert secret not in _texts(out), secret
