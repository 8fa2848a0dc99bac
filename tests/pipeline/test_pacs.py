"""`twoview predict --dicomweb`: a real Orthanc with its DICOMweb plugin, the sample studies, SRs stored back.

Orthanc runs on 127.0.0.1 with HTTP basic auth and a throw-away storage folder; the tests skip with
the reason where Orthanc or its plugin is not installed.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import date
from pathlib import Path

import pydicom
import pytest
import torch

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline import cli
from pipeline.dicomweb import PASSWORD_ENV, TOKEN_ENV, USER_ENV, DicomwebError, Pacs, parse_date
from pipeline.predict import Predictor
from pipeline.sr import read_sr
from tests.pipeline.orthanc import PASSWORD, USER, Orthanc, free_port, skip_without_orthanc

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
THRESHOLDS = {"pleural_effusion": 0.5, "nodule": 0.5}


def sample_files(names: list[str] | None = None) -> list[Path]:
    folders = [SAMPLES / n for n in names] if names else [SAMPLES]
    return sorted(p for folder in folders for p in folder.rglob("*") if p.is_file() and p.suffix != ".csv")


def study_uid(folder: str) -> str:
    return str(pydicom.dcmread(sample_files([folder])[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(thresholds=THRESHOLDS)).eval()
    return save(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """One Orthanc holding the 24 sample studies, for the tests that do not stop it."""
    skip_without_orthanc()
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        server.upload(sample_files())
        yield server
    finally:
        server.stop()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def read_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open(newline="")))


def srs_in(server: Orthanc, uid: str) -> list[str]:
    return [sop for series in server.series(uid, "SR") for sop in series["sops"]]


def test_predict_the_pacs_studies_and_store_one_sr_each(orthanc, checkpoint, credentials, tmp_path, capsys):
    out = tmp_path / "pacs.csv"
    argv = ["predict", "--dicomweb", orthanc.dicomweb, "--since", "2000-01-01", "--store"]
    argv += ["--model", str(checkpoint), "-o", str(out), "--workers", "0", "--device", "cpu", "--no-fast"]
    assert cli.main(argv) == 0
    rows = read_rows(out)
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in sample_files()}
    assert sorted(r["study_id"] for r in rows) == sorted(uids) and len(rows) == 24
    first = rows[0]  # paths name the instance fetched: <study>/<series>/<instance>.dcm
    assert Path(first["frontal_file"] or first["lateral_file"]).parts[0] == first["study_id"]
    errors = read_rows(tmp_path / "pacs.errors.csv")
    assert {e["kind"] for e in errors} == {"duplicate"} and all("/tmp" not in e["reason"] for e in errors)
    for row in rows:
        srs = orthanc.series(row["study_id"], "SR")
        assert len(srs) == 1 and len(srs[0]["sops"]) == 1, row["study_id"]
        sr = read_sr(
            pydicom.dcmread(io.BytesIO(orthanc.instance(row["study_id"], srs[0]["uid"], srs[0]["sops"][0])))
        )
        assert sr.study_uid == row["study_id"] and sr.route == row["route"]
        assert sr.final["nodule"] == pytest.approx(float(row["nodule"]), abs=1e-6)
        assert sr.calls["pleural_effusion"] == int(row["pleural_effusion_call"])
        images = {sop for s in orthanc.series(row["study_id"], "DX") + orthanc.series(row["study_id"], "CR")
                  for sop in s["sops"]}  # fmt: skip
        assert set(sr.referenced_sop_uids) <= images
    assert not list((tmp_path / ".pacs.dicomweb").rglob("*.dcm"))  # the chunks and the outbox are cleared
    # a rerun finds everything done: nothing fetched, nothing stored twice
    assert cli.main(argv) == 0
    assert len(read_rows(out)) == 24
    assert all(len(srs_in(orthanc, r["study_id"])) == 1 for r in rows)


def test_chosen_studies_and_dicom_out_keep_the_results(orthanc, checkpoint, credentials, tmp_path):
    chosen = [study_uid("TV000000006"), study_uid("TV000000007")]
    out, results = tmp_path / "two.jsonl", tmp_path / "results"
    argv = ["predict", "--dicomweb", orthanc.dicomweb, "--study", *chosen, "--dicom-out", str(results)]
    assert cli.main([*argv, "--model", str(checkpoint), "-o", str(out), "--workers", "0"]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert sorted(p.name for p in results.iterdir()) == sorted(f"{uid}.sr.dcm" for uid in chosen)


def test_wrong_password_and_a_missing_server_are_one_clear_line(
    orthanc, checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    argv = ["predict", "--dicomweb", orthanc.dicomweb, "--dicomweb-attempts", "1"]
    argv += ["--model", str(checkpoint), "-o", str(tmp_path / "o.csv")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "HTTP 401" in err and USER_ENV in err and "\n" not in err and "not-the-password" not in err
    argv[2] = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be reached" in err and "connection refused" in err and "\n" not in err


def test_a_pacs_that_goes_away_stops_clearly_and_a_rerun_resumes_without_duplicates(
    checkpoint, credentials, tmp_path, monkeypatch, capsys
):
    skip_without_orthanc()
    names = [f"TV00000000{i}" for i in range(6)]
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload(sample_files(names))
        calls = []
        original = Predictor._launch  # where every batch goes to the model

        def dies_in_the_second_chunk(self, batch):
            calls.append(batch.study_ids)
            if len(calls) == 2:  # the first batch of the second chunk: the PACS goes away
                server.stop(kill=True)
            return original(self, batch)

        monkeypatch.setattr(Predictor, "_launch", dies_in_the_second_chunk)
        out = tmp_path / "run.csv"
        argv = [
            "predict",
            "--dicomweb",
            server.dicomweb,
            "--store",
            "--fetch-chunk",
            "2",
            "--batch-size",
            "2",
        ]
        argv += ["--model", str(checkpoint), "-o", str(out), "--workers", "0", "--dicomweb-attempts", "1"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("twoview predict: error: PACS http://127.0.0.1:") and "\n" not in err
        assert "cannot be reached while storing" in err and "run the same command again to resume" in err
        assert "4 studies predicted and the results of 2 stored" in err
        assert len(read_rows(out)) == 4

        monkeypatch.setattr(Predictor, "_launch", original)
        server.start()  # the same storage and port
        assert cli.main(argv) == 0
        rows = read_rows(out)
        assert sorted(r["study_id"] for r in rows) == sorted(map(study_uid, names))
        assert Counter(len(srs_in(server, r["study_id"])) for r in rows) == {1: 6}
        events = read_rows(tmp_path / "run.dicomweb.csv")
        assert Counter(e["event"] for e in events) == {"done": 6, "stored": 6}
    finally:
        server.stop()


def test_dicomweb_settings_are_checked_before_any_request(tmp_path, monkeypatch):
    assert parse_date("2024-03-01") == parse_date("20240301") == date(2024, 3, 1)
    with pytest.raises(DicomwebError, match="YYYY-MM-DD"):
        parse_date("March")
    with pytest.raises(DicomwebError, match="holds credentials"):
        Pacs("https://user:secret@pacs.example/dicom-web")
    with pytest.raises(DicomwebError, match="not a DICOMweb URL"):
        Pacs("pacs.example")
    monkeypatch.setenv(TOKEN_ENV, "abc.def")
    assert (
        Pacs.from_env("https://pacs.example/dicom-web").client._session.headers["Authorization"]
        == "Bearer abc.def"
    )
    monkeypatch.delenv(TOKEN_ENV)
    monkeypatch.setenv(USER_ENV, "someone")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(DicomwebError, match=PASSWORD_ENV):
        Pacs.from_env("https://pacs.example/dicom-web")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--store", "--deidentify"], "with --deidentify write them with --dicom-out"),
        (["--study", "1.2.3", "--since", "2024-01-01"], "not both"),
        (["--since", "yesterday"], "YYYY-MM-DD"),
        (["--engine", "ray"], "--dicomweb runs on this machine"),
    ],
)
def test_dicomweb_options_that_do_not_go_together(extra, message, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TWOVIEW_DEIDENTIFY_KEY", "a-key-that-is-long-enough-1234")
    argv = [
        "predict",
        "--dicomweb",
        f"http://127.0.0.1:{free_port()}/dicom-web",
        "-o",
        str(tmp_path / "o.csv"),
    ]
    assert cli.main([*argv, "--model", str(checkpoint), *extra]) == 2
    assert message in capsys.readouterr().err
