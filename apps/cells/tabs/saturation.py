"""Gate saturation (Karpathy et al. 2015, fig. 3): for each gate unit, the fraction of
characters it spends left- and right-saturated; a click on a dot shows that unit."""
from __future__ import annotations

from functools import partial

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource
from bokeh.palettes import Category10
from bokeh.plotting import figure
from bokeh.transform import factor_cmap

from probe.detectors import gates
from probe.h5format import STREAMS

from ..selection import Selection
from ..session import Session, View
from ..views import analysis_note, note_div

TITLE = "gate saturation"
GATES = gates(STREAMS["lstm"])            # i f o: the streams in [0, 1]
LAYERS = [str(k) for k in range(10)]      # coloured by layer, up to ten
COLUMNS = ("left", "right", "layer", "unit")


def build(session: Session) -> View:
    sources = {g: ColumnDataSource({k: [] for k in COLUMNS}) for g in GATES}
    figures = [saturation_figure(sources[g], g) for g in GATES]
    note = note_div()

    def update(sel: Selection) -> None:
        """Select the dot of the shown cell, in its gate's plot."""
        ready = isinstance(session.analysis, dict)
        with session.quietly():
            for g, src in sources.items():
                src.selected.indices = index_of(src, sel.layer, sel.unit) if ready and g == sel.stream else []

    def clear() -> None:
        for src in sources.values():
            src.data = {k: [] for k in COLUMNS}

    def on_analysis(result) -> None:
        note.text = analysis_note(result, "fraction of characters each gate unit spends left- (<0.1) or "
                                          "right- (>0.9) saturated; click a dot to show that unit")
        if isinstance(result, dict):
            for g, src in sources.items():
                src.data = saturation_data(result["saturation"], g)
        else:
            clear()
        update(session.sel)

    def on_dot(gate, attr, old, new):
        if new:
            d = sources[gate].data
            session.on_widget(layer=int(d["layer"][new[0]]), stream=gate, unit=int(d["unit"][new[0]]))

    for g, src in sources.items():
        src.selected.on_change("indices", partial(on_dot, g))
    return View(column(note, row(*figures)), update, clear, on_analysis)


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
