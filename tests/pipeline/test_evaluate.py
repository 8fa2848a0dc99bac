"""`twoview evaluate` on the bundled sample studies with a small checkpoint."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch

from models import ModelConfig, TwoViewNet
from models.checkpoint import save
from models.config import SYNTHETIC_NOTICE
from pipeline.errors import TwoviewError
from pipeline.evaluate import evaluate

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save(TwoViewNet(ModelConfig.tiny()), path)


def test_evaluate_writes_a_report_with_intervals_and_curves(tmp_path, tiny_checkpoint):
    out = tmp_path / "report"
    report = evaluate(SAMPLES / "labels.csv", tiny_checkpoint, out, bootstrap=50, workers=0)
    with open(SAMPLES / "labels.csv") as f:
        studies = sum(1 for _ in csv.DictReader(f))
    assert report.heads["final"].n == studies
    assert sum(report.route_counts.values()) == studies and report.route_counts["joint"] > 0
    assert report.heads["final"].ci  # bootstrap intervals were computed
    saved = json.loads((out / "report.json").read_text())
    assert saved["bootstrap_rounds"] == 50 and saved["model"] == str(tiny_checkpoint)
    assert set(saved["heads"]) == {"final", "joint", "frontal", "lateral"}
    text = (out / "report.md").read_text()
    assert "frontal head alone vs the joint head" in text
    assert SYNTHETIC_NOTICE not in text and saved["notice"] is None
    assert (out / "roc_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_synthetic_only_model_says_so_under_the_report_title(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig.tiny(synthetic_only=True, trained_on="phantoms")
    model = save(TwoViewNet(config), tmp_path / "phantom-only.safetensors")
    evaluate(SAMPLES / "labels.csv", model, tmp_path / "report", bootstrap=0, workers=0)
    lines = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert lines[0].startswith("# Evaluation of phantom-only.safetensors") and SYNTHETIC_NOTICE in lines[2]


def test_manifest_without_the_models_labels_is_refused(tmp_path, tiny_checkpoint):
    other = tmp_path / "other.csv"
    with open(SAMPLES / "labels.csv") as f, open(other, "w", newline="") as g:
        writer = csv.writer(g)
        for i, row in enumerate(csv.DictReader(f)):
            if i == 0:
                writer.writerow(["study_id", "frontal", "lateral", "edema"])
            writer.writerow([row["study_id"], row["frontal"], row["lateral"], "1"])
    with pytest.raises(TwoviewError, match="none of the model's labels"):
        evaluate(other, tiny_checkpoint, tmp_path / "r", images_dir=SAMPLES, bootstrap=0, workers=0)


def test_cli_evaluate(tmp_path, tiny_checkpoint):
    done = subprocess.run(
        ["twoview", "evaluate", "--manifest", str(SAMPLES / "labels.csv"), "--model", str(tiny_checkpoint),
         "-o", str(tmp_path / "r"), "--bootstrap", "20", "--workers", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AUROC by head" in done.stdout and (tmp_path / "r" / "report.md").exists()
