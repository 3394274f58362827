"""Recordings whose streams have different widths (format version 2, ``widths``): layers of
different widths, an LSTM's h narrower than its c and gates under ``proj_size``. Every
reader and consumer takes each (layer, stream) at its own width; version-1 files still read."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CODE, TEXT

from probe import ProbeError, open_recording
from probe.analysis import cache as analysis
from probe.analysis import detectors, match
from probe.cli import main
from probe.lm import parts
from probe.lm.model import CharRNN
from probe.output.export import export_lstmvis
from probe.readout import directions
from probe.recording import derived, h5format, reader, shards
from probe.recording.record import record
from probe.text import corpus

STREAMS = ("i", "f", "g", "o", "c", "h")
# layer 0: gates and c 6 wide, h 4 (an LSTM with proj_size); layer 1: every stream 5 wide
WIDTHS = {**{(0, s): 6 for s in STREAMS}, (0, "h"): 4, **{(1, s): 5 for s in STREAMS}}
DOCS = [(f"m{i}.py", CODE.replace("f(", f"f{i}(") * (2 + i)) for i in range(5)]


def values_for(text: str, seed: int = 0) -> dict:
    """Values of every (layer, stream) at its own width, in its stream's range."""
    rng = np.random.default_rng(seed)
    out = {}
    for (k, s), w in WIDTHS.items():
        x = rng.normal(size=(len(text), w))
        out[(k, s)] = 1 / (1 + np.exp(-2 * x)) if s in "ifo" else np.tanh(x) if s in "gh" else 4 * x
    in_string = np.array([ch in "'\"" for ch in text], float)
    out[(0, "h")][:, 3] = np.tanh(2 * in_string - 1)  # the narrow stream's last unit: a planted cell
    return out


def documents_of(docs) -> list[tuple[str, int, int]]:
    edges = np.cumsum([0] + [len(t) for _, t in docs]).tolist()
    return [(name, a, b) for (name, _), a, b in zip(docs, edges[:-1], edges[1:])]


MODEL = {"layers": 2, "units": 6, "cell": "lstm"}


@pytest.fixture
def wide(tmp_path):
    """(path, text, values) of a synthetic LSTM recording with the widths of WIDTHS."""
    text = "".join(t for _, t in DOCS)
    values = values_for(text)
    path = h5format.write(tmp_path / "widths.h5", text, values, documents=documents_of(DOCS), streams=STREAMS,
                          model=MODEL)
    return path, text, values


def reseal(path, **attrs) -> None:
    """Change root attributes (None removes one) and seal the file again, as a writer would."""
    with h5py.File(path, "a") as f:
        for key, value in attrs.items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
        h5format.finish(f)


# ---- the format and the reader ----------------------------------------------------------------

def test_each_stream_reads_back_at_its_own_width(wide):
    path, text, values = wide
    with h5py.File(path) as f:  # plain h5py: the file says every width
        assert f.attrs["version"] == 3 == h5format.VERSION and f.attrs["units"] == 6  # the widest
        assert json.loads(f.attrs["widths"]) == {f"{k}:{s}": w for (k, s), w in WIDTHS.items()}
        assert f["layers/0/h"].shape == (len(text), 4) and f["layers/0/c"].shape == (len(text), 6)
    with open_recording(path) as rec:
        assert rec.widths == WIDTHS and rec.units == 6 and not rec.uniform
        for (k, s), w in WIDTHS.items():
            assert rec.width(k, s) == rec.units_of(k, s) == w
            assert rec.stream(k, s).shape == (len(text), w)
            np.testing.assert_array_equal(rec.window(k, s, 0, 50), values[(k, s)][:50].astype(np.float32))
        np.testing.assert_array_equal(rec.unit(0, "h", 3), values[(0, "h")][:, 3].astype(np.float32))
        with pytest.raises(ProbeError, match=r"no unit 4 \(units of h are 0..3\)"):
            rec.unit(0, "h", 4)
        with pytest.raises(ProbeError, match=r"no unit 5 \(units of c are 0..4\)"):
            rec.unit(1, "c", 5)
        assert rec.unit(0, "c", 5).shape == (len(text),)  # 5 is a unit of layer 0's c
        with pytest.raises(ProbeError, match="no stream 'x'"):
            rec.width(0, "x")
        wide_frame, narrow = rec.frame(0, "c", stop=20), rec.frame(0, "h", stop=20)
        assert [c for c in wide_frame.columns if c.startswith("unit_")] == [f"unit_{u}" for u in range(6)]
        assert [c for c in narrow.columns if c.startswith("unit_")] == [f"unit_{u}" for u in range(4)]
        assert len(rec.frame(1, "h", stop=20, tidy=True)) == 20 * 5
        assert "up to 6 units" in repr(rec)


