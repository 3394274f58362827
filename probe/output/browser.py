"""Headless Chromium and a served dashboard, for pictures, the browser test and the bench.

One set of flags for Debian's ``chromium`` (``apt-get install chromium chromium-driver``):
without the background-networking ones it keeps trying to reach Google's hosts, which a
closed network refuses. Selenium is needed only for ``driver`` (the ``test`` extra)::

    with serve_app("recordings/") as served:         # bokeh serve apps/cells on a free port
        with driver(window="1400,1800") as d:         # a selenium Chrome driver
            d.get(served.url + "?recording=stdlib-test.h5")
    screenshot("cell.html", "cell.png")               # a static page to PNG, no selenium
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")
APP = Path(__file__).resolve().parents[2] / "apps" / "cells"
# Bokeh 3 puts widgets and Div contents in shadow roots: walkAll(selector) finds elements
# inside them too (run this once in the page before using it)
WALK_JS = """
window.walkAll = function (sel) {
  const out = [];
  (function walk(root) {
    out.push(...root.querySelectorAll(sel));
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
  })(document);
  return out;
};
"""


def available() -> bool:
    """Debian's chromium and chromedriver are installed."""
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def screenshot(page: str | os.PathLike, png: str | os.PathLike, window: str = "900,560") -> None:
    """A PNG of a local HTML page, shot by chromium itself (no driver needed)."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
                        f"--screenshot={Path(png).resolve()}", Path(page).resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)


@contextmanager
def driver(window: str = "1400,1800", browser_log: bool = False) -> Iterator:
    """A selenium Chrome driver on Debian's chromium, with a fresh profile; quit on exit."""
    os.environ["SE_OFFLINE"] = "true"  # never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    with tempfile.TemporaryDirectory() as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--window-size={window}", f"--user-data-dir={profile}"):
            opts.add_argument(flag)
        if browser_log:
            opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
        try:
            yield d
        finally:
            d.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served(NamedTuple):
    url: str   # the page, http://127.0.0.1:PORT/cells
    pid: int   # the server process


@contextmanager
def serve_app(recordings: str | os.PathLike, log=None, timeout: float = 120,
              app: str | os.PathLike | None = None) -> Iterator[Served]:
    """``bokeh serve apps/cells`` (or another checkout's ``app`` folder) over a recordings
    folder on a free port; yields its URL and process id once the page answers, and stops the
    server on exit. Output goes to ``log``."""
    port = free_port()
    app = Path(app).resolve() if app else APP
    proc = subprocess.Popen([sys.executable, "-m", "bokeh", "serve", str(app), "--port", str(port),
                             "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}",
                             "--args", "--recordings", str(recordings)],
                            stdout=log, stderr=subprocess.STDOUT if log else None, cwd=app.parents[1])
    url = f"http://127.0.0.1:{port}/cells"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=10).read()  # also creates (then drops) a session
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bokeh serve {APP} did not start (exit code {proc.poll()})")
                time.sleep(0.2)
        yield Served(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
