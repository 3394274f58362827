"""The cells dashboard in-process: a real Bokeh server on port 0, sessions pulled from it.

Widgets are changed on the server-side document under its lock, as a browser's change
would be applied; the assertions read the HTML the page would show.
"""
from __future__ import annotations

import asyncio
import html
import re
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from bokeh.application import Application
from bokeh.application.handlers import DirectoryHandler
from bokeh.client import pull_session
from bokeh.command.util import build_single_handler_application
from bokeh.events import ButtonClick, Tap
from bokeh.models import ColumnDataSource, Div, Tabs
from bokeh.server.server import Server
from conftest import with_directions
from tornado.ioloop import IOLoop

from probe.analysis import cache as analysis
from probe.analysis import match
from probe.causal import gradients, intervene
from probe.lm.model import CharRNN, load_model, save_checkpoint
from probe.lm.sample import sample
from probe.output import render
from probe.recording.reader import open_recording
from probe.recording.record import record
from probe.text import corpus, features

APP = Path(__file__).resolve().parents[1] / "apps" / "cells"
TEXT = '''def greet(name):
    """Say hello (politely)."""
    # a comment with "quotes" and (brackets)
    return f"hello, {name}!" + ('x' * 3)


class Point:
    def __init__(self, x, y=[1, (2, 3)]):
        self.x, self.y = x, y
'''
NASTY = "<script>alert(1)</script>\n<img src=x onerror=alert(1)> & $x^2$ \"'\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """recordings/: tiny.h5, nasty.h5 (HTML in its text), broken.h5 (not HDF5), zdamaged.h5 (a
    byte of layer 1's c changed: its checksum fails); model beside."""
    root = tmp_path_factory.mktemp("cells")
    torch.manual_seed(0)
    model = CharRNN(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4)
    with torch.no_grad():  # larger weights than the default init, so gates move visibly
        for p in model.rnn.parameters():
            p.mul_(3)
    save_checkpoint(root / "tiny.pt", model.eval())
    recs = root / "recordings"
    recs.mkdir()
    model = load_model(root / "tiny.pt")
    record(model, [("a.py", TEXT), ("b.py", TEXT.replace("Point", "Line") * 9)], recs / "tiny.h5",
           dtype="float32", progress=False)
    record(model, [("<b>x</b>.py", NASTY * 3)], recs / "nasty.h5", dtype="float32", progress=False)
    (recs / "broken.h5").write_bytes(b"this is not HDF5 at all")
    damaged = recs / "zdamaged.h5"
    record(model, [("a.py", TEXT)], damaged, compression="none", progress=False)
    with h5py.File(damaged) as f:
        at = f["layers/1/c"].id.get_chunk_info_by_coord((0, 0)).byte_offset + 10
    data = bytearray(damaged.read_bytes())
    data[at] ^= 0x40
    damaged.write_bytes(data)
    return recs


@contextmanager
def serving(recordings: Path, app_dir: Path = APP):
    app = Application(DirectoryHandler(filename=str(app_dir), argv=["--recordings", str(recordings)]))
    server = Server({"/cells": app}, io_loop=IOLoop(), port=0)
    server.start()
    try:
        yield server
    finally:
        server.unlisten()
        server.stop()
        server.io_loop.close()


@pytest.fixture(scope="module")
def server(folder):
    with serving(folder) as s:
        yield s


class Page:
    """One browser tab's worth: a pulled session and its server-side document."""

    def __init__(self, server, **arguments):
        self.server = server
        self.client = pull_session(url=f"http://localhost:{server.port}/cells", io_loop=server.io_loop,
                                   arguments={k: str(v) for k, v in arguments.items()})
        self.session = next(s for s in server.get_sessions("/cells") if s.id == self.client.id)
        self.doc = self.session.document

    def __getitem__(self, name):
        return self.doc.get_model_by_name(name)

    def locked(self, fn):
        """Run fn() on the server document under its lock, as a widget change would."""
        async def go():
            return await self.session.with_document_locked(fn)
        return self.server.io_loop.run_sync(go)

    def set(self, name, **props):
        self.locked(lambda: self[name].update(**props))

    def wait_for(self, condition, timeout=60.0):
        """Let the server run (background analysis, next-tick callbacks) until condition()."""
        async def go():
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while not condition():
                assert loop.time() < end, "timed out"
                await asyncio.sleep(0.05)
        self.server.io_loop.run_sync(go, timeout=timeout + 5)

    @property
    def message(self) -> str:
        m = self["message"]
        return m.text if m.visible else ""

    def positions(self, name="text") -> list[int]:
        return [int(p) for p in re.findall(r'title="(\d+) ', self[name].text)]

    def close(self):
        self.client.close()


def pages(server):
    """open_page(**url arguments) -> Page on ``server``; every page is closed afterwards."""
    opened = []

    def open_page(**arguments) -> Page:
        opened.append(Page(server, **arguments))
        return opened[-1]
    yield open_page
    for p in opened:
        p.close()


@pytest.fixture
def page(server):
    yield from pages(server)


def test_document_builds_without_a_server(folder):
    app = build_single_handler_application(str(APP), ["--recordings", str(folder)])
    handler = app.handlers[0]
    assert not handler.failed, handler.error_detail
    doc = app.create_document()
    assert doc.get_model_by_name("text").text.count("<span") > 100
    assert doc.get_model_by_name("text").disable_math


def test_default_view_shows_the_first_recording_on_its_best_string_cell(page, folder):
    """A bare URL opens on the leaderboard's top cell for in_short_string (no longer unit 0 of
    layer 0 c), with that overlay, in a window holding strings (nasty.h5 is one short window)."""
    p = page()
    assert p.message == ""
    assert p.positions()[:3] == [0, 1, 2]
    with open_recording(folder / "nasty.h5") as rec:
        best = analysis.analysis(rec)["best"]
    top = best[best["feature"] == "in_short_string"].sort_values("rank").iloc[0]
    assert p["url-state"].text == (f"recording=nasty.h5&layer={top['layer']}&stream={top['stream']}"
                                   f"&unit={top['unit']}&start=0&window=2000&feature=in_short_string")
    assert page(recording="nasty.h5")["url-state"].text.startswith(  # any argument: as asked
        "recording=nasty.h5&layer=0&stream=c&unit=0&start=0&window=2000&feature=in_string")


def test_changing_the_unit_changes_the_coloured_text(page):
    p = page(recording="tiny.h5")
    before = p["text"].text
    p.set("unit", value=5)
    after = p["text"].text
    assert after != before and p.positions("text") == list(range(len(p.positions("text"))))
    assert "unit=5" in p["url-state"].text
    assert p.doc.title == "cells · tiny.h5 layer 0 c unit 5"


def test_url_arguments_select_the_view(page):
    p = page(recording="tiny.h5", layer=1, stream="f", unit=3, start=10, window=1000, feature="in_comment")
    assert p.message == ""
    assert p["unit"].value == 3 and p["start"].value == 10
    assert p.positions()[0] == 10
    assert re.search(r'class="s\d+"', p["text"].text)  # a gate: the sequential palette
    assert p["url-state"].text == ("recording=tiny.h5&layer=1&stream=f&unit=3&start=10&window=1000"
                                   "&feature=in_comment")


def test_the_last_unit_is_accepted_and_one_past_it_refused(page):
    """tiny.h5 has 8 units a stream: unit=7 is the last (shown, no message), unit=8 is not."""
    p = page(recording="tiny.h5", layer=1, stream="h", unit=7)
    assert p.message == "" and p["unit"].value == 7 and p["unit"].high == 7
    assert "unit=7&" in p["url-state"].text and p.doc.title == "cells · tiny.h5 layer 1 h unit 7"
    q = page(recording="tiny.h5", layer=1, stream="h", unit=8)
    assert q.message == "no unit 8 in tiny.h5 (units are 0..7); showing unit 0".join(
        ['<div class="msg">', "</div>"])
    assert q["unit"].value == 0 and "unit=0&" in q["url-state"].text
    r = page(recording="tiny.h5", unit=-1)
    assert "no unit -1 in tiny.h5 (units are 0..7); showing unit 0" in r.message


def test_unknown_layer_unit_and_stream_in_the_url_give_messages(page):
    p = page(recording="tiny.h5", layer=7, unit=99, stream="z", start="abc")
    msg = p.message
    assert "no layer 7 in tiny.h5 (layers are 0..1)" in msg
    assert "no unit 99 in tiny.h5 (units are 0..7)" in msg
    # z is a GRU's stream: accepted from the URL, then refused by this LSTM recording
    assert "no stream z in tiny.h5 (streams are i f g o c h); showing c" in msg
    assert "start=&#x27;abc&#x27;" in msg
    assert p["unit"].value == 0 and p.positions()[0] == 0 and p["stream"].value == "c"
    q = page(recording="tiny.h5", stream="q")  # a derived stream's name could be q: the recording says no
    assert "no stream q in tiny.h5" in q.message
    q = page(recording="tiny.h5", stream="<q>")  # not a name at all
    assert "stream=&#x27;&lt;q&gt;&#x27; in the URL is not a stream name (such as i f g o c h r z n); ignored" \
        in q.message
    assert "stream=c" in q["url-state"].text


def test_recording_text_is_escaped(page):
    p = page(recording="nasty.h5")
    for name in ("text", "card"):
        html = p[name].text
        assert "<script" not in html and "<img" not in html, name
    assert "&lt;" in p["text"].text and "&amp;" in p["text"].text
    assert "document &lt;b&gt;x&lt;/b&gt;.py" in p["status"].text  # document names too
    assert all(d.disable_math for d in p.doc.select({"type": Div}))  # $x^2$ stays text


@pytest.mark.parametrize("name", ["../tiny.h5", "..%2Ftiny.h5", "/etc/passwd", "sub/tiny.h5", ".hidden.h5"])
def test_a_path_in_the_recording_name_is_refused(page, name):
    p = page(recording=name)
    assert "is not a plain file name" in p.message
    assert "showing nasty.h5 instead" in p.message  # the page still works
    assert p.positions()[0] == 0


def test_a_missing_recording_name_is_refused(page):
    p = page(recording="nope.h5")
    assert "no recording named &#x27;nope.h5&#x27;" in p.message


def test_a_corrupt_recording_gives_a_message_and_others_still_work(page, server):
    p = page(recording="broken.h5")  # the same rule as a missing one: say so, show another
    assert "broken.h5: not a readable HDF5 file (truncated or not HDF5); showing nasty.h5 instead" in p.message
    assert p["recording"].value == "nasty.h5" and p.positions()[0] == 0
    p.set("recording", value="tiny.h5")
    assert p.message == "" and p.positions()[0] == 0
    assert "broken.h5" in p["recording"].options  # listed, but a clear error when chosen
    p.set("recording", value="broken.h5")
    assert "showing nasty.h5 instead" in p.message and "recording=nasty.h5" in p["url-state"].text
    assert page(recording="tiny.h5").positions()[0] == 0  # the server keeps serving


def test_no_message_shows_a_server_path(page, folder):
    messages = []
    for arguments in ({"recording": "broken.h5"}, {"recording": "nope.h5"}, {"recording": "/etc/passwd"},
                      {"recording": "tiny.h5", "start": 10 ** 9}):
        p = page(**arguments)
        messages.append(p.message)
    assert all(messages), messages
    for m in messages:
        assert str(folder) not in m and str(folder.resolve()) not in m and "/tmp" not in m, m
    assert "no recording named &#x27;nope.h5&#x27; in the recordings folder" in messages[1]


def test_a_damaged_cell_is_a_message_and_the_others_still_show(page):
    p = page(recording="zdamaged.h5", layer=1, stream="c", unit=2)
    assert "damaged data in layers/1/c rows 0–" in p.message and "checksum mismatch" in p.message
    assert "/tmp" not in p.message
    p.set("stream", value="h")
    assert p.message == "" and p.positions()[0] == 0  # the other streams are intact


def test_a_start_past_the_end_is_said_not_hidden(page):
    p = page(recording="tiny.h5", start=10 ** 6, window=1000)
    T = int(re.search(r"of ([\d,]+)", p["status"].text).group(1).replace(",", ""))
    assert (f"start=1000000 is outside tiny.h5 ({T:,} characters); "
            f"showing characters {T - 1000:,}–{T:,}") in p.message
    assert p.positions()[0] == T - 1000


def test_paging_window_length_and_overview_tap(page):
    p = page(recording="tiny.h5", window=1000)
    T = int(re.search(r"of ([\d,]+)", p["status"].text).group(1).replace(",", ""))
    assert 2000 < T < 3000 and p.positions() == list(range(1000))
    p.locked(lambda: p["next"]._trigger_event(ButtonClick(p["next"])))
    assert p.positions()[0] == 1000 and p["start"].value == 1000
    p.locked(lambda: p["next"]._trigger_event(ButtonClick(p["next"])))
    assert p.positions() == list(range(T - 1000, T))  # the last page is a full window
    p.set("window", value="2000")
    assert p.positions() == list(range(T - 2000, T))
    p.locked(lambda: p["prev"]._trigger_event(ButtonClick(p["prev"])))
    assert p.positions()[0] == 0
    p.locked(lambda: p["overview"]._trigger_event(Tap(p["overview"], x=T - 10, y=0.5)))
    assert p.positions()[-1] == T - 1 and "window=2000" in p["url-state"].text


def card_positions(card: str) -> dict[str, list[int]]:
    """The positions of the card's rows, per section (its <h4> heading)."""
    out = {}
    for part in card.split("<h4>")[1:]:
        head, body = part.split("</h4>", 1)
        out[head] = [int(x) for x in re.findall(r'class="pos">@(\d+)<', body)]
    return out


def test_a_first_analysis_shows_its_progress_while_the_text_works(folder, tmp_path, monkeypatch):
    """Issue #18: a recording without a cached analysis shows its text at once and a notice
    of the pass's progress; when the pass ends the notice goes and the leaderboard fills."""
    recs = tmp_path / "recordings"
    recs.mkdir()
    shutil.copy(folder / "tiny.h5", recs / "tiny.h5")  # no analysis cache beside it
    gate = threading.Event()
    real = analysis.analysis

    def held(path, progress=False, **kw):  # the pass reports a quarter done, then waits
        progress(1, 4)
        assert gate.wait(60)
        return real(path, progress=progress, **kw)
    monkeypatch.setattr(analysis, "analysis", held)
    with serving(recs) as server:
        p = Page(server, recording="tiny.h5")
        try:
            p.wait_for(lambda: p["notice"].visible)
            assert "Analysing <b>tiny.h5</b>" in p["notice"].text and "25 %" in p["notice"].text
            assert p["text"].text.count("<span") > 100  # the text window is there already
            assert p["leaderboard"].source.data["feature"] == []
            p.set("unit", value=3)  # and a cell switch works meanwhile (from a whole-unit read)
            assert p.message == "" and "unit 3" in p.doc.title
            gate.set()
            p.wait_for(lambda: not p["notice"].visible)
            p.wait_for(lambda: len(p["leaderboard"].source.data["feature"]) > 0)
        finally:
            gate.set()
            p.close()
    assert analysis.cache_path(recs / "tiny.h5").exists()


def settle(p: Page, *names: str) -> None:
    """Let the server's background analyses of ``names`` end before it stops (a pass left
    running would read streams while a later test counts reads)."""
    store = p.doc.session_context.server_context.cells
    p.wait_for(lambda: all(store.analysis(n).done() for n in names))


def test_a_derived_stream_is_shown_like_a_recorded_one(folder, tmp_path):
    """Issue #19: a stream added by probe encode is in the stream menu of its layer, shown
    coloured over its own range, its units named; tabs that need a model's own cell say so."""
    recs = tmp_path / "recordings"
    recs.mkdir()
    with_directions(folder / "tiny.h5", recs)
    with serving(recs) as server:
        p = Page(server, recording="tiny.h5", layer=1, stream="dir", unit=1)
        try:
            assert p.message == ""
            assert "layer 1 dir unit 1 (beta)" in p.doc.title
            assert ("dir", "dir · probe directions (2)") in [tuple(o) for o in p["stream"].options]
            assert p["unit"].high == 1
            assert re.search(r'class="s\d+"', p["text"].text)  # sequential, over the unit's range
            legend = p["legend"].text
            assert "<b>beta</b>" in legend and "−1" not in legend
            # the derived features tab lists its units, best match and highest context; a click shows one
            table = p["features-table"]
            open_tab(p, "derived features")
            p.wait_for(lambda: len(table.source.data["unit"]) == 2)
            assert sorted(table.source.data["name"]) == ["alpha", "beta"]
            assert all(m in features.FEATURES for m in table.source.data["match"])
            assert all("⟦" in c for c in table.source.data["context"])
            row = table.source.data["name"].index("alpha")
            p.locked(lambda: table.source.selected.update(indices=[row]))
            assert "layer 1 dir unit 0 (alpha)" in p.doc.title
            p.set("layer", value="0")  # layer 0 has no dir: said, and c shown
            assert "no stream dir in layer 0 of tiny.h5" in p.message and p["stream"].value == "c"
            assert "dir" not in [o[0] for o in p["stream"].options]
        finally:
            settle(p, "tiny.h5")
            p.close()


def test_the_beyond_ngrams_tab_colours_the_window_by_advantage_and_error(folder, tmp_path):
    """Issue #17: after probe errors --store, the tab colours the visible window by where the
    model beats the n-gram model, or by the oracle that explains each error; before, it
    says how to add them."""
    from probe.analysis import advantage
    from probe.cli import main
    from probe.text import ngram
    recs = tmp_path / "recordings"
    recs.mkdir()
    shutil.copy(folder / "tiny.h5", recs / "tiny.h5")
    shutil.copy(folder / "nasty.h5", recs / "nasty.h5")
    with open_recording(recs / "tiny.h5") as rec:
        vocab = rec.model_config["vocab"]
    ng = ngram.save(ngram.train([("t.py", TEXT * 3)], vocab, order=3), tmp_path / "t.ngram.npz")
    assert main(["errors", str(recs / "tiny.h5"), "--ngram", str(ng), "--store", "--quiet"]) == 0
    with serving(recs) as server:
        p = Page(server, recording="tiny.h5", window=1000)
        try:
            open_tab(p, "beyond n-grams")
            assert "against t.ngram.npz (order 3)" in p["ngram-note"].text
            shown = p["ngram-text"].text
            assert shown.count("<span") == 1000 and "bits" in shown and 'class="d' in shown
            p.set("ngram-mode", value="error category")
            shown = p["ngram-text"].text
            assert "background:" in shown and any(c in shown for c in advantage.CATEGORIES)
            assert all(c in p["ngram-legend"].text for c in advantage.CATEGORIES)
            p.set("recording", value="nasty.h5")  # no results there: said how to add them
            note = p["ngram-note"].text  # the exact command, for the recording shown and its folder
            assert "<pre>probe errors recordings/nasty.h5 --store</pre>" in note and p["ngram-text"].text == ""
            assert "No n-gram results in nasty.h5 yet" in note and "stop the dashboard" in note
        finally:
            settle(p, "tiny.h5", "nasty.h5")
            p.close()


def test_a_cell_switch_reads_the_window_and_snippets_only(page, folder, monkeypatch):
    """Issue #18: once the summaries are loaded, switching the cell (unit, stream, layer)
    reads the visible window and each card snippet's few characters, never a whole unit;
    the card's histogram and contexts are those of the whole cell's values."""
    from probe.analysis import contexts
    from probe.recording.reader import Dataset
    p = page(recording="tiny.h5", window=1000, start=500)
    store = p.doc.session_context.server_context.cells
    p.wait_for(lambda: store.summaries("tiny.h5").done())
    T = int(re.search(r"of ([\d,]+)", p["status"].text).group(1).replace(",", ""))
    reads = []
    getitem = Dataset.__getitem__

    def counted(self, key):
        out = getitem(self, key)
        rows = key[0] if isinstance(key, tuple) else key
        reads.append((self.ds.name, len(range(*rows.indices(len(self)))) if isinstance(rows, slice) else 1))
        return out
    monkeypatch.setattr(Dataset, "__getitem__", counted)
    for name, value in (("unit", 5), ("stream", "i"), ("layer", 1), ("stream", "c")):
        reads.clear()
        before = p["card"].text
        p.set(name, value=value)
        p.wait_for(lambda: p["card"].text != before)  # the card's snippets are read in a worker
        change = (name, value)
        assert p.message == ""
        cell = [r for r in reads if r[0].startswith("/layers/")]
        assert cell and max(n for _, n in cell) == 1000, (change, reads)  # the window, once
        assert sorted(n for _, n in cell)[-2] <= 2 * 40 + 1, (change, reads)  # else snippets
        assert all(n < T for _, n in reads), (change, reads)
    monkeypatch.undo()

    # the same histogram and contexts as the whole cell's values give (layer 1 c unit 5)
    with open_recording(folder / "tiny.h5") as rec:
        values, docs = rec.unit(1, "c", 5), rec.documents
    hist = next(src for src in p.doc.select({"type": ColumnDataSource}) if set(src.data) == {"left", "right", "count"})
    left, right, count = (np.asarray(hist.data[k], dtype=float) for k in ("left", "right", "count"))
    assert count.sum() == len(values) and left[0] <= values.min() + 1e-3 and right[-1] >= values.max() - 1e-3
    assert np.isfinite(left).all() and np.isfinite(right).all() and (right > left).all()
    shown = card_positions(p["card"].text)
    full = contexts.top_contexts(values, docs, k=10, width=40)
    for kind, head in (("top", "highest values"), ("bottom", "lowest values")):
        expect = full[full["kind"] == kind]["position"].tolist()
        assert 0 < len(shown[head]) <= 10 and shown[head] == expect[:len(shown[head])], (kind, shown)
    samples = [pos for head, ps in shown.items() if head.startswith("quantile bin") for pos in ps]
    assert samples and all(0 <= pos < T for pos in samples)


def test_leaderboard_row_and_saturation_dot_select_a_cell(page):
    p = page(recording="tiny.h5")
    board = p["leaderboard"].source
    p.wait_for(lambda: len(board.data["unit"]) > 0)
    row = {k: v[3] for k, v in board.data.items()}
    p.locked(lambda: board.selected.update(indices=[3]))
    assert p["unit"].value == row["unit"]
    assert f"layer={row['layer']}&stream={row['stream']}&unit={row['unit']}" in p["url-state"].text
    assert f"feature={row['feature']}" in p["url-state"].text

    sat = p.doc.select_one({"name": "saturation-o"}).renderers[0].data_source
    assert len(sat.data["unit"]) == 2 * 8  # every layer's units
    p.locked(lambda: sat.selected.update(indices=[9]))
    assert (p["unit"].value, p["stream"].value) == (sat.data["unit"][9], "o")
    assert "layer=1&stream=o&unit=1" in p["url-state"].text


def test_the_trace_keeps_the_cell_and_a_count_feature_on_their_own_scales(page, folder):
    """A count overlay (column: up to a line's length) has its own right axis; the left axis
    spans the cell's values over the window, so the cell is not flattened near zero."""
    p = page(recording="tiny.h5", layer=1, stream="c", unit=2, start=100, window=1000, feature="column")
    trace = p["trace"]
    with open_recording(folder / "tiny.h5") as rec:
        values = rec.window(1, "c", 100, 1100)[:, 2].astype(np.float64)
        column = features.compute(rec.text, ["column"], documents=rec.document_spans)["column"].to_numpy()[100:1100]
    lo, hi = values.min(), values.max()
    assert (trace.y_range.start, trace.y_range.end) == pytest.approx((lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)))
    flo, fhi = float(column.min()), float(column.max())
    assert fhi > 20 * max(abs(lo), abs(hi))  # a count far beyond the cell's range …
    feature_range = trace.extra_y_ranges["feature"]
    want = pytest.approx((flo - 0.05 * (fhi - flo), fhi + 0.05 * (fhi - flo)))
    p.wait_for(lambda: (feature_range.start, feature_range.end) == want)  # a feature's first use: a job
    renderers = {r.glyph.__class__.__name__: r for r in trace.renderers}
    assert renderers["Line"].y_range_name == "default" and renderers["Step"].y_range_name == "feature"
    assert trace.right[0].y_range_name == "feature" and trace.right[0].axis_label == "column"
    assert trace.y_range.end < fhi  # … stays on the right axis
    p.set("feature", value="in_string")  # a 0/1 feature: its own axis follows
    p.wait_for(lambda: (feature_range.start, feature_range.end) == pytest.approx((-0.05, 1.05)))
    assert trace.right[0].axis_label == "in_string"
    # positions in plain thousands (100,000), not scientific notation (1.000e+5)
    for fig in (trace, p["overview"]):
        assert fig.xaxis[0].formatter.format == "0,0"