def test_validate_checks_each_dataset_against_its_own_width(wide, tmp_path):
    path, text, _ = wide
    swapped = tmp_path / "swapped.h5"
    swapped.write_bytes(path.read_bytes())
    reseal(swapped, widths=json.dumps({f"{k}:{s}": 6 if (k, s) == (0, "h") else w for (k, s), w in WIDTHS.items()}))
    with pytest.raises(ProbeError, match=rf"swapped.h5: dataset layers/0/h has shape \({len(text)}, 4\), "
                                         rf"expected \({len(text)}, 6\)"):
        open_recording(swapped)
    for name, widths in (("short.h5", json.dumps({"0:c": 6})), ("junk.h5", "not json"),
                         ("zero.h5", json.dumps({f"{k}:{s}": 0 for k, s in WIDTHS}))):
        bad = tmp_path / name
        bad.write_bytes(path.read_bytes())
        reseal(bad, widths=widths)
        with pytest.raises(ProbeError, match=f"{name}: attribute widths does not give each of 0:i .* a width") as e:
            open_recording(bad)
        assert "\n" not in str(e.value)
    lacking = tmp_path / "lacking.h5"
    lacking.write_bytes(path.read_bytes())
    reseal(lacking, widths=None)
    with pytest.raises(ProbeError, match="lacking.h5: recording lacks the attribute 'widths'"):
        open_recording(lacking)


def test_a_version_1_file_still_reads(tmp_path):
    """A version-1 file has no ``widths``: every stream is ``units`` wide."""
    text = CODE * 3
    rng = np.random.default_rng(1)
    values = {(k, s): rng.random((len(text), 3)) for k in range(2) for s in ("c", "h")}
    path = h5format.write(tmp_path / "v1.h5", text, values, streams=("c", "h"))
    reseal(path, version=1, widths=None)
    with open_recording(path) as rec:
        assert rec.version == 1 and rec.units == 3 and rec.uniform
        assert rec.widths == {(k, s): 3 for k in range(2) for s in ("c", "h")}
        assert rec.width(1, "h") == 3
        np.testing.assert_array_equal(rec.unit(1, "h", 2), values[(1, "h")][:, 2].astype(np.float32))
    reseal(path, units=4)  # a version-1 file's streams must all be ``units`` wide
    with pytest.raises(ProbeError, match=r"v1.h5: dataset layers/0/c has shape .*, expected \(\d+, 4\)"):
        open_recording(path)
    reseal(path, units=3, version=4)
    with pytest.raises(ProbeError, match="version 4 is not supported"):
        open_recording(path)


