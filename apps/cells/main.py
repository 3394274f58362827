"""One LSTM cell at a time: the recorded text coloured by the cell, and ways to find cells.

    bokeh serve apps/cells --args --recordings recordings/
    http://localhost:5006/cells?recording=stdlib-test.h5&layer=1&stream=c&unit=42&start=0

Order as in Bokeh's movies example: data → sources → figures → widgets → callbacks →
layout → first update → add_root. Every change of selection goes through ``select``.
"""
import logging
from contextlib import contextmanager
from functools import partial

import numpy as np
from bokeh.events import Tap
from bokeh.io import curdoc
from bokeh.layouts import column, row
from bokeh.models import Button, ColumnDataSource, Div, Select, Spinner, TabPanel, Tabs, TextAreaInput

from probe import contexts, render
from probe.errors import ProbeError
from probe.features import FEATURES

from . import data, views
from .data import LIVE_LIMIT, WINDOWS

log = logging.getLogger(__name__)

# ---- data -----------------------------------------------------------------------------------
doc = curdoc()
store = data.store_for(doc)
sel, problems = data.from_query(doc.session_context.request.arguments
                                if doc.session_context else {}, store)
if sel.feature not in FEATURES:
    problems.append(f"feature={sel.feature!r} in the URL is not one of {', '.join(FEATURES)}")
    sel.feature = FEATURES[0]
cur = {"rec": None, "values": None, "live": None, "saturation": None, "quiet": False}

# ---- sources --------------------------------------------------------------------------------
overview_src = ColumnDataSource(dict(x=[], width=[], color=[]))
trace_src = ColumnDataSource(dict(position=[], value=[], feature=[], char=[]))
hist_src = ColumnDataSource(dict(left=[], right=[], count=[]))
board_src = ColumnDataSource({k: [] for k in ("feature", "rank", "layer", "stream", "unit", "metric", "score")})
sat_srcs = {g: ColumnDataSource(dict(left=[], right=[], layer=[], unit=[])) for g in "ifo"}

# ---- figures --------------------------------------------------------------------------------
overview, window_box = views.overview_figure(overview_src)
trace = views.trace_figure(trace_src)
hist = views.histogram_figure(hist_src)
sat_figs = [views.saturation_figure(sat_srcs[g], g, [str(k) for k in range(10)]) for g in "ifo"]
board = views.leaderboard(board_src)

# ---- widgets --------------------------------------------------------------------------------
message = views.message_div(name="message", sizing_mode="stretch_width")
recording = Select(title="recording", options=store.names(), value=sel.recording or "", width=200,
                   name="recording")
layer = Select(title="layer", options=["0"], value="0", width=70, name="layer")
stream = Select(title="stream", value=sel.stream, width=150, name="stream", options=[
    ("i", "i · input gate"), ("f", "f · forget gate"), ("g", "g · candidate"),
    ("o", "o · output gate"), ("c", "c · cell state"), ("h", "h · hidden state")])
unit = Spinner(title="unit", low=0, high=0, step=1, value=0, width=90, name="unit")
feature = Select(title="feature overlay", options=list(FEATURES), value=sel.feature, width=150,
                 name="feature")
window = Select(title="window", options=[str(w) for w in WINDOWS], value=str(sel.window), width=90,
                name="window")
start = Spinner(title="start", low=0, step=500, value=0, width=110, name="start")
prev_btn = Button(label="◀ previous", width=100, name="prev")
next_btn = Button(label="next ▶", width=100, name="next")
legend, status = views.note_div(name="legend"), views.note_div(name="status")
text = views.text_div(name="text", sizing_mode="stretch_width")
card, board_note, sat_note = views.text_div(name="card"), views.note_div(), views.note_div()
live_in = TextAreaInput(title=f"type or paste text (up to {LIVE_LIMIT:,} characters are run)",
                        value=views.LIVE_SAMPLE, rows=8, max_length=10 * LIVE_LIMIT,
                        sizing_mode="stretch_width", name="live-in")
live_btn = Button(label="run the model", button_type="primary", width=140)
live_note = views.note_div(name="live-note")
live_out = views.text_div(name="live", sizing_mode="stretch_width")
url_state = Div(text="", visible=False, name="url-state", disable_math=True)