def test_live_text_is_monospace_and_the_leaderboard_fills_its_tab(page):
    p = page(recording="tiny.h5")
    assert any("monospace" in sheet.css and "textarea" in sheet.css for sheet in p["live-in"].stylesheets)
    board = p["leaderboard"]
    assert board.sizing_mode == "stretch_width" and board.height >= 600  # the browser test measures it


def test_match_snippets_are_as_wide_as_their_column(page, folder):
    """Each snippet shows as many characters as the column holds (not 20 + the match + 20),
    BEFORE of them before its match; at the text's start, spaces keep matches in one column."""
    p = page(recording="tiny.h5", layer=1, stream="c", window=1000)
    store = p.doc.session_context.server_context.cells
    match_tab = sys.modules[next(n for n, m in sys.modules.items()
                                 if getattr(m, "__file__", "") == str(APP / "tabs" / "match.py")
                                 and hasattr(m, "SNIPPET"))]
    assert match_tab.SNIPPET * match_tab.CHAR_WIDTH <= match_tab.SNIPPET_WIDTH - 20
    assert match_tab.SNIPPET >= 90
    a = TEXT.index("{name}!")
    p.set("match-span", value=f"{a}:{a + 4}")
    p.wait_for(lambda: p["match-table"].source.data["start"])  # searched in a worker
    data = p["match-table"].source.data
    T = len(store.recording("tiny.h5"))
    assert len(data["start"]) > 3
    for start, snippet in zip(data["start"], data["snippet"]):
        lo = max(0, start - match_tab.BEFORE)
        pad = match_tab.BEFORE - (start - lo)
        shown = re.findall(r'title=|<span class="', snippet)
        assert len(shown) == min(T, lo + match_tab.SNIPPET - pad) - lo, start
        assert snippet.startswith('<div class="probe-text">' + " " * pad + "<span")
    assert match_tab.snippet_bounds(0, T) == (0, match_tab.SNIPPET - match_tab.BEFORE, match_tab.BEFORE)
    assert match_tab.snippet_bounds(T - 3, T) == (T - 3 - match_tab.BEFORE, T, 0)  # the last characters


