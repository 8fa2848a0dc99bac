"""The `twoview` console script, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline import cli
from pipeline.errors import ImageError, TwoviewError


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
    assert "(default: 20)" in text and "(default: 0.3 1.0 1.0)" in text and "(default: imagenet)" in text


def test_sample_data_prints_a_readable_summary(tmp_path):
    done = cli_run("sample-data", "--out", str(tmp_path / "s"), "--studies", "3", "--size", "128")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote 3 phantom studies") and "DatasetSummary" not in done.stdout


def test_import_weights_then_train_from_them(tmp_path):
    """A TorchXRayVision-style release, imported where torchxrayvision cannot be imported, starts a run
    whose model keeps TorchXRayVision's input scale for training and for later predictions."""
    from models.checkpoint import read_config
    from pipeline.transforms import normalise_transform
    from tests.models.xrv_standin import TINY, run_without_xrv, save_release
    from tests.pipeline.test_train import MANIFEST

    release = save_release(tmp_path / "xrv-tiny.pt", sizes=TINY, era="2019")
    weights = tmp_path / "xrv.safetensors"
    args = ["import-weights", str(release), "-o", str(weights), "--arch", "tiny"]
    done = run_without_xrv(f"from pipeline.cli import main; sys.exit(main({args!r}))")
    assert done.returncode == 0, done.stderr
    assert "imported TorchXRayVision weights" in done.stdout and "[-1024, 1024]" in done.stdout
    assert "(x - 0.5) / 0.000488281" in done.stdout

    out = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "train", "--manifest", str(MANIFEST), "--out", str(out), "--arch", "tiny",
         "--start", str(weights), "--image-size", "64", "--batch-size", "4", "--workers", "0", "--epochs", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "TorchXRayVision layout" in trained.stderr
    config = read_config(out / "best.safetensors")
    assert (config.norm_mean, config.norm_std) == (0.5, 1 / 2048)
    scaled = normalise_transform(config)(np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32))
    assert scaled.flatten().tolist() == [-1024.0, 0.0, 1024.0]


def test_import_weights_errors_are_one_line(tmp_path):
    url = run("import-weights", "http://127.0.0.1:9/w.pt", "-o", str(tmp_path / "w.safetensors"))
    assert url.returncode == 2 and "a SHA-256" in url.stderr and "Traceback" not in url.stderr
    (tmp_path / "notes.pt").write_text("not weights")
    bad = run("import-weights", str(tmp_path / "notes.pt"), "-o", str(tmp_path / "w.safetensors"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a torch file" in bad.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_app_data_dirs_are_added_to_the_environment(tmp_path):
    """`twoview app --data-dir A --data-dir B` extends $TWOVIEW_DATA_DIRS (the folders the pages may read)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = cli.build_parser().parse_args(
        ["app", "--data-dir", str(tmp_path / "a"), "--data-dir", str(tmp_path / "b")]
    )
    env = cli._app_environment(args, {"TWOVIEW_DATA_DIRS": "/srv/x"})
    assert env["TWOVIEW_DATA_DIRS"].split(os.pathsep) == ["/srv/x", str(tmp_path / "a"), str(tmp_path / "b")]
    args = cli.build_parser().parse_args(["app", "--data-dir", str(tmp_path / "missing")])
    with pytest.raises(TwoviewError, match="no such folder"):
        cli._app_environment(args, {})


def test_predict_with_a_damaged_model_fails_cleanly_then_resumes_with_a_good_one(tmp_path):
    """The weights load while the first batch decodes, so a damaged file is refused at the first batch:
    one line naming it, no output file left (a header would hold its labels), and a rerun with a sound
    model with other labels predicts every study."""
    from models import ModelConfig, TwoViewNet
    from models.checkpoint import save
    from tests.pipeline.conftest import write_dicom

    for i in range(3):
        write_dicom(tmp_path / "studies" / f"s{i}.dcm", study_uid=f"1.2.{i + 10}", view_position="PA", seed=i)
    good = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "good.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(save(TwoViewNet(ModelConfig.tiny(labels=("x",))), damaged).read_bytes()[:-1000])
    out = tmp_path / "out.csv"
    done = cli_run(
        "predict", str(tmp_path / "studies"), "--model", str(damaged), "-o", str(out), "--workers", "1"
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"error: {damaged}: the tensors declared in the header do not fill the file" in done.stderr
    assert not out.exists() and not (tmp_path / "out.errors.csv").exists()
    again = cli_run("predict", str(tmp_path / "studies"), "--model", str(good), "-o", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.read_text().count("\n") == 4


def test_a_command_imports_with_the_collector_paused_and_gives_it_back(tmp_path, capsys):
    """The cycle collector is off while torch and MONAI import, then back on with their objects frozen;
    `main` unfreezes them at its end, so a caller in the same process keeps a whole collector."""
    import gc

    with cli._collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    gc.unfreeze()
    missing = tmp_path / "missing.csv"  # refused inside the paused block, while reading the manifest
    assert cli.main(["predict", "--manifest", str(missing), "-o", str(tmp_path / "out.csv")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert gc.isenabled() and gc.get_freeze_count() == 0


_COLLECTIONS = """
import gc, sys
from pipeline.cli import main
seen = []  # (full collection?, before pipeline.predict's imports were done?) for each collection in `main`
gc.callbacks.append(
    lambda phase, info: phase == "start"
    and seen.append((info["generation"] == 2, not hasattr(sys.modules.get("pipeline.predict"), "predict_folder")))
)
code = main(sys.argv[1:])
print("full collections before the imports were done:", seen.count((True, True)), "of", len(seen), "collections")
sys.exit(code)
"""


def test_predict_imports_torch_and_monai_with_no_full_collection(tmp_path):
    """Each full collection during the imports walked every object they had made so far: 0.3-0.5 s of
    the start. A fresh `twoview predict` now runs none before its imports are done (other collections,
    young objects only, still run: the collector is on)."""
    from models import ModelConfig, TwoViewNet
    from models.checkpoint import save
    from tests.pipeline.conftest import write_dicom

    write_dicom(tmp_path / "studies" / "s.dcm", study_uid="1.2.10", view_position="PA", seed=0)
    model = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "model.safetensors")
    command = [
        sys.executable,
        "-c",
        _COLLECTIONS,
        "predict",
        str(tmp_path / "studies"),
        "--model",
        str(model),
    ]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "out.csv")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts = done.stdout.split(":")[-1].split()
    assert counts[0] == "0" and int(counts[2]) > 0, done.stdout
