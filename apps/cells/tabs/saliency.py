"""Explain a prediction: for a chosen position t, how much each earlier character of a
window moved the model's prediction of character t + 1 (gradient × input on its log-loss,
``probe.causal.gradients.saliency``), the window's text coloured by it.

The position is typed, or picked by clicking a character in the text while this tab is open
(``views.POINT_JS``; elsewhere a click does what it did). Computed on demand, on the button
or a click, never on a change of selection: a change of cell keeps the result (it does not
depend on the cell), a change of recording drops it. In a word-level recording the
positions are tokens, drawn as spans of their text.
"""
from __future__ import annotations

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import Button, Div, Select, Spinner

from probe.causal import gradients
from probe.errors import ProbeError
from probe.output import render
from probe.text import tokens

from ..jobs import Job, working
from ..selection import Selection
from ..session import Session, View
from ..views import follow_clicks, message_html, note_div, note_html, point_picker, reason, text_div

TAB = "saliency"  # its job: one at a time per session, a newer click supersedes
TITLE = "explain a prediction"
WINDOWS = (100, 200, 500)   # characters read before the position (the position included)
TOP = 5                     # most influential characters listed


def middle(session: Session, sel: Selection) -> int:
    """The middle of the visible window."""
    return sel.start + max(0, min(sel.window, len(session.rec) - sel.start) - 1) // 2


def bounds(rec, position: int, window: int) -> tuple[int, int]:
    """(first, stop) of the text to read: ``window`` characters up to ``position`` and the
    character after it, within the position's document (a document is read from a zero
    state). ProbeError if there is nothing after the position to predict."""
    unit = rec.unit_name
    if not 0 <= position < len(rec):
        raise ProbeError(f"no {unit} {position:,}: positions are 0..{len(rec) - 1:,}")
    d = int(rec.document_of([position])[0])
    docs = rec.documents
    lo, hi = (int(docs["start"].iloc[d]), int(docs["stop"].iloc[d])) if 0 <= d < len(docs) else (0, len(rec))
    if position + 1 >= hi:
        where = "the recording" if hi >= len(rec) else f"document {docs['name'].iloc[d]}"
        raise ProbeError(f"{unit} {position:,} is the last of {where}: there is no next {unit} "
                         "to explain; pick an earlier one")
    return max(lo, position + 1 - window), position + 2


def explain(model, rec, position: int, window: int) -> dict:
    """Saliency of the window before ``position`` on the prediction of ``position + 1``."""
    a, b = bounds(rec, position, window)
    text, spans = render.position_text(rec, a, b)  # the window and the position it predicts
    spans = tokens.identity(len(text)) if spans is None else spans
    start, values, bits = gradients.saliency(model, text, position - a, window=window)
    first = int(spans[start, 0])
    spans = spans[start:] - first  # [n + 1, 2]: the positions read, then the one predicted
    text = text[first:]
    words = [text[s:e] for s, e in spans.tolist()]
    top = np.argsort(-np.abs(values), kind="stable")[:TOP]
    return {"recording": rec.path.name, "position": position, "start": start + a, "text": text,
            "spans": spans, "tokens": words, "values": values, "bits": bits, "unit": rec.unit_name,
            "top": [(start + a + int(j), words[j], float(values[j])) for j in top]}


