"""The dashboard's picture of a word-level recording for docs/dashboard.md
(``docs/img/words.png`` and ``docs/img/words-match.png``), in headless Chromium.

    python docs/words_screenshot.py                     # trains, records and shoots (~6 min)
    python docs/words_screenshot.py --work /tmp/words   # keep the model and recording there

A small word-level LSTM is trained on the standard library's prose (``probe train --tokens
words``, a few hundred steps: enough for cells to mean something), then recorded over the
test split's first 60,000 characters, and the dashboard is served over that recording. The
model and the recording stay in ``--work`` (never committed); a second run reuses them.
The pictures are taken as ``docs/screenshots.py`` takes the tabs'.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screenshots  # noqa: E402 - docs/screenshots.py, beside this file

from probe.analysis import cache as analysis  # noqa: E402

TRAIN = ["--tokens", "words", "--vocab-size", "3000", "--layers", "1", "--units", "128", "--embedding", "64",
         "--batch", "32", "--seq", "64", "--steps", "600", "--eval-every", "200", "--eval-chars", "60000",
         "--threads", "1", "--limit", "3000000"]
RECORD = ["--corpus", "stdlib-prose", "--split", "test", "--limit", "60000", "--dtype", "float32",
          "--threads", "1"]
NAME = "words.h5"
FEATURE = "in_comment"  # the prose corpus is docstrings and comments: the cell that tells them apart


def best(recording: Path, feature: str, stream: str = "h") -> tuple[int, str, int]:
    """The cell of ``stream`` whose reading of ``feature`` is best (largest |AUC − 0.5|) in
    the recording's analysis (cached beside it once computed): h, whose values spread over
    [-1, 1] where a small model's c mostly saturates."""
    from probe.recording.reader import open_recording
    with open_recording(recording) as rec:
        scores = analysis.analysis(rec)["scores"]
    mine = scores[(scores["feature"] == feature) & (scores["stream"] == stream) & (scores["metric"] == "auc")]
    row = mine.loc[(mine["score"] - 0.5).abs().idxmax()]
    return int(row["layer"]), stream, int(row["unit"])


def on_span(recording: Path, cell: tuple[int, str, int], start: int, length: int = 3) -> str:
    """A span of ``length`` tokens after ``start`` on which some cell of ``cell``'s layer
    and stream is on (>= 0.3, tanh(c) for c) and off just before: what select & match is
    shown selecting."""
    import numpy as np

    from probe.recording.reader import open_recording
    layer, stream, _ = cell
    with open_recording(recording) as rec:
        v = rec.window(layer, stream, start, min(len(rec), start + 1000))  # [n, units]
    on = (np.tanh(v) if stream == "c" else v) >= 0.3
    for t in range(40, len(on) - length):
        if (on[t:t + length].all(axis=0) & ~on[t - 1]).any():
            return f"{start + t}:{start + t + length}"
    raise SystemExit(f"words_screenshot: no cell of {layer}:{stream} is on for {length} tokens after {start}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="folder for the model and the recording (default: a new temporary one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="probe-words-")).resolve()
    recordings = work / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    model, rec = work / "words-small.pt", recordings / NAME
    for target, command in ((model, ["probe", "train", *TRAIN, "--out", str(model)]),
                            (rec, ["probe", "record", "--model", str(model), *RECORD, "--out", str(rec)])):
        if not target.exists():
            print("$", " ".join(command), flush=True)
            subprocess.run(command, check=True)
    cell = best(rec, FEATURE)
    layer, stream, unit = cell
    query = f"recording={NAME}&layer={layer}&stream={stream}&unit={unit}&start=0&window=1000&feature={FEATURE}"
    shots = [screenshots.Shot("words", "", query),
             screenshots.Shot("words-match", "select & match", query + f"&span={on_span(rec, cell, 0)}",
                              "m('match-rows').text.length > 1000 && m('match-note').text.length > 0")]
    screenshots.shoot(shots, recordings)
    for shot in shots:  # not tab-*.png: those are docs/screenshots.py's, one per tab
        taken = screenshots.IMG / f"tab-{shot.name}.png"
        taken.replace(screenshots.IMG / f"{shot.name}.png")
        print(f"renamed it docs/img/{shot.name}.png", flush=True)


if __name__ == "__main__":
    sys.exit(main())
