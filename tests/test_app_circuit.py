"""The dashboard's circuit tab (issue 27): a click on a character draws the selected cell's
circuit there (``probe.causal.circuit``) with its check, a click on a node opens that cell,
and the patching sweep (``probe.causal.patch`` on pairs from ``probe.causal.pairs``) lists
the layer's cells of largest effect beside their random baseline. The numbers on the page
are the library's, run here on the same text; every refusal is one line."""
from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import with_directions
from test_app import TEXT, Page, click, folder, kinds, open_tab, orphan_recordings, pages, serving  # noqa: F401 - fixtures
from test_browser import COLOURED, WALK, chromium, served, wait  # noqa: F401 - fixtures

from probe.causal import circuit, patch
from probe.causal import pairs as pairs_mod
from probe.errors import ProbeError
from probe.lm.model import load_model
from probe.output import browser
from probe.recording.reader import open_recording

B_START = len(TEXT)  # tiny.h5's second document, b.py, starts here


@pytest.fixture(scope="module")
def server(folder):  # noqa: F811 - the fixture imported above
    with serving(folder) as s:
        yield s


@pytest.fixture
def page(server):
    yield from pages(server)


@pytest.fixture(scope="module")
def kinds_server(kinds):  # noqa: F811
    with serving(kinds) as s:
        yield s


@pytest.fixture
def kinds_page(kinds_server):
    yield from pages(kinds_server)


def check_numbers(p: Page) -> dict:
    """The check line's numbers by class (— is NaN)."""
    got = dict(re.findall(r'<b class="([\w-]+)">([^<]*)</b>', p["circuit-check"].text))
    return {k: float("nan") if v == "—" else float(v.replace(",", "")) for k, v in got.items()}


def drawn(p: Page, at: int) -> None:
    """Click character ``at`` (as POINT_JS writes it) and wait for its graph."""
    clicks = int((p["circuit-clicked"].text or "0 0").split()[1]) + 1  # POINT_JS counts clicks
    p.set("circuit-clicked", text=f"{at} {clicks}")
    p.wait_for(lambda: f"at character {at:,} (" in p["circuit-note"].text or "no circuit" in p["circuit-note"].text)
    assert "no circuit" not in p["circuit-note"].text, p["circuit-note"].text


def library_circuit(model, rec, cell, at: int, first: int, **kw) -> dict:
    return circuit.circuit(model, rec.text[first:at + 1], cell, at - first, steps=kw.get("steps", 20),
                           top=kw.get("top", 15), seed=0)


def assert_graph_is(p: Page, res: dict, at: int) -> None:
    """Nodes, edges, widths and the check on the page are the library's ``res``."""
    nodes, edges = p["circuit-nodes"].data, p["circuit-edges"].data
    want = sorted((f"{e['from']['layer']}:{e['from']['stream']}:{e['from']['unit']}", e["from"]["steps_back"])
                  for e in res["edges"])
    assert sorted(zip(nodes["cell"], nodes["steps_back"])) == want
    assert len(want) == len(res["edges"]) > 0
    assert list(nodes["position"]) == [at - b for b in nodes["steps_back"]]  # recording positions
    assert np.allclose(nodes["weight"], [e["weight"] for e in res["edges"]], atol=1e-6)
    assert all(x == b for x, b in zip(nodes["x"], nodes["steps_back"]))  # x: steps back
    # one row per upstream cell, the cell's own on top
    t = res["target"]
    labels = p["circuit-graph"].yaxis[0].major_label_overrides
    rows = {labels[y] for y in nodes["y"]}
    assert rows == {c for c, _ in want}
    assert labels[max(labels)] == f"{t['layer']}:{t['stream']}:{t['unit']}" and labels[-1] == "read"
    # each edge into the cell, as wide as its |weight| (the largest 12 px), red + and blue −
    w = np.abs(np.array(edges["weight"]))
    assert np.allclose(edges["width"], 1.5 + 10.5 * w / w.max())
    order = np.argsort(w)
    assert np.all(np.diff(np.array(edges["width"])[order]) >= 0) and max(edges["width"]) == pytest.approx(12)
    assert [c == "#b2182b" for c in edges["color"]] == [x >= 0 for x in edges["weight"]]
    assert set(edges["x1"]) == {0} and set(edges["y1"]) == {max(labels)}
    # the check beside the graph: the library's numbers
    got, c = check_numbers(p), res["check"]
    assert got["k"] == c["k"] == len(res["edges"])
    assert got["top-k-effect"] == pytest.approx(c["top_k_effect"], rel=1e-3, abs=1e-6)
    assert got["random-effect"] == pytest.approx(c["random_effect"], rel=1e-3, abs=1e-6)
    assert got["ratio"] == pytest.approx(c["ratio"], abs=0.051)
    assert f"median of {c['random_sets']} draws" in p["circuit-check"].text
    assert p["circuit-graph"].visible and p.message == ""


