"""Load: eight browser sessions upload a two-view study and press Predict at the same moment.

One Chromium, eight contexts (separate Streamlit sessions), a full-size random-weight model. The
server must answer every page without an error, load the model once (its log line is counted) and
keep its memory bounded (RSS after the burst against RSS after one warm-up session). The latency
of each press is printed with the median and p95 for the benchmark record.
"""

from __future__ import annotations

import asyncio
import os
import statistics
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

STUDIES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
SESSIONS = 8
RSS_GROWTH_LIMIT = 600 * 2**20  # eight sessions' uploads, pictures and results; one model copy is ~60 MB
LOADED = "loaded model"  # app/common.py logs this once per model load

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]

# What `twoview app` runs (streamlit run app/Home.py, same flags), in this process rather than exec'd,
# with the twoview loggers at INFO on stderr, so the server log shows each model load.
SERVER = """
import logging, sys
from pathlib import Path
import pipeline.cli
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("twoview").setLevel(logging.INFO)
entry = Path(pipeline.cli.__file__).resolve().parents[1] / "app" / "Home.py"
sys.argv = ["streamlit", "run", str(entry), "--server.port", sys.argv[1], "--server.address", "127.0.0.1",
            "--server.headless", "true", "--browser.gatherUsageStats", "false"]
from streamlit.web.cli import main
main()
"""


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    root = tmp_path_factory.mktemp("load-app")
    torch.manual_seed(0)
    model = save(TwoViewNet(ModelConfig()), root / "full.safetensors")
    port = free_port()
    env = {**os.environ, "TWOVIEW_APP_DIR": str(root / "appdir"), "TWOVIEW_MODEL": str(model)}
    log_path = root / "server.log"
    log = log_path.open("wb")
    command = [sys.executable, "-c", SERVER, str(port)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def two_view_studies(count: int) -> list[list[str]]:
    """The files of `count` bundled studies that have a frontal and a lateral view."""
    chosen = []
    for folder in sorted(p for p in STUDIES.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
        if len(files) == 2:
            chosen.append(files)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"fewer than {count} two-view sample studies")


async def session(browser, url: str, files: list[str], start: asyncio.Barrier) -> float:
    """One browser session: open the app, upload a study, wait for the others, press Predict; returns seconds."""
    context = await browser.new_context(viewport={"width": 1400, "height": 2000})
    try:
        page = await context.new_page()
        await page.goto(url, timeout=120_000)  # eight pages load at once beside the other test processes
        await page.get_by_text("Upload files").click(timeout=60_000)  # Predict lands on a sample study
        await page.locator("input[type=file]").set_input_files(files, timeout=60_000)
        button = page.get_by_role("button", name="Predict")
        await button.wait_for(timeout=60_000)
        await page.wait_for_function(
            "() => [...document.querySelectorAll('button')].some(b => b.innerText.includes('Predict') && !b.disabled)",
            timeout=60_000,
        )
        await asyncio.wait_for(start.wait(), 180)  # every session ready: all press together
        began = time.perf_counter()
        await button.click()
        await page.get_by_text("Route:").wait_for(timeout=180_000)
        await page.locator("table").filter(has_text="consolidation").wait_for(timeout=180_000)
        seconds = time.perf_counter() - began
        body = await page.inner_text("body")
        assert "Traceback" not in body, body[:2000]
        assert await page.locator('[data-testid="stException"]').count() == 0
        return seconds
    finally:
        await context.close()


async def burst(url: str, studies: list[list[str]], pid: int) -> tuple[float, int, list[float]]:
    """A warm-up session alone (loads the model), then all sessions pressing Predict together.

    Returns the warm-up's latency, the server's RSS after it, and each session's latency.
    """
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            warm = await session(browser, url, studies[0], asyncio.Barrier(1))
            warm_rss = rss(pid)
            together = asyncio.Barrier(len(studies))
            tasks = [session(browser, url, files, together) for files in studies]
            return warm, warm_rss, list(await asyncio.gather(*tasks))
        finally:
            await browser.close()


def test_eight_sessions_predict_at_once(server):
    url, process, log_path = server
    studies = two_view_studies(SESSIONS)
    warm_start = time.perf_counter()
    warm, before, latencies = asyncio.run(burst(url, studies, process.pid))
    total = time.perf_counter() - warm_start
    after = rss(process.pid)
    log = log_path.read_text(errors="replace")
    assert log.count(LOADED) == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert len(latencies) == SESSIONS
    growth = after - before
    p95 = statistics.quantiles(latencies, n=20, method="inclusive")[-1]
    print(
        f"\nload: {SESSIONS} sessions predicting at once (full-size DenseNet121 pair, 224 px, "
        f"{os.cpu_count()} cores): median {statistics.median(latencies):.2f} s, p95 {p95:.2f} s, "
        f"max {max(latencies):.2f} s; warm-up session {warm:.2f} s; whole test {total:.1f} s; "
        f"server RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB; model loaded {log.count(LOADED)}x"
    )
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MiB"
