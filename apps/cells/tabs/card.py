"""The cell card: where the selected cell is highest and lowest, and samples of each
quantile bin, as coloured one-line snippets; beside it the histogram of its values."""
from __future__ import annotations

import numpy as np
from bokeh.layouts import row
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

from probe import contexts, render

from ..selection import Selection
from ..session import Session, View
from ..views import note_html, text_div

TITLE = "cell card"
CONTEXT_WIDTH = 40  # characters either side of a context


def build(session: Session) -> View:
    source = ColumnDataSource(dict(left=[], right=[], count=[]))
    hist = histogram_figure(source)
    card = text_div(name="card")
    shown = None  # the cell on the card

    def update(sel: Selection) -> None:
        nonlocal shown
        if sel.cell == shown:
            return
        counts, edges = contexts.histogram(session.values)
        source.data = dict(left=edges[:-1], right=edges[1:], count=counts)
        card.text = card_html(session.rec.text, sel.stream, session.values, *card_contexts(session))
        shown = sel.cell

    def clear() -> None:
        nonlocal shown
        shown = None
        card.text = ""
        source.data = dict(left=[], right=[], count=[])

    return View(row(card, hist), update, clear)


def card_contexts(session: Session) -> tuple:
    """(top/bottom contexts, quantile samples, note) of the selected cell for its card."""
    values, docs = session.values, session.rec.documents  # [T]
    try:
        top = contexts.top_contexts(values, docs, k=10, width=CONTEXT_WIDTH)
        quantiles = contexts.quantile_samples(values, docs, bins=5, per_bin=2, width=CONTEXT_WIDTH)
    except Exception as e:  # noqa: BLE001 - a failing card is shown on the page, not raised
        return None, None, f"contexts unavailable: {type(e).__name__}: {e}"
    return top, quantiles, ""


def card_html(text: str, stream: str, values: np.ndarray, top, quantiles, note: str = "") -> str:
    """Top and bottom contexts and quantile samples as coloured one-line snippets."""
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


def histogram_figure(source: ColumnDataSource) -> figure:
    p = figure(height=220, width=380, tools="", toolbar_location=None, title="values over the recording")
    p.quad(top="count", bottom=0, left="left", right="right", source=source, fill_color="#92c5de",
           line_color="#4393c3")
    p.y_range.start = 0
    return p