def test_a_click_on_a_character_draws_the_circuit_there(page, folder):  # noqa: F811
    start = B_START + 5
    p = page(recording="tiny.h5", layer=1, stream="c", unit=2, start=start, window=1000, feature="in_comment")
    open_tab(p, "circuit")
    assert "Click a character" in p["circuit-note"].text and not p["circuit-graph"].visible
    assert p["circuit-nodes"].data["x"] == [] and p["circuit-check"].text == ""
    p.set("unit", value=3)  # a change of selection computes nothing
    p.set("unit", value=2)
    assert p["circuit-nodes"].data["x"] == [] and not p["circuit-graph"].visible

    at = start + 300
    drawn(p, at)
    assert p["circuit-position"].value == at
    rec = open_recording(folder / "tiny.h5")
    model = load_model(folder.parent / "tiny.pt")
    res = library_circuit(model, rec, (1, "c", 2), at, B_START)  # its document, b.py, up to the position
    assert_graph_is(p, res, at)
    note = html.unescape(p["circuit-note"].text)
    assert f"1:c:2 at character {at:,} ({rec.text[at]!r}): value {res['target']['value']:+.3f}" in note
    assert "from the start of its document" in note
    # the characters read, under their steps back
    chars = p["circuit-chars"].data
    assert chars["position"] == [at - s for s in range(21)] and chars["x"] == list(range(21))
    assert chars["char"][0] == {"\n": "↵", " ": "␣"}.get(rec.text[at], rec.text[at])

    # the button does the same with fewer steps and edges
    p.set("circuit-steps", value=5)
    p.set("circuit-top", value=4)
    click(p, "circuit-run")
    p.wait_for(lambda: len(p["circuit-nodes"].data["x"]) == 4)
    assert_graph_is(p, library_circuit(model, rec, (1, "c", 2), at, B_START, steps=5, top=4), at)
    assert max(p["circuit-nodes"].data["steps_back"]) <= 5

    # another feature or window keeps the circuit; another cell drops it
    p.set("feature", value="in_string")
    assert p["circuit-graph"].visible and len(p["circuit-nodes"].data["x"]) == 4
    p.set("unit", value=3)
    assert not p["circuit-graph"].visible and p["circuit-nodes"].data["x"] == [] and p["circuit-check"].text == ""
    assert "the cells that drive 1:c:3" in p["circuit-note"].text
    rec.close()


def test_a_node_click_opens_that_cell(page):
    at = B_START + 400
    p = page(recording="tiny.h5", layer=1, stream="h", unit=5, start=B_START, window=1000)
    open_tab(p, "circuit")
    drawn(p, at)
    nodes = p["circuit-nodes"].data
    j = next(j for j, c in enumerate(nodes["cell"]) if c != "1:h:5")
    layer, stream, unit, back = nodes["layer"][j], nodes["stream"][j], nodes["unit"][j], nodes["steps_back"][j]
    p.locked(lambda: p["circuit-nodes"].selected.update(indices=[j]))
    assert (p["layer"].value, p["stream"].value, p["unit"].value) == (str(layer), stream, unit)
    assert f"layer={layer}&stream={stream}&unit={unit}&" in p["url-state"].text
    assert p.doc.title == f"cells · tiny.h5 layer {layer} {stream} unit {unit}"
    assert p["circuit-position"].value == at - back  # draw follows it upstream
    assert not p["circuit-graph"].visible and p["circuit-check"].text == ""  # the old cell's circuit is gone
    click(p, "circuit-run")
    p.wait_for(lambda: p["circuit-nodes"].data["x"] != [])
    assert f"{layer}:{stream}:{unit} at character {at - back:,}" in p["circuit-note"].text


