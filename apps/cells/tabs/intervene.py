"""Intervene: zero the selected unit while the recording's model reads the visible window,
and colour each character by what that costs; then steer the model by clamping the unit.

Computed on demand, when a button is pressed, never on a change of selection: a change of
cell or window only drops the old result (a change of overlay feature recomputes the
summary from the kept losses), so switching cells costs what it did without this tab.

Ablation and clamping (``probe.causal.intervene``) are written for LSTM models: on a recording of
another kind the tab says so and its buttons do nothing.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import Button, Div, InlineStyleSheet, Spinner, TextInput

from probe.causal import intervene
from probe.causal.intervene import Edit
from probe.errors import ProbeError
from probe.lm.sample import sample
from probe.output import render

from ..selection import Selection
from ..session import Session, View
from ..views import TEXT_CSS, message_html, note_div, note_html, reason, text_div

TITLE = "intervene"
RANDOM_UNITS = 8       # units of the same layer zeroed beside the selected one, for scale
SEED = 0               # which random units: the same for every session
TITLE_FMT = "{position}  {char}  Δ {value:+.3f} bits"
MAX_LENGTH = 2000      # characters a steering sample may ask for
STEER_CSS = TEXT_CSS + """
.steer-head { font: 600 13px sans-serif; color: #333; margin: 4px 0; }
.probe-text .prime { color: #888; }
.probe-text { white-space: pre-wrap; max-height: 360px; }
"""
SUMMARY_CSS = TEXT_CSS + """
table.effect { border-collapse: collapse; font: 13px sans-serif; margin: 4px 0; }
table.effect th, table.effect td { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; }
table.effect th:first-child, table.effect td:first-child { text-align: left; font-family: sans-serif; }
table.effect td { font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; }
"""


@dataclass(frozen=True)
class Window:
    """What is zeroed where: the visible window clipped to the document it starts in."""

    recording: str
    layer: int
    unit: int
    on: str        # "c" for the c stream, else "h" (h and the gates: the unit's hidden output)
    start: int
    stop: int


def window_of(session: Session, sel: Selection) -> Window:
    """The visible window ``sel.start .. sel.start + sel.window``, clipped to its document."""
    rec = session.rec
    a = sel.start
    b = min(len(rec), a + sel.window)
    d = int(rec.document_of([a])[0])
    if 0 <= d < len(rec.documents):
        b = min(b, int(rec.documents["stop"].iloc[d]))
    return Window(sel.recording, sel.layer, sel.unit, pinned_stream(sel.stream), a, max(a, b))


def pinned_stream(stream: str) -> str:
    return "c" if stream == "c" else "h"


def not_lstm(rec, stream: str | None = None) -> str | None:
    """Why this cell cannot be edited here (not an LSTM's, or a derived stream's), or None."""
    if rec is not None and stream is not None and (rec.layer_ids and any(s == stream for _, s in rec.derived)):
        return (f"{stream} is a derived stream (a read-out of many cells), not a cell the model has: "
                "pick a recorded stream to ablate or steer a unit")
    kind = rec.model_config.get("cell", "lstm") if rec is not None else "lstm"
    if kind == "lstm":
        return None
    return (f"ablation and steering are written for LSTM models; this one is a {kind}, so there is "
            "nothing to zero or clamp here")


def random_units(units: int, unit: int, k: int = RANDOM_UNITS, seed: int = SEED) -> list[int]:
    """``k`` other units of the layer (fewer if it has fewer), the same for every session."""
    others = [u for u in range(units) if u != unit]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(others, min(k, len(others)), replace=False).tolist())


def zeroed(model, text: str, layer: int, unit: int, on: str, controls: list[int]) -> np.ndarray:
    """Δbits [1 + len(controls), n]: row 0 the unit, then each control unit, all zeroed in one
    batched pass. Column t is the change in the cost of character t + 1 (predicted from the
    state after reading t); the last column is NaN (no next character)."""
    edits = [Edit(layer, on, u, "zero") for u in [unit, *controls]]
    bits = intervene.losses(model, text, edits)  # [1 + E, n]: row 0 unedited
    delta = np.full((len(edits), len(text)), np.nan, dtype=np.float32)
    delta[:, :-1] = bits[1:, 1:] - bits[0, 1:]
    return delta


def summary(delta: np.ndarray, mask: np.ndarray) -> dict:
    """Mean Δbits of the unit (row 0) where the feature holds and elsewhere; the median
    |mean Δbits| of the control units (rows 1…) at the same positions; the ratio."""
    def means(where: np.ndarray) -> np.ndarray:  # [rows]
        cols = delta[:, where]
        if not np.isfinite(cols).any():
            return np.full(len(delta), np.nan)
        return np.nanmean(cols, axis=1)

    out = {}
    for key, where in (("inside", mask), ("outside", ~mask)):
        m = means(where)
        out[key] = float(m[0])
        out[f"random_{key}"] = float(np.median(np.abs(m[1:]))) if len(m) > 1 else np.nan
        out[f"positions_{key}"] = int(np.isfinite(delta[0, where]).sum())
    r = out["random_inside"]
    out["ratio"] = out["inside"] / r if np.isfinite(r) and r > 0 else np.nan
    return out


def _num(x: float, fmt: str = "+.4f") -> str:
    return format(x, fmt) if np.isfinite(x) else "—"


def summary_html(s: dict, feature: str, w: Window, controls: list[int]) -> str:
    """The summary as a small table; each number's cell has a class naming it."""
    def cells(*pairs) -> str:  # (class, text) per cell
        return "".join(f'<td class="{k}">{v}</td>' if k else f"<td>{v}</td>" for k, v in pairs)

    cell = f"{w.layer}:{w.on}:{w.unit}"  # the cell edited, L:S:U
    rows = [f"<tr><th></th><th>zeroing {cell}</th><th>{len(controls)} random units<br>(median |mean|)</th>"
            "<th>positions</th></tr>"]
    for key, label in (("inside", f"where {html.escape(feature)} holds"), ("outside", "elsewhere")):
        rows.append("<tr>" + cells(("", label), (key, _num(s[key])),
                                   (f"random-{key}", _num(s[f"random_{key}"], ".4f")),
                                   (f"positions-{key}", f"{s[f'positions_{key}']:,}")) + "</tr>")
    rows.append("<tr>" + cells(("", "ratio (where it holds, to random)"), ("ratio", _num(s["ratio"], "+.1f")),
                               ("", ""), ("", "")) + "</tr>")
    notes = ["Mean change in bits per next character (positive: the model needs the unit). Random "
             f"units of layer {w.layer}: {', '.join(str(u) for u in controls)}."]
    if not s["positions_inside"]:
        notes.append(f"{feature} does not hold in this window: move the window or pick another overlay feature.")
    return f'<table class="effect">{"".join(rows)}</table>' + "".join(note_html(n) for n in notes)


def legend_html(w: Window, stream: str) -> str:
    what = {"c": "cell state c"}.get(w.on, "hidden output h")
    gate = (f" (the {stream} stream itself is not pinned: zeroing pins the unit's hidden output)"
            if stream not in ("c", "h") else "")
    return (render.legend_html("h", label="Δ bits") + note_html(
        f"Each character is coloured by how much zeroing layer {w.layer} unit {w.unit}'s {what}{gate} "
        f"changes the cost of the character after it (red: harder to predict, blue: easier; colours "
        f"saturate at ±1 bit; hover for the bits). Characters {w.start:,}–{w.stop:,}, read from "
        f"a zero state at the first, with and without the edit; the last has no next character."))


def build(session: Session) -> View:
    run = Button(label="zero this unit on the visible window", button_type="primary", width=290,
                 name="intervene-run")
    note = note_div(name="intervene-note")
    legend = note_div(name="intervene-legend", sizing_mode="stretch_width")
    out = text_div(name="intervene-text", sizing_mode="stretch_width")
    table = Div(text="", disable_math=True, stylesheets=[InlineStyleSheet(css=SUMMARY_CSS)],
                name="intervene-summary")

    prime = TextInput(title="prime", value="x = ", width=260, max_length=500, name="steer-prime")
    value = Spinner(title="clamp value", value=0, step=0.1, width=110, name="steer-value")
    length = Spinner(title="length", value=200, low=1, high=MAX_LENGTH, step=50, width=90,
                     name="steer-length")
    temperature = Spinner(title="temperature", value=0.7, low=0, high=5, step=0.1, width=100,
                          name="steer-temperature")
    seed = Spinner(title="seed", value=0, low=0, step=1, width=80, name="steer-seed")
    steer = Button(label="sample", width=100, name="steer-run", align="end")
    steer_note = note_div(name="steer-note")
    steer_css = InlineStyleSheet(css=STEER_CSS)
    free = Div(text="", disable_math=True, stylesheets=[steer_css], name="steer-free",
               sizing_mode="stretch_width")
    clamped = Div(text="", disable_math=True, stylesheets=[steer_css], name="steer-clamped",
                  sizing_mode="stretch_width")

    result = None    # {"window", "delta" [1 + k, n], "controls", "feature"} of the last run
    steered = None   # the cell (recording, layer, unit, on) the samples were clamped on
    missing = {}     # recording -> why it has no model (said instead of the idle note)
    busy = sampling = False  # a run or a sample is scheduled: further clicks are ignored

    def idle_note(sel: Selection) -> str:
        if not_lstm(session.rec, session.sel.stream):
            return note_html(not_lstm(session.rec, session.sel.stream))
        if sel.recording in missing:
            return message_html([missing[sel.recording]])
        w = window_of(session, sel)
        return note_html(f"Press the button to zero layer {w.layer} unit {w.unit} (and "
                         f"{RANDOM_UNITS} random units of the layer, for scale) on characters "
                         f"{w.start:,}–{w.stop:,}; computed for this window only.")

    def draw(sel: Selection) -> None:
        """Colour the text and fill the summary from ``result`` (the feature may have changed)."""
        w, delta = result["window"], result["delta"]
        rec = session.rec
        mask = session.store.feature(w.recording, sel.feature)[w.start:w.stop] != 0  # [n]
        table.text = summary_html(summary(delta, mask), sel.feature, w, result["controls"])
        if result["feature"] is None:  # the text does not depend on the feature
            # Δbits as they are: the diverging palette's ±1 is ±1 bit, and the titles show the bits
            out.text = render.colored_html(rec.text[w.start:w.stop], delta[0], "h",
                                           start=w.start, title_fmt=TITLE_FMT)
        result["feature"] = sel.feature
        legend.text = legend_html(w, sel.stream)  # the stream named may change (h ↔ a gate: same edit)

    def drop() -> None:
        nonlocal result
        result = None
        out.text = table.text = legend.text = ""

    def update(sel: Selection) -> None:
        nonlocal steered
        w = window_of(session, sel)
        if result is not None and result["window"] != w:
            drop()
        if result is None:
            if not busy:
                note.text = idle_note(sel)
        elif result["feature"] != sel.feature:
            draw(sel)
        else:
            legend.text = legend_html(result["window"], sel.stream)
        if steered is not None and steered != (w.recording, w.layer, w.unit, w.on):
            steered = None
            free.text = clamped.text = steer_note.text = ""

    def clear() -> None:
        nonlocal steered
        drop()
        steered = None
        note.text = free.text = clamped.text = steer_note.text = ""

    def model_or_say(where: Div):
        """The recording's model, or None after saying on the page why there is none."""
        name = session.sel.recording
        try:
            found = session.store.model(name)
        except Exception as e:  # noqa: BLE001 - no model, or a bad checkpoint: said, not raised
            missing[name] = f"cannot intervene: {reason(e)}"
            where.text = message_html([missing[name]])
            return None
        missing.pop(name, None)
        return found

    def on_show() -> None:
        if session.rec is not None and result is None and not busy:
            if not_lstm(session.rec, session.sel.stream) or model_or_say(note) is not None:
                note.text = idle_note(session.sel)

    def on_run() -> None:
        nonlocal busy
        if busy or session.rec is None:
            return
        if not_lstm(session.rec, session.sel.stream):
            drop()
            note.text = idle_note(session.sel)
            return
        found = model_or_say(note)
        if found is None:
            drop()
            return
        drop()
        w = window_of(session, session.sel)
        busy, run.disabled = True, True
        note.text = note_html(f"computing: zeroing layer {w.layer} unit {w.unit} and {RANDOM_UNITS} "
                              f"random units on {w.stop - w.start:,} characters…")
        session.doc.add_next_tick_callback(partial(compute, found, w))

    def compute(found, w: Window) -> None:
        """The batched pass, on the next tick so the browser has seen the notice."""
        nonlocal busy, result
        model, model_note = found
        try:
            if window_of(session, session.sel) != w:  # the selection moved on meanwhile
                note.text = idle_note(session.sel)
                return
            controls = random_units(model.units, w.unit)
            text = session.rec.text[w.start:w.stop]
            began = time.perf_counter()
            delta = zeroed(model, text, w.layer, w.unit, w.on, controls)
            took = time.perf_counter() - began
            result = {"window": w, "delta": delta, "controls": controls, "feature": None}
            draw(session.sel)
            note.text = note_html(f"{1 + len(controls)} units zeroed on {len(text):,} characters in "
                                  f"{took:.1f} s. {model_note}".strip())
        except Exception as e:  # noqa: BLE001 - shown on the page; the server keeps serving
            drop()
            note.text = message_html([f"cannot intervene: {reason(e)}"])
        finally:
            busy, run.disabled = False, False

    def on_sample() -> None:
        nonlocal sampling
        if sampling or session.rec is None:
            return
        if not_lstm(session.rec, session.sel.stream):
            free.text = clamped.text = ""
            steer_note.text = note_html(not_lstm(session.rec, session.sel.stream))
            return
        found = model_or_say(steer_note)
        if found is None:
            free.text = clamped.text = ""
            return
        w = window_of(session, session.sel)
        sampling, steer.disabled = True, True
        steer_note.text = note_html("sampling…")
        session.doc.add_next_tick_callback(partial(steer_now, found, w))

    def steer_now(found, w: Window) -> None:
        nonlocal sampling, steered
        model, model_note = found
        try:
            if not prime.value:
                raise ProbeError("type a prime to start from")
            edit = Edit(w.layer, w.on, w.unit, float(value.value or 0))
            kw = dict(prime=prime.value, length=int(length.value or 0), seed=int(seed.value or 0),
                      temperature=float(0.7 if temperature.value is None else temperature.value))
            plain = sample(model, **kw)
            pinned = sample(model, **kw, clamp=[edit])
            free.text = steer_html("without clamp", kw["prime"], plain)
            clamped.text = steer_html(f"with {edit}", kw["prime"], pinned)
            steered = (w.recording, w.layer, w.unit, w.on)
            steer_note.text = note_html(model_note)
        except Exception as e:  # noqa: BLE001 - a bad prime or value is said, not raised
            free.text = clamped.text = ""
            steer_note.text = message_html([f"cannot sample: {reason(e)}"])
        finally:
            sampling, steer.disabled = False, False

    run.on_click(on_run)
    steer.on_click(on_sample)
    layout = column(
        row(run, note), legend, out, table,
        Div(text="<b>steer</b>: sample from a prime with and without the unit clamped (at every "
                 "step, prime included; the same seed)", disable_math=True),
        row(prime, value, length, temperature, seed, steer), steer_note,
        row(free, clamped, sizing_mode="stretch_width"),
        sizing_mode="stretch_width")
    return View(layout, update, clear, on_show=on_show)


def steer_html(head: str, prime: str, generated: str) -> str:
    """One sample: a heading, the prime (grey) and what the model wrote, escaped."""
    return (f'<div class="steer-head">{html.escape(head)}</div><div class="probe-text">'
            f'<span class="prime">{html.escape(prime)}</span><span class="gen">{html.escape(generated)}'
            "</span></div>")
