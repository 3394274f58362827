"""Text coloured by one cell: palettes, HTML spans, a standalone page.

Shared by the dashboard (``apps/cells``) and ``probe render``. Streams c, h and g get a
diverging blue–white–red palette centred at 0 (c through tanh, as Karpathy et al. colour
it, so every value lies in [-1, 1]); gates i, f and o (values in [0, 1], per
``h5format.RANGE``) get a sequential white→purple palette. Palettes have a few fixed steps, so each position gets a CSS class
rather than an inline style::

    html = colored_html("x = 1\\n", values, "c", start=100)   # one <span> per character
    page = standalone_page(text, values, "c", "layer 1 c unit 42")

A position is a character, or a token (a word-level recording): then ``spans`` [n, 2] say
where each token is in ``text``; each is one ``<span>`` of its own text, and the text between
tokens (spaces) is drawn uncoloured, so spacing and line breaks stay as written. Characters
are the case where every span is one character (``spans=None``). ``position_text(rec, a, b)``
gives the text and spans of a recording's positions [a, b).

Every character is HTML-escaped: recorded text is untrusted.
"""
from __future__ import annotations

import html
from functools import lru_cache

import numpy as np

from probe.errors import ProbeError
from probe.recording import h5format

DIVERGING_STEPS = 21   # odd, so 0 has its own white step
SEQUENTIAL_STEPS = 11
_DIVERGING_ANCHORS = [(-1.0, "#2166ac"), (-0.5, "#92c5de"), (0.0, "#ffffff"),
                      (0.5, "#f4a582"), (1.0, "#b2182b")]
_SEQUENTIAL_ANCHORS = [(0.0, "#ffffff"), (0.5, "#bcbddc"), (1.0, "#54278f")]
TITLE_FMT = "{position}  {char}  {value:+.3f}"
DEFAULT_LENGTH = 3000  # positions (characters or tokens) ``probe render`` shows without --stop


def _ramp(anchors: list[tuple[float, str]], steps: int) -> list[str]:
    """``steps`` hex colours interpolated in RGB through (position, colour) anchors."""
    xs = np.array([x for x, _ in anchors])
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for _, c in anchors], float)
    at = np.linspace(xs[0], xs[-1], steps)
    out = np.stack([np.interp(at, xs, rgb[:, j]) for j in range(3)], axis=1)
    return ["#%02x%02x%02x" % tuple(int(round(v)) for v in row) for row in out]


DIVERGING = _ramp(_DIVERGING_ANCHORS, DIVERGING_STEPS)
SEQUENTIAL = _ramp(_SEQUENTIAL_ANCHORS, SEQUENTIAL_STEPS)


def is_diverging(stream: str) -> bool:
    """Signed streams (c, h, g) get the diverging palette; gates in [0, 1] the sequential
    one, and so do derived streams (``probe encode``), over their own range (``value_scale``)."""
    return stream in h5format.RANGE and not h5format.is_unit_range(stream)


def is_derived(stream: str) -> bool:
    """A stream no model records (a probe direction, dictionary features): coloured over
    a range of its own values, not a fixed one."""
    return stream not in h5format.RANGE


def value_scale(values) -> tuple[float, float]:
    """The range a derived stream's values are coloured over when no other is given: their
    1st to 99th percentile (one outlier does not wash the rest out); never empty."""
    v = np.asarray(values, dtype=np.float32)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def palette(stream: str) -> list[str]:
    return DIVERGING if is_diverging(stream) else SEQUENTIAL


def scaled(values, stream: str, scale: tuple[float, float] | None = None) -> np.ndarray:
    """Values as coloured: tanh for unbounded streams (c), clipped to [-1, 1] or [0, 1];
    a derived stream's mapped from ``scale`` = (lo, hi) (default ``value_scale`` of these
    values) onto [0, 1]. NaN stays NaN."""
    v = np.asarray(values, dtype=np.float32)
    if is_derived(stream):
        lo, hi = scale if scale is not None else value_scale(v)
        return np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if is_diverging(stream) and h5format.RANGE[stream] is None:
        v = np.tanh(v)
    return np.clip(v, -1.0, 1.0) if is_diverging(stream) else np.clip(v, 0.0, 1.0)


