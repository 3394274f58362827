"""Pictures of the dashboard for docs/byom.md: the window view on each worked example's
recording, in headless Chromium (the helpers of docs/screenshots.py).

    python docs/byom_screenshots.py                     # every picture, over recordings/byom/
    python docs/byom_screenshots.py char_lstm           # some (their names in SHOTS)
    python docs/byom_screenshots.py --recordings DIR    # another folder holding the recordings

It serves ``apps/cells`` over the folder (the recordings docs/byom.md's blocks write:
``char_lstm.h5``, ``two_widths.h5``, ``onehot_rnn.h5``) and writes ``docs/img/byom-<name>.png``:
the page opened on the shot's URL (docs/byom.md gives it under the picture), cropped to the
controls, the coloured text and the trace.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import screenshots  # noqa: E402  (docs/screenshots.py: take, Shot, the browser settings)

from probe.output import browser  # noqa: E402

REPO = HERE.parent
RECORDINGS = REPO / "recordings" / "byom"

# name: the URL query of the window view (a cell each example's analysis ranks high)
SHOTS = {
    "char_lstm": "recording=char_lstm.h5&layer=0&stream=c&unit=70&start=0&window=2000&feature=column",
    "two_widths": "recording=two_widths.h5&layer=0&stream=c&unit=142&start=0&window=2000&feature=bracket_depth",
    "onehot_rnn": "recording=onehot_rnn.h5&layer=1&stream=h&unit=72&start=0&window=2000&feature=column",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"pictures to take (default all: {' '.join(SHOTS)})")
    p.add_argument("--recordings", default=str(RECORDINGS), help="the folder served (default recordings/byom/)")
    a = p.parse_args()
    unknown = set(a.names) - set(SHOTS)
    if unknown:
        p.error(f"no picture named {', '.join(sorted(unknown))}")
    recordings = Path(a.recordings).resolve()
    names = a.names or list(SHOTS)
    missing = [n for n in names if not (recordings / f"{n}.h5").exists()]
    if missing:
        p.error(f"{recordings}: no {', '.join(f'{n}.h5' for n in missing)} (run docs/byom.md's blocks first)")
    log = REPO / "test-artifacts" / "byom-screenshots-server.log"  # test-artifacts/ is ignored
    log.parent.mkdir(exist_ok=True)
    with open(log, "a") as out, browser.serve_app(recordings, out, timeout=screenshots.WAIT) as served, \
            browser.driver(window=screenshots.SIZE) as d:
        for name in names:
            made = screenshots.take(d, served.url, screenshots.Shot(f"window-{name}", "", SHOTS[name]))
            final = screenshots.IMG / f"byom-{name}.png"
            made.replace(final)
            print(f"wrote {final.relative_to(REPO)}", flush=True)


if __name__ == "__main__":
    main()
