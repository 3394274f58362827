"""Pictures of the dashboard for docs/dashboard.md: the window and every tab, on the default
recording, in headless Chromium.

    python docs/screenshots.py                       # every picture
    python docs/screenshots.py match leaderboard     # some (their names in SHOTS)
    python docs/screenshots.py --recordings /tmp/r   # on a recording made afresh in an empty folder

It serves ``apps/cells`` over ``recordings/``; the server makes ``stdlib-test.h5`` there itself
when the folder has no recording (about 30 s) and its analysis the first time (cached beside
it). The last two tabs read derived streams: before their pictures the server is stopped
(it holds the file open) and ``PREPARE``'s commands add them to the recording, once; the
other pictures are taken first, on the recording as the server made it.

Each picture is ``docs/img/tab-<name>.png``: the page opened on the shot's URL, the tab
opened, its buttons pressed, and the page waited for until the tab has drawn (``ready``),
cropped to the tab (the window's picture: to the part above the tabs).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops

from probe.output import browser
from probe.recording.reader import open_recording

REPO = Path(__file__).resolve().parents[1]
IMG = REPO / "docs" / "img"
RECORDINGS = REPO / "recordings"
REC = "recordings/stdlib-test.h5"  # as the docs say it; --recordings DIR: DIR/stdlib-test.h5
SIZE = "1400,2600"    # the browser window: wide as the page, tall enough for the longest tab
WAIT = 600            # seconds a page may take (a first recording and analysis included)

# what the dashboard's last two tabs read; run before their pictures, if not done yet
PREPARE = [
    ["probe", "errors", REC, "--store", "--quiet"],
    ["probe", "directions", REC, "--out", "runs/stdlib-test-dirs.pt", "--quiet", "--force"],
    ["probe", "encode", REC, "--directions", "runs/stdlib-test-dirs.pt", "--quiet"],
]


@dataclass(frozen=True)
class Shot:
    name: str                    # docs/img/tab-<name>.png
    title: str                   # the tab to open ("" for the window: no tab)
    query: str                   # the URL query: docs/dashboard.md gives it with the picture
    ready: str = "true"          # JS, with m(name) a Bokeh model: true once the tab has drawn
    press: tuple[str, ...] = ()  # buttons (by model name) pressed once the tab is open …
    setup: tuple[tuple[str, str, object], ...] = ()  # … after setting these (model name, property, value)
    derived: bool = False        # needs PREPARE's derived streams


QUOTE = "recording=stdlib-test.h5&layer=0&stream=c&unit=89&start=0&window=2000&feature=in_short_string"
SHOTS = [  # the quote cell, 0:c:89, unless a tab needs another
    Shot("window", "", QUOTE),
    Shot("card", "cell card",
         "recording=stdlib-test.h5&layer=0&stream=h&unit=89&start=0&window=2000&feature=in_short_string",
         "m('card').text.length > 1000"),
    Shot("leaderboard", "leaderboard", QUOTE, "m('leaderboard').source.data.feature.length > 0"),
    Shot("match", "select & match", QUOTE + "&span=1727:1740&cells=0:c:89,0:c:68,1:c:156",
         "m('match-table').source.data.start.length > 0 && m('match-rows').text.length > 1000"),
    Shot("saturation", "gate saturation", QUOTE, "m('saturation-note').text.includes('click a dot')"),
    Shot("live", "type your own text", QUOTE, "m('live').text.length > 100"),
    Shot("intervene", "intervene",
         "recording=stdlib-test.h5&layer=0&stream=c&unit=89&start=1200&window=1000&feature=in_short_string",
         "m('intervene-summary').text.length > 0 && m('steer-clamped').text.length > 0",
         press=("intervene-run", "steer-run"), setup=(("steer-value", "value", 2),)),
    Shot("saliency", "explain a prediction", QUOTE, "m('saliency-text').text.length > 100", press=("saliency-run",)),
    Shot("circuit", "circuit", QUOTE,
         "m('circuit-check').text.length > 0 && m('circuit-patch-bars').data.cell.length > 0",
         press=("circuit-run", "circuit-patch-run"), setup=(("circuit-position", "value", 1730),)),
    Shot("features", "derived features",
         "recording=stdlib-test.h5&layer=1&stream=dir&unit=0&start=0&window=2000&feature=in_string",
         "m('features-table').source.data.unit.length > 0", derived=True),
    Shot("ngrams", "beyond n-grams", QUOTE, "m('ngram-text').text.length > 1000", derived=True),
]

PAGE_READY = "m('text').text.length > 1000 && !m('notice').visible"
MODEL_JS = "const m = (name) => Bokeh.documents[0].get_model_by_name(name);"


def wait_for(d, condition: str, what: str) -> None:
    """Poll the page until the JS ``condition`` (with ``m``) is true."""
    end = time.monotonic() + WAIT
    while True:
        try:
            if d.execute_script(f"{MODEL_JS} return Boolean({condition});"):
                return
        except Exception:  # noqa: BLE001 - the page is still loading Bokeh
            pass
        if time.monotonic() > end:
            raise SystemExit(f"screenshots: {what} did not get ready in {WAIT} s")
        time.sleep(0.5)


def rect(d, model: str) -> dict:
    """The page rectangle of a Bokeh model's element."""
    return d.execute_script(f"{MODEL_JS} const r = Bokeh.index.find_one(m('{model}')).el.getBoundingClientRect();"
                            "return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY,"
                            " left: r.left, right: r.right};")