# ---- callbacks ------------------------------------------------------------------------------
@contextmanager
def quiet():
    """Set widgets from the selection without their callbacks firing back."""
    cur["quiet"] = True
    try:
        yield
    finally:
        cur["quiet"] = False


def show_problems():
    message.text = views.message_html(problems)
    message.visible = bool(problems)


def update_recording():
    """A recording was chosen: open it, fit the selection and widgets, start its analysis."""
    cur.update(rec=None, values=None, live=None, saturation=None)
    try:
        rec = cur["rec"] = store.recording(sel.recording or "")
    except ProbeError as e:
        problems.append(str(e) if sel.recording else store.message or str(e))
        body.visible = bool(store.names())
        text.text = card.text = live_out.text = legend.text = status.text = ""
        for src in (overview_src, trace_src, hist_src, board_src, *sat_srcs.values()):
            src.data = {k: [] for k in src.data}
        return
    body.visible = True
    problems.extend(data.fit(sel, rec))
    board_note.text = sat_note.text = views.note_html("computing the analysis…")
    board_src.data = {k: [] for k in board_src.data}
    future = store.analysis(sel.recording)
    future.add_done_callback(lambda f, name=sel.recording: views.on_next_tick(
        doc, partial(update_analysis, name, f)))
    update_cell()


def update_cell():
    """A cell was chosen: read its whole column once; every view slices it."""
    rec = cur["rec"]
    values = cur["values"] = store.column(sel.recording, sel.layer, sel.stream, sel.unit)  # [T]
    legend.text = render.legend_html(sel.stream)
    lo, hi, means = data.overview_bins(values)
    overview_src.data = dict(x=(lo + hi) / 2, width=hi - lo, color=render.colors(means, sel.stream))
    overview.x_range.start, overview.x_range.end = 0, len(rec)
    counts, edges = contexts.histogram(values)
    hist_src.data = dict(left=edges[:-1], right=edges[1:], count=counts)
    card.text = views.card_html(rec, sel.stream, values, *data.card_contexts(store, sel))
    doc.title = f"cells · {sel.recording} layer {sel.layer} {sel.stream} unit {sel.unit}"
    highlight_saturation()
    update_live()
    update_window()


def update_window():
    """The window moved or the feature changed: coloured text, trace, overview box, URL."""
    rec, values = cur["rec"], cur["values"]
    a, b = sel.start, min(len(rec), sel.start + sel.window)
    text.text = render.colored_html(rec.text[a:b], values[a:b], sel.stream, start=a)
    status.text = views.status_html(rec, a, b)
    window_box.left, window_box.right = a, b
    feat = store.feature(sel.recording, sel.feature)[a:b]  # [n]
    trace_src.data = dict(position=np.arange(a, b), value=values[a:b], feature=feat,
                          char=[views.char_label(ch) for ch in rec.text[a:b]])
    trace.x_range.start, trace.x_range.end = a, b
    fmax = float(np.nanmax(feat)) if len(feat) else 1.0
    trace.extra_y_ranges["feature"].start, trace.extra_y_ranges["feature"].end = -0.05, max(fmax, 1) * 1.05
    with quiet():
        recording.value, layer.value, stream.value = sel.recording, str(sel.layer), sel.stream
        unit.value, feature.value, window.value = sel.unit, sel.feature, str(sel.window)
        start.value, start.high, start.step = a, max(0, len(rec) - 1), sel.window // 2
        layer.options = [str(k) for k in range(rec.layers)]
        unit.high = rec.units - 1
    url_state.text = sel.query()


def update_analysis(name, future):
    """The recording's analysis finished: leaderboard and gate saturation."""
    if name != sel.recording:
        return
    try:
        result = future.result()
    except Exception as e:  # noqa: BLE001 - shown on the page; the server keeps serving
        board_note.text = sat_note.text = views.note_html(f"analysis unavailable: {views.reason(e)}")
        return
    board_note.text = views.note_html("best cells per feature; click a row to show that cell")
    sat_note.text = views.note_html("fraction of characters each gate unit spends left- (<0.1) or "
                                    "right- (>0.9) saturated; click a dot to show that unit")
    board_src.data = views.board_data(result["best"])
    sat = cur["saturation"] = result["saturation"].reset_index(drop=True)
    for g, src in sat_srcs.items():
        src.data = views.saturation_data(sat, g)
    highlight_saturation()