def test_info_shows_the_widths_and_verify_reads_every_chunk(wide, tmp_path, capsys):
    path, text, _ = wide
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "probe-recording v3" and info["units"] == 6
    assert info["widths"] == {f"{k}:{s}": w for (k, s), w in WIDTHS.items()}
    assert main(["info", str(path), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    same = h5format.write(tmp_path / "same.h5", text, {(0, "h"): np.zeros((len(text), 3))})
    assert main(["info", str(same), "--json"]) == 0
    assert "widths" not in json.loads(capsys.readouterr().out)  # shown only when they differ


# ---- the recorder -------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:LSTM with projections")  # PyTorch: no oneDNN path for them
def test_the_recorder_writes_each_stream_at_the_models_width(tmp_path):
    """An LSTM with proj_size: h (5) narrower than c and the gates (8), in float32 and int8."""
    torch.manual_seed(0)
    model = CharRNN(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4)
    model.rnn = torch.nn.LSTM(4, 8, 2, batch_first=True, proj_size=5)
    model.head = torch.nn.Linear(5, len(model.vocab))
    model.eval()
    widths = parts.widths(model)
    assert widths[(0, "h")] == 5 and widths[(0, "c")] == 8
    with torch.no_grad():
        ids, _ = corpus.encode(TEXT, model.vocab)
        out, _ = model.rnn(model.embed(torch.as_tensor(ids)[None]))  # the top layer's h, [1, T, 5]
    for dtype in ("float32", "int8"):
        path = record(model, [("a.py", TEXT)], tmp_path / f"{dtype}.h5", dtype=dtype, progress=False)
        with open_recording(path) as rec:
            assert rec.widths == widths and rec.units == 8
            h = rec.stream(1, "h")[:]
            assert h.shape == (len(TEXT), 5) and rec.stream(1, "i")[:].shape == (len(TEXT), 8)
            np.testing.assert_allclose(h, out[0].numpy(), atol=1e-5 if dtype == "float32" else 0.05)


# ---- every consumer -----------------------------------------------------------------------------

def cells(frame: pd.DataFrame) -> list[tuple[int, str, int]]:
    return sorted(zip(frame["layer"].astype(int), frame["stream"].astype(str), frame["unit"].astype(int)))


EVERY_CELL = sorted((k, s, u) for (k, s), w in WIDTHS.items() for u in range(w))


def test_scores_and_summaries_cover_every_unit_of_every_stream_once(wide):
    path = wide[0]
    with open_recording(path) as rec:
        res = analysis.analysis(rec, with_summaries=True)
        sc = res["scores"]
        for (feature, metric), g in sc.groupby(["feature", "metric"]):
            assert cells(g) == EVERY_CELL, (feature, metric)
        planted = sc[(sc["feature"] == "in_string") & (sc["metric"] == "auc")]
        top = planted.loc[(planted["score"] - 0.5).abs().idxmax()]
        assert (top["layer"], top["stream"], top["unit"]) == (0, "h", 3)  # found at the narrow stream's end
        direct = detectors.scores(rec)
        for _, g in direct.groupby(["feature", "metric"]):
            assert cells(g) == EVERY_CELL
        gates = [(k, s, u) for k, s, u in EVERY_CELL if s in "ifo"]
        assert cells(res["saturation"]) == gates
        for (k, s), w in WIDTHS.items():
            for field in ("hist", "top_v", "strip_min", "strip_first"):
                assert len(res["summaries"][(k, s)][field]) == w, (k, s, field)


def test_match_render_and_lstmvis_take_each_streams_width(wide, tmp_path, capsys):
    path, text, values = wide
    with open_recording(path) as rec:
        bits = match.index(rec, 0, "h", 0.3)
        assert bits.shape == (len(text), 1)  # 4 units: one word
        a = text.index("'")
        assert 3 in match.select(rec, 0, "h", a, a + 1)  # on at the quote, off before it
        assert len(match.index(rec, 0, "c", 0.3)) == len(text)
    out = tmp_path / "cell.html"
    assert main(["render", str(path), "--layer", "0", "--stream", "h", "--unit", "3", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").count('<span class="') >= len(text)
    capsys.readouterr()
    assert main(["render", str(path), "--layer", "0", "--stream", "h", "--unit", "4",
                 "--out", str(tmp_path / "no.html")]) == 1
    err = capsys.readouterr().err
    assert "no unit 4 (units of h are 0..3)" in err and err.count("\n") == 1
    with open_recording(path) as rec:
        folder = export_lstmvis(rec, tmp_path / "vis", streams=("c", "h"), progress=False)
    with h5py.File(folder / "states.hdf5") as f:
        assert {n: f[n].shape for n in f} == {"layer1_c": (len(text), 6), "layer1_h": (len(text), 4),
                                              "layer2_c": (len(text), 5), "layer2_h": (len(text), 5)}
        np.testing.assert_array_equal(f["layer1_h"][:], values[(0, "h")].astype(np.float32))


def test_directions_read_their_input_widths_from_the_recording(wide, tmp_path):
    path, text, _ = wide
    with open_recording(path) as rec:
        spec = directions.fit(rec, features=["in_string"], layers=[0], streams=("c", "h"), sample=1000)
        assert spec["inputs"] == [[0, "c"], [0, "h"]] and spec["widths"] == [6, 4] and len(spec["mean"]) == 10
        assert directions.apply(spec, rec, 0, 100).shape == (100, 1)
        swapped = {**spec, "widths": [4, 6]}  # the same total, split otherwise: not these streams
        with pytest.raises(ProbeError, match=r"fitted on 0/c 0/h of widths \[4, 6\]; here they are \[6, 4\]"):
            directions.apply(swapped, rec, 0, 100)
        derived.encode(rec, derived.save(spec, tmp_path / "dirs.pt"))
        assert rec.width(0, "dir") == 1 and rec.stream(0, "dir").shape == (len(text), 1)
        assert rec.widths == WIDTHS  # the derived stream is not a recorded one


# ---- shards -------------------------------------------------------------------------------------

def write_shards(folder, n: int, widths_of=lambda i: WIDTHS):
    """The N shards of DOCS as ``probe record --shard I/N`` would cut them, written from values."""
    folder.mkdir()
    text = "".join(t for _, t in DOCS)
    values = values_for(text)
    source = {"kind": "synthetic", "fingerprint": corpus.fingerprint(text)}
    for i in range(1, n + 1):
        docs, src = shards.take(DOCS, source, i, n)
        a = src["shard"]["start"]
        b = a + sum(len(t) for _, t in docs)
        part = {key: v[a:b, :widths_of(i)[key]] for key, v in values.items()}
        h5format.write(folder / f"part-{i}.h5", text[a:b], part, documents=documents_of(docs), streams=STREAMS,
                       model=MODEL, source=src)
    return folder


def test_shards_of_a_recording_of_several_widths_read_identically(wide, tmp_path):
    path = wide[0]
    folder = write_shards(tmp_path / "parts", 3)
    with open_recording(path) as whole, open_recording(folder) as rec:
        assert len(rec.parts) == 3 and rec.text == whole.text
        assert rec.widths == whole.widths == WIDTHS and rec.units == 6
        for (k, s), w in WIDTHS.items():
            assert rec.width(k, s) == w
            np.testing.assert_array_equal(rec.stream(k, s)[:], whole.stream(k, s)[:])
        pd.testing.assert_frame_equal(rec.frame(0, "h", start=10, stop=900), whole.frame(0, "h", start=10, stop=900))
        sc = analysis.analysis(rec)["scores"]
        for _, g in sc.groupby(["feature", "metric"]):
            assert cells(g) == EVERY_CELL
        assert reader.summary(rec)["widths"] == reader.summary(whole)["widths"]
    assert main(["info", str(folder), "--verify"]) == 0


def test_shards_must_agree_on_widths(tmp_path):
    other = {**WIDTHS, (0, "h"): 3}
    folder = write_shards(tmp_path / "mixed", 2, widths_of=lambda i: other if i == 2 else WIDTHS)
    with pytest.raises(ProbeError, match="part-2.h5 and part-1.h5 differ in widths") as e:
        open_recording(folder)
    assert "\n" not in str(e.value)


# ---- the dashboard ------------------------------------------------------------------------------

def test_the_dashboards_unit_spinner_ends_at_the_selected_streams_last_unit(wide):
    from test_app import Page, serving  # the in-process server of the dashboard's tests
    path = wide[0]
    with serving(path.parent) as server:
        p = Page(server, recording=path.name, layer=0, stream="c", unit=5)
        try:
            assert p.message == "" and p["unit"].value == 5 and p["unit"].high == 5
            p.set("stream", value="h")  # 4 wide: unit 5 is not one of its units
            assert p["stream"].value == "h" and p["unit"].high == 3 and p["unit"].value <= 3
            p.set("unit", value=3)
            assert "stream=h&unit=3" in p["url-state"].text and p.message == ""
            p.set("layer", value="1")
            assert p["unit"].high == 4
            q = Page(server, recording=path.name, layer=0, stream="h", unit=4)
            assert "no unit 4 in h of widths.h5 (units are 0..3); showing unit 0" in q.message
            assert q["unit"].high == 3 and q["unit"].value == 0
            q.close()
        finally:
            p.close()
