"""The cell card: where the selected cell is highest and lowest, and samples of each
quantile bin, as coloured one-line snippets; beside it the histogram of its values.

All from the cell's summaries (``probe.analysis.summaries``: histogram, top/bottom 128, the strip's
samples), so a cell switch reads no whole unit: only each snippet's few positions (characters,
or tokens drawn as spans of their text)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.layouts import row
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

from probe.analysis import contexts
from probe.analysis import summaries as summaries_mod
from ..selection import Selection
from ..session import Session, View
from ..views import coloured, note_html, text_div, units

TITLE = "cell card"
CONTEXT_WIDTH = 40  # characters either side of a context
TOKEN_CONTEXT = 8   # tokens either side of a context (a word-level recording)
TOP_ROWS = 10       # highest and lowest contexts shown, each


TAB = "card"  # its job: the snippets of the cell shown; a newer cell supersedes


def reader(session: Session):
    """``session.read`` for the cell selected now, usable from a worker after it changes."""
    name, layer, stream, unit = session.sel.recording, session.sel.layer, session.sel.stream, session.sel.unit
    return lambda start, stop: session.store.values(name, layer, stream, unit, start, stop)


def build(session: Session) -> View:
    source = ColumnDataSource(dict(left=[], right=[], count=[]))
    hist = histogram_figure(source)
    card = text_div(name="card")
    shown = None  # the cell on the card

    def update(sel: Selection) -> None:
        nonlocal shown
        if sel.cell == shown:
            return
        counts, edges = histogram(session.summary)
        source.data = dict(left=edges[:-1], right=edges[1:], count=counts)
        shown = sel.cell
        # the snippets read a few characters each from all over the recording: in a worker, so
        # the cell switch is answered without waiting for them
        rec, stream, scale, read = session.rec, sel.stream, session.scale, reader(session)
        contexts = card_contexts(session)
        session.jobs.submit(TAB, lambda job: card_html(rec, stream, read, *contexts, scale=scale),
                            done=lambda html: setattr(card, "text", html))

    def clear() -> None:
        nonlocal shown
        shown = None
        card.text = ""
        source.data = dict(left=[], right=[], count=[])

    return View(row(card, hist), update, clear)


def histogram(summary: dict) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of a cell's summary histogram (``summaries.HIST_BINS`` fixed bins)
    cropped to its occupied bins; infinite end edges (c) clipped to the cell's least and
    greatest value (from the overview strip). No values: zero counts
    on [0, 1]."""
    counts, edges = np.asarray(summary["hist"]), np.asarray(summary["edges"], dtype=np.float64)
    occupied = np.flatnonzero(counts)
    if not len(occupied):
        return np.zeros(1, dtype=np.int64), np.array([0.0, 1.0])
    i, j = occupied[0], occupied[-1] + 1
    counts, edges = counts[i:j], edges[i:j + 1].copy()
    vmin, vmax = value_range(summary)
    if not np.isfinite(edges[0]) and vmin < edges[1]:
        edges[0] = vmin
    if not np.isfinite(edges[-1]) and vmax > edges[-2]:
        edges[-1] = vmax
    if not np.isfinite(edges[0]):  # no finite values at all (only NaN in bin 0)
        edges[0] = edges[1] - 1.0 if np.isfinite(edges[1]) else 0.0
    if not np.isfinite(edges[-1]):
        edges[-1] = edges[-2] + 1.0 if np.isfinite(edges[-2]) else edges[0] + 1.0
    if edges[-1] <= edges[0]:  # a single value: a bin of width 0 would not show
        edges[-1] = edges[0] + 1e-3
    return counts, edges


def value_range(summary: dict) -> tuple[float, float]:
    """The cell's least and greatest finite value (from the overview strip; NaN bins are
    skipped), or (-inf, inf)."""
    lo, hi = np.asarray(summary["strip_min"]), np.asarray(summary["strip_max"])
    lo, hi = lo[np.isfinite(lo)], hi[np.isfinite(hi)]
    return (float(lo.min()) if len(lo) else -np.inf), (float(hi.max()) if len(hi) else np.inf)


