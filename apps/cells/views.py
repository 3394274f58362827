"""Pieces shared by the dashboard's views: Divs with our stylesheets, HTML snippets, the
URL writer. Each view's own figures live in its module (window.py, tabs/)."""
from __future__ import annotations

import html
import re

from bokeh.models import CustomJS, Div, InlineStyleSheet

from probe.errors import ProbeError
from probe.output import render
from probe.recording.h5format import DESCRIPTION

TEXT_CSS = render.css() + """
:host { display: block; }
.bk-clearfix { display: block !important; }
.probe-text { max-height: 560px; overflow: auto; padding: 8px; border: 1px solid #ddd;
              background: #fff; }
.card h4 { margin: 10px 0 4px; font: 600 13px sans-serif; }
.card .row { display: flex; gap: 0; white-space: nowrap; align-items: baseline; margin: 1px 0; }
.card .val { font: 12px monospace; width: 64px; text-align: right; color: #444; }
.card .pos { font: 11px monospace; width: 72px; color: #888; padding-left: 8px; }
.card .probe-text { max-height: none; overflow: visible; padding: 0 2px; border: none; }
.note { color: #555; font: 13px sans-serif; }
/* marks views put on the window's text (View.marks): sel underlined black, hit orange */
.probe-text .sel { box-shadow: inset 0 -3px 0 #111; }
.probe-text .hit { box-shadow: inset 0 -3px 0 #e08214; }
.pickable span[title] { cursor: text; }
"""
MESSAGE_CSS = """
.msg { background: #fff4e5; border: 1px solid #e0a040; color: #5a3a00; padding: 8px 12px;
       font: 14px sans-serif; border-radius: 4px; margin: 2px 0; }
"""


def describe(rec, layer: int, stream: str) -> str:
    """What a stream is, for the stream menu: "cell state", "probe directions (9)"…"""
    info = rec.derived.get((int(layer), stream))
    if info is None:
        return DESCRIPTION.get(stream, stream)
    kind = {"directions": "probe directions", "dictionary": "dictionary features",
            "ngram": "against n-grams"}.get(info["kind"], info["kind"])
    return f"{kind} ({len(info['unit_names'])})"


def text_div(**kw) -> Div:
    """A Div for coloured text: maths off (source text has $), our stylesheet inside its shadow root."""
    return Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=TEXT_CSS)], **kw)


def message_div(**kw) -> Div:
    """Problems, one box each (models belong to one document: a new stylesheet per call)."""
    return Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=MESSAGE_CSS)], **kw)


def note_div(**kw) -> Div:
    """A Div for short notes and legends (maths off: document names come from the recording)."""
    return Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=TEXT_CSS)], **kw)


def coloured(rec, a: int, b: int, values, stream: str, **kw) -> str:
    """``render.colored_html`` of a recording's positions [a, b): characters, or tokens
    drawn as spans of their own text (``render.position_text``)."""
    text, spans = render.position_text(rec, a, b)
    return render.colored_html(text, values, stream, start=a, spans=spans, **kw)


def units(rec, n: int | None = None) -> str:
    """What positions are, for labels: "characters" or "tokens" ("character" for one)."""
    return rec.unit_name if n == 1 else rec.unit_name + "s"


def position_label(token: str) -> str:
    """A character or token as a plot's hover shows it (↵ a line end, ⇥ a tab, ␠ a space)."""
    return {"\n": "↵", "\t": "⇥", " ": "␠"}.get(token, token)


def mark_range(coloured: str, start: int, a: int, b: int, cls: str) -> str:
    """Add the class ``cls`` to positions [a, b) of ``render.colored_html`` output whose first
    position is ``start`` (one ``<span class="…`` per position; text between tokens is not in
    a span and text is escaped)."""
    parts = coloured.split('<span class="')
    lo, hi = max(0, a - start), min(len(parts) - 1, b - start)
    for j in range(lo, hi):
        parts[1 + j] = f"{cls} {parts[1 + j]}"
    return '<span class="'.join(parts)


# Point at one character of ``pickable`` text while ``gate`` (a widget of a tab) is on screen,
# i.e. its tab is open: a click writes "POS N" (N counts clicks, so clicking the same character
# again is heard) into ``target.text`` (a hidden Div), which the server hears. Listeners sit
# on the document, once per gate: Divs redraw their shadow roots, and events cross open
# shadow roots, so ``composedPath`` still holds the character's <span title="POS  …">.
POINT_JS = """
const key = "probePoint" + gate.id;
if (window[key]) return;
window[key] = true;
let clicks = 0;
document.addEventListener("click", (e) => {
  const view = Bokeh.index.find_one(gate);
  if (e.button !== 0 || view == null ||
      !view.el.checkVisibility({visibilityProperty: true, checkVisibilityCSS: true}))
    return;  // hidden tabs are visibility: hidden
  let ch = null;
  for (const el of e.composedPath()) {
    if (!(el instanceof Element)) continue;
    if (ch === null && el.tagName === "SPAN" && /^\\d+ /.test(el.title || "")) ch = el;
    if (el.classList.contains("pickable")) {
      if (ch !== null) target.text = parseInt(ch.title, 10) + " " + (++clicks);
      return;
    }
  }
}, true);
"""


def point_picker(gate, target) -> CustomJS:
    """The listener of ``POINT_JS``, for ``doc.js_on_event("document_ready", …)``."""
    return CustomJS(args=dict(gate=gate, target=target), code=POINT_JS)


def follow_clicks(clicked: Div, position, run) -> None:
    """The server side of ``point_picker``: a clicked character ("N …" in ``clicked``) sets
    ``position`` and calls ``run()``."""
    def on_click(attr, old, new) -> None:
        try:
            at = int(new.split()[0])
        except (ValueError, IndexError):
            return
        position.value = at
        run()
    clicked.on_change("text", on_click)


def reason(e: BaseException) -> str:
    return str(e) if isinstance(e, ProbeError) else f"{type(e).__name__}: {e}"


# an absolute path in a message: everything up to its last part
_ABSOLUTE = re.compile(r"(?<![\w.~])/(?:[^\s/:'\"()]+/)+(?=[^\s/:'\"()]+)")


def without_paths(text: str) -> str:
    """A message fit for a page: absolute paths shortened to their last part (a viewer of
    the page must not learn the server's folders): '/srv/recs/a.h5: …' → 'a.h5: …'."""
    return _ABSOLUTE.sub("", text)


def message_html(problems: list[str]) -> str:
    """Problems, one box each: escaped, and with no server paths."""
    return "".join(f'<div class="msg">{html.escape(without_paths(p))}</div>' for p in problems)


def note_html(text: str) -> str:
    """A short note: escaped, and with no server paths."""
    return f'<div class="note">{html.escape(without_paths(text))}</div>'


def analysis_note(result, ready: str) -> str:
    """The note above a view of the analysis: computing (None), failed (an exception), or ``ready``."""
    if result is None:
        return note_html("computing the analysis…")
    if isinstance(result, BaseException):
        return note_html(f"analysis unavailable: {reason(result)}")
    return note_html(ready)


def url_writer(holder: Div) -> CustomJS:
    """Put the selection in the address bar (no reload) whenever ``holder.text`` changes."""
    return CustomJS(args=dict(holder=holder), code="""
        const q = holder.text;
        if (q && window.location.search !== "?" + q)
            window.history.replaceState(null, "", window.location.pathname + "?" + q);
    """)
