"""Select & match (LSTMVis's hypothesis search, ``probe.analysis.match``): select a span of the text,
list the cells on over it, show them as stacked rows under the window's text, and find
where else they are on together over the whole recording, with what those places share.

A span is selected with the mouse in the window's text (press on one character and release
on another, or click two characters: ``views.PICK_JS``) or typed as START:STOP. The
selection (span, threshold, typed cells) is part of the URL. The search runs when the span,
threshold, recording, layer or stream change, never on paging or a change of unit; the
on/off index it reads is made ready in the background the first time (``store.match_index``).
"""
from __future__ import annotations

import html
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
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
from probe.output import render

from ..selection import Selection, cells_text, clamp_start, parse_cells, parse_span
from ..session import Session, View, on_next_tick
from ..views import MESSAGE_CSS, TEXT_CSS, mark_range, message_html, note_div, note_html, reason, span_picker

TITLE = "select & match"
TOP = 50              # matches listed
INDEX_WAIT = 0.3      # seconds to wait for the on/off index before saying it is being built
STACK_CHARS = 1000    # characters of the window shown as stacked rows
BLOCK = 120           # characters per line of stacked rows
MAX_ROWS = 12         # cells shown as stacked rows
BEFORE, SHOWN, AFTER = 20, 50, 20  # a match's snippet: context, matched characters shown, context
COUNT = "i"           # the count of cells on is coloured with a gate's palette: white 0 → purple all
COLUMNS = ("start", "stop", "length", "n_on", "n_union", "jaccard", "snippet")
EXPLAIN = ("feature", "matched", "overall", "enrichment")

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

    state = {"key": None, "units": None, "hits": None, "rows": None}

    def update(sel: Selection) -> None:
        with session.quietly():
            span_in.value = f"{sel.span[0]}:{sel.span[1]}" if sel.span else ""
            threshold_in.value = sel.threshold
            cells_in.value = cells_text(sel.cells).replace(",", ", ")
        if sel.matching != state["key"]:
            search(sel)
        draw_rows(sel)

    def clear() -> None:
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
        key = state["key"] = sel.matching
        if sel.span is None:
            cells_div.text = note_html(
                "Select a span: click two characters of the text above (or press on one and release on "
                "another), or type START:STOP. The cells on over it are listed and stacked below, and "
                f"their {TOP} best matches over the whole recording are found.")
            return
        a, b = sel.span
        try:
            units = match.select(session.rec, sel.layer, sel.stream, a, b, sel.threshold)
        except ProbeError as e:
            fail(app_words(str(e)))
            return
        state["units"] = units
        cells_div.text = cells_html(session.rec.text[a:b], sel, units)
        ready = session.store.match_index(sel.recording, sel.layer, sel.stream, sel.threshold)
        try:
            ready.result(timeout=INDEX_WAIT)
        except FutureTimeout:
            note.text = note_html(f"building the on/off index of layer {sel.layer} {sel.stream} at "
                                  f"{sel.threshold:g} over {len(session.rec):,} characters (once: it is "
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
                session.store.match_index(*key[:3], key[4]).result()
            except Exception as e:  # noqa: BLE001 - a damaged recording: said, not raised
                fail(f"cannot search: {reason(e)}")
                return
            find(session.sel)

    def find(sel: Selection) -> None:
        rec, units = session.rec, state["units"]
        try:
            hits = match.search(rec, sel.layer, sel.stream, units, sel.threshold, top=TOP)
            counts = match.index(rec, sel.layer, sel.stream, sel.threshold)
            source.data = table_data(rec.text, hits, counts, units)
            source.selected.indices = []
            if len(hits):
                shared = match.explain(rec, hits, session.store.features(sel.recording))
                explain_src.data = {k: shared[k].tolist() for k in EXPLAIN}
        except Exception as e:  # noqa: BLE001 - shown on the page; the server keeps serving
            fail(f"cannot search: {reason(e)}")
            return
        state["hits"] = hits
        cells = "cell" if len(units) == 1 else "cells"
        note.text = note_html(
            f"The {len(hits)} best places over the whole recording where these {len(units)} {cells} are on "
            "together (LSTMVis's ranking: most of them on throughout, then fewest other cells on, then "
            "longest). Each character is coloured by how many of them are on there (white none, purple "
            "all); the match is underlined in orange. Click a row to show it in the text. Beside: the "
            "features the matched characters share, against how often each holds over the recording."
            if len(hits) else f"No place where the {len(units)} {cells} are on together for two characters "
                              "or more (with a character before and after).")

    def draw_rows(sel: Selection) -> None:
        """The window's text once per cell, aligned character by character."""
        rec = session.rec
        cells = list(sel.cells) or [(sel.layer, sel.stream, u) for u in (state["units"] or [])]
        a = sel.start
        b = min(len(rec), a + sel.window)
        if sel.span is not None and a <= sel.span[0] < b:  # around the span, if it is in the window
            a = max(a, min(sel.span[0] - STACK_CHARS // 5, b - STACK_CHARS))
            line = rec.text.rfind("\n", max(sel.start, a - BLOCK), a)
            a = line + 1 if line >= 0 else a  # from the start of a line
        b = min(b, a + STACK_CHARS)
        key = (sel.recording, tuple(cells[:MAX_ROWS]), len(cells), a, b, sel.span)
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
        rows_note.text = note_html(f"Stacked rows: characters {a:,}–{b:,} of the window, once per cell{more}, "
                                   "each coloured by its cell (hover for the value); the span is underlined.")
        try:
            rows_div.text = stacked_html(rec, shown, a, b, sel.span)
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
        session.mark = None
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
        session.mark = (sel.matching, int(r["start"]), int(r["stop"]))
        session.select(start=jump_start(rec.text, int(r["start"]), sel.window))

    span_in.on_change("value", on_span)
    threshold_in.on_change("value", on_threshold)
    cells_in.on_change("value", on_cells)
    clear_btn.on_click(lambda: session.select(span=None, cells=()))
    source.selected.on_change("indices", on_row)
    layout = column(row(span_in, threshold_in, cells_in, clear_btn), cells_div, rows_note, rows_div, note,
                    row(table, explain_table), sizing_mode="stretch_width")
    return View(layout, update, clear)


def app_words(message: str) -> str:
    """A library message in the page's words: its --threshold is the threshold box."""
    return message.replace("a lower --threshold", "a lower threshold").replace("--threshold", "threshold")


def jump_start(text: str, position: int, window: int) -> int:
    """A window start that shows ``position`` a few lines down, from the start of a line."""
    a = max(0, position - 200)
    line = text.rfind("\n", max(0, a - 120), a)
    return clamp_start(line + 1 if line >= 0 else a, window, len(text))


def cells_html(span_text: str, sel: Selection, units: list[int]) -> str:
    what = "tanh(c)" if sel.stream == "c" else sel.stream
    shown = span_text if len(span_text) <= 60 else span_text[:57] + "…"
    cells = "".join(f'<span class="cell">{sel.layer}:{sel.stream}:{u}</span>' for u in units)
    return (f'<div class="cells note">{len(units)} cell{"s" if len(units) != 1 else ""} of layer {sel.layer} '
            f"{html.escape(sel.stream)} on ({what} ≥ {sel.threshold:g}) at every character of "
            f"{sel.span[0]:,}:{sel.span[1]:,} <code>{html.escape(repr(shown))}</code>"
            f"{' and off just before it' if sel.span[0] > 0 else ''}: {cells}</div>")


def stacked_html(rec, cells: list[tuple], a: int, b: int, span: tuple | None) -> str:
    """Characters [a, b) once per cell, in lines of ``BLOCK``: each line of text is a block of
    rows, one per cell, aligned character by character (↵ for newlines)."""
    text = rec.text
    values = {}
    for layer, stream in dict.fromkeys((c[0], c[1]) for c in cells):
        values[(layer, stream)] = rec.window(layer, stream, a, b)  # [n, units]
    parts = ['<div class="stack">']
    for lo in range(a, b, BLOCK):
        hi = min(b, lo + BLOCK)
        parts.append(f'<div class="block"><div class="at">{lo:,}</div>')
        for layer, stream, unit in cells:
            row = render.colored_html(text[lo:hi], values[(layer, stream)][lo - a:hi - a, unit], stream,
                                      start=lo, newlines="symbol", root_class="probe-text pickable")
            if span is not None:
                row = mark_range(row, lo, *span, "sel")
            parts.append(f'<div class="srow"><span class="lab">{layer}:{stream}:{unit}</span>{row}</div>')
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def table_data(text: str, hits, bits: np.ndarray, units: list[int]) -> dict:
    """The matches with a coloured snippet each: the count of the selected units on at each
    character (from the on/off index ``bits`` [T, words]), over the match and its context."""
    T = len(text)
    snippets = []
    for s, e in zip(hits["start"].tolist(), hits["stop"].tolist()):
        lo, hi = max(0, s - BEFORE), min(T, min(e, s + SHOWN) + AFTER)
        count = match.count_on(bits[lo:hi], units)  # [hi - lo]
        snippet = render.colored_html(text[lo:hi], count / len(units), COUNT, start=lo, newlines="symbol",
                                      titles=False)
        snippet = mark_range(snippet, lo, s, min(e, s + SHOWN), "hit")
        pad = " " * (BEFORE - (s - lo))  # matches start in one column
        snippets.append(snippet.replace('<div class="probe-text">', f'<div class="probe-text">{pad}', 1))
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
                        formatter=HTMLTemplateFormatter(template="<%= value %>"), width=760)]
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
