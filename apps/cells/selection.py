"""What a page shows, as in its URL: ``?recording=…&layer=1&stream=c&unit=42&start=0…``,
and the hypothesis search's ``span=5010:5016&threshold=0.3&cells=0:c:89,1:c:120``.

Plain data and checks, no Bokeh: ``from_query`` reads a URL's arguments, ``fit`` clamps
the selection into the open recording. Each refusal becomes one message for the page.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np

from probe.analysis import match
from probe.errors import ProbeError
from probe.recording.h5format import RANGE, STREAMS
from probe.recording.reader import Recording
from probe.text.features import FEATURES

from .store import Store

# i f g o c h r z n: what a URL may ask for (a stream of any kind; ``fit`` checks the recording's)
STREAM_NAMES = tuple(dict.fromkeys(s for kind in STREAMS.values() for s in kind))  # what models record


def is_stream_name(name: str) -> bool:
    """A name a stream can have: a recorded one, or a derived one's (``probe encode``: a
    plain identifier); whether the open recording has it is ``fit``'s to say."""
    return name in STREAM_NAMES or (name.isidentifier() and name.isascii() and len(name) <= 32)
PREFERRED_STREAMS = ("c", "h")  # what a page shows when its URL names no stream: c if recorded, else h
WINDOWS = (1000, 2000, 5000, 10000)
DEFAULT_WINDOW = 2000       # characters shown at first: fewer spans for the browser to draw
DEFAULT_THRESHOLD = 0.3     # a unit is on at a character when its value (tanh(c) for c) is >= this
MAX_CELLS = 32              # cells a URL or the cells box may list
MAX_SPAN = 2000             # characters a span may cover: cells on over longer ones are rare
VIEW_KEYS = ("recording", "layer", "stream", "unit", "start", "window", "feature")
URL_KEYS = VIEW_KEYS + ("span", "threshold", "cells")
Cell = tuple[int, str, int]  # (layer, stream, unit), written 1:c:120


@dataclass
class Selection:
    """What the page shows; the same names as the URL query and the probe CLI."""

    recording: str | None = None
    layer: int = 0
    stream: str | None = None  # None: the recording's default (``default_stream``), set by ``fit``
    unit: int = 0
    start: int = 0
    window: int = DEFAULT_WINDOW
    feature: str = "in_string"
    span: tuple[int, int] | None = None   # characters [start, stop) selected to find the cells on
    threshold: float = DEFAULT_THRESHOLD  # what "on" means for the span and the matches
    cells: tuple[Cell, ...] = ()          # typed rows for the stacked view (else the span's cells)

    @property
    def cell(self) -> tuple:
        """(recording, layer, stream, unit): views redraw what depends on the cell when it changes."""
        return self.recording, self.layer, self.stream, self.unit

    @property
    def matching(self) -> tuple:
        """(recording, layer, stream, span, threshold): what the span's cells and matches depend on."""
        return self.recording, self.layer, self.stream, self.span, self.threshold

    def query(self) -> str:
        """The URL query; the hypothesis-search keys only when set (older links stay the same)."""
        q = {k: getattr(self, k) for k in VIEW_KEYS if getattr(self, k) is not None}
        if self.span is not None:
            q["span"] = f"{self.span[0]}:{self.span[1]}"
        if self.threshold != DEFAULT_THRESHOLD:
            q["threshold"] = f"{self.threshold:g}"
        if self.cells:
            q["cells"] = cells_text(self.cells)
        return urlencode(q, safe=":,")


def cells_text(cells) -> str:
    return ",".join(f"{layer}:{stream}:{unit}" for layer, stream, unit in cells)


_CELL = re.compile(r"(\d+):([A-Za-z_][A-Za-z0-9_]*):(\d+)")


def parse_cells(text: str) -> tuple[tuple[Cell, ...], list[str]]:
    """``"0:c:89, 1:c:120"`` → ((0, "c", 89), (1, "c", 120)), and the parts that are not
    LAYER:STREAM:UNIT (whole numbers, a stream name) or are one too many."""
    cells, bad = [], []
    for part in re.split(r"[,\s]+", text.strip()):
        m = _CELL.fullmatch(part)
        if not part:
            continue
        if m is None or not is_stream_name(m.group(2)):
            bad.append(part)
        elif len(cells) >= MAX_CELLS:
            bad.append(f"{part} (more than {MAX_CELLS} cells)")
        else:
            cell = (int(m.group(1)), m.group(2), int(m.group(3)))
            if cell not in cells:
                cells.append(cell)
    return tuple(cells), bad


