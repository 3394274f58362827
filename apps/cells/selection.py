"""What a page shows, as in its URL: ``?recording=stdlib-test.h5&layer=0&stream=c&unit=89&start=0…``,
then the keys tabs add to it (a tab's ``PARAMS``: ``Param``, kept in ``Selection.extra``).

Plain data and checks, no Bokeh: ``from_query`` reads a URL's arguments, ``fit`` clamps
the selection into the open recording. Each refusal becomes one message for the page.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable
from urllib.parse import urlencode

import numpy as np

from probe.errors import ProbeError
from probe.recording.h5format import STREAMS
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
VIEW_KEYS = ("recording", "layer", "stream", "unit", "start", "window", "feature")


@dataclass(frozen=True)
class Param:
    """A key a tab adds to the URL, kept in ``Selection.extra``. ``read(text)``: the value
    of the URL's text and a message for each part refused; ``fit(value, sel, rec)``: the
    value kept in the open recording and a message for each change (after the view keys
    are fitted); ``write(value)``: its text in the URL, or None to leave it out."""

    key: str
    default: object
    read: Callable[[str], tuple[object, list[str]]]
    write: Callable[[object], str | None]
    fit: Callable[[object, "Selection", Recording], tuple[object, list[str]]] = lambda value, sel, rec: (value, [])


@dataclass
class Selection:
    """What the page shows; the same names as the URL query and the probe CLI. Tabs' own
    keys (their ``Param``s) are in ``extra``."""

    recording: str | None = None
    layer: int = 0
    stream: str | None = None  # None: the recording's default (``default_stream``), set by ``fit``
    unit: int = 0
    start: int = 0
    window: int = DEFAULT_WINDOW
    feature: str = "in_string"
    extra: dict[str, object] = field(default_factory=dict)  # a tab's key: its value
    params: tuple[Param, ...] = field(default=(), compare=False, repr=False)  # the tabs' keys, in URL order

    @classmethod
    def with_params(cls, params: tuple[Param, ...] = ()) -> "Selection":
        """The default selection, with the tabs' keys at their defaults."""
        return cls(extra={p.key: p.default for p in params}, params=tuple(params))

    @property
    def cell(self) -> tuple:
        """(recording, layer, stream, unit): views redraw what depends on the cell when it changes."""
        return self.recording, self.layer, self.stream, self.unit

    def set(self, **changes) -> None:
        """Change view keys and tabs' keys alike; a key nobody owns is a programming error."""
        own = {f.name for f in fields(self)} - {"extra", "params"}
        for key, value in changes.items():
            if key in own:
                setattr(self, key, value)
            elif key in self.extra:
                self.extra[key] = value
            else:
                raise KeyError(f"no key {key!r} in the selection (view keys and the tabs' PARAMS)")

    def copy(self) -> "Selection":
        return replace(self, extra=dict(self.extra))

    def query(self) -> str:
        """The URL query: the view keys, then each tab's keys when they say so (a link
        without them stays the same)."""
        q = {k: getattr(self, k) for k in VIEW_KEYS if getattr(self, k) is not None}
        for param in self.params:
            text = param.write(self.extra[param.key])
            if text is not None:
                q[param.key] = text
        return urlencode(q, safe=":,")


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


def from_query(arguments: dict, store: Store, params: tuple[Param, ...] = ()) -> tuple[Selection, list[str]]:
    """The selection a URL asks for, and a message for each part of it that was refused.

    ``arguments`` as Bokeh gives them (``{"unit": [b"5"]}``); ``params``: the tabs' keys.
    Only the recording name is checked against the folder here; layer, unit and the tabs'
    keys are checked by ``fit`` once it is open.
    """
    problems: list[str] = []
    sel = Selection.with_params(params)
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
    for param in params:
        text = _arg(arguments, param.key)
        if text is not None:
            sel.extra[param.key], said = param.read(text)
            problems.extend(said)
    return sel, problems


def is_bare(arguments: dict, params: tuple[Param, ...] = ()) -> bool:
    """The URL asks for nothing: the page opens on the dashboard's own choice (``opening``)."""
    return not any(key in arguments for key in VIEW_KEYS + tuple(p.key for p in params))


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
    units = rec.width(sel.layer, sel.stream)
    if not 0 <= sel.unit < units:
        where = f"{sel.stream} of {rec.path.name}" if rec.derived or not rec.uniform else rec.path.name
        problems.append(f"no unit {sel.unit} in {where} (units are 0..{units - 1}); showing unit 0")
        sel.unit = 0
    T = len(rec)
    start = clamp_start(sel.start, sel.window, T)
    if not 0 <= sel.start < T:
        problems.append(f"start={sel.start} is outside {rec.path.name} ({T:,} {rec.unit_name}s); "
                        f"showing {rec.unit_name}s {start:,}–{min(T, start + sel.window):,}")
    sel.start = start
    for param in sel.params:
        sel.extra[param.key], said = param.fit(sel.extra[param.key], sel, rec)
        problems.extend(said)
    return problems


def default_stream(streams) -> str:
    """The stream shown when none (or one the recording lacks) is asked for: c for an LSTM,
    else h (every kind records it), else the first."""
    return next((s for s in PREFERRED_STREAMS if s in streams), streams[0])


def clamp_start(start: int, window: int, length: int) -> int:
    return int(max(0, min(start, max(0, length - window))))


# ---- the opening view -----------------------------------------------------------------------
OPENING_FEATURE = "in_short_string"  # a bare URL opens on this feature's best cell …
OPENING_STRINGS = 10                 # … in the first window holding this many string literals


def opening(best, strings: np.ndarray, text, window: int) -> dict | None:
    """What a bare URL shows once the recording's analysis is known: the leaderboard's top
    cell for ``OPENING_FEATURE`` with that feature as overlay, in the first window (in steps
    of half a window, started at a line) holding ``OPENING_STRINGS`` one-line string literals
    (or the most). ``strings``: the feature over the recording, [T]; ``text``: each
    position's text (``rec.tokens``: a string of characters, or a list of tokens). None if
    it has no cell."""
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
        start = line_start(text, start)
    return dict(layer=int(top["layer"]), stream=str(top["stream"]), unit=int(top["unit"]),
                feature=OPENING_FEATURE, start=clamp_start(start, window, len(text)))


def line_start(tokens, at: int, back: int = 200) -> int:
    """The first position of the line holding position ``at`` (the one after the last line
    end at most ``back`` positions before it), or ``at`` if there is none that close.
    ``tokens``: a string of characters or a list of tokens (``<eos>`` is a newline)."""
    for t in range(at - 1, max(0, at - back) - 1, -1):
        if tokens[t].endswith("\n"):
            return t + 1
    return at
