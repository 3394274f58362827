"""Screenshots of the dashboard for the README: serve apps/cells, open views, save PNGs.

    python docs/screenshots.py recordings/ 'recording=stdlib-test.h5&layer=1&stream=c&unit=42' [...]

Each query string becomes docs/img/dashboard-<n>.png (full page, headless Debian chromium).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from probe import browser

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    folder, queries = sys.argv[1], sys.argv[2:]
    with browser.serve_app(folder) as served, browser.driver(window="1400,1500") as d:
        for n, q in enumerate(queries, 1):
            d.get(f"{served.url}?{q}")
            time.sleep(8)  # let the page, the analysis and the colours settle
            out = REPO / "docs" / "img" / f"dashboard-{n}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(out))
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