def test_typed_text_runs_through_the_model(page):
    p = page(recording="tiny.h5", layer=1, stream="h", unit=2)
    p.set("live-in", value="def f(x): <return> x")
    p.wait_for(lambda: p["live"].text)  # run in a worker, delivered on the document's thread
    live = p["live"].text
    assert len(p.positions("live")) == len("def f(x): <return> x")
    assert ">&lt;</span>" in live and ">&gt;</span>" in live and "<return" not in live
    assert "outside the model&#x27;s vocabulary" in p["live-note"].text  # < and > are not in TEXT
    before = live
    p.set("unit", value=3)
    assert p["live"].text != before  # recoloured by the new cell without rerunning


def open_tab(p: Page, title: str) -> None:
    """Click a tab, as the browser would: its panel's on_show runs."""
    tabs = p.doc.select_one({"type": Tabs})
    index = [t.title for t in tabs.tabs].index(title)
    p.locked(lambda: tabs.update(active=index))


def click(p: Page, name: str) -> None:
    p.locked(lambda: p[name]._trigger_event(ButtonClick(p[name])))


def numbers(summary: str) -> dict:
    """The summary table's numbers by class (— is NaN)."""
    return {k: float("nan") if v == "—" else float(v.replace(",", ""))
            for k, v in re.findall(r'<td class="([\w-]+)">([^<]*)</td>', summary)}


