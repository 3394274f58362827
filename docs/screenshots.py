"""Screenshots of the dashboard for the README: serve apps/cells, open views, save PNGs.

    python docs/screenshots.py recordings/ 'recording=stdlib-test.h5&layer=1&stream=c&unit=42' [...]
    python docs/screenshots.py recordings/ 'recording=…&span=194721:194724#select & match'

Each query string becomes docs/img/dashboard-<n>.png (full page, headless Debian chromium);
a ``#TAB`` after it opens that tab (by its title) before the picture is taken.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from probe.output import browser

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the recordings folder to serve")
    p.add_argument("queries", nargs="+", help="URL query strings, each optionally followed by #TAB")
    p.add_argument("--size", default="1400,1500", help="browser window WIDTH,HEIGHT (default 1400,1500)")
    p.add_argument("--name", default="dashboard", help="file names: docs/img/NAME-<n>.png")
    a = p.parse_args()
    folder, queries = a.folder, a.queries
    with browser.serve_app(folder) as served, browser.driver(window=a.size) as d:
        for n, spec in enumerate(queries, 1):
            q, _, tab = spec.partition("#")
            d.get(f"{served.url}?{q}")
            time.sleep(8)  # let the page, the analysis and the colours settle
            if tab:
                d.execute_script(browser.WALK_JS + "walkAll('.bk-tab').find(t => t.textContent.trim() === "
                                 "arguments[0]).click()", tab)
                time.sleep(4)
            out = REPO / "docs" / "img" / f"{a.name}-{n}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(out))
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
