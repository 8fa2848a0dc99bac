"""`Predictor` and `twoview predict`: routes, per-head probabilities, errors, resume after a kill, fast path."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import save
from models.config import SYNTHETIC_NOTICE, ModelConfig
from models.names import HEADS
from models.twoview import TwoViewNet
from pipeline import cli, predict
from pipeline.errors import TwoviewError
from pipeline.outputs import errors_path
from pipeline.predict import Predictor, predict_folder, resolve_device
from pipeline.studies import scan_folder
from tests.pipeline.conftest import write_dicom, write_png

LABELS = ("effusion", "nodule")
HEADS_RUN = {"joint": {"frontal", "lateral", "joint"}, "frontal": {"frontal"}, "lateral": {"lateral"}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(labels=LABELS, thresholds={"nodule": 0.5})).eval()
    return save(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def truncate(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two-view, frontal-only and lateral-only studies, one with a cut lateral, one with only a cut frontal, and junk."""
    root = tmp_path_factory.mktemp("studies")
    write_dicom(root / "a" / "pa.dcm", study_uid="1.2.1", view_position="PA", seed=1)
    write_dicom(root / "a" / "lat.dcm", study_uid="1.2.1", view_position="LL", seed=2)
    write_dicom(root / "b" / "ap", study_uid="1.2.2", view_position="AP", seed=3)
    write_dicom(root / "c" / "lat", study_uid="1.2.3", view_position="LL", seed=4)
    write_dicom(root / "d" / "pa.dcm", study_uid="1.2.4", view_position="PA", seed=5)
    truncate(write_dicom(root / "d" / "lat.dcm", study_uid="1.2.4", view_position="LL", seed=6), 4000)
    truncate(write_dicom(root / "e" / "pa.dcm", study_uid="1.2.5", view_position="PA", seed=7), 4000)
    (root / "notes.dcm").write_text("not an image at all\n")
    write_dicom(root / "ct.dcm", study_uid="1.2.6", modality="CT", body_part="CHEST")
    return root


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return list(csv.DictReader(path.open(newline="")))


def number(value) -> float | None:
    return None if value in (None, "") else float(value)


def check_rows(rows: list[dict]) -> None:
    """Probabilities in [0, 1], blank exactly where a head did not run, final = the route's head."""
    for row in rows:
        ran = HEADS_RUN[row["route"]]
        for label in LABELS:
            final = number(row[label])
            assert final is not None and 0.0 <= final <= 1.0
            for head in HEADS:
                value = number(row[f"{label}_{head}"])
                assert (value is not None) == (head in ran), (row["study_id"], label, head)
                assert value is None or 0.0 <= value <= 1.0
            assert final == number(row[f"{label}_{row['route']}"])
        assert number(row["nodule_threshold"]) == 0.5
        assert int(row["nodule_call"]) == int(number(row["nodule"]) >= 0.5)
        assert "effusion_call" not in row


def check_errors(errors: Path, root: Path) -> None:
    rows = {Path(r["path"]).relative_to(root).as_posix(): r for r in csv.DictReader(errors.open(newline=""))}
    assert set(rows) == {"notes.dcm", "ct.dcm", "d/lat.dcm", "e/pa.dcm"}
    assert rows["ct.dcm"]["kind"] == "not_chest" and "CT" in rows["ct.dcm"]["reason"]
    assert rows["notes.dcm"]["kind"] == "unreadable"
    assert rows["d/lat.dcm"]["study_id"] == "1.2.4" and "cannot be decoded" in rows["d/lat.dcm"]["reason"]
    assert "not predicted" not in rows["d/lat.dcm"]["reason"]
    assert rows["e/pa.dcm"]["study_id"] == "1.2.5" and "not predicted" in rows["e/pa.dcm"]["reason"]


