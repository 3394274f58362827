"""Screenshots of the dashboard for the README: serve apps/cells, open views, save PNGs.

    python docs/screenshots.py recordings/ 'recording=stdlib-test.h5&layer=1&stream=c&unit=42' [...]

Each query string becomes docs/img/dashboard-<n>.png (full page, headless Debian chromium).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    folder, queries = sys.argv[1], sys.argv[2:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bokeh", "serve", str(REPO / "apps" / "cells"),
                               "--port", str(port), "--address", "127.0.0.1",
                               "--args", "--recordings", folder])
    url = f"http://127.0.0.1:{port}/cells"
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as profile:
            opts = webdriver.ChromeOptions()
            opts.binary_location = "/usr/bin/chromium"
            for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--window-size=1400,1500", f"--user-data-dir={profile}"):
                opts.add_argument(flag)
            d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
            try:
                for n, q in enumerate(queries, 1):
                    d.get(f"{url}?{q}")
                    time.sleep(8)  # let the page, the analysis and the colours settle
                    out = REPO / "docs" / "img" / f"dashboard-{n}.png"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    d.save_screenshot(str(out))
                    print(f"wrote {out}")
            finally:
                d.quit()
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
