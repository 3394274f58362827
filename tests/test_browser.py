"""The cells dashboard in a real browser: ``bokeh serve`` in a subprocess, headless Chromium.

Bokeh 3 puts widget and Div contents in shadow roots, so queries walk them in JS.
Saves ``test-artifacts/dashboard.png``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                                "(apt-get install chromium chromium-driver); CI installs it")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

# every element matching a selector, inside shadow roots too
WALK = """
window.walkAll = function (sel) {
  const out = [];
  (function walk(root) {
    out.push(...root.querySelectorAll(sel));
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
  })(document);
  return out;
};
"""
COLOURED = "return walkAll('div[data-probe] span, .probe-text span[title]').map(s => s.className).join(' ')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(recording_path, tmp_path):
    """``bokeh serve apps/cells`` over a folder holding the tiny recording; stopped afterwards."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(recording_path, folder / "tiny.h5")
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "bokeh", "serve", str(REPO / "apps" / "cells"),
                             "--port", str(port), "--address", "127.0.0.1",
                             "--allow-websocket-origin", f"127.0.0.1:{port}",
                             "--args", "--recordings", str(folder)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/cells"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"bokeh serve did not start:\n{log.read()}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser(tmp_path):
    os.environ["SE_OFFLINE"] = "true"  # never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def test_dashboard_in_chromium(served, browser):
    d = browser
    d.get(served + "?recording=tiny.h5&layer=1&stream=c&unit=1")
    d.execute_script(WALK)
    first = wait(d, lambda d: d.execute_script(COLOURED))
    classes = first.split()
    assert len([c for c in classes if c.startswith("d")]) > 100  # one coloured span per character

    # choose another unit (as the spinner would) and the colours change
    d.execute_script("Bokeh.documents[0].get_model_by_name('unit').value = 4")
    second = wait(d, lambda d: (lambda t: t if t and t != first else None)(d.execute_script(COLOURED)))
    assert second != first
    wait(d, lambda d: "unit=4" in d.current_url)
    assert "recording=tiny.h5&layer=1&stream=c&unit=4" in d.current_url

    # a gate through the real <select>: the sequential palette
    d.execute_script("""
        const s = walkAll('select').find(e => [...e.options].some(o => o.text.startsWith('f · ')));
        const f = [...s.options].find(o => o.text.startsWith('f · '));
        s.value = f.value; s.dispatchEvent(new Event('change', {bubbles: true}));""")
    wait(d, lambda d: " s" in " " + d.execute_script(COLOURED) and "stream=f" in d.current_url)

    # hover titles carry position, character and value
    title = d.execute_script("return walkAll('.probe-text span[title]')[0].title")
    assert title.startswith("0  ")

    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
