"""Type your own text: run it through the recording's model and colour it by the selected
cell; another cell recolours it without running the model again."""
from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import Button, InlineStyleSheet, TextAreaInput

from probe.errors import ProbeError
from probe.output import render
from probe.recording.record import activations
from probe.text import tokens

from ..jobs import Job, working
from ..selection import Selection
from ..session import Session, View
from ..views import message_html, note_div, note_html, reason, text_div

TAB = "live"  # its job: one at a time per session; typing again supersedes
TITLE = "type your own text"
MONOSPACE = "textarea { font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 13px; }"
LIMIT = 3000  # characters of typed text run through the model
SAMPLE = '''def greet(name, excited=False):
    """Say hello."""
    message = "hello, " + name  # a comment
    if excited:
        message += "!" * (len(name) % 3 + 1)
    return message
'''


def build(session: Session) -> View:
    typed = TextAreaInput(title=f"type or paste text (up to {LIMIT:,} characters are run)", value=SAMPLE,
                          rows=8, max_length=10 * LIMIT, sizing_mode="stretch_width", name="live-in",
                          stylesheets=[InlineStyleSheet(css=MONOSPACE)])  # code: columns line up
    button = Button(label="run the model", button_type="primary", width=140)
    note = note_div(name="live-note")
    out = text_div(name="live", sizing_mode="stretch_width")
    live = None  # run(...) of the typed text, for the recording it was run on

    def run_typed() -> None:
        """Run the typed text through the recording's model in a worker; keep the result for
        recolouring. Typing again supersedes a run not yet delivered."""
        nonlocal live
        live = None
        name, text = session.sel.recording, typed.value

        def work(job: Job) -> dict:
            model, model_note = session.store.model(name)
            return {**run(model, text), "recording": name, "model_note": model_note}

        def done(got: dict) -> None:
            nonlocal live
            live = got
            note.text = note_html(" ".join(filter(None, [got["note"], got["model_note"]])))
            update(session.sel)

        def failed(e: BaseException) -> None:  # a bad checkpoint or text is reported, not raised
            note.text = message_html([reason(e)])
            update(session.sel)

        update(session.sel)
        session.jobs.submit(TAB, work, done, failed,
                            status=working(note, button, f"running the model on {min(len(text), LIMIT):,} characters"))

    def update(sel: Selection) -> None:
        nonlocal live
        if live is not None and live["recording"] != sel.recording:
            live = None  # another recording's model: run again when asked
        if live is None:
            out.text = ""
            return
        if (sel.layer, sel.stream) not in live["streams"]:  # a derived stream: not a model output
            out.text = note_html(f"{sel.stream} is a derived stream, computed from a recording by "
                                 "probe encode: live text shows the streams the model computes")
            return
        values = live["streams"][(sel.layer, sel.stream)][:, sel.unit]  # [n]
        out.text = render.colored_html(live["text"], values, sel.stream, spans=live.get("spans"))

    def clear() -> None:
        nonlocal live
        live = None
        out.text = ""

    def on_show() -> None:
        if live is None and session.rec is not None:
            run_typed()

    button.on_click(run_typed)
    typed.on_change("value", lambda attr, old, new: run_typed())
    return View(column(typed, row(button, note), out, sizing_mode="stretch_width"), update, clear,
                on_show=on_show)


def run(model, text: str) -> dict:
    """Activations of typed text read by the model's tokenizer: {"text", "spans" (each
    token's [start, stop) in text; None when positions are characters), "streams"
    {(layer, s): [n, units]}, "note"}."""
    notes = []
    if len(text) > LIMIT:
        notes.append(f"only the first {LIMIT:,} of {len(text):,} characters were run.")
        text = text[:LIMIT]
    if not text:
        raise ProbeError("type some text first")
    tok = tokens.of(model)
    ids, spans, _ = tok.encode(text)
    if tok.kind == "chars":
        spans = None
        unknown = sorted(set(text) - set(model.vocab))
    else:
        unk = tok.index[tokens.UNK]
        unknown = sorted({text[a:b] for (a, b), i in zip(spans.tolist(), ids.tolist()) if i == unk} - {tokens.UNK})
    if unknown:
        notes.append(f"{len(unknown)} {tok.unit}(s) outside the model's vocabulary were read as "
                     f"unknown: {' '.join(repr(c) for c in unknown[:10])}")
    if not len(ids):
        raise ProbeError(f"the text holds no {tok.unit} the model reads")
    streams, _ = activations(model, text)
    if spans is not None and len(spans) != len(next(iter(streams.values()))):
        raise ProbeError(f"the model read {len(next(iter(streams.values())))} positions but its tokenizer "
                         f"gives {len(spans)} {tok.unit}s")
    return {"text": text, "spans": spans, "streams": streams, "note": " ".join(notes)}
