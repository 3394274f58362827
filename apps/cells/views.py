"""Figures, tables and HTML pieces of the dashboard; main.py wires them together."""
from __future__ import annotations

import html

import numpy as np
from bokeh.models import (BoxAnnotation, ColumnDataSource, CustomJS, DataTable, Div, HoverTool,
                          InlineStyleSheet, LinearAxis, NumberFormatter, Range1d, TableColumn)
from bokeh.palettes import Category10
from bokeh.plotting import figure
from bokeh.transform import factor_cmap

from probe import render
from probe.errors import ProbeError

from .data import CONTEXT_WIDTH

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
"""
MESSAGE_CSS = """
.msg { background: #fff4e5; border: 1px solid #e0a040; color: #5a3a00; padding: 8px 12px;
       font: 14px sans-serif; border-radius: 4px; margin: 2px 0; }
"""
LAYER_COLORS = Category10[10]
LIVE_SAMPLE = '''def greet(name, excited=False):
    """Say hello."""
    message = "hello, " + name  # a comment
    if excited:
        message += "!" * (len(name) % 3 + 1)
    return message
'''


def text_div(**kw) -> Div:
    """A Div for coloured text: maths off (source text has $), our stylesheet inside its shadow root."""
    return Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=TEXT_CSS)], **kw)


def message_div(**kw) -> Div:
    """Problems, one box each (models belong to one document: a new stylesheet per call)."""
    return Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=MESSAGE_CSS)], **kw)


def note_div(**kw) -> Div:
    """A Div for short notes and legends (maths off: document names come from the recording)."""
    return Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=TEXT_CSS)], **kw)


def char_label(ch: str) -> str:
    return {"\n": "↵", "\t": "⇥", " ": "␠"}.get(ch, ch)


def reason(e: BaseException) -> str:
    return str(e) if isinstance(e, ProbeError) else f"{type(e).__name__}: {e}"


def on_next_tick(doc, callback) -> None:
    """Schedule ``callback`` on the document's thread (safe from a worker thread)."""
    try:
        doc.add_next_tick_callback(callback)
    except Exception:  # noqa: BLE001 - the session is gone; nothing to update
        pass


def board_data(best) -> dict:
    best = best.sort_values(["feature", "rank"])
    return {"feature": best["feature"].astype(str).tolist(), "rank": best["rank"].astype(int).tolist(),
            "layer": best["layer"].astype(int).tolist(), "stream": best["stream"].astype(str).tolist(),
            "unit": best["unit"].astype(int).tolist(), "metric": best["metric"].astype(str).tolist(),
            "score": best["score"].astype(float).tolist()}


def saturation_data(sat, gate: str) -> dict:
    g = sat[sat["gate"] == gate]
    return {"left": g["left"].astype(float).tolist(), "right": g["right"].astype(float).tolist(),
            "layer": g["layer"].astype(int).astype(str).tolist(), "unit": g["unit"].astype(int).tolist()}


def saturation_index(source: ColumnDataSource, layer: int, unit: int) -> list[int]:
    d = source.data
    return [j for j, (k, u) in enumerate(zip(d["layer"], d["unit"])) if k == str(layer) and u == unit]


def message_html(problems: list[str]) -> str:
    return "".join(f'<div class="msg">{html.escape(p)}</div>' for p in problems)


def note_html(text: str) -> str:
    return f'<div class="note">{html.escape(text)}</div>'


def overview_figure(source: ColumnDataSource) -> tuple:
    """The whole text as one strip of bins coloured by the cell's mean; a box marks the window."""
    p = figure(height=70, sizing_mode="stretch_width", tools="tap", toolbar_location=None,
               y_range=(0, 1), title="whole recording — tap to jump", name="overview")
    p.rect(x="x", y=0.5, width="width", height=1, fill_color="color", line_color=None, source=source)
    p.yaxis.visible = False
    p.ygrid.visible = False
    p.xgrid.visible = False
    box = BoxAnnotation(left=0, right=0, fill_alpha=0.0, line_color="#111", line_width=2)
    p.add_layout(box)
    return p, box


def trace_figure(source: ColumnDataSource) -> figure:
    """The cell's value over the window, with the selected feature on a second axis."""
    p = figure(height=200, sizing_mode="stretch_width", tools="xpan,xwheel_zoom,reset",
               toolbar_location="right", x_range=Range1d(0, 1), name="trace")
    p.line("position", "value", source=source, color="#2166ac", line_width=1.2, legend_label="cell")
    p.extra_y_ranges = {"feature": Range1d(0, 1)}
    p.add_layout(LinearAxis(y_range_name="feature", axis_label="feature"), "right")
    p.step("position", "feature", source=source, y_range_name="feature", color="#e08214",
           line_width=1, alpha=0.8, mode="center", legend_label="feature")
    p.add_tools(HoverTool(tooltips=[("position", "@position"), ("char", "@char"),
                                    ("value", "@value{0.000}"), ("feature", "@feature")],
                          mode="vline"))
    p.legend.orientation = "horizontal"
    p.add_layout(p.legend[0], "above")
    p.yaxis[0].axis_label = "value"
    return p