def highlight_saturation():
    sat = cur["saturation"]
    with quiet():
        for g, src in sat_srcs.items():
            src.selected.indices = (views.saturation_index(src, sel.layer, sel.unit)
                                    if sat is not None and g == sel.stream else [])


def run_live():
    """Run the typed text through the recording's model; keep the result for recolouring."""
    cur["live"] = None
    try:
        model, note = store.model(sel.recording)
        cur["live"] = data.run_live(model, live_in.value)
        live_note.text = views.note_html(" ".join(filter(None, [cur["live"]["note"], note])))
    except Exception as e:  # noqa: BLE001 - a bad checkpoint or text is reported, not raised
        live_note.text = views.message_html([views.reason(e)])
    update_live()


def update_live():
    live = cur["live"]
    if live is None:
        live_out.text = ""
        return
    vals = live["streams"][(sel.layer, sel.stream)][:, sel.unit]  # [n]
    live_out.text = render.colored_html(live["text"], vals, sel.stream)


def select(**changes):
    """The one way the selection changes (widgets, table, scatter, overview, paging)."""
    for key, value in changes.items():
        setattr(sel, key, value)
    problems.clear()
    rec = cur["rec"]
    try:
        if "recording" in changes or rec is None:
            update_recording()
        else:
            problems.extend(data.fit(sel, rec))
            update_cell() if {"layer", "stream", "unit"} & set(changes) else update_window()
    except Exception as e:  # noqa: BLE001 - say so on the page; the server keeps serving
        log.exception("cells: updating %s failed", sel)
        problems.append(f"could not show {sel.recording} layer {sel.layer} {sel.stream} unit "
                        f"{sel.unit}: {views.reason(e)}")
    show_problems()


def on_widget(key, convert, attr, old, new):
    if not cur["quiet"] and new is not None:
        select(**{key: convert(new)})


for widget, prop, key, convert in [(recording, "value", "recording", str), (layer, "value", "layer", int),
                                   (stream, "value", "stream", str), (unit, "value", "unit", int),
                                   (feature, "value", "feature", str), (window, "value", "window", int),
                                   (start, "value_throttled", "start", int)]:
    widget.on_change(prop, partial(on_widget, key, convert))
prev_btn.on_click(lambda: select(start=max(0, sel.start - sel.window)))
next_btn.on_click(lambda: select(start=sel.start + sel.window))
overview.on_event(Tap, lambda e: select(start=int(e.x - sel.window / 2)))
live_btn.on_click(run_live)
live_in.on_change("value", lambda attr, old, new: run_live())


def on_board(attr, old, new):
    if not cur["quiet"] and new:
        r = {k: v[new[0]] for k, v in board_src.data.items()}
        select(layer=int(r["layer"]), stream=str(r["stream"]), unit=int(r["unit"]), feature=str(r["feature"]))


def on_saturation(gate, attr, old, new):
    if not cur["quiet"] and new:
        src = sat_srcs[gate]
        select(layer=int(src.data["layer"][new[0]]), stream=gate, unit=int(src.data["unit"][new[0]]))


board_src.selected.on_change("indices", on_board)
for g, src in sat_srcs.items():
    src.selected.on_change("indices", partial(on_saturation, g))
url_state.js_on_change("text", views.url_writer(url_state))
doc.js_on_event("document_ready", views.url_writer(url_state))

# ---- layout ---------------------------------------------------------------------------------
tabs = Tabs(sizing_mode="stretch_width", tabs=[
    TabPanel(title="cell card", child=row(card, hist)),
    TabPanel(title="leaderboard", child=column(board_note, board)),
    TabPanel(title="gate saturation", child=column(sat_note, row(*sat_figs))),
    TabPanel(title="type your own text", child=column(live_in, row(live_btn, live_note), live_out,
                                                      sizing_mode="stretch_width")),
])
body = column(name="body", children=[row(recording, layer, stream, unit, feature, window),
              row(prev_btn, next_btn, start, column(legend, status)),
              overview, text, trace, tabs], sizing_mode="stretch_width")



def on_tab(attr, old, new):
    if tabs.tabs[new].title.startswith("type") and cur["live"] is None and cur["rec"]:
        run_live()


tabs.on_change("active", on_tab)

# ---- first update ---------------------------------------------------------------------------
url_problems = list(problems)
select()
problems[:0] = url_problems
show_problems()
doc.add_root(column(message, body, url_state, sizing_mode="stretch_width"))