def test_patching_lists_cells_with_their_random_baseline(page, folder):  # noqa: F811
    p = page(recording="tiny.h5", layer=1, stream="c", unit=2, feature="in_short_string")
    open_tab(p, "circuit")
    assert "Press patch" in p["circuit-patch-note"].text and not p["circuit-patch"].visible
    click(p, "circuit-patch-run")
    p.wait_for(lambda: p["circuit-patch-bars"].data["cell"] != [] or "no patching" in p["circuit-patch-note"].text)
    bars = p["circuit-patch-bars"].data
    rec = open_recording(folder / "tiny.h5")
    docs = [(n, rec.text[a:b]) for n, a, b in zip(rec.documents["name"], rec.documents["start"],
                                                     rec.documents["stop"])]
    made, _ = pairs_mod.pairs("in_short_string", docs, 40, 0)
    res = patch.effects(load_model(folder.parent / "tiny.pt"), made, layer=1, stream="c", random=8, seed=0)
    rows = sorted(res["rows"], key=lambda r: -abs(r["effect_bits"]))[:12]
    assert bars["cell"] == [f"1:c:{r['unit']}" for r in rows] and len(rows) == 8  # eight units, all listed
    assert np.allclose(bars["effect_bits"], [r["effect_bits"] for r in rows], atol=1e-6)
    assert np.allclose(bars["random_median"], [r["random_median"] for r in rows], atol=1e-6)
    assert np.allclose(np.nan_to_num(bars["iia"], nan=-1), np.nan_to_num([r["iia"] for r in rows], nan=-1))
    assert all(np.isfinite(bars["random_median"])) and all(b > 0 for b in bars["random_median"])
    assert p["circuit-patch"].visible and list(p["circuit-patch"].y_range.factors) == bars["cell"][::-1]
    assert bars["outline"][bars["unit"].index(2)] == "#000"  # the shown cell outlined
    note = html.unescape(p["circuit-patch-note"].text)
    assert f"{len(made)} pairs for in_short_string" in note and "1:c:2:" in note and "random cells" in note
    # a change of unit keeps the sweep (the layer's), outlining another bar; a bar click opens its cell
    p.set("unit", value=3)
    assert p["circuit-patch-bars"].data["outline"][bars["unit"].index(3)] == "#000"
    j = bars["unit"].index(5)
    p.locked(lambda: p["circuit-patch-bars"].selected.update(indices=[j]))
    assert (p["layer"].value, p["stream"].value, p["unit"].value) == ("1", "c", 5)
    # another layer or feature drops it
    p.set("layer", value="0")
    assert not p["circuit-patch"].visible and "Press patch" in p["circuit-patch-note"].text
    rec.close()


def test_a_feature_without_pairs_gets_its_note(page):
    p = page(recording="tiny.h5", feature="in_string")
    open_tab(p, "circuit")
    said = "no counterfactual pairs are made for in_string: patching needs one of in_short_string, in_comment, " \
           "bracket_depth, indent, column"
    assert said in p["circuit-patch-note"].text
    click(p, "circuit-patch-run")
    assert said in p["circuit-patch-note"].text and not p["circuit-patch-run"].disabled
    assert p["circuit-patch-bars"].data["cell"] == [] and p.message == ""
    p.set("feature", value="indent")
    assert "Press patch" in p["circuit-patch-note"].text


