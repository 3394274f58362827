"""Derived features: the units of the recording's derived streams (``probe encode``: a sparse
dictionary's features, probe directions), each with its highest context and the built-in
feature it matches best, so a user can browse what nobody labelled; a click on a row shows
that unit. From the analysis (scores) and the per-unit summaries: no read of the recording
but each row's few characters."""
from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.layouts import column
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    NumberFormatter,
    Select,
    TableColumn,
)

from probe.analysis import detectors

from ..session import Session, View
from ..views import analysis_note, note_div, note_html

TITLE = "derived features"
COLUMNS = ("unit", "name", "match", "metric", "score", "top", "context")
CONTEXT = 30  # characters either side of a unit's highest value
ROWS_SHOWN = 2000  # a dictionary of more units lists its first ROWS_SHOWN by match strength


def build(session: Session) -> View:
    source = ColumnDataSource({k: [] for k in COLUMNS})
    table = features_table(source)
    which = Select(title="derived stream", options=[], value="", width=200, name="features-stream")
    note = note_div(name="features-note")
    state = {"key": None}  # (recording, layer, stream) listed

    def streams() -> list[str]:
        rec = session.rec
        return [f"{k}/{s}" for k, s in rec.derived] if rec is not None else []

    def fill() -> None:
        rec, result = session.rec, session.analysis
        options = streams()
        which.options = options
        if not options:
            source.data = {k: [] for k in COLUMNS}
            note.text = note_html("no derived streams in this recording: fit probe directions (probe "
                                  "directions REC --out D.pt) or a dictionary (probe dictionary REC --layer 1 "
                                  "--stream c --out X.pt), then add it with probe encode REC --directions D.pt")
            return
        shown = f"{session.sel.layer}/{session.sel.stream}"
        if which.value not in options:
            which.value = shown if shown in options else options[0]  # the derived stream on view, else the first
            return  # the change calls fill again
        layer, stream = which.value.split("/")
        if not isinstance(result, dict):
            note.text = analysis_note(result, "")
            return
        key = (session.sel.recording, int(layer), stream)
        if key == state["key"]:
            return
        try:
            summ = session.store.summaries(session.sel.recording).result(timeout=0)
        except Exception:  # noqa: BLE001 - not loaded yet, or failed: the notice / analysis says
            return
        source.data = rows(rec, result["scores"], summ, int(layer), stream)
        state["key"] = key
        kind = rec.derived[(int(layer), stream)]["kind"]
        note.text = note_html(f"{len(source.data['unit']):,} units of {which.value} ({kind}); match: the "
                              "built-in feature each tracks best; click a row to show that unit")

    def on_row(attr, old, new):
        if new and which.value:
            layer, stream = which.value.split("/")
            session.on_widget(layer=int(layer), stream=stream, unit=int(source.data["unit"][new[0]]))

    def clear() -> None:
        state["key"] = None
        source.data = {k: [] for k in COLUMNS}

    def on_analysis(result) -> None:
        state["key"] = None
        fill()

    which.on_change("value", lambda attr, old, new: fill())
    source.selected.on_change("indices", on_row)
    return View(column(note, which, table, sizing_mode="stretch_width"), clear=clear, on_analysis=on_analysis,
                on_show=fill)


def rows(rec, scores: pd.DataFrame, summ: dict, layer: int, stream: str) -> dict:
    """The table: per unit of (layer, stream) its name, best-matching feature (strength as
    ``detectors.best`` ranks: max(AUC, 1 − AUC) or |r|), top value and its context."""
    names = rec.unit_names(layer, stream) or []
    U = rec.width(layer, stream)
    mine = scores[(scores["layer"] == layer) & (scores["stream"] == stream)]
    best = {}
    if not mine.empty:
        w = detectors.wide_table(mine)
        binary = w.groupby("feature")["auc"].transform(lambda a: a.notna().any()).to_numpy(dtype=bool)
        auc, r = w["auc"].to_numpy(dtype=float), w["r"].to_numpy(dtype=float)
        w = w.assign(strength=np.nan_to_num(np.where(binary, np.maximum(auc, 1 - auc), np.abs(r)), nan=-1.0),
                     metric=np.where(binary, "auc", "r"), value=np.where(binary, auc, r))
        top = w.loc[w.groupby("unit")["strength"].idxmax()]
        best = {int(t.unit): (float(t.strength), str(t.feature), str(t.metric), float(t.value))
                for t in top.itertuples()}
    sm = summ.get((layer, stream))
    text, spans = rec.text, rec.spans  # a position's characters: [start, stop) in text
    out = {k: [] for k in COLUMNS}
    order = sorted(range(U), key=lambda u: -best.get(u, (-1,))[0])[:ROWS_SHOWN]
    for u in order:
        strength, feature, metric, score = best.get(u, (np.nan, "", "", np.nan))
        top_v = float(sm["top_v"][u, 0]) if sm is not None else np.nan
        top_p = int(sm["top_p"][u, 0]) if sm is not None else -1
        context = ""
        if top_p >= 0:
            s, e = (int(x) for x in spans[top_p])  # the character, or the token, bracketed
            context = (text[max(0, s - CONTEXT):s] + "⟦" + text[s:e] + "⟧" + text[e:e + CONTEXT]).replace("\n", "↵")
        out["unit"].append(u)
        out["name"].append(names[u] if u < len(names) else str(u))
        out["match"].append(feature)
        out["metric"].append(metric)
        out["score"].append(score)
        out["top"].append(top_v)
        out["context"].append(context)
    return out


def features_table(source: ColumnDataSource) -> DataTable:
    fmt = NumberFormatter(format="0.000")
    cols = [TableColumn(field="unit", title="unit", width=45),
            TableColumn(field="name", title="name", width=110),
            TableColumn(field="match", title="best match", width=120),
            TableColumn(field="metric", title="metric", width=50),
            TableColumn(field="score", title="score", formatter=fmt, width=60),
            TableColumn(field="top", title="top value", formatter=fmt, width=70),
            TableColumn(field="context", title="its highest context (⟦character or token⟧)", width=520)]
    return DataTable(source=source, columns=cols, height=360, sizing_mode="stretch_width", index_position=None,
                     reorderable=False, name="features-table")  # the tab's width
