"""Circuit: which upstream cells, at which steps back, drive the selected cell at a position
(``probe.causal.circuit``: gradient × activation, checked by zeroing the strongest nodes
against as many random ones); beside it, what the layer's cells carry for the overlay
feature (``probe.causal.patch``: counterfactual pairs from the recording's text, each cell
patched from the source run into the base run).

Click a character in the text while this tab is open (``views.POINT_JS``), or set a
position and press *draw*: the circuit is drawn as a graph over time, the upstream cells as
rows and their steps back as columns, each edge to the cell as wide as its |weight| and
red (positive) or blue (negative); the check is written beside it. A click on a node opens
that cell (and sets the position to the node's, so *draw* follows it upstream). *Patch*
sweeps the layer's h (or c, for an LSTM's c) over pairs made for the overlay feature.

Both are computed on demand, in the app's worker pool (a newer request supersedes the
older), never on a change of selection: a change of cell drops the circuit (it was the old
cell's); the sweep is kept while its layer, stream and feature stay. Every refusal (no
model for the recording, a derived stream, a position outside the text, a stream the
model's layer has not) is one line in the tab.
"""
from __future__ import annotations

import time

import numpy as np
from bokeh.core.properties import value
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    Div,
    FactorRange,
    FixedTicker,
    HoverTool,
    InlineStyleSheet,
    Range1d,
    Spinner,
    TapTool,
)
from bokeh.plotting import figure

from probe.causal import circuit, patch
from probe.causal import pairs as pairs_mod
from probe.errors import ProbeError
from probe.lm import recurrence
from probe.text import tokens

from ..jobs import Bar, Job, working
from ..selection import Selection
from ..session import Session, View
from ..views import TEXT_CSS, follow_clicks, message_html, note_div, note_html, point_picker, reason

TITLE = "circuit"
TAB, PATCH, MODEL = "circuit", "circuit-patch", "circuit-model"  # the tab's jobs, one of each at a time
BACK = 4000          # characters of the position's document read before it, at most (from a zero state)
STEPS, MAX_STEPS = 20, 60    # steps back looked at
TOP, MAX_TOP = 15, 40        # edges kept, the strongest
PAIRS = 40           # counterfactual pairs patched
PAIR_CHARS = 100_000  # characters of the recording's documents the pairs are made from
RANDOM = 16          # random cells of the layer patched beside, for the baseline
BARS = 12            # cells listed, by |effect|
SEED = 0             # pairs, random cells and random nodes: the same for every session
POSITIVE, NEGATIVE = "#b2182b", "#2166ac"  # the text's palette ends: red +, blue −
CHECK_CSS = TEXT_CSS + """
.check { font: 13px sans-serif; color: #222; background: #f6f6f6; border-left: 3px solid #888;
         padding: 6px 10px; margin: 4px 0; max-width: 520px; }
.check b { font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-weight: 600; }
"""


# ---- checks and computations (no Bokeh) -----------------------------------------------------

def derived_note(rec, layer: int, stream: str) -> str | None:
    """Why a derived stream has no circuit and no patching, or None for a recorded stream."""
    if rec is not None and (int(layer), stream) in rec.derived:
        return (f"{stream} is a derived stream (a read-out of many cells, not a cell of the model): it has no "
                "circuit and nothing to patch; pick a recorded stream of the layer")
    return None


def no_pairs_note(feature: str) -> str | None:
    """Why the overlay feature gets no patching sweep, or None if pairs are made for it."""
    if feature in pairs_mod.FEATURES:
        return None
    return (f"no counterfactual pairs are made for {feature}: patching needs one of "
            f"{', '.join(pairs_mod.FEATURES)} as the feature overlay")


def patched_stream(stream: str) -> str:
    """The state a sweep patches: an LSTM's c for c, else h (a gate's unit acts through h)."""
    return "c" if stream == "c" else "h"