def parse_span(text: str) -> tuple[int, int]:
    """``"5010:5016"`` → (5010, 5016); a ProbeError if it is not START:STOP."""
    m = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", text)
    if m is None:
        raise ProbeError(f"span {text!r} is not START:STOP (two whole numbers, like 5010:5016)")
    return int(m.group(1)), int(m.group(2))


def parse_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ProbeError(f"threshold {text!r} is not a number (like 0.3)")
    return round(value, 4)


def _arg(arguments: dict, key: str) -> str | None:
    vals = arguments.get(key)
    if not vals:
        return None
    v = vals[0]
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)


def _int(arguments: dict, key: str, problems: list[str]) -> int | None:
    v = _arg(arguments, key)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        problems.append(f"{key}={v!r} in the URL is not a whole number; ignored")
        return None


def from_query(arguments: dict, store: Store) -> tuple[Selection, list[str]]:
    """The selection a URL asks for, and a message for each part of it that was refused.

    ``arguments`` as Bokeh gives them (``{"unit": [b"5"]}``). Only the recording name is
    checked against the folder here; layer and unit are checked by ``fit`` once it is open.
    """
    problems: list[str] = []
    sel = Selection()
    names = store.names()
    name = _arg(arguments, "recording")
    if name is not None:
        try:
            sel.recording = store.check_name(name)
        except ProbeError as e:
            problems.append(str(e))
    if sel.recording is None and names:
        sel.recording = store.default_name()
        if name is not None:
            problems[-1] += f"; showing {sel.recording} instead"
    stream = _arg(arguments, "stream")
    if stream is not None:
        if is_stream_name(stream):
            sel.stream = stream
        else:
            problems.append(f"stream={stream!r} in the URL is not a stream name (such as "
                            f"{' '.join(STREAM_NAMES)}); ignored")
    for key in ("layer", "unit", "start", "window"):
        v = _int(arguments, key, problems)
        if v is not None:
            setattr(sel, key, v)
    if sel.window not in WINDOWS:
        problems.append(f"window={sel.window} in the URL is not one of {WINDOWS}; showing {DEFAULT_WINDOW}")
        sel.window = DEFAULT_WINDOW
    feature = _arg(arguments, "feature")
    if feature is not None:
        sel.feature = feature
    if sel.feature not in FEATURES:
        problems.append(f"feature={sel.feature!r} in the URL is not one of {', '.join(FEATURES)}; "
                        f"showing {FEATURES[0]}")
        sel.feature = FEATURES[0]
    span = _arg(arguments, "span")
    if span is not None:
        try:
            sel.span = parse_span(span)
        except ProbeError as e:
            problems.append(f"{e} in the URL; no span selected")
    threshold = _arg(arguments, "threshold")
    if threshold is not None:
        try:
            sel.threshold = parse_threshold(threshold)
        except ProbeError as e:
            problems.append(f"{e} in the URL; using {DEFAULT_THRESHOLD:g}")
    cells = _arg(arguments, "cells")
    if cells is not None:
        sel.cells, bad = parse_cells(cells)
        if bad:
            problems.append(f"cells={cells!r} in the URL: {', '.join(repr(b) for b in bad)} "
                            "not LAYER:STREAM:UNIT (like 0:c:89, 1:c:120); left out")
    return sel, problems


def is_bare(arguments: dict) -> bool:
    """The URL asks for nothing: the page opens on the dashboard's own choice (``opening``)."""
    return not any(key in arguments for key in URL_KEYS)


def fit(sel: Selection, rec: Recording) -> list[str]:
    """Clamp the selection into the open recording; a message for each change."""
    problems = []
    if sel.layer not in rec.layer_ids:
        first = rec.layer_ids[0]
        which = (f"layers are 0..{rec.layers - 1}" if len(rec.layer_ids) == rec.layers
                 else f"recorded layers are {' '.join(map(str, rec.layer_ids))}")
        problems.append(f"no layer {sel.layer} in {rec.path.name} ({which}); showing layer {first}")
        sel.layer = first
    streams = rec.streams_of(sel.layer)  # the recorded ones, then the layer's derived ones
    if sel.stream is None:  # none asked for: the recording's default, silently
        sel.stream = default_stream(rec.streams)
    elif sel.stream not in streams:
        shown = default_stream(rec.streams)
        where = f"layer {sel.layer} of {rec.path.name}" if rec.derived else rec.path.name
        problems.append(f"no stream {sel.stream} in {where} (streams are {' '.join(streams)}); showing {shown}")
        sel.stream = shown
    units = rec.units_of(sel.layer, sel.stream)
    if not 0 <= sel.unit < units:
        where = f"{sel.stream} of {rec.path.name}" if rec.derived else rec.path.name
        problems.append(f"no unit {sel.unit} in {where} (units are 0..{units - 1}); showing unit 0")
        sel.unit = 0
    T = len(rec)
    start = clamp_start(sel.start, sel.window, T)
    if not 0 <= sel.start < T:
        problems.append(f"start={sel.start} is outside {rec.path.name} ({T:,} characters); "
                        f"showing characters {start:,}–{min(T, start + sel.window):,}")
    sel.start = start
    problems.extend(fit_search(sel, rec))
    return problems