def test_intervene_zeroes_the_unit_on_the_visible_window(page, folder):
    start = len(TEXT) + 5  # inside b.py, which is longer than the window
    p = page(recording="tiny.h5", layer=1, stream="c", unit=2, start=start, window=1000, feature="in_string")
    open_tab(p, "intervene")
    assert p["intervene-text"].text == "" and "Press the button" in p["intervene-note"].text
    click(p, "intervene-run")
    p.wait_for(lambda: p["intervene-text"].text)
    assert p.positions("intervene-text") == list(range(start, start + 1000))  # one span a character
    assert "bits" in p["intervene-text"].text and "Δ bits" in p["intervene-legend"].text
    got = numbers(p["intervene-summary"].text)
    assert "<th>zeroing 1:c:2</th>" in p["intervene-summary"].text  # the cell, L:S:U
    assert {"inside", "outside", "random-inside", "random-outside", "ratio"} <= set(got)
    assert all(np.isfinite(v) for v in got.values()), got
    assert got["positions-inside"] > 0 and got["positions-inside"] + got["positions-outside"] == 999

    # the same numbers from the library, on the same window text
    rec = open_recording(folder / "tiny.h5")
    text = rec.text[start:start + 1000]
    mask = features.compute(rec.text, ["in_string"], documents=rec.document_spans)["in_string"].to_numpy()
    mask = mask[start:start + 1000] != 0
    bits = intervene.losses(load_model(folder.parent / "tiny.pt"), text, [intervene.Edit(1, "c", 2, "zero")])
    delta = bits[1, 1:] - bits[0, 1:]  # [n - 1]: the cost of character t + 1, for t = 0 … n - 2
    assert got["inside"] == pytest.approx(float(np.mean(delta[mask[:-1]])), abs=1e-3)
    assert got["outside"] == pytest.approx(float(np.mean(delta[~mask[:-1]])), abs=1e-3)
    rec.close()

    # another overlay feature: the summary follows from the kept losses; the text stays
    coloured = p["intervene-text"].text
    p.set("feature", value="in_comment")
    assert "where in_comment holds" in p["intervene-summary"].text and p["intervene-text"].text == coloured
    # another cell: the old result goes, and the tab waits for the button again
    p.set("unit", value=3)
    assert p["intervene-text"].text == "" and p["intervene-summary"].text == ""
    assert "Press the button to zero layer 1 unit 3" in p["intervene-note"].text


def test_intervene_on_a_gate_pins_h_and_escapes_the_text(page):
    p = page(recording="nasty.h5", stream="o", unit=1)
    open_tab(p, "intervene")
    click(p, "intervene-run")
    p.wait_for(lambda: p["intervene-text"].text)
    out = p["intervene-text"].text
    assert "<script" not in out and "<img" not in out and "&lt;" in out
    assert "the o stream itself is not pinned" in p["intervene-legend"].text
    assert "<th>zeroing 0:h:1</th>" in p["intervene-summary"].text  # its hidden output h


def test_steering_samples_with_and_without_the_clamp(page, folder):
    p = page(recording="tiny.h5", layer=0, stream="h", unit=1)
    open_tab(p, "intervene")
    p.set("steer-prime", value="def <")
    p.set("steer-value", value=0.9)
    p.set("steer-length", value=60)
    click(p, "steer-run")
    p.wait_for(lambda: p["steer-clamped"].text)

    def generated(name):
        out = p[name].text
        assert "<b" not in out and '<span class="prime">def &lt;</span>' in out  # escaped
        return html.unescape(re.search(r'<span class="gen">(.*?)</span>', out, re.S).group(1))

    model = load_model(folder.parent / "tiny.pt")
    free, clamped = generated("steer-free"), generated("steer-clamped")
    assert len(free) == len(clamped) == 60
    assert free == sample(model, "def <", 60, 0.7, 0)
    assert clamped == sample(model, "def <", 60, 0.7, 0, clamp=[intervene.Edit(0, "h", 1, 0.9)])
    assert "with 0:h:1=0.9" in p["steer-clamped"].text and "without clamp" in p["steer-free"].text
    p.set("unit", value=2)  # another cell: the samples were of the old one
    assert p["steer-clamped"].text == "" and p["steer-free"].text == ""
    p.set("steer-prime", value="")
    click(p, "steer-run")
    p.wait_for(lambda: "type a prime" in p["steer-note"].text)