def checked_stream(model, layer: int, stream: str, what: str) -> None:
    """One line if the model's layer has no such stream (a GRU's or RNN's c, say)."""
    stack = recurrence.layers(model)
    if not 0 <= layer < len(stack):
        raise ProbeError(f"the model has no layer {layer} (layers are 0..{len(stack) - 1})")
    kind = stack[layer].cell
    allowed = recurrence.PINNABLE[kind] if what == "patch" else recurrence.STREAMS[kind]
    if stream not in allowed:
        raise ProbeError(f"layer {layer} is a {kind.upper()} layer: it has no {stream} to {what} "
                         f"({' '.join(allowed)})")


def around(rec, at: int) -> tuple[int, int]:
    """(first, document start) of the text read for a circuit at ``at``: its document up to
    it, at most ``BACK`` positions (characters or tokens) back. One line if there is nothing
    upstream of it."""
    if not 0 <= at < len(rec):
        raise ProbeError(f"no {rec.unit_name} {at:,}: positions are 0..{len(rec) - 1:,}")
    d = int(rec.document_of([at])[0])
    docs = rec.documents
    lo = int(docs["start"].iloc[d]) if 0 <= d < len(docs) else 0
    if at <= lo:
        where = f"document {docs['name'].iloc[d]}" if 0 <= d < len(docs) else "the recording"
        raise ProbeError(f"{rec.unit_name} {at:,} is the first of {where}, read from a zero state: nothing upstream "
                         "drives it; pick a later one")
    return max(lo, at - BACK), lo


def trace(model, rec, cell: tuple[int, str, int], at: int, steps: int, top: int) -> dict:
    """``circuit.circuit`` of ``cell`` at recording position ``at``, on the text of ``around``
    (the position in that text is ``at - first``), with the recording's positions added;
    ``text``: the text of each position read, the last ``steps`` and ``at`` (a string of
    characters, or a list of tokens)."""
    first, doc = around(rec, at)
    text = rec.text_of(first, at + 1)
    res = circuit.circuit(model, text, cell, at - first, steps=steps, top=top, seed=SEED)
    return {**res, "position": at, "first": first, "document_start": doc, "unit": rec.unit_name,
            "text": rec.tokens[at - res["steps"]:at + 1]}


def sweep(model, rec, feature: str, layer: int, stream: str, done=None) -> dict:
    """``patch.effects`` of every unit of ``layer``'s ``stream`` on ``PAIRS`` pairs made for
    ``feature`` from the recording's first ``PAIR_CHARS`` characters."""
    made, made_report = pairs_mod.pairs(feature, rec.document_texts(PAIR_CHARS), PAIRS, SEED, tokenizer=tokens.of(model))
    width = recurrence.widths(model)[(layer, stream)]
    res = patch.effects(model, made, layer=layer, stream=stream, random=min(RANDOM, width), seed=SEED, done=done)
    return {**res, "offered": made_report["offered"], "random": min(RANDOM, width)}


# ---- drawing --------------------------------------------------------------------------------

def char_label(ch: str) -> str:
    return {"\n": "↵", "\t": "⇥", " ": "␣"}.get(ch, ch)


def short(label: str, most: int = 6) -> str:
    """A token's label under the graph, one step wide: at most ``most`` characters."""
    return label if len(label) <= most else label[:most - 1] + "…"


def name(layer: int, stream: str, unit: int) -> str:
    return f"{layer}:{stream}:{unit}"


def edge_width(weights) -> np.ndarray:
    """Line widths in pixels, 1.5 to 12, in proportion to |weight| (the largest: 12)."""
    w = np.abs(np.asarray(weights, dtype=float))
    top = float(w.max()) if len(w) else 0.0
    return 1.5 + 10.5 * (w / top if top > 0 else w)