def take(d, url: str, shot: Shot) -> Path:
    d.get(f"{url}?{shot.query}")
    wait_for(d, "typeof Bokeh !== 'undefined' && Bokeh.documents.length > 0 && m('text') !== null", "the page")
    wait_for(d, PAGE_READY, "the text window")
    if shot.title:
        d.execute_script(browser.WALK_JS + "walkAll('.bk-tab').find(t => t.textContent.trim() === arguments[0])"
                         ".click()", shot.title)
        time.sleep(1)
        for name, prop, value in shot.setup:
            d.execute_script(f"{MODEL_JS} m(arguments[0])[arguments[1]] = arguments[2]", name, prop, value)
        for button in shot.press:
            d.execute_script(f"{MODEL_JS} Bokeh.index.find_one(m('{button}')).el.shadowRoot"
                             ".querySelector('button').click()")
    wait_for(d, shot.ready, f"the {shot.name} tab")
    time.sleep(2)  # let the browser paint what the server sent
    d.execute_script("window.scrollTo(0, 0)")
    full = d.execute_script("return document.documentElement.scrollHeight")
    width = int(SIZE.split(",")[0])
    d.set_window_size(width, max(full + 40, int(SIZE.split(",")[1])))  # the whole page in one shot
    time.sleep(1)
    if shot.title:  # the tab: from its row of titles down
        top, bottom = rect(d, "tabs")["top"], rect(d, "tabs")["bottom"] + 8
    else:           # the window: the controls down to the trace
        top, bottom = rect(d, "body")["top"] - 8, min(rect(d, "trace")["bottom"] + 8, rect(d, "tabs")["top"] - 1)
    tmp = IMG / f".tab-{shot.name}.full.png"
    d.save_screenshot(str(tmp))
    out = IMG / f"tab-{shot.name}.png"
    with Image.open(tmp) as im:
        part = im.convert("RGB").crop((0, max(0, int(top)), im.width, min(im.height, int(bottom))))
        trimmed(part).save(out, optimize=True)
    tmp.unlink()
    d.set_window_size(*map(int, SIZE.split(",")))
    return out


def trimmed(im: Image.Image, margin: int = 12) -> Image.Image:
    """``im`` without the rows of plain page background at its bottom (a short tab in the
    tall tab panel), ``margin`` of them kept."""
    background = Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1)))
    box = ImageChops.difference(im, background).getbbox()
    return im if box is None else im.crop((0, 0, im.width, min(im.height, box[3] + margin)))


def has_derived(path: Path) -> bool:
    if not path.exists():
        return False
    with open_recording(path) as rec:
        names = {stream for _, stream in rec.derived}
    return {"ngram", "dir"} <= names


def shoot(shots: list[Shot], recordings: Path) -> None:
    log = REPO / "test-artifacts" / "screenshots-server.log"  # the server's output (test-artifacts/ is ignored)
    log.parent.mkdir(exist_ok=True)
    with open(log, "a") as out, browser.serve_app(recordings, out, timeout=WAIT) as served, \
            browser.driver(window=SIZE) as d:
        for shot in shots:
            print(f"wrote {take(d, served.url, shot).relative_to(REPO)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"pictures to take (default all: {' '.join(s.name for s in SHOTS)})")
    p.add_argument("--recordings", default=str(RECORDINGS), help="the folder served (default recordings/)")
    args = p.parse_args()
    names, recordings = args.names, Path(args.recordings).resolve()
    rec = recordings / Path(REC).name
    unknown = set(names) - {s.name for s in SHOTS}
    if unknown:
        p.error(f"no picture named {', '.join(sorted(unknown))}")
    shots = [s for s in SHOTS if not names or s.name in names]
    IMG.mkdir(parents=True, exist_ok=True)
    plain = [s for s in shots if not s.derived]
    if plain or not rec.exists():
        shoot(plain, recordings)  # the server makes the default recording if it is missing
    derived = [s for s in shots if s.derived]
    if derived:
        if not has_derived(rec):
            (REPO / "runs").mkdir(exist_ok=True)
            for command in PREPARE:
                command = [str(rec) if part == REC else part for part in command]
                print("$", " ".join(command), flush=True)
                subprocess.run(command, check=True, cwd=REPO)
        shoot(derived, recordings)


if __name__ == "__main__":
    sys.exit(main())