def palette_index(values, stream: str, scale: tuple[float, float] | None = None) -> np.ndarray:
    """Palette step of each value: int array, same shape (NaN → the neutral step)."""
    v = scaled(values, stream, scale)
    if is_diverging(stream):
        idx = np.rint((v + 1.0) / 2.0 * (DIVERGING_STEPS - 1))
        return np.where(np.isnan(v), DIVERGING_STEPS // 2, idx).astype(np.int64)
    idx = np.rint(v * (SEQUENTIAL_STEPS - 1))
    return np.where(np.isnan(v), 0, idx).astype(np.int64)


def colors(values, stream: str, scale: tuple[float, float] | None = None) -> list[str]:
    """Hex colour of each value."""
    pal = palette(stream)
    return [pal[i] for i in palette_index(values, stream, scale).ravel()]


def _dark(hex_colour: str) -> bool:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.55


def css(root: str = ".probe-text") -> str:
    """The stylesheet colored_html and legend_html need (classes d0…d20, s0…s10)."""
    rules = [
        f"{root} {{ font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace;"
        " font-size: 13px; line-height: 1.45; white-space: pre; tab-size: 4; color: #1a1a1a; }",
        f"{root} .nl::before {{ content: '\\21B5'; opacity: 0.3; }}",
        f"{root} i.nl {{ font-style: normal; }}",
        f"{root} .ctl {{ opacity: 0.45; }}",
        f"{root} .mark {{ outline: 2px solid #222; outline-offset: -1px; }}",
        f"{root} span[title]:hover {{ outline: 1px solid #555; }}",
        ".probe-legend { display: flex; align-items: center; gap: 6px; font: 12px sans-serif; }",
        ".probe-legend .bar { display: inline-flex; border: 1px solid #bbb; }",
        ".probe-legend .bar span { display: inline-block; width: 14px; height: 14px; }",
    ]
    for prefix, pal in (("d", DIVERGING), ("s", SEQUENTIAL)):
        for i, c in enumerate(pal):
            fg = " color: #fff;" if _dark(c) else ""
            rules.append(f".{prefix}{i} {{ background: {c};{fg} }}")
    return "\n".join(rules)


def _char_label(ch: str) -> str:
    """How a character (or a token: its repr) is named in a hover title."""
    if len(ch) != 1:
        return repr(ch)
    names = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "space"}
    if ch in names:
        return names[ch]
    if ord(ch) < 32 or ord(ch) == 127:
        return f"\\x{ord(ch):02x}"
    return repr(ch)


@lru_cache(maxsize=4096)
def _char_html(ch: str, newlines: str) -> tuple[str, str]:
    """(extra class, escaped content) of one character."""
    if ch == "\n":
        return ("nl", "\n") if newlines == "break" else ("nl", "")
    if ch == "\t":
        return "", "\t"
    code = ord(ch)
    if code < 32 or code == 127:  # control characters: show their Unicode picture
        return "ctl", chr(0x2400 + code) if code < 32 else "\u2421"
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate cannot be encoded in the page
        return "ctl", "\ufffd"
    return "", html.escape(ch, quote=True)


@lru_cache(maxsize=4096)
def _token_html(token: str, newlines: str) -> tuple[str, str]:
    """(extra class, escaped content) of one position's text: a character as ``_char_html``;
    a longer token each of its characters, a line break in it marked by an empty ``nl``."""
    if len(token) == 1:
        return _char_html(token, newlines)
    return "", _gap_html(token, newlines)