def graph_data(res: dict) -> tuple[dict, dict, dict, list[str]]:
    """(nodes, edges, characters, row names) of a circuit: one row per cell (the target's
    first, then by total |weight|), x = steps back; the target node at 0 on its row."""
    t, at = res["target"], res["position"]
    target = name(t["layer"], t["stream"], t["unit"])
    total: dict[str, float] = {}  # cell: the sum of its edges' |weight|
    for e in res["edges"]:
        cell = name(e["from"]["layer"], e["from"]["stream"], e["from"]["unit"])
        total[cell] = total.get(cell, 0.0) + abs(e["weight"])
    names = [target] + sorted((n for n in total if n != target), key=lambda n: -total[n])
    y = {n: len(names) - 1 - j for j, n in enumerate(names)}  # the target's row on top
    widths = edge_width([e["weight"] for e in res["edges"]])
    top = max((abs(e["weight"]) for e in res["edges"]), default=0.0) or 1.0
    text, steps = res["text"], res["steps"]
    nodes = {k: [] for k in ("x", "y", "cell", "layer", "stream", "unit", "steps_back", "position", "char",
                             "weight", "size", "color")}
    edges = {k: [] for k in ("x0", "y0", "cx", "cy", "x1", "y1", "weight", "width", "color", "cell", "steps_back")}
    yt = y[target]
    for e, w in zip(res["edges"], widths):
        f = e["from"]
        n, back, colour = name(f["layer"], f["stream"], f["unit"]), f["steps_back"], \
            POSITIVE if e["weight"] >= 0 else NEGATIVE
        for key, v in (("x", back), ("y", y[n]), ("cell", n), ("layer", f["layer"]), ("stream", f["stream"]),
                       ("unit", f["unit"]), ("steps_back", back), ("position", at - back),
                       ("char", repr(text[steps - back]) if back <= steps else ""), ("weight", e["weight"]),
                       ("size", 7 + 11 * abs(e["weight"]) / top), ("color", colour)):
            nodes[key].append(v)
        # a curve from the node to the cell, bowed upwards: on the cell's own row, the farther
        # back the higher (so those edges stay apart)
        bend = yt + 0.35 + 1.3 * back / max(1, steps) if y[n] == yt else (y[n] + yt) / 2 + 0.25
        for key, v in (("x0", back), ("y0", y[n]), ("cx", back / 2), ("cy", bend),
                       ("x1", 0), ("y1", yt), ("weight", e["weight"]), ("width", float(w)), ("color", colour),
                       ("cell", n), ("steps_back", back)):
            edges[key].append(v)
    chars = {"x": list(range(steps + 1)), "y": [-1] * (steps + 1),
             "char": [short(char_label(text[steps - s])) for s in range(steps + 1)],
             "position": [at - s for s in range(steps + 1)]}
    return nodes, edges, chars, names


def graph_figure(nodes: ColumnDataSource, edges: ColumnDataSource, chars: ColumnDataSource,
                 target: ColumnDataSource) -> figure:
    """The circuit over time: x steps back (the cell's position at the right), y a row per cell."""
    p = figure(width=760, height=300, x_range=Range1d(STEPS + 0.7, -0.7), y_range=Range1d(-1.6, 1.2),
               tools="tap,reset,save", toolbar_location="above", name="circuit-graph",
               x_axis_label="steps back from the position (the characters read below)",
               title="circuit: gradient × activation into the cell (red +, blue −; width: |weight|)")
    p.quadratic(x0="x0", y0="y0", cx="cx", cy="cy", x1="x1", y1="y1", source=edges, line_width="width",
                line_color="color", line_alpha=0.55)
    dots = p.scatter("x", "y", source=nodes, size="size", fill_color="color", line_color="#222",
                     selection_line_width=3, nonselection_alpha=0.9)
    p.scatter("x", "y", source=target, size=20, fill_color="#ffd92f", line_color="#000", line_width=2)
    p.text("x", "y", text="char", source=chars, text_align="center", text_baseline="middle",
           text_font=value("monospace"), text_font_size="13px", text_color="#333")
    p.select_one(TapTool).renderers = [dots]
    p.add_tools(HoverTool(renderers=[dots], tooltips=[("cell", "@cell"), ("steps back", "@steps_back"),
                                                     ("position", "@position"), ("character", "@char"),
                                                     ("weight", "@weight{+0.0000}")]))
    p.yaxis.ticker = FixedTicker(ticks=[-1])
    p.yaxis.major_label_overrides = {-1: "read"}
    p.xaxis.ticker = FixedTicker(ticks=list(range(STEPS + 1)))
    p.ygrid.grid_line_color = None
    p.xgrid.grid_line_alpha = 0.4
    p.yaxis.major_label_text_font = "monospace"
    return p