def test_a_bad_position_is_one_line(page, folder):  # noqa: F811
    p = page(recording="tiny.h5", layer=0, stream="h", unit=1)
    open_tab(p, "circuit")
    T = len(open_recording(folder / "tiny.h5"))
    for at, said in [(T + 5, f"no circuit: no character {T + 5:,}: positions are 0..{T - 1:,}"),
                     (B_START, f"no circuit: character {B_START:,} is the first of document b.py"),
                     (0, "no circuit: character 0 is the first of document a.py")]:
        p.set("circuit-position", value=at)
        click(p, "circuit-run")
        p.wait_for(lambda: "no circuit" in p["circuit-note"].text)
        assert said in html.unescape(p["circuit-note"].text)
        assert not p["circuit-graph"].visible and not p["circuit-run"].disabled and p.message == ""
        p.set("unit", value=2)  # back to the idle note
        p.set("unit", value=1)


def test_text_is_escaped(page):
    p = page(recording="nasty.h5", layer=0, stream="c", unit=1)
    open_tab(p, "circuit")
    drawn(p, 1)  # after "<"
    out = p["circuit-note"].text + p["circuit-check"].text
    assert "<script" not in out and "&#x27;s&#x27;" in out


def test_a_derived_stream_is_said(folder, tmp_path):  # noqa: F811
    """A read-out (probe encode) is not a cell of the model: no circuit, nothing to patch."""
    recs = tmp_path / "recordings"
    recs.mkdir()
    with_directions(folder / "tiny.h5", recs, W=torch.ones(8, 2), b=(0.0, 0.0))
    with serving(recs) as server:
        p = Page(server, recording="tiny.h5", layer=1, stream="dir", unit=1, feature="in_short_string")
        try:
            open_tab(p, "circuit")
            said = "dir is a derived stream (a read-out of many cells, not a cell of the model)"
            assert said in p["circuit-note"].text and said in p["circuit-patch-note"].text
            p.set("circuit-clicked", text="300 1")
            click(p, "circuit-patch-run")
            assert said in p["circuit-note"].text and said in p["circuit-patch-note"].text
            assert not p["circuit-graph"].visible and not p["circuit-patch"].visible
            assert not p["circuit-run"].disabled and not p["circuit-patch-run"].disabled and p.message == ""
            p.set("stream", value="h")  # a recorded stream: drawn
            drawn(p, 300)
            assert p["circuit-graph"].visible
        finally:
            p.close()


def test_a_recording_without_its_model_is_said(tmp_path, monkeypatch):
    recs = orphan_recordings(tmp_path, monkeypatch)
    with serving(recs) as server:
        p = Page(server, recording="orphan.h5", feature="in_short_string")
        try:
            open_tab(p, "circuit")
            said = "no circuit: orphan.h5: no model"
            p.wait_for(lambda: said in p["circuit-note"].text)  # looked for in a worker when the tab opens
            p.set("circuit-clicked", text="40 1")
            click(p, "circuit-patch-run")
            assert said in p["circuit-note"].text and "no patching: orphan.h5: no model" in p["circuit-patch-note"].text
            assert not p["circuit-run"].disabled and str(tmp_path) not in p["circuit-note"].text
            assert p.message == ""
        finally:
            p.close()


@pytest.mark.parametrize("recording, stream, patched", [("gru.h5", "z", "h"), ("rnn.h5", "h", "h")])
def test_gru_and_rnn_recordings(kinds_page, kinds, recording, stream, patched):  # noqa: F811
    start = len(TEXT)
    p = kinds_page(recording=recording, layer=1, stream=stream, unit=1, start=start, window=1000,
                   feature="in_short_string")
    open_tab(p, "circuit")
    at = start + 250
    drawn(p, at)
    rec = open_recording(kinds / recording)
    model = load_model(kinds.parent / recording.replace(".h5", ".pt"))
    assert_graph_is(p, library_circuit(model, rec, (1, stream, 1), at, start), at)
    assert set(p["circuit-nodes"].data["stream"]) <= {"h"}  # a GRU's and an RNN's state: h
    click(p, "circuit-patch-run")
    p.wait_for(lambda: p["circuit-patch-bars"].data["cell"] != [] or "no patching" in p["circuit-patch-note"].text)
    assert all(c.startswith(f"1:{patched}:") for c in p["circuit-patch-bars"].data["cell"])
    assert "no patching" not in p["circuit-patch-note"].text and p.message == ""
    rec.close()