def orphan_recordings(tmp_path, monkeypatch) -> Path:
    """recordings/orphan.h5, whose checkpoint is gone and the shipped model missing too."""
    monkeypatch.setattr("probe.lm.model.SHIPPED", tmp_path / "missing.pt")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gone.pt", CharRNN(corpus.build_vocab(TEXT), layers=1, units=4, embedding=4))
    recs = tmp_path / "recordings"
    recs.mkdir()
    record(load_model(tmp_path / "gone.pt"), [("a.py", TEXT)], recs / "orphan.h5", progress=False)
    (tmp_path / "gone.pt").unlink()
    return recs


def test_intervene_says_when_the_recordings_model_is_missing(tmp_path, monkeypatch):
    recs = orphan_recordings(tmp_path, monkeypatch)
    with serving(recs) as server:
        p = Page(server, recording="orphan.h5")
        try:
            assert p.message == "" and p.positions()[:2] == [0, 1]
            open_tab(p, "intervene")
            said = "cannot intervene: orphan.h5: no model"
            p.wait_for(lambda: said in p["intervene-note"].text)  # the model is looked for in a worker
            assert said in p["intervene-note"].text and "gone.pt is missing" in p["intervene-note"].text
            click(p, "intervene-run")  # nothing is scheduled: said again, and the buttons stay usable
            click(p, "steer-run")
            assert not p["intervene-run"].disabled and not p["steer-run"].disabled
            assert said in p["intervene-note"].text and said in p["steer-note"].text
            assert p["intervene-text"].text == "" and p["steer-clamped"].text == ""
            assert str(tmp_path) not in p["intervene-note"].text + p["steer-note"].text
            p.set("unit", value=2)
            assert said in p["intervene-note"].text  # still said after a change of cell
            open_tab(p, "explain a prediction")
            click(p, "saliency-run")
            p.wait_for(lambda: "cannot explain" in p["saliency-note"].text)  # the job failed in a worker
            assert "cannot explain: orphan.h5: no model" in p["saliency-note"].text
            assert p["saliency-text"].text == "" and not p["saliency-run"].disabled
            assert str(tmp_path) not in p["saliency-note"].text
        finally:
            p.close()


def test_saliency_explains_the_prediction_after_a_position(page, folder):
    start = len(TEXT) + 5  # inside b.py
    p = page(recording="tiny.h5", layer=1, stream="c", unit=2, start=start, window=1000)
    open_tab(p, "explain a prediction")
    assert p["saliency-position"].value == start + 499  # the middle of the visible window
    assert p["saliency-text"].text == "" and "Click a character" in p["saliency-note"].text
    at = start + 300
    p.set("saliency-position", value=at)
    p.set("saliency-window", value="100")
    assert p["saliency-text"].text == ""  # computed on the button, not on a change of input
    click(p, "saliency-run")
    p.wait_for(lambda: p["saliency-text"].text)
    # one span a window character up to the position, then the predicted character, outlined
    assert p.positions("saliency-text") == list(range(at - 99, at + 2))
    assert f'class="d10 mark" title="{at + 1}  ' in p["saliency-text"].text
    rec = open_recording(folder / "tiny.h5")
    predicted = rec.text[at + 1]
    note = html.unescape(p["saliency-note"].text)
    assert f"Predicting {predicted!r} (character {at + 1:,})" in note and "bits" in note

    # the same values from the library, on the same text
    first, values, _ = gradients.saliency(load_model(folder.parent / "tiny.pt"), rec.text[at - 99:at + 2], 99,
                                       window=100)
    assert first == 0 and len(values) == 100
    top = [at - 99 + int(j) for j in np.argsort(-np.abs(values), kind="stable")[:5]]
    listed = [int(x.replace(",", "")) for x in re.findall(r" at ([\d,]+) \(", note.split("Most influential")[1])]
    assert listed == top
    scale = float(np.max(np.abs(values)))
    assert f"{scale:.3g}" in note

    # a change of cell keeps the result; a click on a character explains the prediction after it
    coloured = p["saliency-text"].text
    p.set("unit", value=3)
    assert p["saliency-text"].text == coloured
    p.set("saliency-clicked", text=f"{at + 10} 1")
    p.wait_for(lambda: p.positions("saliency-text")[-1] == at + 11)
    assert p["saliency-position"].value == at + 10

    # the last character of the recording has nothing after it: said, no traceback
    p.set("saliency-position", value=len(rec) - 1)
    click(p, "saliency-run")
    p.wait_for(lambda: "cannot explain" in p["saliency-note"].text)
    assert "is the last of the recording" in html.unescape(p["saliency-note"].text)
    assert p["saliency-text"].text == "" and p.message == "" and not p["saliency-run"].disabled
    rec.close()


def test_saliency_text_is_escaped(page):
    p = page(recording="nasty.h5")
    open_tab(p, "explain a prediction")
    p.set("saliency-position", value=30)
    click(p, "saliency-run")
    p.wait_for(lambda: p["saliency-text"].text)
    out = p["saliency-text"].text + p["saliency-note"].text
    assert "<script>" not in out and "<img" not in out


def test_no_recordings_and_no_model_shows_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr("probe.lm.model.SHIPPED", tmp_path / "missing.pt")
    empty = tmp_path / "recordings"
    with serving(empty) as server:
        p = Page(server)
        try:
            assert "No recordings in" in p.message and "no model to make one" in p.message
            assert not p["body"].visible
        finally:
            p.close()


def test_an_empty_folder_gets_a_default_recording_from_the_shipped_model(folder, tmp_path, monkeypatch,
                                                                          capfd):
    monkeypatch.setattr("probe.lm.model.SHIPPED", folder.parent / "tiny.pt")
    empty = tmp_path / "recordings"
    with serving(empty) as server:
        p = Page(server)  # the server's load hook runs on its first loop turn
        try:
            assert sorted(x.name for x in empty.iterdir())[0] == "stdlib-test.h5"
            assert "recording 100,000 characters of the stdlib test split" in capfd.readouterr().out
            assert p.message == "" and p["recording"].value == "stdlib-test.h5"
            # a bare URL: the opening view, at once or once the analysis is ready
            p.wait_for(lambda: "feature=in_short_string" in p["url-state"].text)
            start = p.positions()[0]
            assert p.positions()[:2] == [start, start + 1] and f"start={start}&" in p["url-state"].text
        finally:
            p.close()


DUMMY_TAB = '''"""A tab for the test: a Div saying how often it was updated and with what."""
from bokeh.models import Div

from ..session import View

TITLE = "dummy"


def build(session) -> View:
    div = Div(text="", name="dummy", disable_math=True)
    calls = 0

    def update(sel):
        nonlocal calls
        calls += 1
        div.text = f"dummy tab: update {calls} with {sel.query()}"

    return View(div, update)
'''


def app_with_one_line_changed(tmp_path: Path, pattern: str, replacement: str) -> Path:
    """A copy of apps/cells whose main.py differs from the real one in exactly one line."""
    app = tmp_path / "cells"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    before = (app / "main.py").read_text()
    after, n = re.subn(pattern, replacement, before, flags=re.M)
    assert n == 1
    (app / "main.py").write_text(after)
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 1
    return app