def check_html(res: dict) -> str:
    """The check, one line with each number in a span named by its class; then what it means."""
    c, t = res["check"], res["target"]
    cell = name(t["layer"], t["stream"], t["unit"])

    def num(key: str, fmt: str) -> str:
        v = c[key]
        return f'<b class="{key.replace("_", "-")}">{format(v, fmt) if np.isfinite(v) else "—"}</b>'
    line = (f"check: zeroing the top <b class=\"k\">{c['k']}</b> moves {cell} by {num('top_k_effect', '.4g')}; "
            f"{c['k']} random upstream nodes by {num('random_effect', '.4g')} (median of {c['random_sets']} draws): "
            f"ratio {num('ratio', '.1f')}")
    return (f'<div class="check">{line}</div>'
            + note_html(f"The drawn nodes, zeroed together at their positions, against as many random nodes of the "
                        f"{res['nodes']:,} upstream ones within {res['steps']} steps back (each set zeroed the same "
                        "way): a ratio well above 1 says the drawn ones are what drives the cell; near 1, the "
                        "gradient picked nodes that matter no more than any."))


def circuit_note(res: dict, took: float, model_note: str) -> str:
    t, at, first, doc = res["target"], res["position"], res["first"], res["document_start"]
    unit = res.get("unit", "character")
    where = ("from the start of its document" if first == doc else
             f"from {unit} {first:,} ({at - first:,} back, from a zero state: the document starts at {doc:,}, "
             "so values may differ a little from the recording's)")
    return note_html(f"{name(t['layer'], t['stream'], t['unit'])} at {unit} {at:,} ({t['char']!r}): value "
                     f"{t['value']:+.3f}. The {len(res['edges'])} strongest of {res['nodes']:,} upstream nodes over "
                     f"{res['steps']} steps back, by {res['method']}; the text read {where}. "
                     f"Click a node to open that cell. {took:.1f} s. {model_note}".strip())


def bars_data(res: dict, unit: int | None) -> tuple[dict, list[str]]:
    """The ``BARS`` cells of largest |effect|, largest first; ``unit``'s bar outlined."""
    rows = sorted(res["rows"], key=lambda r: -abs(r["effect_bits"]))[:BARS]
    cells = [name(r["layer"], r["stream"], r["unit"]) for r in rows]
    d = {"cell": cells, "layer": [r["layer"] for r in rows], "stream": [r["stream"] for r in rows],
         "unit": [r["unit"] for r in rows], "effect_bits": [r["effect_bits"] for r in rows],
         "random_median": [r["random_median"] for r in rows],
         "low": [-r["random_median"] for r in rows], "ratio": [r["ratio"] for r in rows],
         "iia": [r["iia"] for r in rows],
         "label": [f"random {r['random_median']:.2g}  IIA " + (f"{r['iia']:.2f}" if np.isfinite(r["iia"]) else "—")
                   for r in rows],
         "color": [POSITIVE if r["effect_bits"] >= 0 else NEGATIVE for r in rows],
         "outline": ["#000" if r["unit"] == unit else None for r in rows]}
    return d, cells


