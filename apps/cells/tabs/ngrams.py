"""Beyond n-grams: the visible window coloured by where the recorded model predicts the
next character better than an n-gram model (the advantage, in bits), or by why it errs
(the first "oracle" that explains each error: ``probe.analysis.advantage``). Read from the
recording's derived stream ``ngram``, which ``probe errors REC --store`` adds; the
dashboard computes nothing here."""
from __future__ import annotations

import html

import numpy as np
from bokeh.layouts import column
from bokeh.models import Select

from probe.output import render

from ..selection import Selection
from ..session import Session, View
from ..views import coloured, note_div, note_html, text_div, units

TITLE = "beyond n-grams"
MODES = ("advantage", "error category")
COLOURS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#b3b3b3")  # one per category


def build(session: Session) -> View:
    mode = Select(title="colour by", options=list(MODES), value=MODES[0], width=180, name="ngram-mode")
    note, legend = note_div(name="ngram-note"), note_div(name="ngram-legend")
    text = text_div(name="ngram-text", sizing_mode="stretch_width")

    def update(sel: Selection) -> None:
        rec = session.rec
        key = next((k for k in (rec.derived if rec is not None else {}) if k[1] == "ngram"), None)
        if key is None:
            note.text = empty_note(session.store.folder.name, sel.recording)
            text.text = legend.text = ""
            return
        info = rec.derived[key]
        a, b = session.span
        names = list(info["unit_names"])
        values = session.store.values(sel.recording, key[0], key[1], names.index(
            "advantage" if mode.value == MODES[0] else "category"), a, b)  # [b - a]
        note.text = note_html(f"against {info.get('spec_name', 'an n-gram model')} (order {info.get('order', '?')}); "
                              f"{units(rec)} {a:,}–{b:,}, as in the window above")
        if mode.value == MODES[0]:
            legend.text = render.legend_html("g", label="n-gram bits − model bits (red: the model knows more)")
            text.text = coloured(rec, a, b, values, "g", title_fmt="{position}  {char}  {value:+.2f} bits")
        else:
            cats = list(info.get("categories", []))
            colours = dict(enumerate(COLOURS[:len(cats)]))
            legend.text = category_legend(cats, info.get("wrong_bits", 1.0), units(rec))
            chars, spans = render.position_text(rec, a, b)
            text.text = render.category_html(chars, np.nan_to_num(values, nan=-1).astype(int), colours,
                                             dict(enumerate(cats)), start=a, spans=spans)

    def clear() -> None:
        text.text = legend.text = note.text = ""

    mode.on_change("value", lambda attr, old, new: update(session.sel) if session.rec is not None else None)
    return View(column(note, mode, legend, text, sizing_mode="stretch_width"), update, clear)


def empty_note(folder: str, recording: str) -> str:
    """What to run to fill this tab: the exact command, for the recording shown."""
    command = f"probe errors {folder}/{recording} --store"
    return (f'<div class="note">No n-gram results in {html.escape(recording)} yet. To add them (a derived '
            "stream, <code>ngram</code>), stop the dashboard (it holds the file open), run<pre>"
            f"{html.escape(command)}</pre>and start the dashboard again. The first run builds the "
            "n-gram model of the model's training text (about half a minute; kept in ~/.cache/probe), "
            "later runs take seconds.</div>")


def category_legend(categories: list[str], wrong_bits: float, unit: str = "characters") -> str:
    """A colour key of the error categories."""
    keys = "".join(f'<span style="background:{c};padding:1px 6px;margin-right:6px">{html.escape(n)}</span>'
                   for n, c in zip(categories, COLOURS))
    return (f'<div class="note">{unit} the model gets wrong (more than {wrong_bits:g} bit: p &lt; 1/2), '
            f"by the first oracle that explains them: {keys}</div>")
