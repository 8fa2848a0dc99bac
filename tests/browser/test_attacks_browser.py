"""The second hardening round's attacks against the running app, in headless Chromium, with memory measured.

Each upload attack is made in tmp_path (sparse files, zips written by hand), uploaded through the
page, and must end in a message; the server process's peak RSS (VmHWM, reset before each attack
through /proc/PID/clear_refs) must stay under 1.5 GiB above its idle RSS. The readers' child
processes are measured too and printed, as are the seconds to the message. Markdown placed in DICOM
tags, label names and checkpoint metadata must not make the browser fetch anything, and a session's
upload folder must be gone once its tab is closed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.checkpoint import save
from models.config import ModelConfig
from models.twoview import TwoViewNet
from tests.browser.test_app_browser import CHROMIUM, free_port, wait_healthy
from tests.browser.test_load import SERVER
from tests.hardening.attacks import (
    GiB,
    MiB,
    dicom_header,
    header_then_zeros,
    huge_dicom,
    markup_dicom,
    pickle_bytes,
    png_bomb,
    understated_zip,
    zeros_zip,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.skipif(
        not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure memory"
    ),
]

LIMIT = int(1.5 * GiB)  # the bound on the server's peak RSS above idle, for every upload attack
RESULTS: list[tuple[str, str, float, float, float]] = []  # attack, message, seconds, server MiB, readers MiB
BIG = dict(
    init_features=1024, growth_rate=256, block_config=(128, 128, 128, 128), bn_size=16, fusion_layers=64
)


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the fork server and the readers it forks)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = status(int(entry.name), "PPid") // 1024
            except (OSError, RuntimeError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent]
        found += children
        frontier += children
    return found


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            continue


def readers_peak(server: int) -> int:
    """The largest peak RSS among the server's child processes."""
    peaks = []
    for pid in descendants(server):
        try:
            peaks.append(status(pid, "VmHWM"))
        except (OSError, RuntimeError):
            continue
    return max(peaks, default=0)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """The app with a tiny model, its temporary files in a folder of its own."""
    root = tmp_path_factory.mktemp("attacked-app")
    torch.manual_seed(0)
    model = save(TwoViewNet(ModelConfig.tiny()), root / "tiny.safetensors")
    (root / "tmp").mkdir()
    port = free_port()
    env = {
        **os.environ,
        "TWOVIEW_APP_DIR": str(root / "appdir"),
        "TWOVIEW_MODEL": str(model),
        "TMPDIR": str(root / "tmp"),
    }
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process, root
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        print("\n| attack | outcome | seconds | server peak above idle (MiB) | reader peak RSS (MiB) |")
        print("|---|---|---|---|---|")
        for attack, message, seconds, server, readers in RESULTS:
            print(f"| {attack} | {message} | {seconds:.1f} | {server:.0f} | {readers:.0f} |")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


def open_page(browser, url: str, path: str = ""):
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    page = context.new_page()
    page.goto(f"{url}/{path}")
    if not path:  # Predict opens on a sample study: switch to uploads
        page.get_by_text("Upload files").click()
    page.locator("input[type=file]").wait_for(state="attached", timeout=60_000)
    return context, page


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def bomb(tmp: Path) -> Path:
    return zeros_zip(tmp / "bomb.zip", [("study/zeros.dcm", b"", 4 * GiB)])


def four_huge(tmp: Path) -> Path:
    return zeros_zip(tmp / "four.zip", [(f"study/IM{i}", *huge_dicom(16384)) for i in range(4)])


def zeros_2gb(tmp: Path) -> Path:
    return zeros_zip(tmp / "zeros2g.zip", [("study/IM0001", dicom_header(), 2 * 10**9)])


def zeros_200mb(tmp: Path) -> Path:
    return zeros_zip(tmp / "zeros200m.zip", [("study/IM0001", dicom_header(), 200 * MiB)])


def four_8192(tmp: Path) -> Path:
    return zeros_zip(tmp / "films.zip", [(f"study/IM{i}", *huge_dicom(8192)) for i in range(4)])


def big_checkpoint(tmp: Path) -> Path:
    from safetensors.torch import save_file

    path = tmp / "big.safetensors"
    config = ModelConfig(**BIG).to_json()
    save_file(
        {"x": torch.zeros(2)},
        str(path),
        metadata={"format": "twoview", "format_version": "1", "config": config},
    )
    return path


def too_big_upload(tmp: Path) -> Path:
    path = tmp / "big.dcm"
    header_then_zeros(path, 300 * 10**6)
    return path


