"""The window onto the text, always shown: paging, the colour legend and where the window
is, the whole recording as one strip, the coloured text, and the cell's trace beside a
feature. Tabs may mark ranges of the text (``View.marks``); the text is ``pickable``: tabs
pick positions (characters or tokens) in it with the mouse (as ``views.POINT_JS`` does)."""
from __future__ import annotations

import html

import numpy as np
from bokeh.events import Tap
from bokeh.layouts import column, row
from bokeh.models import (
    BoxAnnotation,
    Button,
    ColumnDataSource,
    HoverTool,
    LinearAxis,
    NumeralTickFormatter,
    Range1d,
    Spinner,
)
from bokeh.plotting import figure

from probe.output import render

from .selection import Selection, clamp_start
from .session import Session, View
from .views import coloured, mark_range, note_div, position_label, text_div, units


def build(session: Session) -> View:
    overview_src = ColumnDataSource(dict(x=[], width=[], color=[]))
    trace_src = ColumnDataSource(dict(position=[], value=[], feature=[], char=[]))
    overview, box = overview_figure(overview_src)
    trace = trace_figure(trace_src)
    prev_btn = Button(label="◀ previous", width=100, name="prev")
    next_btn = Button(label="next ▶", width=100, name="next")
    start = Spinner(title="start", low=0, step=500, value=0, width=110, name="start")
    legend, status = note_div(name="legend"), note_div(name="status")
    text = text_div(name="text", sizing_mode="stretch_width")
    shown = None  # the cell the legend and overview are drawn for

    def update(sel: Selection) -> None:
        nonlocal shown
        rec, values = session.rec, session.values  # values: [b - a], the window's
        if sel.cell != shown:
            names = rec.unit_names(sel.layer, sel.stream)
            legend.text = render.legend_html(sel.stream, label=names[sel.unit] if names else None,
                                             scale=session.scale)
            lo, hi, means = overview_bins(session.summary)
            overview_src.data = dict(x=(lo + hi) / 2, width=hi - lo,
                                     color=render.colors(means, sel.stream, session.scale))
            overview.x_range.start, overview.x_range.end = 0, len(rec)
            shown = sel.cell
        a, b = session.span
        marks = [m for view in session.views for m in view.marks(sel)]
        text.text = marked(coloured(rec, a, b, values, sel.stream, scale=session.scale,
                                    root_class="probe-text pickable"), a, marks)
        status.text = status_html(rec, a, b)
        box.left, box.right = a, b
        column = session.store.feature_if_kept(sel.recording, sel.feature)
        if column is None:  # computed once per recording in a worker; the trace follows when ready
            name, feature = sel.recording, sel.feature
            session.jobs.submit(FEATURE_JOB, lambda job: session.store.feature(name, feature),
                                lambda _: update(session.sel) if (sel.recording, sel.feature) == (name, feature)
                                else None)
            feat = np.full(b - a, np.nan, dtype=np.float32)
        else:
            feat = column[a:b]  # [n]
        trace_src.data = dict(position=np.arange(a, b), value=values, feature=feat,
                              char=[char_label(ch) for ch in rec.tokens[a:b]])
        trace.x_range.start, trace.x_range.end = a, b
        # two scales: the cell's on the left, the feature's (a count: up to the line's length) on the right
        trace.y_range.start, trace.y_range.end = padded(values)
        trace.extra_y_ranges["feature"].start, trace.extra_y_ranges["feature"].end = padded(feat)
        trace.right[0].axis_label = sel.feature
        with session.quietly():
            start.value, start.high, start.step = a, max(0, len(rec) - 1), sel.window // 2

    def clear() -> None:
        nonlocal shown
        shown = None
        text.text = legend.text = status.text = ""
        for src in (overview_src, trace_src):
            src.data = {k: [] for k in src.data}

    def on_start(attr, old, new):
        if new is not None:
            session.on_widget(start=int(new))

    sel = session.sel  # changed in place, never replaced
    prev_btn.on_click(lambda: session.select(start=max(0, sel.start - sel.window)))
    next_btn.on_click(lambda: session.select(start=clamp_start(sel.start + sel.window, sel.window,
                                                               len(session.rec))))
    start.on_change("value_throttled", on_start)
    overview.on_event(Tap, lambda e: session.select(start=clamp_start(int(e.x - sel.window / 2), sel.window,
                                                                      len(session.rec))))
    layout = column(row(prev_btn, next_btn, start, column(legend, status)), overview, text, trace,
                    sizing_mode="stretch_width")
    return View(layout, update, clear)


