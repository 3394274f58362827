"""Select & match (LSTMVis's hypothesis search, ``probe.analysis.match``): select a span of the text,
list the cells on over it, show them as stacked rows under the window's text, and find
where else they are on together over the whole recording, with what those places share.

Everything of this tab is here: its keys in the URL (``PARAMS``: span, threshold, cells,
with their parsers and checks), the JavaScript that picks a span with the mouse
(``PICK_JS``), the marks it puts on the window's text (``View.marks``) and the on/off index
it has built in the background (``index_ready``). Without this module in main.py's
``TABS`` the dashboard works as before, only without these keys.

A span is selected with the mouse in the window's text (press on one character and release
on another, or click two characters) or typed as START:STOP. In a word-level recording a
span is a range of tokens, picked the same way, and the rows and snippets draw tokens. The search runs when the span,
threshold, recording, layer or stream change, never on paging or a change of unit; the
on/off index it reads is made ready in the background the first time.
"""
from __future__ import annotations

import html
import math
import re
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from pathlib import Path

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    CustomJS,
    DataTable,
    Div,
    HTMLTemplateFormatter,
    InlineStyleSheet,
    NumberFormatter,
    Spinner,
    TableColumn,
    TextInput,
)

from probe.analysis import match
from probe.errors import ProbeError
from probe.recording.h5format import RANGE
from probe.recording.reader import Recording, open_recording

from ..jobs import Job
from ..selection import Param, Selection, clamp_start, is_stream_name, line_start
from ..session import Session, View, on_next_tick
from ..store import Store
from ..views import (
    MESSAGE_CSS,
    TEXT_CSS,
    coloured,
    mark_range,
    message_html,
    note_div,
    note_html,
    reason,
    units,
)

TITLE = "select & match"
TOP = 50              # matches listed
INDEX_WAIT = 0.3      # seconds to wait for the on/off index before saying it is being built
STACK_CHARS = 1000    # characters of the window shown as stacked rows
BLOCK = 120           # characters per line of stacked rows
TOKEN_STACK = 200     # tokens of the window shown as stacked rows (a word-level recording)
TOKEN_BLOCK = 16      # tokens per line of stacked rows
MAX_ROWS = 12         # cells shown as stacked rows
SNIPPET_WIDTH = 760   # pixels of the matches table's "where" column
CHAR_WIDTH = 7.83     # pixels a character of the snippets' font takes (13px DejaVu Sans Mono: render.css)
SNIPPET = int((SNIPPET_WIDTH - 24) / CHAR_WIDTH)  # characters a snippet shows: as many as its column holds
BEFORE = 20           # of them before the match (matches start in one column)
COUNT = "i"           # the count of cells on is coloured with a gate's palette: white 0 → purple all
COLUMNS = ("start", "stop", "length", "n_on", "n_union", "jaccard", "snippet")
EXPLAIN = ("feature", "matched", "overall", "enrichment")
DEFAULT_THRESHOLD = 0.3     # a unit is on at a character when its value (tanh(c) for c) is >= this
MAX_CELLS = 32              # cells a URL or the cells box may list
MAX_SPAN = 2000             # characters a span may cover: cells on over longer ones are rare
Cell = tuple[int, str, int]  # (layer, stream, unit), written 1:c:120

# ---- the URL: span=1727:1740&threshold=0.3&cells=0:c:89,1:c:43 ---------------------------------


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
    """``"1727:1740"`` → (1727, 1740); a ProbeError if it is not START:STOP."""
    m = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", text)
    if m is None:
        raise ProbeError(f"span {text!r} is not START:STOP (two whole numbers, like 1727:1740)")
    return int(m.group(1)), int(m.group(2))


def parse_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ProbeError(f"threshold {text!r} is not a number (like 0.3)")
    return round(value, 4)


def read_span(text: str) -> tuple[tuple[int, int] | None, list[str]]:
    try:
        return parse_span(text), []
    except ProbeError as e:
        return None, [f"{e} in the URL; no span selected"]