ATTACKS = [
    # (name, page, builder, text the page must show)
    ("4.2 MB zip of 4 GiB of zeros", "", bomb, "holds a file of 4.0 GiB"),
    ("zip understating its size", "", lambda tmp: understated_zip(tmp / "liar.zip"), "Bad CRC"),
    ("four 16384 x 16384 16-bit DICOMs, 3 MB zip", "", four_huge, "holds a file of 512 MiB"),
    ("DICOM header + 2 GB of zeros, 2.3 MB zip", "", zeros_2gb, "holds a file of 1.9 GiB"),
    ("DICOM header + 200 MB of zeros (unpacks)", "", zeros_200mb, "elements"),
    ("four 8192 x 8192 16-bit DICOMs (pixel budget)", "", four_8192, "past 150 megapixels"),
    (
        "PNG declaring 30000 x 30000",
        "",
        lambda tmp: write(tmp / "bomb.png", png_bomb(30000)),
        "too large to load",
    ),
    (
        "DICOM declaring 65535 x 65535",
        "",
        lambda tmp: write(tmp / "wide.dcm", dicom_header(65535, 65535)),
        "more than 16384",
    ),
    ("300 MB upload", "", too_big_upload, "200"),
    ("1 KB checkpoint declaring 173.5 G parameters", "model", big_checkpoint, "173,471.2 M parameters"),
    (
        "pickle renamed .safetensors",
        "model",
        lambda tmp: write(tmp / "w.safetensors", pickle_bytes()),
        "PyTorch pickle",
    ),
]


@pytest.mark.parametrize(("name", "where", "build", "expected"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_upload_attacks_end_in_a_message_with_bounded_memory(
    app, browser, tmp_path, name, where, build, expected
):
    url, process, _ = app
    attack = build(tmp_path)
    context, page = open_page(browser, url, where)
    try:
        time.sleep(1.0)  # let the page settle before measuring idle
        idle = status(process.pid, "VmRSS")
        reset_peaks([process.pid, *descendants(process.pid)])
        started = time.perf_counter()
        page.locator("input[type=file]").first.set_input_files(str(attack))
        shown = page.get_by_text(expected).first
        shown.wait_for(timeout=240_000)
        seconds = time.perf_counter() - started
        time.sleep(0.5)
        peak = status(process.pid, "VmHWM") - idle
        readers = readers_peak(process.pid)
        body = page.inner_text("body")
        assert "Traceback" not in body
        RESULTS.append(
            (name, shown.inner_text().replace("\n", " ")[:110], seconds, peak / 2**20, readers / 2**20)
        )
        print(
            f"\n{name}: {seconds:.1f} s, server peak {peak / 2**20:.0f} MiB above idle, readers {readers / 2**20:.0f} MiB"
        )
        assert peak < LIMIT, f"{name}: server peak RSS {peak / 2**20:.0f} MiB above idle"
    finally:
        context.close()


def test_markup_in_tags_labels_and_metadata_fetches_nothing(app, browser, server, tmp_path):
    """Images placed in DICOM tags, label names and checkpoint metadata were fetched by the browser."""
    url, _, _ = app
    _, bait, hits = server
    refused = write(tmp_path / "refused.dcm", markup_dicom(bait))
    readable = write(tmp_path / "read.dcm", markup_dicom(bait, readable=True))
    config = ModelConfig.tiny(
        labels=(f"![l]({bait}/label.png)", "b"),
        trained_on=f"<img src='{bait}/trained.png'>",
        provenance={"site": f"![p]({bait}/p.png)"},
    )
    model = save(
        TwoViewNet(config), tmp_path / "marked.safetensors", extra={"note": f"![n]({bait}/note.png)"}
    )
    context, page = open_page(browser, url, "model")
    try:
        page.locator("input[type=file]").set_input_files(str(model))
        page.get_by_text("Saved as").wait_for(timeout=60_000)
        page.get_by_role("combobox", name="Checkpoint").click()
        page.get_by_role("option", name="uploaded: marked.safetensors").click()
        page.get_by_role("button", name="Use this model").click()
        page.get_by_text("![p]").first.wait_for(timeout=60_000)  # the metadata shown as text
        page.locator('[data-testid="stSidebarNav"]').get_by_text(
            "Predict"
        ).click()  # same session, same model
        page.get_by_text("Upload files").click()
        page.locator("input[type=file]").wait_for(state="attached", timeout=60_000)
        page.locator("input[type=file]").set_input_files([str(refused), str(readable)])
        page.get_by_text("![M]").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Predict").click()
        page.get_by_text("Route:").wait_for(timeout=60_000)
        page.get_by_text("Grad-CAM heatmap").click()
        page.get_by_role("combobox", name="Finding explained").click()
        page.get_by_role("option").filter(has_text="![l]").click()
        page.get_by_text("head for ![l]").first.wait_for(timeout=60_000)
        time.sleep(2.0)
        page.screenshot(path=tmp_path / "markup.png", full_page=True)
    finally:
        context.close()  # the model chosen was this session's only
    assert hits == [], f"the browser fetched {hits}"


def test_a_sessions_upload_folder_is_removed_when_its_tab_closes(app, browser):
    url, _, root = app
    study = (
        Path(__file__).resolve().parents[2]
        / "sample_data"
        / "studies"
        / "TV000000000"
        / "ST00000"
        / "SE001"
        / "1.dcm"
    )
    context, page = open_page(browser, url)
    page.locator("input[type=file]").set_input_files(str(study))
    page.get_by_role("button", name="Predict").wait_for(timeout=60_000)
    held = [p for p in (root / "tmp").glob("twoview-session-*") if any(p.rglob("1.dcm"))]
    assert len(held) == 1
    context.close()
    deadline = time.monotonic() + 30
    while held[0].exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not held[0].exists(), "the session's upload folder outlived its tab"