def test_a_new_tab_is_one_module_and_one_line_in_main(folder, tmp_path):
    app = app_with_one_line_changed(tmp_path, r'^(TABS = \[.*)\]', r'\1, "dummy"]')
    (app / "tabs" / "dummy.py").write_text(DUMMY_TAB)

    with serving(folder, app) as server:
        p = Page(server, recording="tiny.h5")
        try:
            assert p.message == ""
            tabs = p.doc.select_one({"type": Tabs})
            assert [t.title for t in tabs.tabs] == ["cell card", "leaderboard", "select & match",
                                                    "gate saturation", "type your own text", "intervene",
                                                    "explain a prediction", "circuit", "derived features",
                                                    "beyond n-grams", "dummy"]
            assert tabs.tabs[-1].child is p["dummy"]
            assert p["dummy"].text.startswith("dummy tab: update 1 with recording=tiny.h5&layer=0&stream=c&unit=0")
            p.set("unit", value=5)
            assert "update 2 with recording=tiny.h5&layer=0&stream=c&unit=5" in p["dummy"].text
            assert p.positions()[0] == 0  # the rest of the page still works
        finally:
            p.close()


def test_the_match_tab_is_removed_with_one_line_in_main(folder, tmp_path):
    """Select & match is one file: without its name in TABS the page works (URL, text window,
    other tabs), and its URL keys are ignored as any key no tab owns."""
    app = app_with_one_line_changed(tmp_path, r'^(TABS = \[.*)"match", ', r"\1")

    with serving(folder, app) as server:
        p = Page(server, recording="tiny.h5", layer=1, stream="c", unit=7, span="30:34", threshold="0.2",
                 cells="1:c:2")
        try:
            assert p.message == ""
            tabs = p.doc.select_one({"type": Tabs})
            assert [t.title for t in tabs.tabs] == ["cell card", "leaderboard", "gate saturation",
                                                    "type your own text", "intervene", "explain a prediction",
                                                    "circuit", "derived features", "beyond n-grams"]
            assert p["url-state"].text == "recording=tiny.h5&layer=1&stream=c&unit=7&start=0&window=2000&feature=in_string"
            assert p["match-span"] is None and 'class="sel ' not in p["text"].text
            p.wait_for(lambda: "@" in p["card"].text)  # the card's snippets come from a worker
            assert p.positions()[0] == 0 and "@" in p["card"].text
            p.set("unit", value=5)
            assert "unit=5&" in p["url-state"].text and p.message == ""
            open_tab(p, "leaderboard")
            p.wait_for(lambda: len(p["leaderboard"].source.data["unit"]) > 0)
            p.set("live-in", value="def f(x): return x")
            p.wait_for(lambda: p.positions("live"))
            assert len(p.positions("live")) == len("def f(x): return x")
        finally:
            settle(p, "tiny.h5")
            p.close()
        bare = Page(server)  # a bare URL: the opening view, as with every tab
        try:
            bare.wait_for(lambda: "feature=in_short_string" in bare["url-state"].text)
            assert bare.message == ""
        finally:
            bare.close()


def test_select_and_match_lives_in_its_tab_module():
    """Nothing outside tabs/match.py knows select & match: its keys, JavaScript, parsers, index."""
    words = re.compile(r"threshold|PICK_JS|span_picker|parse_span|parse_cells|index_ready|select &(amp;)? match|"
                       r"\bmatching\(|extra\[\"")
    files = [f for f in [*APP.rglob("*.py"), *APP.rglob("*.html")] if f != APP / "tabs" / "match.py"]
    assert len(files) > 10
    for f in files:
        found = words.search(f.read_text())
        assert found is None, f"{f.relative_to(APP)} names {found.group(0)!r}"


def test_tracked_example_positions_exist_in_the_default_recording():
    """Every example URL and span in the app, docs/dashboard.md and docs/screenshots.py names
    stdlib-test.h5 and lies inside it: the shipped model's layers and units, and the first
    DEFAULT_CHARS characters the server records (a README example once pointed at 194,721)."""
    sys.path.insert(0, str(APP.parents[1]))
    from apps.cells.store import DEFAULT_CHARS, DEFAULT_NAME
    model = load_model()
    layers, units = model.layers, model.units
    docs = APP.parents[1] / "docs"
    files = [*APP.rglob("*.py"), docs / "dashboard.md", docs / "screenshots.py"]
    seen = urls = 0
    for f in files:
        text = f.read_text()
        where = f.relative_to(APP.parents[1])
        for name in re.findall(r"[?&`\"]recording=([\w.-]+)", text):
            assert name == DEFAULT_NAME, (where, name)
        urls += len(re.findall(r"[?&`\"]recording=", text))
        for key, a, b in re.findall(r"(span=|like |``\")(\d+):(\d+)", text):
            assert 0 <= int(a) < int(b) <= DEFAULT_CHARS, (where, a, b)
            seen += 1
        for start in re.findall(r"[?&]start=(\d+)", text):
            assert int(start) < DEFAULT_CHARS, (where, start)
        for layer in re.findall(r"[?&]layer=(\d+)", text):
            assert int(layer) < layers, (where, layer)
        for unit in re.findall(r"[?&]unit=(\d+)", text):
            assert int(unit) < units, (where, unit)
        for cells in re.findall(r"[?&]cells=([\w:,]+)", text):
            for cell in cells.split(","):
                layer, stream, unit = cell.split(":")
                assert int(layer) < layers and stream in "ifgoch" and int(unit) < units, (where, cell)
    assert seen >= 4 and urls >= 12


def test_the_dashboard_page_shows_every_tab_with_the_url_of_its_picture():
    """docs/dashboard.md: a picture of the window and of every tab in TABS, each followed by
    the URL docs/screenshots.py took it at, in the same order; the pictures are there."""
    import importlib.util
    docs = APP.parents[1] / "docs"
    spec = importlib.util.spec_from_file_location("screenshots", docs / "screenshots.py")
    shots = importlib.util.module_from_spec(spec)
    sys.modules["screenshots"] = shots  # its dataclasses look their module up
    try:
        spec.loader.exec_module(shots)
    finally:
        del sys.modules["screenshots"]
    page = (docs / "dashboard.md").read_text()
    pictures = re.findall(r"!\[[^\]]+\]\(img/tab-([\w-]+)\.png\)", page)
    urls = re.findall(r"^`(recording=[^`]+)`$", page, flags=re.M)
    assert pictures == [s.name for s in shots.SHOTS] and urls == [s.query for s in shots.SHOTS]
    tabs = re.search(r"^TABS = (\[.*\])", (APP / "main.py").read_text(), flags=re.M).group(1)
    titles = {s.title for s in shots.SHOTS}
    for name in eval(tabs):  # noqa: S307 - our own list literal
        title = re.search(r'^TITLE = "(.*)"', (APP / "tabs" / f"{name}.py").read_text(), flags=re.M).group(1)
        assert title in titles, name
    for name in pictures:
        assert (docs / "img" / f"tab-{name}.png").stat().st_size > 10_000, name


def test_lru_keeps_the_most_recently_used_within_its_limit():
    sys.path.insert(0, str(APP.parents[1]))
    from apps.cells.lru import LRU
    lru = LRU(3)
    for k in "abcd":
        lru.put(k, k.upper())
    assert list(lru) == ["b", "c", "d"] and "a" not in lru and lru.weight == 3
    assert lru.get("b") == "B" and list(lru) == ["c", "d", "b"]  # b is now the most recent
    lru.put("e", "E")
    assert list(lru) == ["d", "b", "e"] and lru.get("c") is None and lru.get("c", 0) == 0
    lru.put("d", "D2")  # replacing moves it to the end, not a second entry
    assert list(lru) == ["b", "e", "d"] and len(lru) == 3 and lru.get("d") == "D2"
    assert lru.pop("b") == "B" and lru.pop("b") is None and len(lru) == 2

    sized = LRU(10, weigh=len)  # by weight: at most 10 in total, the newest kept however heavy
    sized.put(1, "xxxx")
    sized.put(2, "xxxxxx")
    assert list(sized) == [1, 2] and sized.weight == 10  # exactly the limit: both stay
    sized.put(3, "x")
    assert list(sized) == [2, 3] and sized.weight == 7
    sized.put(4, "x" * 25)
    assert list(sized) == [4] and sized.weight == 25
    sized.clear()
    assert len(sized) == 0 and sized.weight == 0
    with pytest.raises(ValueError):
        LRU(0)


