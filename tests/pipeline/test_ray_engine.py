"""`twoview predict --engine ray`: Ray Data on a local 2-CPU Ray instance gives the local path's rows and errors."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline import cli
from pipeline.predict import predict_folder
from pipeline.ray_engine import RayEngineError, predict_folder_ray
from tests.pipeline.conftest import write_dicom

LABELS = ("effusion", "nodule")


@pytest.fixture(scope="module")
def ray_local():
    """One small local Ray instance for the module (starting one takes seconds).

    Its workers at the usual priority: Ray starts them at nice 15, and next to the other test processes
    they were starved (this test took 145 s in the whole run, 13 s alone).
    """
    ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "twoview[ray]"')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")  # read by the raylet that ray.init starts
        ray.init(
            num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, logging_level="WARNING"
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(labels=LABELS, thresholds={"nodule": 0.5})).eval()
    return save(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two-view, frontal and lateral studies, one whose only view is cut short, and a file that is no image."""
    root = tmp_path_factory.mktemp("studies")
    for i in range(3):
        write_dicom(root / f"s{i}" / "pa.dcm", study_uid=f"1.2.{i}", view_position="PA", seed=2 * i)
        write_dicom(root / f"s{i}" / "lat.dcm", study_uid=f"1.2.{i}", view_position="LL", seed=2 * i + 1)
    write_dicom(root / "f" / "ap", study_uid="1.2.7", view_position="AP", seed=7)
    write_dicom(root / "l" / "lat", study_uid="1.2.8", view_position="LL", seed=8)
    cut = write_dicom(root / "x" / "pa.dcm", study_uid="1.2.9", view_position="PA", seed=9)
    cut.write_bytes(cut.read_bytes()[:4000])
    (root / "notes.dcm").write_text("not an image\n")
    return root


def rows(path: Path) -> dict[str, dict]:
    return {r["study_id"]: r for r in csv.DictReader(path.open(newline=""))}


def errors(path: Path) -> set[tuple[str, ...]]:
    return {tuple(r.values()) for r in csv.DictReader(path.open(newline=""))}


def assert_same_rows(got: dict[str, dict], expected: dict[str, dict]) -> None:
    """Same studies in the same order; same routes and files; probabilities within 1e-4."""
    assert list(got) == list(expected)
    for study, row in expected.items():
        for column, value in row.items():
            if column in ("study_id", "route", "frontal_file", "lateral_file") or value == "":
                assert got[study][column] == value, (study, column)
            else:
                assert float(got[study][column]) == pytest.approx(float(value), abs=1e-4), (study, column)


def test_ray_gives_the_local_rows_and_errors_and_resumes(ray_local, folder, checkpoint, tmp_path):
    local = tmp_path / "local.csv"
    predict_folder(folder, local, checkpoint, device="cpu", workers=0, fast=False)
    out = tmp_path / "ray.csv"
    argv = ["predict", str(folder), "--engine", "ray", "--model", str(checkpoint), "-o", str(out)]
    assert cli.main([*argv, "--no-fast", "--batch-size", "2"]) == 0
    expected = rows(local)
    assert list(expected) == ["1.2.0", "1.2.1", "1.2.2", "1.2.7", "1.2.8"]  # study order
    assert_same_rows(rows(out), expected)
    assert errors(out.with_name("ray.errors.csv")) == errors(local.with_name("local.errors.csv"))
    assert len(errors(local.with_name("local.errors.csv"))) == 2  # the cut file (study failed) and the note

    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")  # header + 2 rows survive a kill
    summary = predict_folder_ray(folder, out, checkpoint, fast=False)
    assert (summary.skipped, summary.predicted, summary.failed) == (2, 3, 1)
    assert_same_rows(rows(out), expected)


def test_without_ray_the_engine_says_how_to_install_it(folder, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayEngineError, match=r'pip install "twoview\[ray\]"'):
        predict_folder_ray(folder, tmp_path / "o.csv", checkpoint)
