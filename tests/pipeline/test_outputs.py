"""Prediction files: columns, rows, crash-safe appends, resume, the errors file and the progress line."""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from pipeline.outputs import (
    ErrorsFile,
    OutputError,
    PredictionsFile,
    errors_path,
    output_format,
    prediction_bytes,
    prediction_columns,
    prediction_row,
)
from pipeline.records import StudyPrediction
from pipeline.studies import SetAside

LABELS = ("effusion", "nodule")
THRESHOLDS = {"nodule": 0.4}


def prediction(study_id: str, route: str = "frontal", value: float = 0.25) -> StudyPrediction:
    """A prediction as the Predictor makes it: the heads that did not run are None."""
    ran = {"joint": ("frontal", "lateral", "joint"), "frontal": ("frontal",), "lateral": ("lateral",)}[route]
    heads = {
        h: {label: (value if h in ran else None) for label in LABELS} for h in ("frontal", "lateral", "joint")
    }
    final = heads[route]
    return StudyPrediction(
        study_id,
        route,
        dict(final),
        heads["frontal"],
        heads["lateral"],
        heads["joint"],
        {"nodule": int(final["nodule"] >= THRESHOLDS["nodule"])},
        Path("/data/a.dcm") if route != "lateral" else None,
        Path("/data/b.dcm") if route != "frontal" else None,
    )


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def test_columns_name_each_head_and_thresholds_only_where_set():
    columns = prediction_columns(LABELS, THRESHOLDS)
    assert columns == [
        "study_id",
        "route",
        "frontal_file",
        "lateral_file",
        "effusion",
        "effusion_frontal",
        "effusion_lateral",
        "effusion_joint",
        "nodule",
        "nodule_frontal",
        "nodule_lateral",
        "nodule_joint",
        "nodule_threshold",
        "nodule_call",
    ]


@pytest.mark.parametrize("labels", [("route", "x"), ("a", "a_frontal")])
def test_labels_that_collide_with_columns_are_refused(labels):
    with pytest.raises(OutputError, match="repeated output columns"):
        prediction_columns(labels, {})


def test_row_blank_where_a_head_did_not_run_and_call_from_threshold():
    row = prediction_row(prediction("s1", "lateral", 0.5), THRESHOLDS)
    assert row["route"] == "lateral" and row["frontal_file"] is None and row["lateral_file"] == "/data/b.dcm"
    assert row["nodule"] == 0.5 and row["nodule_lateral"] == 0.5
    assert row["nodule_frontal"] is None and row["nodule_joint"] is None
    assert row["nodule_threshold"] == 0.4 and row["nodule_call"] == 1
    assert "effusion_call" not in row


@pytest.mark.parametrize(
    ("name", "expected"), [("o.csv", "csv"), ("o.JSONL", "jsonl"), ("o.ndjson", "jsonl")]
)
def test_output_format_from_suffix(name, expected):
    assert output_format(name) == expected


@pytest.mark.parametrize("name", ["out.txt", "out", "out.json"])
def test_unknown_output_format_is_refused(name):
    with pytest.raises(OutputError, match="use .csv or .jsonl"):
        output_format(name)


def test_errors_path_is_beside_the_output():
    assert errors_path("/x/run.jsonl") == Path("/x/run.errors.csv")


def test_csv_header_once_and_resume_reads_done_ids(tmp_path):
    out = tmp_path / "p.csv"
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:
        f.write([prediction("s1", "joint"), prediction("s2", "lateral")])
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:
        assert f.done == {"s1", "s2"}
        f.write([prediction("s3")])
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["study_id"] for r in rows] == ["s1", "s2", "s3"]
    assert lines(out).count(lines(out)[0]) == 1
    assert rows[1]["effusion_frontal"] == "" and rows[1]["effusion_lateral"] == "0.25"


def test_jsonl_one_object_per_line_with_nulls(tmp_path):
    out = tmp_path / "p.jsonl"
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:
        f.write([prediction("s1", "frontal")])
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:
        assert f.done == {"s1"}
        f.write([prediction("s2", "joint")])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["study_id"] for r in records] == ["s1", "s2"]
    assert records[0]["nodule_lateral"] is None and records[0]["lateral_file"] is None
    assert records[1]["nodule_joint"] == 0.25 and records[1]["nodule_call"] == 0


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_torn_last_line_is_cut_off_on_reopen(tmp_path, suffix, caplog):
    out = tmp_path / f"p{suffix}"
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:
        f.write([prediction("s1")])
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"study_id": "s2", "rou' if suffix == ".jsonl" else whole + b"s2,fron")
    with caplog.at_level(logging.WARNING), PredictionsFile(out, LABELS, THRESHOLDS) as f:
        assert f.done == {"s1"}
        assert out.read_bytes() == whole
        f.write([prediction("s2")])
    assert "incomplete last line" in caplog.text
    assert out.read_text().endswith("\n") and out.read_text().count("s2") == 1