def read_threshold(text: str) -> tuple[float, list[str]]:
    try:
        return parse_threshold(text), []
    except ProbeError as e:
        return DEFAULT_THRESHOLD, [f"{e} in the URL; using {DEFAULT_THRESHOLD:g}"]


def read_cells(text: str) -> tuple[tuple[Cell, ...], list[str]]:
    cells, bad = parse_cells(text)
    said = [f"cells={text!r} in the URL: {', '.join(repr(b) for b in bad)} not LAYER:STREAM:UNIT "
            "(like 0:c:89, 1:c:120); left out"] if bad else []
    return cells, said


def fit_span(span, sel: Selection, rec: Recording) -> tuple[tuple[int, int] | None, list[str]]:
    """No span outside the recording, empty or longer than ``MAX_SPAN``."""
    if span is None:
        return None, []
    (a, b), name, T = span, rec.path.name, len(rec)
    if a >= b:
        return None, [f"span={a}:{b} is empty (its stop must be after its start); no span selected"]
    if not (0 <= a and b <= T):
        return None, [f"span={a}:{b} is outside {name} ({units(rec)} 0:{T}); no span selected"]
    if b - a > MAX_SPAN:
        return None, [f"span={a}:{b} is longer than {MAX_SPAN:,} {units(rec)}; no span selected"]
    return span, []


def fit_threshold(threshold: float, sel: Selection, rec: Recording) -> tuple[float, list[str]]:
    """No threshold the stream cannot cross."""
    try:
        match.check_threshold(sel.stream, threshold)
    except ProbeError:
        low, high = RANGE.get(sel.stream) or (-1.0, 1.0)
        what = "tanh(c)" if sel.stream == "c" else sel.stream
        return DEFAULT_THRESHOLD, [
            f"threshold={threshold:g} is out of range for stream {sel.stream}: {what} lies between "
            f"{low:g} and {high:g}, so a threshold must lie strictly inside; using {DEFAULT_THRESHOLD:g}"]
    return threshold, []


def fit_cells(cells: tuple[Cell, ...], sel: Selection, rec: Recording) -> tuple[tuple[Cell, ...], list[str]]:
    """No cell the recording does not have."""
    unknown = [c for c in cells if not (c[0] in rec.layer_ids and c[1] in rec.streams_of(c[0])
                                        and 0 <= c[2] < rec.width(c[0], c[1]))]
    if not unknown:
        return cells, []
    return tuple(c for c in cells if c not in unknown), [
        f"no cell {cells_text(unknown).replace(',', ', ')} in {rec.path.name} (layers 0..{rec.layers - 1}, "
        f"streams {' '.join(rec.streams)}, units 0..{rec.units - 1}{'' if rec.uniform else ' in the widest'}); "
        "left out of the rows"]


PARAMS = (
    Param("span", None, read_span, lambda span: None if span is None else f"{span[0]}:{span[1]}", fit_span),
    Param("threshold", DEFAULT_THRESHOLD, read_threshold,
          lambda t: None if t == DEFAULT_THRESHOLD else f"{t:g}", fit_threshold),
    Param("cells", (), read_cells, lambda cells: cells_text(cells) or None, fit_cells),
)


def matching(sel: Selection) -> tuple:
    """(recording, layer, stream, span, threshold): what the span's cells and matches depend on."""
    return sel.recording, sel.layer, sel.stream, sel.extra["span"], sel.extra["threshold"]


# ---- the on/off index, built once in the background ---------------------------------------------

def index_key(name: str, layer: int, stream: str, threshold: float) -> tuple:
    return ("match-index", name, int(layer), stream, float(threshold))


def index_ready(store: Store, name: str, layer: int, stream: str, threshold: float) -> Future:
    """``match.index`` made ready in the store's background thread (read from beside the
    recording, or built once, a second per 200,000 characters); when the future is done,
    ``match.index`` on the open recording is a memory read. Its result is None."""
    return store.background(index_key(name, layer, stream, threshold), _ready_index, store.folder / name,
                            layer, stream, threshold)