def test_every_store_cache_is_an_lru_used_under_the_lock(tmp_path):
    """Every cache the Store keeps is bounded (one LRU helper), and each piece of its shared
    state is read and written inside ``with self._lock`` (or handed to ``_kept``, which takes
    it); read from store.py's source, so a new unlocked use fails here."""
    import ast
    sys.path.insert(0, str(APP.parents[1]))
    from apps.cells.lru import LRU
    from apps.cells.store import Store
    store = Store(tmp_path)
    try:
        state = {k for k, v in vars(store).items() if isinstance(v, (dict, list, set, LRU))}
        caches = {k for k, v in vars(store).items() if isinstance(v, LRU)}
        assert state - caches == {"_progress"}  # a pass's progress, dropped when the pass ends
        assert caches == {"_recordings", "_errors", "_analyses", "_features", "_frames", "_models", "_columns",
                          "_fallback", "_held", "_jobs"}  # _analyses: (analysis, summaries) of a recording
        assert all(v.limit >= 1 for k, v in vars(store).items() if k in caches)
    finally:
        store.close()
    tree = ast.parse((APP / "store.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Store")
    parents = {child: node for node in ast.walk(cls) for child in ast.iter_child_nodes(node)}

    def locked(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.With) and any(ast.unparse(i.context_expr) == "self._lock" for i in node.items):
                return True
            if isinstance(node, ast.FunctionDef):
                return False
        return False

    unlocked = []
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef) or method.name == "__init__":
            continue
        for node in ast.walk(method):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self" and node.attr in state:
                call = parents.get(node)
                handed = isinstance(call, ast.Call) and ast.unparse(call.func) == "self._kept" and node in call.args
                if not (locked(node) or handed):
                    unlocked.append(f"{method.name}: self.{node.attr} (line {node.lineno})")
    assert unlocked == []


# ---- select & match ---------------------------------------------------------------------------

def stacked(p: Page) -> list[tuple[str, list[int]]]:
    """The stacked rows as (cell label, positions of its characters), block after block."""
    rows = re.findall(r'<span class="lab">([^<]*)</span>(<div class="probe-text pickable">.*?</div>)',
                      p["match-rows"].text)
    return [(label, [int(x) for x in re.findall(r'title="(\d+) ', body)]) for label, body in rows]


def test_selecting_a_span_lists_its_cells_and_finds_their_matches(page, folder):
    a = TEXT.index("{name}!")  # inside the f-string: layer 1 has cells on there
    span = (a, a + 4)
    p = page(recording="tiny.h5", layer=1, stream="c", unit=0, window=1000)
    open_tab(p, "select & match")
    assert "Select a span" in p["match-cells"].text and p["match-table"].source.data["start"] == []
    p.set("match-span", value=f"{a}:{a + 4}")  # as a click-drag in the text writes it
    assert p.message == ""
    rec = open_recording(folder / "tiny.h5")
    units = match.select(rec, 1, "c", *span, threshold=0.3)
    assert len(units) >= 2
    assert re.findall(r'class="cell">1:c:(\d+)<', p["match-cells"].text) == [str(u) for u in units]
    assert f"&span={a}:{a + 4}" in p["url-state"].text and "threshold" not in p["url-state"].text
    assert p["text"].text.count('class="sel ') == 4  # the span is underlined in the window

    # the matches: the library's, with a snippet each coloured by the count of those cells on
    hits = match.search(rec, 1, "c", units, threshold=0.3, top=50)
    p.wait_for(lambda: p["match-table"].source.data["start"])  # searched in a worker
    data = p["match-table"].source.data
    assert len(hits) > 3
    for key in ("start", "stop", "n_on", "n_union"):
        assert data[key] == hits[key].tolist(), key
    assert len(data["snippet"]) == len(hits) and "<script" not in "".join(data["snippet"])
    full = f's{len(render.SEQUENTIAL) - 1}'  # all of the cells on: the darkest step
    assert re.search(rf'class="hit {full}"', data["snippet"][0])  # the match itself: underlined
    shared = match.explain(rec, hits)
    assert p["match-explain"].source.data["feature"] == shared["feature"].tolist()
    assert p["match-explain"].source.data["enrichment"] == pytest.approx(shared["enrichment"].tolist(), nan_ok=True)

    # stacked rows: one per cell, character by character over the same positions
    rows = stacked(p)
    labels = [f"1:c:{u}" for u in units]
    assert [label for label, _ in rows[:len(units)]] == labels
    for i in range(0, len(rows), len(units)):
        block = rows[i:i + len(units)]
        assert [label for label, _ in block] == labels and len({tuple(pos) for _, pos in block}) == 1

    # a click on a match shows it: the window moves there and marks it
    far = max(range(len(hits)), key=lambda i: hits["start"][i])
    start, stop = int(hits["start"][far]), int(hits["stop"][far])
    p.locked(lambda: p["match-table"].source.selected.update(indices=[far]))
    assert start in p.positions() and p["start"].value == p.positions()[0] > 0
    assert p["text"].text.count('class="hit ') == stop - start
    assert f"start={p['start'].value}&" in p["url-state"].text and f"span={a}:{a + 4}" in p["url-state"].text

    # another threshold: the cells and the URL follow
    p.set("match-threshold", value=0.2)
    assert "threshold=0.2" in p["url-state"].text
    assert re.findall(r'class="cell">1:c:(\d+)<', p["match-cells"].text) == [
        str(u) for u in match.select(rec, 1, "c", *span, threshold=0.2)]
    rec.close()

    # the same selection from its URL
    q = page(recording="tiny.h5", layer=1, stream="c", span=f"{a}:{a + 4}", threshold=0.2)
    assert q.message == "" and q["match-cells"].text == p["match-cells"].text
    assert q["match-span"].value == f"{a}:{a + 4}" and q["match-threshold"].value == 0.2


