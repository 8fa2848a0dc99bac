"""Sharded prediction: four `twoview predict --shard K/4` processes merge into the rows of one run."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from models import ModelConfig, TwoViewNet
from models.checkpoint import save
from pipeline.merge import merge_outputs
from pipeline.shards import ShardError, parse_shard

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    return save(TwoViewNet(ModelConfig.tiny()), tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The sample studies plus a broken file, so error rows are sharded and merged too."""
    root = tmp_path_factory.mktemp("studies") / "in"
    shutil.copytree(SAMPLES, root)
    (root / "broken.dcm").write_text("not an image")
    return root


def rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["study_id"]: r for r in csv.DictReader(f)}


def predict(folder: Path, model: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        "twoview",
        "predict",
        str(folder),
        "--model",
        str(model),
        "-o",
        str(out),
        "--no-fast",
        "--workers",
        "0",
    ]
    return subprocess.Popen(
        [*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_four_shards_merge_into_the_rows_of_one_run(tmp_path, folder, model):
    whole = predict(folder, model, tmp_path / "whole.csv")
    shards = [predict(folder, model, tmp_path / f"part{k}.csv", "--shard", f"{k}/4") for k in range(1, 5)]
    for proc in [whole, *shards]:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    parts = [rows(tmp_path / f"part{k}.csv") for k in range(1, 5)]
    assert sum(len(p) for p in parts) == len(rows(tmp_path / "whole.csv"))
    assert sum(1 for p in parts if p) >= 3  # the split really spreads the studies
    done = subprocess.run(
        ["twoview", "merge", str(tmp_path / "merged.csv"), *[str(tmp_path / f"part{k}.csv") for k in range(1, 5)],
         "--folder", str(folder)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    merged, expected = rows(tmp_path / "merged.csv"), rows(tmp_path / "whole.csv")
    assert list(merged) == sorted(expected)
    for study, row in expected.items():
        for column, value in row.items():
            got = merged[study][column]
            try:
                assert float(got) == pytest.approx(float(value), abs=1e-4), (study, column)
            except ValueError:  # text cells (ids, routes, paths) and blanks match exactly
                assert got == value, (study, column)
    with open(tmp_path / "merged.errors.csv") as f:
        merged_errors = list(csv.DictReader(f))
    with open(tmp_path / "whole.errors.csv") as f:
        whole_errors = list(csv.DictReader(f))
    assert sorted(e["path"] for e in merged_errors) == sorted(e["path"] for e in whole_errors)
    assert any(e["path"].endswith("broken.dcm") for e in merged_errors)


def test_merge_refuses_duplicates_and_gaps(tmp_path, folder, model):
    one = predict(folder, model, tmp_path / "a.csv", "--shard", "1/2")
    two = predict(folder, model, tmp_path / "b.csv", "--shard", "1/2")  # the same shard twice
    for proc in (one, two):
        proc.communicate(timeout=300)
    with pytest.raises(ShardError, match="is in both"):
        merge_outputs([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "m.csv")
    with pytest.raises(ShardError, match="are in no shard output"):
        merge_outputs([tmp_path / "a.csv"], tmp_path / "m.csv", folder=folder)


@pytest.mark.parametrize("text", ["0/4", "5/4", "x/4", "1-4", "2"])
def test_bad_shard_specs(text):
    with pytest.raises(ShardError, match="--shard"):
        parse_shard(text)