@lru_cache(maxsize=4096)
def _gap_html(text: str, newlines: str) -> str:
    """Escaped content of text drawn uncoloured (between tokens) or inside a longer token."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append('<i class="nl"></i>' + ("\n" if newlines == "break" else ""))
        else:
            out.append(_char_html(ch, newlines)[1])
    return "".join(out)


@lru_cache(maxsize=4096)
def _title_label(ch: str) -> str:
    return html.escape(_char_label(ch), quote=True)


def _pieces(text: str, spans, n: int, what: str) -> list[tuple[str, str]]:
    """(text before it, its own text) of each of the ``n`` positions: characters of
    ``text`` (``spans`` None), or tokens at ``spans`` [n, 2] in it (the gaps between them
    are the text before each)."""
    if spans is None:
        if n != len(text):
            raise ProbeError(f"{len(text)} characters but {n} {what}")
        return [("", ch) for ch in text]
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(spans) != n:
        raise ProbeError(f"{len(spans)} tokens but {n} {what}")
    flat = spans.ravel()
    if len(flat) and (flat[0] < 0 or flat[-1] > len(text) or (np.diff(flat) < 0).any()):
        raise ProbeError(f"token spans must be in order within the text's {len(text)} characters")
    out, prev = [], 0
    for a, b in spans.tolist():
        out.append((text[prev:a], text[a:b]))
        prev = b
    return out


def position_text(rec, start: int, stop: int) -> tuple[str, np.ndarray | None]:
    """(text, spans) of a recording's positions [start, stop), for ``colored_html``: its
    characters and None (a character recording), else the text from the first token's
    start to the last one's stop and each token's span in it."""
    if rec.char_level:
        return rec.text_of(start, stop), None
    spans = np.asarray(rec.spans[start:stop], dtype=np.int64).reshape(-1, 2)
    return rec.text_of(start, stop), spans - (spans[0, 0] if len(spans) else 0)


def colored_html(text: str, values, stream: str, *, start: int = 0, mark: int | None = None,
                 title_fmt: str = TITLE_FMT, newlines: str = "break", titles: bool = True,
                 root_class: str = "probe-text", scale: tuple[float, float] | None = None,
                 spans=None) -> str:
    """A ``<div>`` of one ``<span>`` per position, its background the cell's value.

    Positions are the characters of ``text``, or the tokens at ``spans`` [n, 2] in it (the
    text between them drawn uncoloured). ``start`` is the first position's index in the
    recording (for hover titles); ``mark`` outlines the position at that index; ``newlines="break"`` keeps line breaks (with a
    faint ↵), ``"symbol"`` shows only the ↵ (one-line snippets). ``title_fmt`` may use
    ``position``, ``char`` (the character or token) and ``value``; ``titles=False`` gives only the marked character a
    title (titles are most of the page's weight: many snippets load faster without).
    ``scale``: a derived stream's colour range (``scaled``).
    """
    values = np.asarray(values, dtype=np.float32).ravel()  # [n]
    pieces = _pieces(text, spans, len(values), "values")
    if newlines not in ("break", "symbol"):
        raise ProbeError(f"newlines must be 'break' or 'symbol', got {newlines!r}")
    prefix = "d" if is_diverging(stream) else "s"
    classes = [f"{prefix}{i}" for i in palette_index(values, stream, scale).tolist()]
    fast = title_fmt == TITLE_FMT
    parts = [f'<div class="{html.escape(root_class, quote=True)}">']
    for j, ((gap, ch), cls, v) in enumerate(zip(pieces, classes, values.tolist())):
        if gap:
            parts.append(_gap_html(gap, newlines))
        extra, content = _token_html(ch, newlines)
        pos = start + j
        marked = mark is not None and pos == mark
        if marked:
            extra = (extra + " mark").strip()
        if extra:
            cls = f"{cls} {extra}"
        if not (titles or marked):
            parts.append(f'<span class="{cls}">{content}</span>')
            continue
        if fast:
            title = f"{pos}  {_title_label(ch)}  {v:+.3f}"
        else:
            title = html.escape(title_fmt.format(position=pos, char=_char_label(ch), value=v), quote=True)
        parts.append(f'<span class="{cls}" title="{title}">{content}</span>')
    parts.append("</div>")
    return "".join(parts)


def category_html(text: str, codes, colours: dict[int, str], names: dict[int, str], *, start: int = 0,
                  root_class: str = "probe-text", spans=None) -> str:
    """A ``<div>`` of one ``<span>`` per position (a character, or a token at ``spans`` as
    in ``colored_html``), its background the colour of its category (``codes`` [n] ints; a
    code without a colour: no background), its title the position, its text and category
    name. Every character is escaped, as in ``colored_html``."""
    codes = np.asarray(codes).ravel()
    pieces = _pieces(text, spans, len(codes), "categories")
    parts = [f'<div class="{html.escape(root_class, quote=True)}">']
    for j, ((gap, ch), c) in enumerate(zip(pieces, codes.tolist())):
        if gap:
            parts.append(_gap_html(gap, "break"))
        extra, content = _token_html(ch, "break")
        c = int(c) if c == c else -1  # NaN: no category
        style = f' style="background:{colours[c]}"' if c in colours else ""
        title = f"{start + j}  {_title_label(ch)}  {html.escape(names.get(c, ''), quote=True)}"
        cls = f' class="{extra}"' if extra else ""
        parts.append(f'<span{cls}{style} title="{title}">{content}</span>')
    parts.append("</div>")
    return "".join(parts)


def legend_html(stream: str, label: str | None = None, scale: tuple[float, float] | None = None) -> str:
    """A small colour bar with its value range (a derived stream's: ``scale``)."""
    div = is_diverging(stream)
    prefix, pal = ("d", DIVERGING) if div else ("s", SEQUENTIAL)
    label = label or {"c": "tanh(c)"}.get(stream, stream)
    lo, hi = ("−1", "+1") if div else ("0", "1")
    if is_derived(stream) and scale is not None:
        lo, hi = f"{scale[0]:.3g}", f"{scale[1]:.3g}"
    bar = "".join(f'<span class="{prefix}{i}"></span>' for i in range(len(pal)))
    mid = " (0 is white)" if div else ""
    return (f'<div class="probe-legend"><b>{html.escape(label)}</b> {lo} <span class="bar">{bar}'
            f"</span> {hi}{mid}</div>")


def standalone_page(text: str, values, stream: str, title: str, legend: bool = True,
                    *, start: int = 0, scale: tuple[float, float] | None = None, spans=None) -> str:
    """A complete HTML document (inline CSS, no scripts, no network): the paper's figure.
    A derived stream is coloured over ``scale`` (default: these values' ``value_scale``)."""
    if is_derived(stream) and scale is None:
        scale = value_scale(values)
    t = html.escape(title, quote=True)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{t}</title>\n<style>\nbody {{ margin: 24px; font-family: sans-serif; }}\n"
            f"h1 {{ font-size: 16px; font-weight: 600; }}\n{css()}\n</style>\n</head>\n<body>\n"
            f"<h1>{t}</h1>\n" + (legend_html(stream, scale=scale) + "\n" if legend else "")
            + colored_html(text, values, stream, start=start, scale=scale, spans=spans) + "\n</body>\n</html>\n")


def render_recording(rec, layer: int, stream: str, unit: int, start: int = 0, stop: int | None = None) -> str:
    """``probe render``: the standalone page for one cell of the open recording ``rec`` over
    positions [start, stop) (default ``DEFAULT_LENGTH`` of them: characters, or tokens drawn
    as spans of the text)."""
    rec.check(layer, stream, unit)
    T = len(rec)
    stop = min(T, start + DEFAULT_LENGTH) if stop is None else stop
    if not 0 <= start < T:
        raise ProbeError(f"{rec.path}: --start {start} is outside the {rec.unit_name}s (0..{T - 1})")
    if not start < stop <= T:
        raise ProbeError(f"{rec.path}: --stop {stop} must be in {start + 1}..{T}")
    values = rec.unit(layer, stream, unit, start, stop)  # [stop - start]
    names = rec.unit_names(layer, stream)
    title = (f"{rec.path.name}: layer {layer}, stream {stream}, unit {unit}"
             f"{f' ({names[unit]})' if names else ''}, {rec.unit_name}s {start:,}–{stop:,} of {T:,}")
    text, spans = position_text(rec, start, stop)
    return standalone_page(text, values, stream, title, start=start, spans=spans)