def histogram_figure(source: ColumnDataSource) -> figure:
    p = figure(height=220, width=380, tools="", toolbar_location=None, title="values over the recording")
    p.quad(top="count", bottom=0, left="left", right="right", source=source, fill_color="#92c5de",
           line_color="#4393c3")
    p.y_range.start = 0
    return p


def saturation_figure(source: ColumnDataSource, gate: str, layers: list[str]) -> figure:
    """Karpathy et al. fig. 3: fraction of time right- vs left-saturated, one dot per unit."""
    p = figure(width=300, height=300, x_range=(-0.02, 1.02), y_range=(-0.02, 1.02),
               tools="tap,hover,reset", toolbar_location="above", title=f"{gate} gate",
               x_axis_label="left-saturated fraction", y_axis_label="right-saturated fraction",
               tooltips=[("layer", "@layer"), ("unit", "@unit"), ("left", "@left{0.00}"),
                         ("right", "@right{0.00}")], name=f"saturation-{gate}")
    p.scatter("left", "right", source=source, size=7, alpha=0.7, line_color=None,
              color=factor_cmap("layer", LAYER_COLORS, layers), legend_field="layer",
              selection_line_color="#000", nonselection_alpha=0.35)
    p.legend.title = "layer"
    p.legend.location = "top_right"
    return p


def leaderboard(source: ColumnDataSource) -> DataTable:
    fmt = NumberFormatter(format="0.000")
    cols = [TableColumn(field="feature", title="feature", width=130),
            TableColumn(field="rank", title="rank", width=40),
            TableColumn(field="layer", title="layer", width=45),
            TableColumn(field="stream", title="stream", width=50),
            TableColumn(field="unit", title="unit", width=50),
            TableColumn(field="metric", title="metric", width=90),
            TableColumn(field="score", title="score", formatter=fmt, width=70)]
    return DataTable(source=source, columns=cols, height=320, width=560, index_position=None, reorderable=False,
                     name="leaderboard")


def url_writer(holder: Div) -> CustomJS:
    """Put the selection in the address bar (no reload) whenever ``holder.text`` changes."""
    return CustomJS(args=dict(holder=holder), code="""
        const q = holder.text;
        if (q && window.location.search !== "?" + q)
            window.history.replaceState(null, "", window.location.pathname + "?" + q);
    """)


def card_html(rec, stream: str, values: np.ndarray, top, quantiles, note: str = "") -> str:
    """Top and bottom contexts and quantile samples as coloured one-line snippets."""
    text = rec.text
    parts = ['<div class="card">'] + ([note_html(note)] if note else [])

    def rows(df):
        for r in df.itertuples():
            snippet = render.colored_html(text[r.start:r.stop], values[r.start:r.stop], stream,
                                          start=r.start, mark=r.position, newlines="symbol",
                                          titles=False)
            pad = " " * max(0, CONTEXT_WIDTH - (r.position - r.start))  # marked characters line up
            parts.append(f'<div class="row"><span class="val">{r.value:+.3f}</span>'
                         f'<span class="pos">@{r.position}</span><span class="probe-text">{pad}</span>'
                         f'{snippet}</div>')

    if top is not None:
        for kind, label in (("top", "highest"), ("bottom", "lowest")):
            parts.append(f"<h4>{label} values</h4>")
            rows(top[top["kind"] == kind])
    if quantiles is not None:
        for b, grp in quantiles.groupby("bin", sort=True):
            lo, hi = grp["low"].iloc[0], grp["high"].iloc[0]
            parts.append(f"<h4>quantile bin {int(b) + 1}: {lo:+.3f} … {hi:+.3f}</h4>")
            rows(grp)
    parts.append("</div>")
    return "".join(parts)


def status_html(rec, start: int, stop: int) -> str:
    """Where the window is: characters, and the document it starts in."""
    docs = rec.documents
    d = int(rec.document_of([start])[0])
    name = docs["name"].iloc[d] if 0 <= d < len(docs) else "?"
    return (f'<div class="note">{html.escape(rec.path.name)} · characters {start:,}–{stop:,} of '
            f'{len(rec):,} · document {html.escape(str(name))} ({d + 1} of {len(docs)})</div>')