def bars_figure(source: ColumnDataSource) -> figure:
    p = figure(width=480, height=120, y_range=FactorRange(), x_range=Range1d(-1, 1), name="circuit-patch",
               tools="tap,reset,save", toolbar_location="above",
               x_axis_label="mean change of log2 p(target), bits",
               title="patching: the cells whose source values move the prediction most")
    p.hbar(y="cell", left="low", right="random_median", height=0.8, source=source, fill_color="#d9d9d9",
           line_color=None)
    bars = p.hbar(y="cell", left=0, right="effect_bits", height=0.5, source=source, fill_color="color",
                  line_color="outline", line_width=2, nonselection_alpha=0.9)
    p.text(x="end", y="cell", text="label", source=source, text_align="right", text_baseline="middle",
           text_font_size="11px", text_color="#333")
    p.select_one(TapTool).renderers = [bars]
    p.add_tools(HoverTool(renderers=[bars], tooltips=[("cell", "@cell"), ("effect", "@effect_bits{+0.0000} bits"),
                                                     ("random median", "@random_median{0.0000}"),
                                                     ("ratio", "@ratio{+0.0}"), ("IIA", "@iia{0.00}")]))
    p.yaxis.major_label_text_font = "monospace"
    p.ygrid.grid_line_color = None
    return p


def sweep_note(res: dict, feature: str, layer: int, stream: str, unit: int, took: float) -> str:
    rows = sorted(res["rows"], key=lambda r: -abs(r["effect_bits"]))
    rank = next((j for j, r in enumerate(rows, 1) if r["unit"] == unit), None)
    mine = rows[rank - 1] if rank else None
    shown = (f" {name(layer, stream, unit)}: {mine['effect_bits']:+.4f} bits, rank {rank} of {len(rows)}"
             f"{' (outlined)' if rank <= BARS else ''}." if mine else "")
    base, source = np.mean(res["base"]), np.mean(res["source"])
    random = float(np.nanmedian([r["random_median"] for r in rows])) if rows else float("nan")
    return note_html(
        f"{res['pairs']} pairs for {feature} (of {res['offered']:,} the recording's first {PAIR_CHARS:,} characters "
        f"offer): every unit of layer {layer}'s {stream} patched from the source run into the base run; mean "
        f"log2 p(target) base {base:+.2f}, source {source:+.2f}. Random: the median |effect| of {res['random']} "
        f"random cells of the layer ({random:.2g} bits; grey: ± it); IIA: the share of pairs whose prediction the patch moves halfway to the "
        f"source's.{shown} Click a bar to open that cell. {took:.1f} s.")


# ---- the tab --------------------------------------------------------------------------------

