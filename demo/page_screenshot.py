"""Screenshot the page on the model ``make serve`` serves: ``docs/page.png`` in the README.

    python -m demo.page_screenshot --out docs/page.png

Starts ``python -m server`` as ``make serve`` does (the demo repository, whose default is the
photo model, and demo/samples; 127.0.0.1, a free port; ``--model-dir``/``--samples-dir`` for
another), opens the page in headless Chromium
(Debian's ``/usr/bin/chromium``, driven by Playwright), clicks the first sample image (the
samples are listed by name: ``astronaut.jpg``, a held-out photo), ticks all five tasks,
predicts, waits for the maps and the router heatmaps, and saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1500, "height": 1000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} was not ready in {seconds:.0f} s")


def screenshot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url + "/")
        page.wait_for_selector("#samples img")
        page.wait_for_selector('input[name="task"]')
        for box in page.query_selector_all('input[name="task"]'):
            box.check()
        page.click("#samples img >> nth=0")
        page.wait_for_selector("#run:not([disabled])")
        page.click("#run")
        page.wait_for_selector(".router-card canvas", timeout=30_000)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "page.png")
    parser.add_argument("--model-dir", type=Path, help="default: the demo repository")
    parser.add_argument("--samples-dir", type=Path, help="default: demo/samples")
    args = parser.parse_args()
    port = free_port()
    command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)]
    if args.model_dir:
        command += ["--model-dir", str(args.model_dir)]
    if args.samples_dir:
        command += ["--samples-dir", str(args.samples_dir)]
    process = subprocess.Popen(command, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        screenshot(url, args.out)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
