"""What a page shows, as in its URL: ``?recording=…&layer=1&stream=c&unit=42&start=0…``.

Plain data and checks, no Bokeh: ``from_query`` reads a URL's arguments, ``fit`` clamps
the selection into the open recording. Each refusal becomes one message for the page.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlencode

from probe.errors import ProbeError
from probe.features import FEATURES
from probe.h5format import STREAMS
from probe.recording import Recording

from .store import Store

STREAM_NAMES = STREAMS["lstm"]  # i f g o c h: what a URL may ask for
WINDOWS = (1000, 2000, 5000, 10000)
DEFAULT_WINDOW = 2000       # characters shown at first: fewer spans for the browser to draw


@dataclass
class Selection:
    """What the page shows; the same names as the URL query and the probe CLI."""

    recording: str | None = None
    layer: int = 0
    stream: str = "c"
    unit: int = 0
    start: int = 0
    window: int = DEFAULT_WINDOW
    feature: str = "in_string"

    @property
    def cell(self) -> tuple:
        """(recording, layer, stream, unit): views redraw what depends on the cell when it changes."""
        return self.recording, self.layer, self.stream, self.unit

    def query(self) -> str:
        return urlencode({k: v for k, v in asdict(self).items() if v is not None})


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
        if stream in STREAM_NAMES:
            sel.stream = stream
        else:
            problems.append(f"stream={stream!r} in the URL is not one of {' '.join(STREAM_NAMES)}; showing c")
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
    return sel, problems


def fit(sel: Selection, rec: Recording) -> list[str]:
    """Clamp the selection into the open recording; a message for each change."""
    problems = []
    if not 0 <= sel.layer < rec.layers:
        problems.append(f"no layer {sel.layer} in {rec.path.name} (layers are 0..{rec.layers - 1}); "
                        "showing layer 0")
        sel.layer = 0
    if not 0 <= sel.unit < rec.units:
        problems.append(f"no unit {sel.unit} in {rec.path.name} (units are 0..{rec.units - 1}); "
                        "showing unit 0")
        sel.unit = 0
    if sel.stream not in rec.streams:
        problems.append(f"no stream {sel.stream} in {rec.path.name} (streams are {' '.join(rec.streams)}); "
                        f"showing {rec.streams[0]}")
        sel.stream = rec.streams[0]
    T = len(rec)
    start = clamp_start(sel.start, sel.window, T)
    if not 0 <= sel.start < T:
        problems.append(f"start={sel.start} is outside {rec.path.name} ({T:,} characters); "
                        f"showing characters {start:,}–{min(T, start + sel.window):,}")
    sel.start = start
    return problems


def clamp_start(start: int, window: int, length: int) -> int:
    return int(max(0, min(start, max(0, length - window))))