def test_typed_cells_are_stacked_rows(page):
    p = page(recording="tiny.h5", layer=1, stream="c", window=1000)
    p.set("match-cells-in", value="0:c:1, 1:h:3 1:f:0")
    assert p.message == "" and "cells=0:c:1,1:h:3,1:f:0" in p["url-state"].text
    rows = stacked(p)
    assert [label for label, _ in rows[:3]] == ["0:c:1", "1:h:3", "1:f:0"]
    assert len(rows) == 3 * -(-1000 // 120)  # the window in lines of 120, three rows each
    assert sum(len(pos) for _, pos in rows) == 3 * 1000
    assert rows[0][1] == rows[1][1] == rows[2][1] == list(range(120))
    f_row = re.findall(r'<span class="lab">1:f:0</span><div class="probe-text pickable">(.*?)</div>',
                       p["match-rows"].text)[0]
    assert re.search(r'class="s\d+"', f_row) and not re.search(r'class="d\d+"', f_row)  # a gate's palette
    click(p, "match-clear")
    assert "cells" not in p["url-state"].text and p["match-rows"].text == ""
    q = page(recording="tiny.h5", cells="1:c:5")
    assert [label for label, _ in stacked(q)[:1]] == ["1:c:5"]


def test_the_search_waits_for_its_index_without_blocking_the_page(page):
    """The on/off index is made ready in the background: until then the cells are listed and
    the tab says the index is being built; the matches follow when it is ready."""
    from apps.cells.tabs.match import index_key
    p = page(recording="tiny.h5", layer=1, stream="c", threshold=0.25)
    store = p.doc.session_context.server_context.cells
    gate = threading.Event()  # the store's background work for the index of (layer 1, c, 0.25) waits on it
    pending = store.background(index_key("tiny.h5", 1, "c", 0.25), gate.wait, 60)
    a = TEXT.index("{name}!")
    p.set("match-span", value=f"{a}:{a + 4}")
    assert "building the on/off index of layer 1 c at 0.25" in p["match-note"].text
    assert 'class="cell">1:c:' in p["match-cells"].text and p["match-table"].source.data["start"] == []
    assert not pending.done()
    gate.set()
    p.wait_for(lambda: len(p["match-table"].source.data["start"]) > 0)
    assert "best places over the whole recording" in p["match-note"].text and p.message == ""


@pytest.mark.parametrize("arguments, said", [
    ({"span": "30:20", "threshold": "1.5", "cells": "1:c:2, 9:c:1, 1:c:99"}, [
        "span=30:20 is empty (its stop must be after its start); no span selected",
        "threshold=1.5 is out of range for stream c: tanh(c) lies between -1 and 1, so a threshold must "
        "lie strictly inside; using 0.3",
        "no cell 9:c:1, 1:c:99 in tiny.h5 (layers 0..1, streams i f g o c h, units 0..7); left out of the rows"]),
    ({"span": "10:99999", "stream": "i", "threshold": "-0.2", "cells": "1:c:2, 1:q:3, x"}, [
        "span=10:99999 is outside tiny.h5 (characters 0:", "threshold=-0.2 is out of range for stream i",
        "&#x27;x&#x27; not LAYER:STREAM:UNIT", "no cell 1:q:3 in tiny.h5"]),
    ({"span": "-3:5"}, ["span=-3:5 is outside tiny.h5"]),
    ({"span": "0:2100"}, ["span=0:2100 is longer than 2,000 characters; no span selected"]),
    ({"span": "abc", "threshold": "lots"}, ["span &#x27;abc&#x27; is not START:STOP",
                                            "threshold &#x27;lots&#x27; is not a number"]),
])
def test_bad_search_input_in_the_url_is_said(page, arguments, said):
    p = page(recording="tiny.h5", layer=1, **arguments)
    for message in said:
        assert message in p.message
    assert "Traceback" not in p.message and p.positions()[0] == 0  # the rest of the page works
    state = p["url-state"].text
    assert "threshold" not in state and "span" not in state
    if "cells" in arguments:
        assert "cells=1:c:2" in state and [label for label, _ in stacked(p)[:1]] == ["1:c:2"]


def test_a_span_with_no_cell_on_says_so_and_suggests_a_lower_threshold(page):
    a = TEXT.index("'x'")
    p = page(recording="tiny.h5", layer=1, stream="c", span=f"{a}:{a + 2}")
    said = (f"no unit of layer 1 c is &gt;= 0.3 on every character of {a}:{a + 2} and off just before it; "
            "try a lower threshold or a shorter span")
    assert said in p.message and said in p["match-cells"].text
    assert p["match-table"].source.data["start"] == [] and "--" not in p.message
    assert f"span={a}:{a + 2}" in p["url-state"].text  # kept: a lower threshold may find cells
    p.set("match-span", value="12-15")  # typed, malformed: said, the selection stays
    assert "span &#x27;12-15&#x27; is not START:STOP" in p.message
    assert f"span={a}:{a + 2}" in p["url-state"].text
    p.set("match-span", value="")  # cleared
    assert p.message == "" and "span" not in p["url-state"].text


# ---- other model kinds: GRU and plain RNN --------------------------------------------------------

@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> Path:
    """recordings/: gru.h5 and rnn.h5 (two layers of eight units each), their checkpoints beside."""
    root = tmp_path_factory.mktemp("kinds")
    recs = root / "recordings"
    recs.mkdir()
    for cell in ("gru", "rnn"):
        torch.manual_seed(0)
        model = CharRNN(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4, cell=cell)
        with torch.no_grad():  # larger weights, so gates move visibly
            for p in model.rnn.parameters():
                p.mul_(3)
        save_checkpoint(root / f"{cell}.pt", model.eval())
        record(load_model(root / f"{cell}.pt"), [("a.py", TEXT), ("b.py", TEXT.replace("Point", "Line") * 4)],
               recs / f"{cell}.h5", dtype="float32", progress=False)
    return recs


@pytest.fixture(scope="module")
def kinds_server(kinds):
    with serving(kinds) as s:
        yield s


@pytest.fixture
def kinds_page(kinds_server):
    yield from pages(kinds_server)


def test_a_gru_recording_shows_its_own_streams(kinds_page):
    p = kinds_page(recording="gru.h5", layer=1, stream="z", unit=3)
    assert p.message == "" and p.positions()[0] == 0
    assert re.search(r'class="s\d+"', p["text"].text)  # a gate: the sequential palette
    assert [value for value, _ in p["stream"].options] == ["r", "z", "n", "h"]
    assert dict(p["stream"].options)["r"] == "r · reset gate"
    p.set("stream", value="n")
    assert re.search(r'class="d\d+"', p["text"].text) and "stream=n" in p["url-state"].text
    assert p.message == ""
    q = kinds_page(recording="gru.h5")  # no stream asked for: h, silently
    assert q.message == "" and q["stream"].value == "h"


def test_a_stream_the_recording_lacks_is_said_and_another_shown(kinds_page):
    p = kinds_page(recording="gru.h5", stream="c", unit=2)
    assert "no stream c in gru.h5 (streams are r z n h); showing h" in p.message
    assert p["stream"].value == "h" and "stream=h" in p["url-state"].text and p.positions()[0] == 0
    p.set("recording", value="rnn.h5")  # h is recorded by every kind: kept
    assert p.message == "" and [v for v, _ in p["stream"].options] == ["h"]
    p.set("recording", value="gru.h5")
    p.set("stream", value="z")
    p.set("recording", value="rnn.h5")
    assert "no stream z in rnn.h5 (streams are h); showing h" in p.message
    assert p["stream"].value == "h" and p.positions()[0] == 0


def test_saturation_plots_the_recordings_gates(kinds_page):
    p = kinds_page(recording="gru.h5")
    p.wait_for(lambda: "click a dot" in p["saturation-note"].text)
    names = [f"saturation-{g}" for g in "ifozr"]
    assert [n for n in names if p.doc.select_one({"name": n}) is not None] == ["saturation-z", "saturation-r"]
    sat = p["saturation-z"].renderers[0].data_source
    assert len(sat.data["unit"]) == 2 * 8
    p.locked(lambda: sat.selected.update(indices=[9]))
    assert (p["stream"].value, p["unit"].value) == ("z", sat.data["unit"][9])

    q = kinds_page(recording="rnn.h5")
    assert "this model has no gates" in q["saturation-note"].text
    assert all(q.doc.select_one({"name": n}) is None for n in names)
    q.set("recording", value="gru.h5")
    q.wait_for(lambda: "click a dot" in q["saturation-note"].text)
    assert q.doc.select_one({"name": "saturation-r"}) is not None


@pytest.mark.parametrize("recording, stream, pinned", [("gru.h5", "z", "h"), ("rnn.h5", "h", "h")])
def test_intervene_zeroes_and_steers_a_gru_or_rnn_unit(kinds_page, recording, stream, pinned):
    p = kinds_page(recording=recording, layer=1, stream=stream, unit=1)
    open_tab(p, "intervene")
    click(p, "intervene-run")
    p.wait_for(lambda: p["intervene-text"].text)
    assert f"<th>zeroing 1:{pinned}:1</th>" in p["intervene-summary"].text and p.message == ""
    p.set("steer-prime", value="def ")
    p.set("steer-length", value=20)
    click(p, "steer-run")
    p.wait_for(lambda: p["steer-clamped"].text)
    assert f"with 1:{pinned}:1=" in p["steer-clamped"].text and p.message == ""


@pytest.mark.parametrize("recording, stream", [("gru.h5", "z"), ("rnn.h5", "h")])
def test_typed_text_and_the_opening_view_work_for_any_kind(kinds_page, kinds, recording, stream):
    p = kinds_page(recording=recording, layer=1, stream=stream, unit=2)
    p.set("live-in", value="def f(x): return x")
    p.wait_for(lambda: p.positions("live"))
    assert len(p.positions("live")) == len("def f(x): return x") and p.message == ""
    before = p["live"].text
    p.set("unit", value=3)
    assert p["live"].text != before

    bare = kinds_page()  # the opening view: the first recording's best in_short_string cell
    with open_recording(kinds / "gru.h5") as rec:
        best = analysis.analysis(rec)["best"]
    top = best[best["feature"] == "in_short_string"].sort_values("rank").iloc[0]
    bare.wait_for(lambda: "feature=in_short_string" in bare["url-state"].text)
    assert bare.message == ""
    assert f"recording=gru.h5&layer={top['layer']}&stream={top['stream']}&unit={top['unit']}&" in \
        bare["url-state"].text
