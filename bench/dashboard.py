"""Benchmark: the cells dashboard (apps/cells) on one recording.

    python bench/dashboard.py recordings/stdlib-test.h5
    python bench/dashboard.py rec.h5 --sessions 20 --no-browser

One run prints:

- switch: server-side milliseconds to switch the selected cell (unit spinner change →
  every view updated) on the default 2,000-character window, median over ``--switches``
  units, and the size of the coloured-text HTML sent (goal: median <= 100 ms);
- page ready: seconds from navigation to the coloured text shown in headless Chromium
  (Debian ``/usr/bin/chromium``), median of 3 loads (goal <= 3 s);
- RSS of the ``bokeh serve`` process with 1 and with ``--sessions`` open sessions.

The recording is served from a temporary folder holding a link to it; the analysis
sidecar is computed once first (not timed).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from probe import browser

APP = browser.APP
COLOURED = """
  const out = [];
  (function walk(root) {
    out.push(...root.querySelectorAll('.probe-text span[title]'));
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
  })(document);
  return out.length;"""


def switch_times(folder: Path, name: str, switches: int) -> tuple[list[float], int]:
    """Milliseconds per unit change on the server-side document, and the text HTML size."""
    from bokeh.command.util import build_single_handler_application
    app = build_single_handler_application(str(APP), ["--recordings", str(folder)])
    doc = app.create_document()  # no session: main.py's defaults (first recording, window 2000)
    assert doc.get_model_by_name("recording").value == name
    unit, text = doc.get_model_by_name("unit"), doc.get_model_by_name("text")
    times = []
    for u in range(1, switches + 1):
        t0 = time.perf_counter()
        unit.value = u % (unit.high + 1)
        times.append((time.perf_counter() - t0) * 1e3)
    return times, len(text.text.encode())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def page_ready(url: str, loads: int) -> list[float]:
    from selenium.webdriver.support.ui import WebDriverWait
    with browser.driver(window="1400,1800") as d:
        out = []
        for _ in range(loads):
            d.get("about:blank")
            t0 = time.perf_counter()
            d.get(url)
            WebDriverWait(d, 60, poll_frequency=0.02).until(lambda d: d.execute_script(COLOURED) > 0)
            out.append(time.perf_counter() - t0)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("recording", help="a probe recording (.h5) of at least 2,000 characters")
    p.add_argument("--switches", type=int, default=30, help="unit changes timed (default 30)")
    p.add_argument("--sessions", type=int, default=20, help="open sessions for the RSS figure")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium page-ready timing")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rec = Path(a.recording).resolve()
    from probe import analysis
    analysis.analysis(rec)  # the sidecar cache, so the server does not compute it while timed

    res: dict = {"recording": str(rec)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "recordings"
        folder.mkdir()
        (folder / rec.name).symlink_to(rec)
        side = analysis.cache_path(rec)
        if side.exists():  # else the server recomputes it in a background thread while timed
            (folder / side.name).symlink_to(side)
        times, html_bytes = switch_times(folder, rec.name, a.switches)
        res["switch_ms_median"] = round(statistics.median(times), 1)
        res["switch_ms_max"] = round(max(times), 1)
        res["text_html_kb"] = round(html_bytes / 1e3)

        from bokeh.client import pull_session
        with open(Path(tmp) / "serve.log", "w") as log, browser.serve_app(folder, log) as (url, pid):
            sessions = []
            try:
                res["rss_mb_idle"] = round(rss_mb(pid))
                sessions.append(pull_session(url=url))
                res["rss_mb_1_session"] = round(rss_mb(pid))
                while len(sessions) < a.sessions:
                    sessions.append(pull_session(url=url))
                res[f"rss_mb_{a.sessions}_sessions"] = round(rss_mb(pid))
                for s in sessions:
                    s.close()
                sessions.clear()
                if not a.no_browser and browser.available():
                    ready = page_ready(url, 3)
                    res["page_ready_s_median"] = round(statistics.median(ready), 2)
                    res["page_ready_s_all"] = [round(x, 2) for x in ready]
            finally:
                for s in sessions:
                    s.close()

    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:>24}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