def _ready_index(path: Path, layer: int, stream: str, threshold: float) -> None:
    """Load or build the on/off index on a recording opened for this thread: ``match`` keeps
    it in memory (and beside the recording) for the session's own ``match.index``."""
    with open_recording(path) as rec:
        match.index(rec, layer, stream, threshold)


# ---- picking a span with the mouse ----------------------------------------------------------------

# Select a span in coloured text marked ``pickable`` (the window, the stacked rows) while
# ``target`` (a TextInput) is on screen, i.e. its tab is open (elsewhere the mouse selects text
# as usual): press on one character and release on another, or click one character and then
# another. The span START:STOP goes into ``target.value``, which the server hears. Listeners
# sit on the document (added once): Divs redraw their shadow roots, and events cross open
# shadow roots, so ``composedPath`` still holds the character's <span title="POS  …">. The
# first of two clicks is outlined (an inline style: the character may be in any view's root).
PICK_JS = """
if (window.probePick) return;
window.probePick = true;
let down = null, anchor = null, anchorEl = null;
function charAt(e) {
  const view = Bokeh.index.find_one(target);
  if (view == null || !view.el.checkVisibility({visibilityProperty: true, checkVisibilityCSS: true}))
    return null;  // hidden tabs are visibility: hidden
  let ch = null;
  for (const el of e.composedPath()) {
    if (!(el instanceof Element)) continue;
    if (ch === null && el.tagName === "SPAN" && /^\\d+ /.test(el.title || "")) ch = el;
    if (el.classList.contains("pickable"))
      return ch === null ? null : {pos: parseInt(ch.title, 10), el: ch};
  }
  return null;
}
function drop() {
  if (anchorEl) { anchorEl.style.outline = ""; anchorEl.style.outlineOffset = ""; }
  anchor = anchorEl = null;
}
document.addEventListener("mousedown", (e) => {
  const c = e.button === 0 ? charAt(e) : null;
  down = c ? c.pos : null;
}, true);
document.addEventListener("mouseup", (e) => {
  const c = charAt(e), from = down;
  down = null;
  if (c === null || from === null) return;
  let lo, hi;
  if (c.pos !== from) {                       // dragged from one character to another
    lo = Math.min(from, c.pos); hi = Math.max(from, c.pos) + 1;
  } else if (anchor === null) {               // first click: remember it
    anchor = c.pos; anchorEl = c.el;
    c.el.style.outline = "2px solid #e08214"; c.el.style.outlineOffset = "-1px";
    return;
  } else {                                    // second click: the span between the two
    lo = Math.min(anchor, c.pos); hi = Math.max(anchor, c.pos) + 1;
  }
  drop();
  const sel = window.getSelection();
  if (sel) sel.removeAllRanges();
  target.value = lo + ":" + hi;
}, true);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") drop(); });
"""


def span_picker(target) -> CustomJS:
    """The listeners of ``PICK_JS``, for ``doc.js_on_event("document_ready", …)``."""
    return CustomJS(args=dict(target=target), code=PICK_JS)


# ---- the tab --------------------------------------------------------------------------------------
STACK_CSS = TEXT_CSS + MESSAGE_CSS + """
.stack { max-height: 640px; overflow: auto; border: 1px solid #ddd; background: #fff; padding: 6px 8px; }
.stack .block { margin: 0 0 8px; }
.stack .at { font: 11px ui-monospace, 'DejaVu Sans Mono', monospace; color: #888; padding-left: 92px; }
.stack .srow { display: flex; align-items: baseline; white-space: nowrap; }
.stack .lab { font: 12px ui-monospace, 'DejaVu Sans Mono', monospace; width: 92px; flex: none; color: #333; }
.stack .probe-text { padding: 0; border: none; max-height: none; overflow: visible; line-height: 1.35; }
.cells .cell { font: 12px ui-monospace, 'DejaVu Sans Mono', monospace; background: #eee; padding: 0 4px;
               margin: 0 2px; border-radius: 3px; }
"""
TABLE_CSS = TEXT_CSS + """
.slick-cell .probe-text { padding: 0; border: none; max-height: none; overflow: hidden; background: none;
                          line-height: 20px; }
"""


