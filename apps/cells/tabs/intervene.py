"""Intervene: zero the selected unit while the recording's model reads the visible window,
and colour each character (or token) by what that costs; then steer the model by clamping the unit.

Computed on demand, when a button is pressed, never on a change of selection: a change of
cell or window only drops the old result (a change of overlay feature recomputes the
summary from the kept losses), so switching cells costs what it did without this tab.

Ablation and clamping (``probe.causal.intervene``, hooks on ``probe.lm.recurrence``) work on
LSTM, GRU and RNN models alike: the unit's c is pinned when the selected stream is an LSTM's
c, its h otherwise (a gate's unit is edited through the state it feeds). A derived stream
(a read-out of many cells) has no unit to pin: the tab says so and its buttons do nothing.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import Button, Div, InlineStyleSheet, Spinner, TextInput

from probe.causal import intervene
from probe.causal.intervene import Edit
from probe.errors import ProbeError
from probe.lm import parts
from probe.lm.sample import sample
from probe.output import render

from ..jobs import Bar, Job, working
from ..selection import Selection
from ..session import Session, View
from ..views import TEXT_CSS, coloured, message_html, note_div, note_html, reason, text_div, units

TITLE = "intervene"
RANDOM_UNITS = 8       # units of the same layer zeroed beside the selected one, for scale
SEED = 0               # which random units: the same for every session
TITLE_FMT = "{position}  {char}  Δ {value:+.3f} bits"
MAX_LENGTH = 2000      # characters a steering sample may ask for
TAB, STEER, MODEL = "intervene", "steer", "intervene-model"  # the tab's jobs: one of each at a time
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


def cannot_edit(rec, stream: str | None = None) -> str | None:
    """Why this cell cannot be edited here (a derived stream's), or None."""
    if rec is not None and stream is not None and (rec.layer_ids and any(s == stream for _, s in rec.derived)):
        return (f"{stream} is a derived stream (a read-out of many cells), not a cell the model has: "
                "pick a recorded stream to ablate or steer a unit")
    return None


def random_units(units: int, unit: int, k: int = RANDOM_UNITS, seed: int = SEED) -> list[int]:
    """``k`` other units of the layer (fewer if it has fewer), the same for every session."""
    others = [u for u in range(units) if u != unit]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(others, min(k, len(others)), replace=False).tolist())


def zeroed(model, text: str, layer: int, unit: int, on: str, controls: list[int], bar=None) -> np.ndarray:
    """Δbits [1 + len(controls), n]: row 0 the unit, then each control unit, all zeroed in one
    pass of ``probe.lm.recurrence``. Column t is the change in the cost of position t + 1 (a
    character or a token; predicted from the state after reading t); the last column is NaN
    (no next position). n: the positions of ``text`` as the model reads it."""
    edits = [Edit(layer, on, u, "zero") for u in [unit, *controls]]
    bits = intervene.losses(model, text, edits, bar=bar)  # [1 + E, n]: row 0 unedited
    delta = np.full((len(edits), bits.shape[1]), np.nan, dtype=np.float32)
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


def summary_html(s: dict, feature: str, w: Window, controls: list[int], unit: str = "character") -> str:
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
    notes = [f"Mean change in bits per next {unit} (positive: the model needs the unit). Random "
             f"units of layer {w.layer}: {', '.join(str(u) for u in controls)}."]
    if not s["positions_inside"]:
        notes.append(f"{feature} does not hold in this window: move the window or pick another overlay feature.")
    return f'<table class="effect">{"".join(rows)}</table>' + "".join(note_html(n) for n in notes)


