"""Gate saturation (Karpathy et al. 2015, fig. 3): for each gate unit, the fraction of
characters it spends left- and right-saturated; a click on a dot shows that unit.

One plot per gate stream of the open recording (LSTM: i f o; GRU: r z; a plain RNN has
none), each made the first time a recording needs it and kept for the session."""
from __future__ import annotations

from functools import partial

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource
from bokeh.palettes import Category10
from bokeh.plotting import figure
from bokeh.transform import factor_cmap

from probe.analysis.detectors import gates

from ..selection import Selection
from ..session import Session, View
from ..views import analysis_note, note_div, note_html

TITLE = "gate saturation"
LAYERS = [str(k) for k in range(10)]      # coloured by layer, up to ten
COLUMNS = ("left", "right", "layer", "unit")


def build(session: Session) -> View:
    sources: dict[str, ColumnDataSource] = {}  # gate -> its dots; made on first use
    figures: dict[str, figure] = {}
    plots = row()                              # the open recording's gates' figures
    note = note_div(name="saturation-note")
    shown: list[str] = []                      # the gates plotted now

    def show_gates() -> None:
        """The open recording's gate streams get a plot each (made the first time)."""
        shown[:] = gates(session.rec.streams) if session.rec is not None else []
        for g in shown:
            if g not in figures:
                sources[g] = ColumnDataSource({k: [] for k in COLUMNS})
                sources[g].selected.on_change("indices", partial(on_dot, g))
                figures[g] = saturation_figure(sources[g], g)
        if [f.name for f in plots.children] != [f"saturation-{g}" for g in shown]:
            plots.children = [figures[g] for g in shown]

    def update(sel: Selection) -> None:
        """Select the dot of the shown cell, in its gate's plot."""
        ready = isinstance(session.analysis, dict)
        with session.quietly():
            for g in shown:
                src = sources[g]
                src.selected.indices = index_of(src, sel.layer, sel.unit) if ready and g == sel.stream else []

    def clear() -> None:
        for src in sources.values():
            src.data = {k: [] for k in COLUMNS}

    def on_analysis(result) -> None:
        show_gates()
        if session.rec is not None and not shown:
            kind = session.rec.model_config.get("cell", "lstm")
            note.text = note_html(f"this model has no gates (a plain {kind.upper()} records only "
                                  f"{' '.join(session.rec.streams)}): nothing saturates in [0, 1]")
        else:
            unit = session.rec.unit_name if session.rec is not None else "character"
            note.text = analysis_note(result, f"fraction of {unit}s each gate unit spends left- (<0.1) or "
                                              "right- (>0.9) saturated; click a dot to show that unit")
        clear()
        if isinstance(result, dict):
            for g in shown:
                sources[g].data = saturation_data(result["saturation"], g)
        update(session.sel)

    def on_dot(gate, attr, old, new):
        if new:
            d = sources[gate].data
            session.on_widget(layer=int(d["layer"][new[0]]), stream=gate, unit=int(d["unit"][new[0]]))

    return View(column(note, plots), update, clear, on_analysis)


def saturation_data(sat, stream: str) -> dict:
    """One gate's rows of the analysis' saturation frame (layer, stream, unit, left, right)."""
    g = sat[sat["stream"] == stream]
    return {"left": g["left"].astype(float).tolist(), "right": g["right"].astype(float).tolist(),
            "layer": g["layer"].astype(int).astype(str).tolist(), "unit": g["unit"].astype(int).tolist()}


def index_of(source: ColumnDataSource, layer: int, unit: int) -> list[int]:
    d = source.data
    return [j for j, (k, u) in enumerate(zip(d["layer"], d["unit"])) if k == str(layer) and u == unit]


def saturation_figure(source: ColumnDataSource, gate: str) -> figure:
    """Fraction of time right- vs left-saturated, one dot per unit, coloured by layer."""
    p = figure(width=300, height=300, x_range=(-0.02, 1.02), y_range=(-0.02, 1.02),
               tools="tap,hover,reset", toolbar_location="above", title=f"{gate} gate",
               x_axis_label="left-saturated fraction", y_axis_label="right-saturated fraction",
               tooltips=[("layer", "@layer"), ("unit", "@unit"), ("left", "@left{0.00}"),
                         ("right", "@right{0.00}")], name=f"saturation-{gate}")
    p.scatter("left", "right", source=source, size=7, alpha=0.7, line_color=None,
              color=factor_cmap("layer", Category10[10], LAYERS), legend_field="layer",
              selection_line_color="#000", nonselection_alpha=0.35)
    p.legend.title = "layer"
    p.legend.location = "top_right"
    return p
