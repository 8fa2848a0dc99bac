"""The `twoview` console script, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.errors import ImageError


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["twoview", *args], capture_output=True, text=True, timeout=120)


def test_help_and_version_work_from_the_installed_script():
    helped = run("--help")
    assert helped.returncode == 0 and "frontal and lateral" in helped.stdout
    assert "sample-data" in helped.stdout
    versioned = run("--version")
    assert versioned.returncode == 0 and versioned.stdout.startswith("twoview 0.")


def test_no_command_prints_help():
    done = subprocess.run([sys.executable, "-m", "pipeline.cli"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: twoview" in done.stdout


def test_unknown_command_is_a_usage_error():
    done = run("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_our_errors_are_one_line_without_traceback(monkeypatch, capsys):
    def fail(args):
        raise ImageError("/data/x.dcm", "not a DICOM file")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(handler=fail, command="predict")
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "twoview predict: error: /data/x.dcm: not a DICOM file"
    with pytest.raises(ImageError):
        cli.main(["--debug"])


def cli_run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_predict_on_an_empty_folder_says_so_and_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    done = cli_run("predict", str(tmp_path / "empty"), "-o", str(tmp_path / "out.csv"))
    assert done.returncode == 2
    assert "no studies to predict" in done.stderr and "holds no image files" in done.stderr


def test_predict_where_every_file_is_set_aside_names_the_errors_file(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "x.dcm").write_bytes(b"\0" * 300)
    done = cli_run("predict", str(folder), "-o", str(tmp_path / "new" / "out.csv"))
    assert done.returncode == 2
    assert "all 2 files were set aside" in done.stderr and "out.errors.csv" in done.stderr
    assert "creating the output folder" in done.stderr
    assert (tmp_path / "new" / "out.errors.csv").read_text().count("\n") == 3


def test_train_help_shows_the_defaults_of_train_settings():
    done = cli_run("train", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: 20)" in text and "(default: 0.3 1.0 1.0)" in text and "(default: demo)" in text


def test_sample_data_prints_a_readable_summary(tmp_path):
    done = cli_run("sample-data", "--out", str(tmp_path / "s"), "--studies", "3", "--size", "128")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote 3 phantom studies") and "DatasetSummary" not in done.stdout
