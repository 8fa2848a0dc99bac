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