@pytest.mark.skipif(not browser.available(), reason="needs Debian chromium and chromium-driver")
def test_in_chromium_a_click_on_a_character_and_on_a_node(served, chromium):  # noqa: F811
    """The real page: a click on a character (POINT_JS) draws the circuit, a click on a node
    (the graph's tap tool) opens that cell."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    d = chromium
    d.get(served + f"?recording=tiny.h5&layer=1&stream=c&unit=1&start={B_START}&window=1000")
    d.execute_script(WALK)
    wait(d, lambda d: d.execute_script(COLOURED))
    tab = wait(d, lambda d: d.execute_script("return walkAll('.bk-tab').find(t => t.textContent.trim() === 'circuit')"))
    ActionChains(d).click(tab).perform()
    at = B_START + 120
    char = wait(d, lambda d: d.execute_script(
        f"return walkAll('.probe-text.pickable span[title]').find(s => s.title.startsWith('{at} '))"))
    ActionChains(d).click(char).perform()
    m = "const m = (name) => Bokeh.documents[0].get_model_by_name(name);"
    wait(d, lambda d: d.execute_script(m + "return m('circuit-check').text.includes('check: zeroing')"))
    assert f"at character {at:,}" in d.execute_script(m + "return m('circuit-note').text")
    # click a node of another cell, at its pixel from the plot's own scales
    node = d.execute_script(m + """
        const src = m('circuit-nodes').data, j = src.cell.findIndex(c => c !== '1:c:1');
        const view = Bokeh.index.find_one(m('circuit-graph'));
        view.el.scrollIntoView();
        const r = view.canvas_view.el.getBoundingClientRect();
        return {cell: src.cell[j], x: r.left + view.frame.x_scale.compute(src.x[j]),
                y: r.top + view.frame.y_scale.compute(src.y[j])};""")
    layer, stream, unit = node["cell"].split(":")
    pointer = ActionBuilder(d)
    pointer.pointer_action.move_to_location(int(node["x"]), int(node["y"])).click()
    pointer.perform()
    wait(d, lambda d: f"layer={layer}&stream={stream}&unit={unit}&" in d.current_url)
    assert [e for e in d.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_newer_click_supersedes_the_older(page):
    p = page(recording="tiny.h5", layer=1, stream="h", unit=3, start=B_START, window=1000)
    open_tab(p, "circuit")
    first, last = B_START + 200, B_START + 260
    p.set("circuit-clicked", text=f"{first} 1")
    p.set("circuit-clicked", text=f"{last} 2")  # before the first is drawn
    p.wait_for(lambda: f"at character {last:,} (" in p["circuit-note"].text)
    assert set(p["circuit-nodes"].data["position"]) <= set(range(last - 20, last + 1))
    assert p["circuit-position"].value == last


def test_a_state_the_models_layer_lacks_is_one_line(kinds):  # noqa: F811
    """A GRU's or RNN's c, asked for from code: one line, as the tab would say it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from apps.cells.tabs.circuit import checked_stream
    for kind in ("gru", "rnn"):
        model = load_model(kinds.parent / f"{kind}.pt")
        with pytest.raises(ProbeError, match=f"layer 1 is a {kind.upper()} layer: it has no c to patch \\(h\\)"):
            checked_stream(model, 1, "c", "patch")
        with pytest.raises(ProbeError, match="it has no c to trace"):
            checked_stream(model, 1, "c", "trace")
        checked_stream(model, 1, "h", "patch")
    with pytest.raises(ProbeError, match="the model has no layer 2"):
        checked_stream(model, 2, "h", "trace")