FEATURE_JOB = "feature"  # the overlay feature's column, computed in a worker


def marked(coloured: str, start: int, marks: list[tuple[int, int, str]]) -> str:
    """Coloured text starting at ``start`` with each mark's positions [a, b) given its class."""
    for a, b, cls in marks:
        coloured = mark_range(coloured, start, a, b, cls)
    return coloured


def overview_bins(summary: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, stop, mean) of the overview strip's bins (at most ``summaries.STRIP``) from a
    cell's summaries (``summaries.unit``): nothing is read. A NaN mean shows as 0."""
    edges = np.asarray(summary["strip_edges"], dtype=np.int64)
    means = np.nan_to_num(np.asarray(summary["strip_mean"], dtype=np.float32))
    return edges[:-1], edges[1:], means


def padded(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    """(low, high) of an axis that shows ``values`` whole: their finite range widened by
    ``pad`` of it each side (a constant: ±0.5 around it; none: 0 to 1)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi == lo:
        return lo - 0.5, hi + 0.5
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


char_label = position_label  # its old name


def status_html(rec, start: int, stop: int) -> str:
    """Where the window is: characters (or tokens), and the document it starts in."""
    docs = rec.documents
    d = int(rec.document_of([start])[0])
    name = docs["name"].iloc[d] if 0 <= d < len(docs) else "?"
    return (f'<div class="note">{html.escape(rec.path.name)} · {units(rec)} {start:,}–{stop:,} of '
            f'{len(rec):,} · document {html.escape(str(name))} ({d + 1} of {len(docs)})</div>')


def overview_figure(source: ColumnDataSource) -> tuple:
    """The whole text as one strip of bins coloured by the cell's mean; a box marks the window."""
    p = figure(height=70, sizing_mode="stretch_width", tools="tap", toolbar_location=None,
               y_range=(0, 1), title="whole recording — tap to jump", name="overview")
    p.rect(x="x", y=0.5, width="width", height=1, fill_color="color", line_color=None, source=source)
    p.xaxis.formatter = NumeralTickFormatter(format="0,0")  # 100,000, not 1.000e+5
    p.yaxis.visible = False
    p.ygrid.visible = False
    p.xgrid.visible = False
    box = BoxAnnotation(left=0, right=0, fill_alpha=0.0, line_color="#111", line_width=2)
    p.add_layout(box)
    return p, box


def trace_figure(source: ColumnDataSource) -> figure:
    """The cell's value over the window on the left axis, the selected feature on its own
    right axis: each on its own scale (both set by ``update``), so a count feature (column,
    up to the line's length) does not flatten the cell."""
    p = figure(height=200, sizing_mode="stretch_width", tools="xpan,xwheel_zoom,reset",
               toolbar_location="right", x_range=Range1d(0, 1), y_range=Range1d(-1, 1), name="trace")
    p.line("position", "value", source=source, color="#2166ac", line_width=1.2, legend_label="cell")
    p.extra_y_ranges = {"feature": Range1d(0, 1)}
    p.add_layout(LinearAxis(y_range_name="feature", axis_label="feature", axis_label_text_color="#e08214"),
                 "right")
    p.step("position", "feature", source=source, y_range_name="feature", color="#e08214",
           line_width=1, alpha=0.8, mode="center", legend_label="feature")
    p.add_tools(HoverTool(tooltips=[("position", "@position"), ("char", "@char"),
                                    ("value", "@value{0.000}"), ("feature", "@feature")],
                          mode="vline"))
    p.legend.orientation = "horizontal"
    p.add_layout(p.legend[0], "above")
    p.yaxis[0].axis_label = "value"
    p.yaxis[0].axis_label_text_color = "#2166ac"
    p.xaxis.formatter = NumeralTickFormatter(format="0,0")
    return p