def test_predict_folder_csv_routes_probabilities_errors_and_summary(folder, checkpoint, tmp_path):
    out = tmp_path / "run.csv"
    summary = predict_folder(folder, out, checkpoint, batch_size=2, device="cpu", workers=0)
    rows = read_rows(out)
    assert {r["study_id"]: r["route"] for r in rows} == {
        "1.2.1": "joint",
        "1.2.2": "frontal",
        "1.2.3": "lateral",
        "1.2.4": "frontal",
    }
    by_id = {r["study_id"]: r for r in rows}
    assert by_id["1.2.1"]["frontal_file"] == str(folder / "a" / "pa.dcm")
    assert by_id["1.2.1"]["lateral_file"] == str(folder / "a" / "lat.dcm")
    assert by_id["1.2.4"]["lateral_file"] == "" and by_id["1.2.3"]["frontal_file"] == ""
    check_rows(rows)
    check_errors(tmp_path / "run.errors.csv", folder)
    assert (summary.studies, summary.predicted, summary.failed, summary.skipped) == (5, 4, 1, 0)
    assert summary.routes == {"joint": 1, "frontal": 2, "lateral": 1}
    assert summary.set_aside == 4
    assert "4 studies (1 joint, 2 frontal, 1 lateral)" in str(summary) and "1 failed" in str(summary)
    assert summary.notice is None and "synthetic" not in str(summary)


def test_a_synthetic_only_model_says_so_in_the_summary(folder, tmp_path, caplog):
    torch.manual_seed(0)
    config = ModelConfig.tiny(labels=LABELS, synthetic_only=True, trained_on="phantoms")
    model = save(TwoViewNet(config), tmp_path / "phantom-only.safetensors")
    with caplog.at_level(logging.WARNING):
        summary = predict_folder(folder, tmp_path / "out.csv", model, device="cpu", workers=0)
    assert str(summary).endswith(SYNTHETIC_NOTICE) and SYNTHETIC_NOTICE in caplog.text


def test_cli_predict_jsonl_with_a_decoding_worker(folder, checkpoint, tmp_path, caplog):
    out = tmp_path / "run.jsonl"
    argv = ["predict", str(folder), "--model", str(checkpoint), "-o", str(out), "--workers", "1"]
    caplog.set_level(logging.INFO)
    assert cli.main([*argv, "--device", "cpu", "--batch-size", "3"]) == 0
    rows = read_rows(out)
    assert sorted(r["study_id"] for r in rows) == ["1.2.1", "1.2.2", "1.2.3", "1.2.4"]
    assert all(isinstance(r["nodule"], float) for r in rows)
    assert {r["study_id"]: r["lateral_file"] for r in rows}["1.2.4"] is None
    check_rows(rows)
    check_errors(tmp_path / "run.errors.csv", folder)
    assert "predicted 4 studies" in caplog.text and "4 files set aside" in caplog.text


