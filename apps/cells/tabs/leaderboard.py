"""The leaderboard: per feature, the cells that track it best (from the recording's
analysis); a click on a row shows that cell with that feature."""
from __future__ import annotations

from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataTable, NumberFormatter, TableColumn

from ..session import Session, View
from ..views import analysis_note, note_div

TITLE = "leaderboard"
COLUMNS = ("feature", "rank", "layer", "stream", "unit", "metric", "score")
HEIGHT = 640  # pixels: 25 rows, five features' best cells at a time


def build(session: Session) -> View:
    source = ColumnDataSource({k: [] for k in COLUMNS})
    table = leaderboard(source)
    note = note_div()

    def clear() -> None:
        source.data = {k: [] for k in COLUMNS}

    def on_analysis(result) -> None:
        note.text = analysis_note(result, "best cells per feature; click a row to show that cell")
        if isinstance(result, dict):
            source.data = board_data(result["best"])
        else:
            clear()

    def on_row(attr, old, new):
        if new:
            r = {k: v[new[0]] for k, v in source.data.items()}
            session.on_widget(layer=int(r["layer"]), stream=str(r["stream"]), unit=int(r["unit"]),
                              feature=str(r["feature"]))

    source.selected.on_change("indices", on_row)
    return View(column(note, table, sizing_mode="stretch_width"), clear=clear, on_analysis=on_analysis)


def board_data(best) -> dict:
    best = best.sort_values(["feature", "rank"])
    return {"feature": best["feature"].astype(str).tolist(), "rank": best["rank"].astype(int).tolist(),
            "layer": best["layer"].astype(int).tolist(), "stream": best["stream"].astype(str).tolist(),
            "unit": best["unit"].astype(int).tolist(), "metric": best["metric"].astype(str).tolist(),
            "score": best["score"].astype(float).tolist()}


def leaderboard(source: ColumnDataSource) -> DataTable:
    fmt = NumberFormatter(format="0.000")
    cols = [TableColumn(field="feature", title="feature", width=130),
            TableColumn(field="rank", title="rank", width=40),
            TableColumn(field="layer", title="layer", width=45),
            TableColumn(field="stream", title="stream", width=50),
            TableColumn(field="unit", title="unit", width=50),
            TableColumn(field="metric", title="metric", width=90),
            TableColumn(field="score", title="score", formatter=fmt, width=70)]
    return DataTable(source=source, columns=cols, height=HEIGHT, sizing_mode="stretch_width", index_position=None,
                     reorderable=False, name="leaderboard")  # the tab's width; columns in proportion