def result_html(r: dict) -> tuple[str, str]:
    """(note, coloured text) of a result: values divided by the largest |value| (the palette's
    ±1), the predicted character (or token) appended and outlined."""
    values, start, position, unit = r["values"], r["start"], r["position"], r.get("unit", "character")
    text, spans = r["text"], r["spans"]
    cut = int(spans[-2, 1]) if len(spans) > 1 else 0  # where the positions read end
    scale = float(np.max(np.abs(values))) if len(values) else 0.0
    shown = values / scale if scale > 0 else values
    fmt = f"{{position}}  {{char}}  {{value:+.3f}} × {scale:.3g}"
    body = render.colored_html(text[:cut], shown, "h", start=start, title_fmt=fmt,
                               root_class="probe-text pickable", spans=spans[:-1])
    tail = render.colored_html(text[cut:], [np.nan], "h", start=position + 1, mark=position + 1,
                               title_fmt="{position}  {char}  predicted", spans=spans[-1:] - cut)
    inner = tail[tail.index(">") + 1:-len("</div>")]
    coloured = body[:-len("</div>")] + inner + "</div>"
    nxt = r["tokens"][-1]
    top = ", ".join(f"{ch!r} at {p:,} ({v:+.3g})" for p, ch, v in r["top"])
    note = (note_html(f"Predicting {nxt!r} ({unit} {position + 1:,}) after {unit} {position:,}: "
                      f"{r['bits']:.2f} bits, reading the {len(values):,} {unit}s {start:,}–{position:,} "
                      "from a zero state.")
            + note_html(f"Most influential (gradient × input): {top}.")
            + render.legend_html("h", label="gradient × input ÷ largest |value|")
            + note_html(f"Red: the {unit} made the prediction worse (raised its loss), blue: better. "
                        f"Colours are divided by the largest |value| in the window, {scale:.3g}, so the "
                        f"palette spans it; hover shows the divided value × {scale:.3g} (the raw value is "
                        f"the product). The predicted {unit} is outlined. Click a {unit} to explain "
                        "the prediction after it."))
    return note, coloured


def build(session: Session) -> View:
    position = Spinner(title="position (or click a character)", low=0, step=1, value=0, width=180,
                       name="saliency-position")
    window = Select(title="window", options=[str(w) for w in WINDOWS], value="200", width=90,
                    name="saliency-window")
    run = Button(label="explain", button_type="primary", width=100, name="saliency-run", align="end")
    clicked = Div(text="", visible=False, disable_math=True, name="saliency-clicked")  # "POS N", written by POINT_JS
    note = note_div(name="saliency-note", sizing_mode="stretch_width")
    out = text_div(name="saliency-text", sizing_mode="stretch_width")
    session.doc.js_on_event("document_ready", point_picker(position, clicked))

    shown = None    # (recording, start, window) the position's default was set for
    result = None   # explain(...) of the last run

    def idle_note() -> str:
        unit = session.rec.unit_name if session.rec is not None else "character"
        return note_html(f"Click a {unit} in the text above, or set a position and press explain: "
                         f"each {unit} of the window before it is coloured by how much it moved the "
                         f"model's prediction of the next {unit}. Computed for that window only.")

    def update(sel: Selection) -> None:
        nonlocal shown, result
        if result is not None and result["recording"] != sel.recording:
            result = None
            out.text = ""
            note.text = idle_note()
        key = (sel.recording, sel.start, sel.window)
        position.title = f"position (or click a {session.rec.unit_name})"
        if key != shown:
            shown = key
            position.value, position.high = middle(session, sel), len(session.rec) - 1
        if result is None and not session.jobs.busy(TAB) and not note.text:
            note.text = idle_note()

    def clear() -> None:
        nonlocal shown, result
        shown = result = None
        note.text = out.text = ""

    def on_run() -> None:
        """Explain the prediction after ``position`` in a worker; a newer click supersedes it."""
        if session.rec is None or position.value is None:
            return
        name, at, length = session.sel.recording, int(position.value), int(window.value)
        rec = session.rec

        def work(job: Job) -> dict:  # the model's load and the backward pass
            model, model_note = session.store.model(name)
            return {**explain(model, rec, at, length), "note": model_note}

        def done(got: dict) -> None:
            nonlocal result
            if session.rec is None or session.sel.recording != name:
                return
            result = got
            text_note, out.text = result_html(got)
            note.text = text_note + (note_html(got["note"]) if got["note"] else "")

        def failed(e: BaseException) -> None:  # a bad position or no model: said, not raised
            nonlocal result
            result = None
            out.text = ""
            note.text = message_html([f"cannot explain: {reason(e)}"])

        session.jobs.submit(TAB, work, done, failed,
                            status=working(note, run, f"computing the saliency of {rec.unit_name} {at:,}"))

    run.on_click(on_run)
    follow_clicks(clicked, position, on_run)
    layout = column(row(position, window, run), clicked, note, out, sizing_mode="stretch_width")
    return View(layout, update, clear)