def test_resume_predicts_only_the_studies_missing_from_the_output(folder, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "run.csv"
    predict_folder(folder, out, checkpoint, device="cpu", workers=0)
    first = out.read_text().splitlines()
    out.write_text("\n".join(first[:3]) + "\n")  # header + 2 of the 4 rows survive
    seen: list[str] = []
    original = Predictor._launch

    def counting(self, batch):
        seen.extend(batch.study_ids)
        return original(self, batch)

    monkeypatch.setattr(Predictor, "_launch", counting)
    summary = predict_folder(folder, out, checkpoint, device="cpu", workers=0)
    assert sorted(seen) == sorted(r.split(",")[0] for r in first[3:])
    assert (summary.skipped, summary.predicted) == (2, 2)
    assert sorted(out.read_text().splitlines()) == sorted(first)
    errors = (tmp_path / "run.errors.csv").read_text().splitlines()
    assert len(errors) == len(set(errors)) == 5  # header + 4, none listed twice


def test_fast_path_agrees_with_float32(folder, checkpoint):
    studies = scan_folder(folder).studies
    model = predict.load_model(checkpoint)[0]
    fast = Predictor(model, device="cpu", fast=True).predict_studies(studies, batch_size=4)
    plain = Predictor(predict.load_model(checkpoint)[0], device="cpu", fast=False).predict_studies(studies)
    assert (
        [p.route for p in fast]
        == [p.route for p in plain]
        == ["joint", "frontal", "lateral", "frontal", None]
    )
    for a, b in zip(fast, plain, strict=True):
        for head in ("final", *HEADS):
            for label in LABELS:
                x, y = a.head(head)[label], b.head(head)[label]
                assert (x is None) == (y is None)
                assert x is None or abs(x - y) <= 0.02


def test_predict_studies_reports_a_failed_study_with_its_errors(folder, checkpoint):
    studies = [s for s in scan_folder(folder).studies if s.study_id in ("1.2.4", "1.2.5")]
    done, failed = Predictor.from_checkpoint(checkpoint, device="cpu").predict_studies(studies)
    assert done.ok and done.route == "frontal" and done.lateral_file is None
    assert [e.path.name for e in done.errors] == ["lat.dcm"]
    assert not failed.ok and failed.final == {"effusion": None, "nodule": None}
    assert failed.frontal_file is None and "not predicted" in failed.errors[0].reason


def test_predict_batch_gives_probabilities_and_nan_where_a_head_did_not_run(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    from pipeline.data import ViewBatch

    images = torch.rand(3, 1, 64, 64)
    batch = ViewBatch(
        images,
        images.flip(-1),
        torch.tensor([True, True, False]),
        torch.tensor([True, False, True]),
        torch.full((3, 2), math.nan),
        ["x", "y", "z"],
    )
    probs = predictor.predict_batch(batch)
    assert probs.routes == ["joint", "frontal", "lateral"]
    assert torch.isnan(probs.joint[1:]).all() and torch.isnan(probs.lateral[1]).all()
    assert ((probs.final >= 0) & (probs.final <= 1)).all() and probs.final.device.type == "cpu"


def test_manifest_of_png_files_ignores_label_columns(checkpoint, tmp_path):
    images = tmp_path / "exports"
    write_png(images / "s1_pa.png")
    write_png(images / "s1_lat.png", size=(64, 80))
    write_png(images / "s2_pa.png", size=(80, 64))
    manifest = tmp_path / "list.csv"
    manifest.write_text("study_id,frontal,lateral,nodule\ns1,s1_pa.png,s1_lat.png,maybe\ns2,s2_pa.png,,\n")
    out = tmp_path / "m.csv"
    argv = ["predict", "--manifest", str(manifest), "--images", str(images), "--model", str(checkpoint)]
    assert cli.main([*argv, "-o", str(out), "--workers", "0"]) == 0
    rows = read_rows(out)
    assert [(r["study_id"], r["route"]) for r in rows] == [("s1", "joint"), ("s2", "frontal")]
    assert rows[0]["lateral_file"] == str(images / "s1_lat.png")
    check_rows(rows)


def make_pickle(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (lambda t, c: ["predict", str(t / "nowhere"), "--model", str(c)], "no such file or folder"),
        (lambda t, c: ["predict", str(t), "--model", str(t / "gone.safetensors")], "model file not found"),
        (lambda t, c: ["predict", str(t), "--model", str(make_pickle(t))], "PyTorch pickle"),
        (lambda t, c: ["predict", "--model", str(c)], "give either a FOLDER"),
        (lambda t, c: ["predict", str(t), "--model", str(c), "-o", str(t / "o.txt")], "use .csv or .jsonl"),
        (lambda t, c: ["predict", str(t), "--model", str(c), "--batch-size", "0"], "at least 1"),
    ],
)
def test_cli_errors_are_one_clear_line(argv, message, checkpoint, tmp_path, capsys):
    args = argv(tmp_path, checkpoint)
    out = tmp_path / "o.csv"
    assert cli.main(args if "-o" in args else [*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("twoview predict: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_without_a_model_the_demo_model_is_used_or_its_absence_explained(
    folder, checkpoint, tmp_path, monkeypatch, caplog, capsys
):
    monkeypatch.setattr(predict, "DEMO_MODEL", tmp_path / "missing" / "demo.safetensors")
    assert cli.main(["predict", str(folder), "-o", str(tmp_path / "o.csv")]) == 2
    assert "pass --model" in capsys.readouterr().err
    monkeypatch.setattr(predict, "DEMO_MODEL", checkpoint)
    caplog.set_level(logging.INFO)
    assert cli.main(["predict", str(folder), "-o", str(tmp_path / "o.csv"), "--workers", "0"]) == 0
    assert "demo model" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(TwoviewError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device(None).type == resolve_device("auto").type == "cpu"


def test_killed_run_resumes_with_every_study_exactly_once(checkpoint, tmp_path):
    root = tmp_path / "many"
    for i in range(40):
        write_dicom(
            root / f"s{i:02d}" / "pa.dcm", study_uid=f"1.3.{i}", view_position="PA", rows=256, cols=256
        )
        if i % 2:
            write_dicom(
                root / f"s{i:02d}" / "ll.dcm", study_uid=f"1.3.{i}", view_position="LL", rows=256, cols=256
            )
    out = tmp_path / "run.csv"
    argv = ["twoview", "predict", str(root), "--model", str(checkpoint), "-o", str(out), "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*argv, "--workers", "0"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 2:  # the header and a first row
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    written = out.read_text().count("\n") - 1
    assert 1 <= written < 40
    with out.open("a") as f:
        f.write("1.3.99,fron")  # what a kill in the middle of a write leaves
    done = subprocess.run([*argv, "--workers", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{written} already there skipped" in done.stderr
    text = out.read_text()
    assert text.endswith("\n") and "1.3.99" not in text
    ids = [r["study_id"] for r in read_rows(out)]
    assert sorted(ids) == sorted(f"1.3.{i}" for i in range(40))


def test_untagged_image_of_unknown_view_is_set_aside_by_predict_with_the_reason(checkpoint, tmp_path):
    """A DICOM without view tags whose pixels the view classifier cannot place: listed in the errors, not predicted."""
    root = tmp_path / "in"
    write_dicom(root / "pa.dcm", study_uid="1.2.9", view_position="PA", seed=1)
    noise = np.random.default_rng(5).integers(0, 4000, (96, 96))
    write_dicom(root / "what.dcm", study_uid="1.2.9", view_position=None, pixels=noise)
    out = tmp_path / "run.csv"
    summary = predict_folder(root, out, checkpoint, batch_size=2, device="cpu", workers=0)
    assert [(r["study_id"], r["route"]) for r in read_rows(out)] == [("1.2.9", "frontal")]
    (error,) = read_rows(tmp_path / "run.errors.csv")
    assert Path(error["path"]).name == "what.dcm" and error["kind"] == "unknown_view"
    assert error["reason"].startswith("unknown view: no view tags") and "confirm the view" in error["reason"]
    assert summary.set_aside == 1


class _Refusing:
    """A sink that fails at the first batch, as a PACS that refuses the results would."""

    def write(self, predictions) -> None:
        raise OSError("the results store refused the batch")


def test_a_failed_run_removes_only_the_files_it_created_and_wrote_no_row_to(folder, checkpoint, tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(OSError, match="refused"):
        predict.predict_folder(folder, out, checkpoint, workers=0, device="cpu", sink=_Refusing())
    assert not out.exists()  # created, no row: a header would tie a rerun to this model's labels
    assert "notes.dcm" in errors_path(out).read_text()  # the scan's set-aside files were written: kept
    empty = tmp_path / "empty"
    empty.mkdir()
    predict.predict_folder(empty, out, checkpoint, workers=0, device="cpu")  # a header, from a run that ended
    with pytest.raises(OSError, match="refused"):
        predict.predict_folder(folder, out, checkpoint, workers=0, device="cpu", sink=_Refusing())
    assert out.read_text().count("\n") == 1  # not this run's file: left as it was