def legend_html(w: Window, stream: str, unit: str = "character") -> str:
    what = {"c": "cell state c"}.get(w.on, "hidden output h")
    gate = (f" (the {stream} stream itself is not pinned: zeroing pins the unit's hidden output)"
            if stream not in ("c", "h") else "")
    return (render.legend_html("h", label="Δ bits") + note_html(
        f"Each {unit} is coloured by how much zeroing layer {w.layer} unit {w.unit}'s {what}{gate} "
        f"changes the cost of the {unit} after it (red: harder to predict, blue: easier; colours "
        f"saturate at ±1 bit; hover for the bits). {unit.capitalize()}s {w.start:,}–{w.stop:,}, read from "
        f"a zero state at the first, with and without the edit; the last has no next {unit}."))


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
    asked = None     # the window the queued or running zeroing is for

    def idle_note(sel: Selection) -> str:
        if cannot_edit(session.rec, session.sel.stream):
            return note_html(cannot_edit(session.rec, session.sel.stream))
        if sel.recording in missing:
            return message_html([missing[sel.recording]])
        w = window_of(session, sel)
        return note_html(f"Press the button to zero layer {w.layer} unit {w.unit} (and "
                         f"{RANDOM_UNITS} random units of the layer, for scale) on {units(session.rec)} "
                         f"{w.start:,}–{w.stop:,}; computed for this window only.")

    def draw(sel: Selection) -> None:
        """Colour the text and fill the summary from ``result`` (the feature may have changed)."""
        w, delta = result["window"], result["delta"]
        rec = session.rec
        mask = session.store.feature(w.recording, sel.feature)[w.start:w.stop] != 0  # [n]
        table.text = summary_html(summary(delta, mask), sel.feature, w, result["controls"], rec.unit_name)
        if result["feature"] is None:  # the text does not depend on the feature
            # Δbits as they are: the diverging palette's ±1 is ±1 bit, and the titles show the bits
            out.text = coloured(rec, w.start, w.stop, delta[0], "h", title_fmt=TITLE_FMT)
        result["feature"] = sel.feature
        legend.text = legend_html(w, sel.stream, rec.unit_name)  # the stream named may change (h ↔ a gate)

    def drop() -> None:
        nonlocal result
        result = None
        out.text = table.text = legend.text = ""

    def update(sel: Selection) -> None:
        nonlocal steered
        w = window_of(session, sel)
        if result is not None and result["window"] != w:
            drop()
        if asked is not None and asked != w and session.jobs.busy(TAB):
            session.jobs.cancel(TAB)  # the selection moved on: its zeroing is not wanted
            run.disabled = False
        if result is None:
            if not session.jobs.busy(TAB):
                note.text = idle_note(sel)
        elif result["feature"] != sel.feature:
            draw(sel)
        else:
            legend.text = legend_html(result["window"], sel.stream, session.rec.unit_name)
        if steered is not None and steered != (w.recording, w.layer, w.unit, w.on):
            steered = None
            free.text = clamped.text = steer_note.text = ""

    def clear() -> None:
        nonlocal steered
        drop()
        steered = None
        note.text = free.text = clamped.text = steer_note.text = ""

    def on_show() -> None:
        """Load the recording's model in a worker, to say at once if it has none."""
        name = session.sel.recording
        if session.rec is None or result is not None or session.jobs.busy(TAB) or cannot_edit(session.rec, session.sel.stream):
            return

        def found(_) -> None:
            missing.pop(name, None)
            if session.sel.recording == name and result is None and not session.jobs.busy(TAB):
                note.text = idle_note(session.sel)

        def failed(e: BaseException) -> None:  # no model, or a bad checkpoint: said, not raised
            missing[name] = f"cannot intervene: {reason(e)}"
            if session.sel.recording == name:
                note.text = message_html([missing[name]])
        session.jobs.submit(MODEL, lambda job: session.store.model(name), found, failed)

    def said_missing(where: Div) -> bool:
        """The recording's model is known to be missing: say so (no job is started)."""
        if session.sel.recording in missing:
            where.text = message_html([missing[session.sel.recording]])
            return True
        return False

    def on_run() -> None:
        nonlocal asked
        if session.jobs.busy(TAB) or session.rec is None:
            return
        if cannot_edit(session.rec, session.sel.stream):
            drop()
            note.text = idle_note(session.sel)
            return
        drop()
        if said_missing(note):
            return
        w = asked = window_of(session, session.sel)
        text = session.rec.text_of(w.start, w.stop)  # the window's text
        n, unit = w.stop - w.start, units(session.rec)
        what = f"zeroing layer {w.layer} unit {w.unit} and {RANDOM_UNITS} random units on {n:,} {unit}"

        def work(job: Job) -> dict:  # in a worker: the model's load and one hooked pass
            model, model_note = session.store.model(w.recording)
            controls = random_units(parts.widths(model)[(w.layer, w.on)], w.unit)  # of the edited stream
            began = time.perf_counter()
            delta = zeroed(model, text, w.layer, w.unit, w.on, controls,
                           bar=Bar(job, n * (1 + len(controls)), "zeroing"))
            if delta.shape[1] != n:  # the model's tokenizer reads the window's text otherwise
                raise ProbeError(f"the model reads the window as {delta.shape[1]:,} {unit}, the recording "
                                 f"has {n:,}: its tokenizer differs from the recording's")
            return {"window": w, "delta": delta, "controls": controls, "feature": None,
                    "note": f"{1 + len(controls)} units zeroed on {n:,} {unit} in "
                            f"{time.perf_counter() - began:.1f} s. {model_note}".strip()}

        def done(got: dict) -> None:
            nonlocal result
            if window_of(session, session.sel) != w:  # the selection moved on meanwhile
                note.text = idle_note(session.sel)
                return
            result = got
            draw(session.sel)
            note.text = note_html(got["note"])

        def failed(e: BaseException) -> None:
            drop()
            note.text = message_html([f"cannot intervene: {reason(e)}"])

        session.jobs.submit(TAB, work, done, failed, status=working(note, run, what))

    def on_sample() -> None:
        if session.jobs.busy(STEER) or session.rec is None:
            return
        if cannot_edit(session.rec, session.sel.stream):
            free.text = clamped.text = ""
            steer_note.text = note_html(cannot_edit(session.rec, session.sel.stream))
            return
        if said_missing(steer_note):
            free.text = clamped.text = ""
            return
        w = window_of(session, session.sel)
        kw = dict(prime=prime.value, length=int(length.value or 0), seed=int(seed.value or 0),
                  temperature=float(0.7 if temperature.value is None else temperature.value))
        edit = Edit(w.layer, w.on, w.unit, float(value.value or 0))

        def work(job: Job) -> dict:  # in a worker: two samples, with a cancellation point between
            model, model_note = session.store.model(w.recording)
            if not kw["prime"]:
                raise ProbeError("type a prime to start from")
            plain = sample(model, **kw)
            job.progress(1, 2, "sampling")
            return {"plain": plain, "pinned": sample(model, **kw, clamp=[edit]), "note": model_note}

        def done(got: dict) -> None:
            nonlocal steered
            free.text = steer_html("without clamp", kw["prime"], got["plain"])
            clamped.text = steer_html(f"with {edit}", kw["prime"], got["pinned"])
            steered = (w.recording, w.layer, w.unit, w.on)
            steer_note.text = note_html(got["note"])

        def failed(e: BaseException) -> None:
            free.text = clamped.text = ""
            steer_note.text = message_html([f"cannot sample: {reason(e)}"])

        session.jobs.submit(STEER, work, done, failed, status=working(steer_note, steer, "sampling"))

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