def test_a_torn_header_is_rewritten(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("study_id,ro")
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:
        assert f.done == set()
        f.write([prediction("s1")])
    assert lines(out)[0] == ",".join(prediction_columns(LABELS, THRESHOLDS))


def test_line_breaks_in_text_keep_each_csv_row_on_one_line(tmp_path):
    out = tmp_path / "p.csv"
    with PredictionsFile(out, LABELS, {}) as f:
        f.write([prediction("odd\nid")])
    assert len(out.read_text().splitlines()) == 2
    with PredictionsFile(out, LABELS, {}) as f:
        assert f.done == {"odd\\nid"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resuming_with_other_columns_is_refused(tmp_path, suffix):
    out = tmp_path / f"p{suffix}"
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:
        f.write([prediction("s1")])
    before = out.read_bytes()
    with pytest.raises(OutputError, match="another output file"):
        PredictionsFile(out, ("effusion", "nodule", "mass"), THRESHOLDS)
    assert out.read_bytes() == before


def test_damaged_jsonl_is_refused_with_its_line(tmp_path):
    out = tmp_path / "p.jsonl"
    with PredictionsFile(out, LABELS, {}) as f:
        f.write([prediction("s1")])
    with out.open("a") as f:
        f.write("not json\n")
    with pytest.raises(OutputError, match="line 2: not valid JSON"):
        PredictionsFile(out, LABELS, {})
    out.write_text('{"study_id": "s1"}\n')
    with pytest.raises(OutputError, match="line 1: has other fields"):
        PredictionsFile(out, LABELS, {})


def test_errors_file_lists_each_item_once_across_runs(tmp_path):
    path = tmp_path / "p.errors.csv"
    bad = SetAside(tmp_path / "x.dcm", "this is not a DICOM, PNG or JPEG image")
    dup = SetAside(tmp_path / "y.dcm", "second frontal view", "1.2.3", "duplicate")
    with ErrorsFile(path) as f:
        f.write([bad, dup, bad])
        assert f.written == 2
    with ErrorsFile(path) as f:
        f.write([dup, SetAside(tmp_path / "z.dcm", "a CT scan", None, "not_chest")])
        assert f.written == 1
    rows = list(csv.DictReader(path.open(newline="")))
    assert [(r["path"], r["study_id"], r["kind"]) for r in rows] == [
        (str(tmp_path / "x.dcm"), "", "unreadable"),
        (str(tmp_path / "y.dcm"), "1.2.3", "duplicate"),
        (str(tmp_path / "z.dcm"), "", "not_chest"),
    ]


def test_prediction_bytes_have_the_predict_columns():
    labels, thresholds = ("a", "b"), {"b": 0.4}
    done = StudyPrediction(
        "s1", "frontal", {"a": 0.1, "b": 0.6}, {"a": 0.1, "b": 0.6}, dict.fromkeys(labels), dict.fromkeys(labels),
        {"b": 1}, Path("f.dcm"), None,
    )  # fmt: skip
    failed = StudyPrediction("s2", None, *(dict.fromkeys(labels) for _ in range(4)), {}, None, None)
    files = prediction_bytes([done, failed], labels, thresholds)
    rows = list(csv.reader(io.StringIO(files["csv"].decode())))
    assert rows[0] == prediction_columns(labels, thresholds)
    assert len(rows) == 2 and rows[1][:4] == ["s1", "frontal", "f.dcm", ""]
    [line] = files["jsonl"].decode().splitlines()
    assert json.loads(line)["b_call"] == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize(
    "content",
    [
        b"user,password\nadmin,hunter2",  # no trailing newline: a resume used to cut this last row
        b"user,password\nadmin,hunter2\n",
        b'{"user": "admin", "password": "hunter2"}\n{"user": "root"',
        b"root:x:0:0:root:/root:/bin/bash",
    ],
)
def test_a_file_this_run_did_not_write_is_refused_unchanged(tmp_path, suffix, content):
    out = tmp_path / f"server{suffix}"
    out.write_bytes(content)
    with pytest.raises(OutputError, match="not an output twoview wrote") as caught:
        PredictionsFile(out, LABELS, THRESHOLDS)
    assert out.read_bytes() == content
    assert "hunter2" not in str(caught.value) and "password" not in str(caught.value)
    errors = errors_path(out)
    errors.write_bytes(content)
    with pytest.raises(OutputError, match="not an output twoview wrote"):
        ErrorsFile(errors)
    assert errors.read_bytes() == content


def test_a_second_writer_of_the_same_file_is_refused_until_the_first_closes(tmp_path):
    out = tmp_path / "p.csv"
    first = PredictionsFile(out, LABELS, THRESHOLDS)
    first.write([prediction("s1")])
    with pytest.raises(OutputError, match="being written by another twoview job"):
        PredictionsFile(out, LABELS, THRESHOLDS)
    with ErrorsFile(errors_path(out)), pytest.raises(OutputError, match="being written by another"):
        ErrorsFile(errors_path(out))
    first.close()
    first.close()  # closing twice is harmless
    with PredictionsFile(out, LABELS, THRESHOLDS) as second:
        assert second.done == {"s1"}


def test_a_writer_in_another_process_holds_the_lock_until_it_exits(tmp_path):
    out = tmp_path / "p.jsonl"
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()

    def writer():
        PredictionsFile(out, LABELS, THRESHOLDS).write([prediction("s1")])  # never closed: held until exit
        ready.set()
        done.wait(60)

    child = context.Process(target=writer)
    child.start()
    assert ready.wait(60)
    with pytest.raises(OutputError, match="being written by another"):
        PredictionsFile(out, LABELS, THRESHOLDS)
    done.set()
    child.join(60)
    with PredictionsFile(out, LABELS, THRESHOLDS) as f:  # the kernel dropped the lock with the process
        assert f.done == {"s1"}


def test_a_pipe_is_no_output(tmp_path):
    out = tmp_path / "p.csv"
    os.mkfifo(out)
    with pytest.raises(OutputError, match="not a regular file"):
        PredictionsFile(out, LABELS, THRESHOLDS)
