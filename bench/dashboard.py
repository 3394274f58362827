"""Benchmark: the cells dashboard (apps/cells) on one or more recordings, in one run.

    python bench/dashboard.py recordings/stdlib-test.h5
    python bench/dashboard.py rec.h5 --sessions 20 --no-browser
    python bench/dashboard.py 100k.h5 1m.h5 5m.h5 --cost 1m.h5   # issue 18: flat in T?

One run prints, for each recording:

- switch: server-side milliseconds to switch the selected cell (unit spinner change →
  every view updated) on the default 2,000-character window, median over ``--switches``
  units, and the size of the coloured-text HTML sent (goal, issue 18: median <= 50 ms at
  every size, flat in the length);
- page ready: seconds from navigation to the coloured text shown in headless Chromium
  (Debian ``/usr/bin/chromium``), median of 3 loads (goal <= 2 s);
- RSS of the ``bokeh serve`` process with 1 and with ``--sessions`` open sessions;
- the bytes of per-unit summaries in the analysis cache per (layer, stream, unit).

Each recording is served from a temporary folder holding a link to it; its analysis
sidecar is computed first (``first_analysis_s``; not part of the timings). With ``--cost
REC`` the analysis pass is also timed without and with the summaries (goal <= 1.2).
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

from probe.output import browser

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


def analysis_cost(rec_path: Path, repeats: int = 2) -> dict:
    """Seconds of the analysis pass without and with the per-unit summaries (the same scan,
    threads as ``analysis.analysis`` uses them), best of ``repeats`` each, interleaved."""
    import os

    from probe import open_recording
    from probe.analysis import detectors
    threads = min(4, os.cpu_count() or 1)
    best = {False: float("inf"), True: float("inf")}
    with open_recording(rec_path) as rec:
        feats = detectors.default_features(rec)
        for _ in range(repeats):
            for with_summaries in (False, True):
                t0 = time.perf_counter()
                detectors.scores_and_saturation(rec, feats, threads=threads, summaries=with_summaries)
                best[with_summaries] = min(best[with_summaries], time.perf_counter() - t0)
    return {"analysis_s": round(best[False], 2), "analysis_with_summaries_s": round(best[True], 2),
            "summaries_cost_ratio": round(best[True] / best[False], 3)}


def cache_bytes_per_unit(rec_path: Path) -> int:
    """Bytes of the summaries in the analysis cache per (layer, stream, unit)."""
    import zipfile

    from probe import open_recording
    from probe.analysis import cache as analysis
    side = analysis.cache_path(rec_path)
    with zipfile.ZipFile(side) as z:
        infos = [i for i in z.infolist() if i.filename.startswith("summaries/")]
        size = sum(i.compress_size for i in infos)
    with open_recording(rec_path) as rec:
        summ = analysis.summaries(rec)
    units = sum(len(v["hist"]) for k, v in summ.items() if k != "strip_edges")
    return round(size / units)


def one(rec: Path, a) -> dict:
    """Every figure for one recording (its analysis cached first, not timed)."""
    from probe import open_recording
    from probe.analysis import cache as analysis
    t0 = time.perf_counter()
    with open_recording(rec) as r:
        analysis.analysis(r)  # the sidecar cache, so the server does not compute it while timed
        res: dict = {"recording": rec.name, "chars": len(r)}
    res["first_analysis_s"] = round(time.perf_counter() - t0, 1)  # ~0 when it was cached
    res["cache_bytes_per_unit"] = cache_bytes_per_unit(rec)
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
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("recording", nargs="+", help="probe recordings (.h5) of at least 2,000 characters each")
    p.add_argument("--switches", type=int, default=30, help="unit changes timed (default 30)")
    p.add_argument("--sessions", type=int, default=20, help="open sessions for the RSS figure")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium page-ready timing")
    p.add_argument("--cost", metavar="REC", help="also time the analysis pass without and with the "
                   "per-unit summaries on this recording (issue 18: goal <= 1.2 on 1M characters)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {"recordings": [one(Path(r).resolve(), a) for r in a.recording]}
    if a.cost:
        out["summaries_cost"] = {"recording": Path(a.cost).name, **analysis_cost(Path(a.cost).resolve())}
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    for res in out["recordings"]:
        print(f"{res['recording']} ({res['chars']:,} characters)")
        for k, v in res.items():
            if k not in ("recording", "chars"):
                print(f"{k:>26}: {v}")
    if a.cost:
        print(f"analysis without / with summaries on {Path(a.cost).name}: "
              f"{out['summaries_cost']['analysis_s']} s / {out['summaries_cost']['analysis_with_summaries_s']} s"
              f" = {out['summaries_cost']['summaries_cost_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
