"""The app as a user meets it, in headless Chromium: latency of Predict and heatmaps, and a screenshot per page.

Starts `twoview app` on a free port with the bundled demo model (a DenseNet121 pair at 224 px) and:
  landing   open Predict: the sample study, its thumbnails and an enabled Predict button
  cold      the first Predict of the process (loads the model)
  warm      Predict in fresh sessions (reloads), the model loaded: median of `--rounds`
  heatmaps  the Grad-CAM toggle on a predicted two-view study, until both colour scales show
and saves full-page screenshots of landing, Predict with a two-view result and heatmaps, Batch while
running, Fine-tune with charts (a tiny run on the sample labels) and Model into `--shots`.
Targets (issue 12): Predict under 3 s warm, heatmaps under 6 s, on 2 cores.

    python -m bench.app_pages [--shots DIR] [--rounds 3] [--epochs 4]   # from the checkout (it reuses tests/browser)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.jobs import TrainJob
from pipeline.settings import TrainSettings
from tests.browser.test_app_browser import CHROMIUM, free_port, wait_healthy

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "studies"


def predict(page) -> float:
    start = time.perf_counter()
    page.get_by_role("button", name="Predict").click()
    page.locator("table").filter(has_text="consolidation").wait_for(timeout=120_000)
    page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for(timeout=120_000)
    return time.perf_counter() - start


def landing(page, url: str) -> float:
    start = time.perf_counter()
    page.goto(url)
    page.locator('[data-testid="stImage"] img').nth(1).wait_for(timeout=120_000)
    page.get_by_role("button", name="Predict").wait_for(timeout=120_000)
    return time.perf_counter() - start


def shot(page, path: Path) -> None:
    """A full-page screenshot: the window grown to the app's scrolling content first."""
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(1000, int(height) + 40)})
    time.sleep(1.5)  # tables draw on a canvas after the resize
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1400})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=Path, default=Path("app-shots"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    args.shots.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="twoview-bench-app-"))
    data = root / "data"
    for copy in range(6):  # duplicates to scan: a Batch run long enough to be seen running
        shutil.copytree(SAMPLES, data / f"copy{copy}")
    port = free_port()
    env = {**os.environ, "TWOVIEW_APP_DIR": str(root / "appdir"), "TWOVIEW_DATA_DIRS": str(data)}
    env.pop("TWOVIEW_MODEL", None)
    log = (root / "app.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "app", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    figures: dict[str, float | list[float]] = {}
    try:
        wait_healthy(url, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless", "--disable-gpu"]
            )
            page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
            figures["landing"] = landing(page, url)
            shot(page, args.shots / "1-landing.png")
            figures["cold"] = predict(page)
            warm = []
            for _ in range(args.rounds):
                landing(page, url)  # a new session; the model stays loaded in the server
                warm.append(predict(page))
            figures["warm"] = warm
            start = time.perf_counter()
            page.get_by_text("Grad-CAM heatmap").click()
            page.locator('[data-testid="stPlotlyChart"] .colorbar').nth(1).wait_for(timeout=120_000)
            figures["heatmaps"] = time.perf_counter() - start
            print(figures, flush=True)
            time.sleep(1.0)
            shot(page, args.shots / "2-predict-two-views-heatmap.png")

            page.goto(f"{url}/batch")
            page.get_by_role("button", name="Start").click()
            page.get_by_text(re.compile(r"about .+ left")).wait_for(timeout=120_000)
            time.sleep(1.5)
            shot(page, args.shots / "3-batch-running.png")
            try:  # the run may have ended since the screenshot
                page.get_by_role("button", name="Stop").click(timeout=5_000)
            except PlaywrightTimeout:
                pass
            page.get_by_text(re.compile(r"^(Stopped|Done):")).wait_for(timeout=60_000)

            job = TrainJob.start(  # what the Fine-tune page starts, on the sample labels: a tiny network
                TrainSettings(
                    manifest=str(SAMPLES / "labels.csv"),
                    start="scratch",
                    arch="tiny",
                    image_size=64,
                    epochs=args.epochs,
                    batch_size=8,
                    workers=0,
                ),
                root / "appdir" / "runs",
                root / "appdir" / "jobs",
            )
            while job.running and not list((job.run_path / "logs").glob("*/metrics.csv")):
                time.sleep(0.5)
            page.goto(f"{url}/finetune")
            if job.running:  # a tiny run is quick: catch it mid-way when the machine allows
                page.get_by_text(re.compile(r"Epoch \d+ of")).wait_for(timeout=120_000)
                shot(page, args.shots / "4-finetune-running.png")
            deadline = time.monotonic() + 600
            while job.running and time.monotonic() < deadline:
                time.sleep(1.0)
            page.goto(f"{url}/finetune")
            page.get_by_text("Validation too small to trust").wait_for(timeout=60_000)
            time.sleep(2.0)
            shot(page, args.shots / "4-finetune-charts.png")

            page.goto(f"{url}/model")
            page.get_by_text("Known limits").first.wait_for(timeout=60_000)
            shot(page, args.shots / "5-model.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    warm = figures["warm"]
    print(
        f"{platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}"
    )
    print(f"landing page ready (sample, thumbnails, Predict) {figures['landing']:.2f} s")
    print(f"Predict, first press (loads the demo model) {figures['cold']:.2f} s")
    print(
        f"Predict, model loaded, fresh session: median {statistics.median(warm):.2f} s ({', '.join(f'{w:.2f}' for w in warm)}) — target < 3 s"
    )
    print(f"Grad-CAM heatmaps for both views {figures['heatmaps']:.2f} s — target < 6 s")
    print(f"screenshots in {args.shots.resolve()}")


if __name__ == "__main__":
    main()