def context_width(rec) -> int:
    """Positions either side of a context: ``CONTEXT_WIDTH`` characters or ``TOKEN_CONTEXT`` tokens."""
    return CONTEXT_WIDTH if rec.char_level else TOKEN_CONTEXT


def spaced(positions: np.ndarray, k: int, width: int) -> np.ndarray:
    """Indices of the first ``k`` of ``positions`` (ignoring -1), skipping any within
    ``width`` of one taken: ``contexts.top_contexts``' rule, on the summaries' top 128."""
    taken: list[int] = []
    for i, p in enumerate(positions):
        if len(taken) == k:
            break
        if p >= 0 and all(abs(int(p) - int(positions[t])) > width for t in taken):
            taken.append(i)
    return np.array(taken, dtype=np.int64)


def card_contexts(session: Session) -> tuple:
    """(top/bottom contexts, quantile samples, note) of the selected cell for its card, from
    its summaries: the top/bottom ``TOP_ROWS`` at least ``CONTEXT_WIDTH`` apart among the
    summaries' top 128 (fewer when those crowd together: the note says so)."""
    u, docs = session.summary, session.rec.documents
    width = context_width(session.rec)
    notes = []
    try:
        rows = []
        for kind in ("top", "bottom"):
            pos, val = np.asarray(u[f"{kind}_p"], dtype=np.int64), np.asarray(u[f"{kind}_v"], dtype=np.float64)
            pick = spaced(pos, TOP_ROWS, width)
            rows.append(pd.DataFrame({"kind": kind, "position": pos[pick], "value": val[pick]}))
            if 0 < len(pick) < TOP_ROWS:
                label = "highest" if kind == "top" else "lowest"
                notes.append(f"{len(pick)} {label} contexts: the {summaries_mod.K} {label} values "
                             f"lie within fewer {width}-{units(session.rec, 1)} spans")
        top = pd.concat(rows, ignore_index=True)
        top["start"], top["stop"] = contexts.context_bounds(docs, top["position"].to_numpy(), width)
        quantiles = pd.DataFrame(summaries_mod.quantile_samples(u, bins=5, per_bin=2),
                                 columns=["bin", "low", "high", "position", "value"])
        quantiles[["low", "high"]] = quantiles[["low", "high"]].clip(*value_range(u))  # c: no ±inf
        quantiles["start"], quantiles["stop"] = contexts.context_bounds(
            docs, quantiles["position"].to_numpy(dtype=np.int64), width)
    except Exception as e:  # noqa: BLE001 - a failing card is shown on the page, not raised
        return None, None, f"contexts unavailable: {type(e).__name__}: {e}"
    return top, quantiles, "; ".join(notes)


def card_html(rec, stream: str, read, top, quantiles, note: str = "",
              scale: tuple[float, float] | None = None) -> str:
    """Top and bottom contexts and quantile samples of the recording ``rec`` as coloured
    one-line snippets; each snippet coloured from ``read(start, stop)``, the cell's values
    over its few positions. The marked positions line up: each row is padded to the most
    characters any row has before its mark (``CONTEXT_WIDTH`` at least)."""
    parts = ['<div class="card">'] + ([note_html(note)] if note else [])
    spans = rec.spans
    frames = [df for df in (top, quantiles) if df is not None]
    before = [int(spans[p, 0] - spans[a, 0]) for df in frames for p, a in zip(df["position"], df["start"])]
    reach = max([CONTEXT_WIDTH, *before])

    def rows(df):
        for r in df.itertuples():
            snippet = coloured(rec, int(r.start), int(r.stop), read(int(r.start), int(r.stop)), stream,
                               mark=r.position, newlines="symbol", titles=False, scale=scale)
            pad = " " * max(0, reach - int(spans[r.position, 0] - spans[r.start, 0]))  # marks line up
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