TAB = "match"  # its job: one search at a time per session; a newer selection supersedes


def build(session: Session) -> View:
    span_in = TextInput(title="span START:STOP (or click two characters in the text)", value="", width=290,
                        name="match-span")
    threshold_in = Spinner(title="threshold (on: ≥)", value=0.3, step=0.05, width=120, name="match-threshold")
    cells_in = TextInput(title="rows: cells to stack (LAYER:STREAM:UNIT, …; empty: the span's)", value="",
                         width=420, name="match-cells-in")
    clear_btn = Button(label="clear", width=70, name="match-clear", align="end")
    stack_css = InlineStyleSheet(css=STACK_CSS)
    cells_div = Div(text="", disable_math=True, stylesheets=[stack_css], name="match-cells",
                    sizing_mode="stretch_width")
    rows_note = note_div(name="match-rows-note")
    rows_div = Div(text="", disable_math=True, stylesheets=[stack_css], name="match-rows",
                   sizing_mode="stretch_width")
    note = note_div(name="match-note", sizing_mode="stretch_width")
    source = ColumnDataSource({k: [] for k in COLUMNS})
    table = matches_table(source)
    explain_src = ColumnDataSource({k: [] for k in EXPLAIN})
    explain_table = explain_datatable(explain_src)
    session.doc.js_on_event("document_ready", span_picker(span_in))

    # key: the matching(sel) searched; jumped: (matching(sel), start, stop) of the match shown
    state = {"key": None, "units": None, "hits": None, "rows": None, "jumped": None}

    def update(sel: Selection) -> None:
        span = sel.extra["span"]
        span_in.title = f"span START:STOP (or click two {units(session.rec)} in the text)"
        with session.quietly():
            span_in.value = f"{span[0]}:{span[1]}" if span else ""
            threshold_in.value = sel.extra["threshold"]
            cells_in.value = cells_text(sel.extra["cells"]).replace(",", ", ")
        if matching(sel) != state["key"]:
            search(sel)
        draw_rows(sel)

    def marks(sel: Selection) -> list[tuple[int, int, str]]:
        """On the window's text: the span underlined (black), the match shown (orange)."""
        out = []
        if sel.extra["span"] is not None:
            out.append((*sel.extra["span"], "sel"))
        jumped = state["jumped"]
        if jumped is not None and jumped[0] == matching(sel):
            out.append((jumped[1], jumped[2], "hit"))
        return out

    def clear() -> None:
        session.jobs.cancel(TAB)  # a search for what was shown is not wanted any more
        state.update(key=None, units=None, hits=None, rows=None)
        cells_div.text = rows_div.text = rows_note.text = note.text = ""
        source.data = {k: [] for k in COLUMNS}
        explain_src.data = {k: [] for k in EXPLAIN}

    def fail(message: str) -> None:
        note.text = ""
        cells_div.text = message_html([message])
        session.say(message)

    def search(sel: Selection) -> None:
        """The cells on over the span now; the matches now or once the index is ready."""
        clear()
        key = state["key"] = matching(sel)
        span, threshold = sel.extra["span"], sel.extra["threshold"]
        if span is None:
            cells_div.text = note_html(
                f"Select a span: click two {units(session.rec)} of the text above (or press on one and release on "
                "another), or type START:STOP. The cells on over it are listed and stacked below, and "
                f"their {TOP} best matches over the whole recording are found.")
            return
        a, b = span
        try:
            found = match.select(session.rec, sel.layer, sel.stream, a, b, threshold)
        except ProbeError as e:
            fail(app_words(str(e)))
            return
        state["units"] = found
        cells_div.text = cells_html(session.rec, sel, found)
        ready = index_ready(session.store, sel.recording, sel.layer, sel.stream, threshold)
        try:
            ready.result(timeout=INDEX_WAIT)
        except FutureTimeout:
            note.text = note_html(f"building the on/off index of layer {sel.layer} {sel.stream} at "
                                  f"{threshold:g} over {len(session.rec):,} {units(session.rec)} (once: it is "
                                  "kept beside the recording)…")
            ready.add_done_callback(lambda f: on_next_tick(session.doc, partial(later, key)))
            return
        except Exception as e:  # noqa: BLE001 - a damaged recording: said, not raised
            fail(f"cannot search: {reason(e)}")
            return
        find(sel)

    def later(key: tuple) -> None:
        """The index is ready: search, if the selection still asks for it."""
        if state["key"] == key and state["hits"] is None and session.rec is not None:
            try:
                index_ready(session.store, *key[:3], key[4]).result()
            except Exception as e:  # noqa: BLE001 - a damaged recording: said, not raised
                fail(f"cannot search: {reason(e)}")
                return
            find(session.sel)

    def find(sel: Selection) -> None:
        """Search and explain in a worker (the feature columns are computed there the first
        time); a newer span, threshold or stream supersedes it."""
        rec, cells, key = session.rec, state["units"], state["key"]
        unit, each = units(rec), units(rec, 1)
        threshold, layer, stream, name = sel.extra["threshold"], sel.layer, sel.stream, sel.recording

        def work(job: Job) -> dict:
            hits = match.search(rec, layer, stream, cells, threshold, top=TOP)
            job.check()
            data = table_data(rec, hits, match.index(rec, layer, stream, threshold), cells)
            shared = None
            if len(hits):
                shared = match.explain(rec, hits, session.store.features(name))
            return {"hits": hits, "data": data, "shared": shared}

        def done(got: dict) -> None:
            if state["key"] != key:
                return  # the selection moved on
            hits = state["hits"] = got["hits"]
            source.data = got["data"]
            source.selected.indices = []
            if got["shared"] is not None:
                explain_src.data = {k: got["shared"][k].tolist() for k in EXPLAIN}
            which = "this cell is on" if len(cells) == 1 else f"these {len(cells)} cells are on together"
            note.text = note_html(
                f"The {len(hits)} best places over the whole recording where {which} (LSTMVis's ranking: most "
                f"of them on throughout, then fewest other cells on, then longest). Each {each} is coloured "
                "by how many of them are on there (white none, purple all); the match is underlined in orange. "
                f"Click a row to show it in the text. Beside: the features the matched {unit} share, against "
                "how often each holds over the recording."
                if len(hits) else f"No other place where {which} for two {unit} or more (with a {each} "
                                  "before and after).")

        def failed(e: BaseException) -> None:  # shown on the page; the server keeps serving
            if state["key"] == key:
                fail(f"cannot search: {reason(e)}")

        def status(text: str) -> None:
            if text == "queued":
                note.text = note_html("queued: the search starts when a worker is free…")
            elif text == "running":
                note.text = note_html(f"searching {len(rec):,} {unit} for where these cells are on…")

        session.jobs.submit(TAB, work, done, failed, status=status)

    def draw_rows(sel: Selection) -> None:
        """The window's text once per cell, aligned position by position."""
        rec = session.rec
        span = sel.extra["span"]
        cells = list(sel.extra["cells"]) or [(sel.layer, sel.stream, u) for u in (state["units"] or [])]
        stack, block = (STACK_CHARS, BLOCK) if rec.char_level else (TOKEN_STACK, TOKEN_BLOCK)
        a = sel.start
        b = min(len(rec), a + sel.window)
        if span is not None and a <= span[0] < b:  # around the span, if it is in the window
            a = max(a, min(span[0] - stack // 5, b - stack))
            a = line_start(rec.tokens, a, min(block, a - sel.start))  # from the start of a line
        b = min(b, a + stack)
        key = (sel.recording, tuple(cells[:MAX_ROWS]), len(cells), a, b, span)
        if key == state["rows"]:
            return
        state["rows"] = key
        if not cells:
            rows_div.text = ""
            rows_note.text = note_html("Stacked rows: type cells above (like 0:c:89, 1:c:120), or select "
                                       "a span to stack the cells on over it.")
            return
        shown = cells[:MAX_ROWS]
        more = f" (the first {MAX_ROWS} of {len(cells)})" if len(cells) > MAX_ROWS else ""
        rows_note.text = note_html(f"Stacked rows: {units(rec)} {a:,}–{b:,} of the window, once per cell{more}, "
                                   "each coloured by its cell (hover for the value); the span is underlined.")
        try:
            rows_div.text = stacked_html(rec, shown, a, b, span, block)
        except Exception as e:  # noqa: BLE001 - a damaged stream: said, not raised
            rows_div.text = message_html([f"cannot stack the rows: {reason(e)}"])

    # ---- callbacks --------------------------------------------------------------------------
    def on_span(attr, old, new) -> None:
        if session.quiet:
            return
        if not new.strip():
            session.select(span=None)
            return
        try:
            span = parse_span(new)
        except ProbeError as e:
            session.say(str(e))
            return
        state["jumped"] = None
        session.select(span=span)

    def on_threshold(attr, old, new) -> None:
        if new is not None:
            session.on_widget(threshold=round(float(new), 4))  # 0.35, not 0.35000000000000003

    def on_cells(attr, old, new) -> None:
        if session.quiet:
            return
        cells, bad = parse_cells(new)
        session.select(cells=cells)
        if bad:
            session.say(f"cells: {', '.join(repr(b) for b in bad)} not LAYER:STREAM:UNIT (like 0:c:89, "
                        "1:c:120); left out")

    def on_row(attr, old, new) -> None:
        hits = state["hits"]
        if session.quiet or not new or hits is None or new[0] >= len(hits):
            return
        r = hits.iloc[new[0]]
        sel, rec = session.sel, session.rec
        state["jumped"] = (matching(sel), int(r["start"]), int(r["stop"]))
        session.select(start=jump_start(rec.tokens, int(r["start"]), sel.window))

    span_in.on_change("value", on_span)
    threshold_in.on_change("value", on_threshold)
    cells_in.on_change("value", on_cells)
    clear_btn.on_click(lambda: session.select(span=None, cells=()))
    source.selected.on_change("indices", on_row)
    layout = column(row(span_in, threshold_in, cells_in, clear_btn), cells_div, rows_note, rows_div, note,
                    row(table, explain_table), sizing_mode="stretch_width")
    return View(layout, update, clear, marks=marks)


def app_words(message: str) -> str:
    """A library message in the page's words: its --threshold is the threshold box."""
    return message.replace("a lower --threshold", "a lower threshold").replace("--threshold", "threshold")


def jump_start(tokens, position: int, window: int) -> int:
    """A window start that shows ``position`` a few lines down, from the start of a line
    (``tokens``: ``rec.tokens``, characters or tokens)."""
    return clamp_start(line_start(tokens, max(0, position - 200), 120), window, len(tokens))


def cells_html(rec, sel: Selection, cells: list[int]) -> str:
    """The cells on over the selected span, and the span's text."""
    what = "tanh(c)" if sel.stream == "c" else sel.stream
    (a, b), threshold = sel.extra["span"], sel.extra["threshold"]
    span_text = rec.text_of(a, b)
    shown = span_text if len(span_text) <= 60 else span_text[:57] + "…"
    shown_cells = "".join(f'<span class="cell">{sel.layer}:{sel.stream}:{u}</span>' for u in cells)
    return (f'<div class="cells note">{len(cells)} cell{"s" if len(cells) != 1 else ""} of layer {sel.layer} '
            f"{html.escape(sel.stream)} on ({what} ≥ {threshold:g}) at every {units(rec, 1)} of "
            f"{a:,}:{b:,} <code>{html.escape(repr(shown))}</code>"
            f"{' and off just before it' if a > 0 else ''}: {shown_cells}</div>")


def stacked_html(rec, cells: list[tuple], a: int, b: int, span: tuple | None, block: int = BLOCK) -> str:
    """Positions [a, b) once per cell, in lines of ``block``: each line of text is a block of
    rows, one per cell, aligned position by position (↵ for newlines)."""
    values = {}
    for layer, stream in dict.fromkeys((c[0], c[1]) for c in cells):
        values[(layer, stream)] = rec.window(layer, stream, a, b)  # [n, units]
    parts = ['<div class="stack">']
    for lo in range(a, b, block):
        hi = min(b, lo + block)
        parts.append(f'<div class="block"><div class="at">{lo:,}</div>')
        for layer, stream, unit in cells:
            row = coloured(rec, lo, hi, values[(layer, stream)][lo - a:hi - a, unit], stream,
                           newlines="symbol", root_class="probe-text pickable")
            if span is not None:
                row = mark_range(row, lo, *span, "sel")
            parts.append(f'<div class="srow"><span class="lab">{layer}:{stream}:{unit}</span>{row}</div>')
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def snippet_bounds(start: int, length: int, spans: np.ndarray | None = None) -> tuple[int, int, int]:
    """(lo, hi, pad) of the positions of the snippet of a match starting at position ``start``
    of ``length``: ``BEFORE`` characters of context (fewer at the text's start: ``pad`` spaces
    instead, so matches start in one column), then the match and what follows, ``SNIPPET``
    characters in all. ``spans`` [length, 2]: each position's characters (None: one each);
    a token is shown whole or not at all (but the match's first always)."""
    if spans is None:
        lo = max(0, start - BEFORE)
        pad = BEFORE - (start - lo)
        return lo, min(length, lo + SNIPPET - pad), pad
    first = int(spans[start, 0])
    lo = min(start, int(np.searchsorted(spans[:, 0], first - BEFORE, side="left")))
    pad = BEFORE - (first - int(spans[lo, 0]))
    hi = int(np.searchsorted(spans[:, 1], int(spans[lo, 0]) + SNIPPET - pad, side="right"))
    return lo, min(length, max(hi, start + 1)), pad


def table_data(rec, hits, bits: np.ndarray, cells: list[int]) -> dict:
    """The matches with a coloured snippet each: the count of the selected cells on at each
    position (from the on/off index ``bits`` [T, words]), over the match and its context,
    as wide as the column (``snippet_bounds``)."""
    snippets = []
    spans = None if rec.char_level else rec.spans
    for s, e in zip(hits["start"].tolist(), hits["stop"].tolist()):
        lo, hi, pad = snippet_bounds(s, len(rec), spans)
        count = match.count_on(bits[lo:hi], cells)  # [hi - lo]
        snippet = coloured(rec, lo, hi, count / len(cells), COUNT, newlines="symbol", titles=False)
        snippet = mark_range(snippet, lo, s, min(e, hi), "hit")
        snippets.append(snippet.replace('<div class="probe-text">', f'<div class="probe-text">{" " * pad}', 1))
    data = {k: hits[k].tolist() for k in COLUMNS if k != "snippet"}
    data["snippet"] = snippets
    return data


def matches_table(source: ColumnDataSource) -> DataTable:
    cols = [TableColumn(field="start", title="start", width=70),
            TableColumn(field="length", title="length", width=55),
            TableColumn(field="n_on", title="on", width=40),
            TableColumn(field="n_union", title="union", width=50),
            TableColumn(field="jaccard", title="Jaccard", formatter=NumberFormatter(format="0.000"), width=60),
            TableColumn(field="snippet", title="where (count of the cells on: white none, purple all)",
                        formatter=HTMLTemplateFormatter(template="<%= value %>"), width=SNIPPET_WIDTH)]
    return DataTable(source=source, columns=cols, height=420, width=1040, index_position=None, reorderable=False,
                     sortable=False, row_height=24, name="match-table",
                     stylesheets=[InlineStyleSheet(css=TABLE_CSS)])


def explain_datatable(source: ColumnDataSource) -> DataTable:
    pct = NumberFormatter(format="0.0%")
    cols = [TableColumn(field="feature", title="feature", width=120),
            TableColumn(field="matched", title="matched", formatter=pct, width=65),
            TableColumn(field="overall", title="overall", formatter=pct, width=65),
            TableColumn(field="enrichment", title="×", formatter=NumberFormatter(format="0.00"), width=50)]
    return DataTable(source=source, columns=cols, height=280, width=320, index_position=None, reorderable=False,
                     sortable=False, name="match-explain")
