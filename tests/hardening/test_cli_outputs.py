"""The CLI runs as its user and reads what it is told, but never repairs, extends or doubles a file it did not write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parents[2] / "sample_data" / "studies" / "TV000000000"


def predict(folder: Path, output: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "predict",
        str(folder),
        "-o",
        str(output),
        "--workers",
        "0",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_an_output_naming_a_file_it_did_not_write_is_refused_unchanged(tmp_path):
    """A server CSV as output was refused only after its last line (no trailing newline) had been cut."""
    target = tmp_path / "accounts.csv"
    target.write_bytes(b"user,password\nadmin,hunter2")
    done = predict(STUDY, target)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not an output twoview wrote" in done.stderr and "hunter2" not in done.stderr
    assert target.read_bytes() == b"user,password\nadmin,hunter2"


def test_two_runs_on_one_output_never_write_a_study_twice(tmp_path):
    output = tmp_path / "out.csv"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "predict",
        str(STUDY.parent),
        "-o",
        str(output),
        "--workers",
        "0",
    ]
    runs = [
        subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for _ in range(2)
    ]
    outcomes = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    ids = [line.split(",")[0] for line in output.read_text().splitlines()[1:]]
    assert len(ids) == 24 == len(set(ids))
    refused = [err for code, err in outcomes if code != 0]
    assert len(refused) <= 1 and all("being written by another twoview job" in err for err in refused)