def default_stream(streams) -> str:
    """The stream shown when none (or one the recording lacks) is asked for: c for an LSTM,
    else h (every kind records it), else the first."""
    return next((s for s in PREFERRED_STREAMS if s in streams), streams[0])


def fit_search(sel: Selection, rec: Recording) -> list[str]:
    """Drop a span outside the recording, a threshold the stream cannot cross and cells the
    recording does not have; a message for each."""
    problems = []
    name, T = rec.path.name, len(rec)
    if sel.span is not None:
        a, b = sel.span
        if a >= b:
            problems.append(f"span={a}:{b} is empty (its stop must be after its start); no span selected")
            sel.span = None
        elif not (0 <= a and b <= T):
            problems.append(f"span={a}:{b} is outside {name} (characters 0:{T}); no span selected")
            sel.span = None
        elif b - a > MAX_SPAN:
            problems.append(f"span={a}:{b} is longer than {MAX_SPAN:,} characters; no span selected")
            sel.span = None
    try:
        match.check_threshold(sel.stream, sel.threshold)
    except ProbeError:
        low, high = RANGE.get(sel.stream) or (-1.0, 1.0)
        what = "tanh(c)" if sel.stream == "c" else sel.stream
        problems.append(f"threshold={sel.threshold:g} is out of range for stream {sel.stream}: {what} "
                        f"lies between {low:g} and {high:g}, so a threshold must lie strictly inside; "
                        f"using {DEFAULT_THRESHOLD:g}")
        sel.threshold = DEFAULT_THRESHOLD
    unknown = [c for c in sel.cells if not (c[0] in rec.layer_ids and c[1] in rec.streams_of(c[0])
                                            and 0 <= c[2] < rec.units_of(c[0], c[1]))]
    if unknown:
        problems.append(f"no cell {cells_text(unknown).replace(',', ', ')} in {name} (layers 0..{rec.layers - 1}, "
                        f"streams {' '.join(rec.streams)}, units 0..{rec.units - 1}); left out of the rows")
        sel.cells = tuple(c for c in sel.cells if c not in unknown)
    return problems


def clamp_start(start: int, window: int, length: int) -> int:
    return int(max(0, min(start, max(0, length - window))))


# ---- the opening view -----------------------------------------------------------------------
OPENING_FEATURE = "in_short_string"  # a bare URL opens on this feature's best cell …
OPENING_STRINGS = 10                 # … in the first window holding this many string literals


def opening(best, strings: np.ndarray, text: str, window: int) -> dict | None:
    """What a bare URL shows once the recording's analysis is known: the leaderboard's top
    cell for ``OPENING_FEATURE`` with that feature as overlay, in the first window (in steps
    of half a window, started at a line) holding ``OPENING_STRINGS`` one-line string literals
    (or the most). ``strings``: the feature over the recording, [T]. None if it has no cell."""
    rows = best[best["feature"] == OPENING_FEATURE].sort_values("rank")
    if rows.empty:
        return None
    top = rows.iloc[0]
    literals = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(strings) != 0]).astype(np.int8)) == 1)
    step = max(1, window // 2)
    start = 0
    if len(literals):
        per_step = np.bincount(literals // step)
        per_window = per_step + np.concatenate([per_step[1:], [0]])  # [steps]: literals in a window
        start = int(np.argmax(per_window >= min(OPENING_STRINGS, per_window.max()))) * step
        line = text.rfind("\n", max(0, start - 200), start)
        start = line + 1 if line >= 0 else start  # from the start of its line
    return dict(layer=int(top["layer"]), stream=str(top["stream"]), unit=int(top["unit"]),
                feature=OPENING_FEATURE, start=clamp_start(start, window, len(text)))