def build(session: Session) -> View:
    position = Spinner(title="position (or click a character)", low=0, step=1, value=0, width=190,
                       name="circuit-position")
    steps = Spinner(title="steps back", low=1, high=MAX_STEPS, step=1, value=STEPS, width=90, name="circuit-steps")
    top = Spinner(title="edges", low=1, high=MAX_TOP, step=1, value=TOP, width=80, name="circuit-top")
    run = Button(label="draw", button_type="primary", width=90, name="circuit-run", align="end")
    clicked = Div(text="", visible=False, disable_math=True, name="circuit-clicked")  # "POS N", by POINT_JS
    note = note_div(name="circuit-note", sizing_mode="stretch_width")
    check = Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=CHECK_CSS)], name="circuit-check",
                width=500)
    nodes = ColumnDataSource({k: [] for k in ("x", "y", "cell", "layer", "stream", "unit", "steps_back",
                                              "position", "char", "weight", "size", "color")}, name="circuit-nodes")
    edges = ColumnDataSource({k: [] for k in ("x0", "y0", "cx", "cy", "x1", "y1", "weight", "width", "color",
                                              "cell", "steps_back")}, name="circuit-edges")
    chars = ColumnDataSource({"x": [], "y": [], "char": [], "position": []}, name="circuit-chars")
    target = ColumnDataSource({"x": [], "y": []})
    graph = graph_figure(nodes, edges, chars, target)
    graph.visible = False

    patch_run = Button(label="patch", width=90, name="circuit-patch-run")
    patch_note = note_div(name="circuit-patch-note", width=500)
    bars = ColumnDataSource({k: [] for k in ("cell", "layer", "stream", "unit", "effect_bits", "random_median", "low",
                                             "ratio", "iia", "label", "color", "outline", "end")}, name="circuit-patch-bars")
    bar_plot = bars_figure(bars)
    bar_plot.visible = False
    session.doc.js_on_event("document_ready", point_picker(position, clicked))

    result = None    # the last circuit (``trace``), with "cell": (recording, layer, stream, unit)
    swept = None     # the last sweep (``sweep``), with "key": ``sweep_key``
    asked = None     # the cell the queued or running circuit is for
    shown = None     # (recording, start, window) the position's default was set for
    missing = {}     # recording -> why it has no model
    asked_sweep = None  # the sweep (``sweep_key``) queued or running

    def sweep_key(sel: Selection):
        """What a sweep depends on (a derived stream's own name: it has none)."""
        derived = derived_note(session.rec, sel.layer, sel.stream) is not None
        return sel.recording, sel.layer, sel.stream if derived else patched_stream(sel.stream), sel.feature

    def idle_note(sel: Selection) -> str:
        said = derived_note(session.rec, sel.layer, sel.stream)
        if said:
            return note_html(said)
        if sel.recording in missing:
            return message_html([f"no circuit: {missing[sel.recording]}"])
        return note_html(f"Click a {session.rec.unit_name} in the text above, or set a position and press draw: the cells "
                         f"that drive {name(sel.layer, sel.stream, sel.unit)} there, at their steps back, by "
                         "gradient × activation, checked by zeroing them against random upstream cells.")

    def patch_idle(sel: Selection) -> str:
        said = derived_note(session.rec, sel.layer, sel.stream) or no_pairs_note(sel.feature)
        if said:
            return note_html(said)
        if sel.recording in missing:
            return message_html([f"no patching: {missing[sel.recording]}"])
        return note_html(f"Press patch: {PAIRS} counterfactual pairs for {sel.feature} from the recording's text, "
                         f"every unit of layer {sel.layer}'s {patched_stream(sel.stream)} patched from the source "
                         f"run into the base run, beside {RANDOM} random units.")

    def drop() -> None:
        nonlocal result
        result = None
        check.text = ""
        graph.visible = False
        with session.quietly():
            for src in (nodes, edges, chars, target):
                src.selected.indices = []
                src.data = {k: [] for k in src.data}

    def drop_sweep() -> None:
        nonlocal swept
        swept = None
        bar_plot.visible = False
        with session.quietly():
            bars.selected.indices = []
            bars.data = {k: [] for k in bars.data}

    def draw(res: dict) -> None:
        n, e, c, names = graph_data(res)
        with session.quietly():
            for src in (nodes, edges, chars):
                src.selected.indices = []
            nodes.data, edges.data, chars.data = n, e, c
            target.data = {"x": [0], "y": [len(names) - 1]}
        steps_shown = res["steps"]
        graph.x_range.start, graph.x_range.end = steps_shown + 0.7, -0.7
        graph.xaxis[0].axis_label = f"steps back from the position (the {res.get('unit', 'character')}s read below)"
        graph.x_range.reset_start, graph.x_range.reset_end = steps_shown + 0.7, -0.7
        graph.xaxis[0].ticker.ticks = list(range(0, steps_shown + 1, 1 if steps_shown <= 30 else 5))
        graph.y_range.start, graph.y_range.end = -1.6, len(names) - 1 + 1.3
        graph.y_range.reset_start, graph.y_range.reset_end = -1.6, len(names) - 1 + 1.3
        graph.yaxis[0].ticker.ticks = [-1, *range(len(names))]
        graph.yaxis[0].major_label_overrides = {-1: "read", **{len(names) - 1 - j: cell for j, cell in enumerate(names)}}
        graph.height = 150 + 30 * len(names)
        graph.visible = True
        check.text = check_html(res)

    def draw_bars(sel: Selection) -> None:
        d, cells = bars_data(swept, sel.unit if patched_stream(sel.stream) == swept["key"][2] else None)
        lo = min([0.0, *d["effect_bits"], *d["low"]])
        hi = max([0.0, *d["effect_bits"], *d["random_median"]])
        span = (hi - lo) or 1.0
        end = hi + 0.55 * span  # room for the labels on the right
        d["end"] = [end - 0.01 * span] * len(cells)
        with session.quietly():
            bars.selected.indices = []
            bar_plot.y_range.factors = cells[::-1]  # the largest on top
            bars.data = d
        bar_plot.x_range.start, bar_plot.x_range.end = lo - 0.05 * span, end
        bar_plot.height = 90 + 24 * len(cells)
        bar_plot.visible = True

    def update(sel: Selection) -> None:
        nonlocal shown
        cell = (sel.recording, sel.layer, sel.stream, sel.unit)
        if result is not None and result["cell"] != cell:
            drop()
        if asked is not None and asked != cell and session.jobs.busy(TAB):
            session.jobs.cancel(TAB)  # the selection moved on: that circuit is not wanted
            run.disabled = False
        if result is None and not session.jobs.busy(TAB):
            note.text = idle_note(sel)
        key = (sel.recording, sel.start, sel.window)
        position.title = f"position (or click a {session.rec.unit_name})"
        if key != shown and session.rec is not None:
            shown = key
            position.high = len(session.rec) - 1
            position.value = sel.start + max(0, min(sel.window, len(session.rec) - sel.start) - 1) // 2
        if swept is not None and swept["key"] != sweep_key(sel):
            drop_sweep()
        if swept is not None:
            draw_bars(sel)  # the unit outlined may have changed
        elif not session.jobs.busy(PATCH):
            patch_note.text = patch_idle(sel)
        if session.jobs.busy(PATCH) and swept is None and sweep_key(sel) != asked_sweep:
            session.jobs.cancel(PATCH)
            patch_run.disabled = False
            patch_note.text = patch_idle(sel)

    def clear() -> None:
        nonlocal shown
        drop()
        drop_sweep()
        shown = None
        note.text = patch_note.text = ""

    def on_show() -> None:
        """Load the recording's model in a worker, to say at once if it has none."""
        name_ = session.sel.recording
        if session.rec is None or result is not None or session.jobs.busy(TAB) or \
                derived_note(session.rec, session.sel.layer, session.sel.stream):
            return

        def found(_) -> None:
            missing.pop(name_, None)

        def failed(e: BaseException) -> None:  # no model, or a bad checkpoint: said, not raised
            missing[name_] = reason(e)
            if session.sel.recording == name_:
                if result is None and not session.jobs.busy(TAB):
                    note.text = idle_note(session.sel)
                if swept is None and not session.jobs.busy(PATCH):
                    patch_note.text = patch_idle(session.sel)
        session.jobs.submit(MODEL, lambda job: session.store.model(name_), found, failed)

    def on_run() -> None:
        """Draw the circuit of the selected cell at ``position``, in a worker."""
        nonlocal asked
        sel, rec = session.sel, session.rec
        if rec is None or position.value is None:
            return
        said = derived_note(rec, sel.layer, sel.stream)
        if said:
            drop()
            note.text = note_html(said)
            return
        if sel.recording in missing:
            drop()
            note.text = idle_note(sel)
            return
        cell = asked = (sel.recording, sel.layer, sel.stream, sel.unit)
        at, k, n = int(position.value), int(steps.value or STEPS), int(top.value or TOP)
        what = f"tracing {name(sel.layer, sel.stream, sel.unit)} at {rec.unit_name} {at:,}"

        def work(job: Job) -> dict:  # the model's load, one pass with a backward, one checking pass
            model, model_note = session.store.model(cell[0])
            job.check()
            checked_stream(model, cell[1], cell[2], "trace")
            if not 1 <= k <= MAX_STEPS or not 1 <= n <= MAX_TOP:
                raise ProbeError(f"steps back must be 1..{MAX_STEPS} and edges 1..{MAX_TOP}, got {k} and {n}")
            began = time.perf_counter()
            res = trace(model, rec, cell[1:], at, k, n)
            return {**res, "cell": cell, "took": time.perf_counter() - began, "model_note": model_note}

        def done(got: dict) -> None:
            nonlocal result
            s = session.sel
            if (s.recording, s.layer, s.stream, s.unit) != cell:  # the selection moved on meanwhile
                note.text = idle_note(s)
                return
            result = got
            draw(got)
            note.text = circuit_note(got, got["took"], got["model_note"])

        def failed(e: BaseException) -> None:  # a bad position, no model, no such stream: said, not raised
            drop()
            note.text = message_html([f"no circuit: {reason(e)}"])

        drop()
        session.jobs.submit(TAB, work, done, failed, status=working(note, run, what))

    def on_patch() -> None:
        """Sweep the layer's h (or c) over pairs for the overlay feature, in a worker."""
        nonlocal asked_sweep
        sel, rec = session.sel, session.rec
        if rec is None:
            return
        if derived_note(rec, sel.layer, sel.stream) or no_pairs_note(sel.feature) or sel.recording in missing:
            drop_sweep()
            patch_note.text = patch_idle(sel)
            return
        key = asked_sweep = sweep_key(sel)
        layer, stream, feature = sel.layer, patched_stream(sel.stream), sel.feature
        what = f"patching layer {layer}'s {stream} on {PAIRS} pairs for {feature}"

        def work(job: Job) -> dict:
            model, _ = session.store.model(key[0])
            job.check()
            checked_stream(model, layer, stream, "patch")
            began = time.perf_counter()
            res = sweep(model, rec, feature, layer, stream, done=Bar(job, PAIRS, "patching").update)
            return {**res, "key": key, "took": time.perf_counter() - began}

        def done(got: dict) -> None:
            nonlocal swept
            if sweep_key(session.sel) != key:
                patch_note.text = patch_idle(session.sel)
                return
            swept = got
            draw_bars(session.sel)
            patch_note.text = sweep_note(got, feature, layer, stream, session.sel.unit, got["took"])

        def failed(e: BaseException) -> None:
            drop_sweep()
            patch_note.text = message_html([f"no patching: {reason(e)}"])

        drop_sweep()
        session.jobs.submit(PATCH, work, done, failed, status=working(patch_note, patch_run, what))

    def on_node(attr, old, new) -> None:
        """A node was clicked: open its cell, the position set to the node's."""
        if not new or session.quiet:
            return
        d, j = nodes.data, new[0]
        position.value = int(d["position"][j])
        session.on_widget(layer=int(d["layer"][j]), stream=str(d["stream"][j]), unit=int(d["unit"][j]))

    def on_bar(attr, old, new) -> None:
        if not new or session.quiet:
            return
        d, j = bars.data, new[0]
        session.on_widget(layer=int(d["layer"][j]), stream=str(d["stream"][j]), unit=int(d["unit"][j]))

    run.on_click(on_run)
    patch_run.on_click(on_patch)
    follow_clicks(clicked, position, on_run)
    nodes.selected.on_change("indices", on_node)
    bars.selected.on_change("indices", on_bar)
    side = column(check, row(patch_run, patch_note), bar_plot, width=520)
    layout = column(row(position, steps, top, run), clicked, note, row(graph, side), sizing_mode="stretch_width")
    return View(layout, update, clear, on_show=on_show)
