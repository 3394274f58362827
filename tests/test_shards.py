"""Shards: ``probe record --shard I/N`` writes one of N document-aligned parts; a folder of
them opens as one recording that reads exactly like the unsharded one, in every consumer."""
from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEXT
from hypothesis import given, settings
from hypothesis import strategies as st

from probe import ProbeError, open_recording
from probe.analysis import cache as analysis
from probe.analysis import detectors
from probe.cli import main
from probe.lm.model import CharRNN, load_model, save_checkpoint
from probe.output.export import export_lstmvis
from probe.recording import h5format, shards
from probe.recording import record as recorder
from probe.recording.reader import Dataset
from probe.text import corpus

# seven documents of 60..~1800 characters: the parts are uneven, shards span several chunks
DOCS = [(f"pkg/m{i}.py", (TEXT.replace("Point", f"P{i}") * (1 + 3 * i))[: 60 + 250 * i]) for i in range(7)]
SOURCE = {"kind": "text", "path": "/somewhere/pkg", "glob": "**/*.py", "documents": len(DOCS),
          "fingerprint": corpus.fingerprint("".join(t for _, t in DOCS))}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 64 rows, so every shard spans several chunks and reads cross chunk edges."""
    monkeypatch.setattr(h5format, "CHUNK_T", 64)


def record_whole(model, out, docs=DOCS, source=SOURCE, **kw):
    return recorder.record(model, docs, out, source=source, dtype="float32", progress=False, **kw)


def record_shards(model, folder, n, docs=DOCS, source=SOURCE, **kw):
    """The N files ``probe record --shard I/N`` writes, in one folder."""
    folder.mkdir(exist_ok=True)
    for i in range(1, n + 1):
        part, src = shards.take(docs, source, i, n)
        recorder.record(model, part, folder / f"part-{i}-of-{n}.h5", source=src, dtype="float32",
                        progress=False, **kw)
    return folder


@pytest.fixture
def model(model_path):
    return load_model(model_path)


@pytest.fixture
def pair(model, tmp_path):
    """(unsharded recording, folder of its 3 shards) of the same documents."""
    return record_whole(model, tmp_path / "whole.h5"), record_shards(model, tmp_path / "sharded", 3)


# ---- splitting ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=40), st.data())
def test_split_is_disjoint_complete_document_aligned_and_balanced(lengths, data):
    n = data.draw(st.integers(1, len(lengths)))
    parts = shards.split(lengths, n)
    assert len(parts) == n
    assert parts[0][0] == 0 and parts[-1][1] == len(lengths)          # complete
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))        # contiguous, disjoint
    assert all(d0 < d1 for d0, d1 in parts)                           # whole documents, none empty
    total, longest = sum(lengths), max(lengths)
    for d0, d1 in parts:  # balanced: at most a document more than its share, or one document
        assert sum(lengths[d0:d1]) <= total / n + longest or d1 - d0 == 1
    assert shards.split(lengths, n) == parts                          # a pure function


def test_split_examples():
    assert shards.split([10] * 8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert shards.split([100, 1, 1, 1], 2) == [(0, 1), (1, 4)]      # the nearest boundary to half
    assert shards.split([1, 1, 1, 100], 3) == [(0, 2), (2, 3), (3, 4)]  # every part gets a document
    assert shards.split([5], 1) == [(0, 1)]
    with pytest.raises(ProbeError, match="cannot split 2 documents into 3 shards"):
        shards.split([5, 5], 3)


@pytest.mark.parametrize("spec, said", [
    ("3/2", "there is no shard 3 of 2"), ("0/2", "there is no shard 0 of 2"),
    ("1/0", "must be at least 1"), ("a/b", "must be I/N"), ("2", "must be I/N"), ("-1/2", "must be I/N")])
def test_bad_shard_specs_are_one_line(spec, said):
    assert shards.parse_spec("2/4") == (2, 4) and shards.parse_spec(" 1 / 1 ") == (1, 1)
    with pytest.raises(ProbeError, match=said) as e:
        shards.parse_spec(spec)
    assert "\n" not in str(e.value)


def test_take_says_where_the_shard_sits():
    docs, src = shards.take(DOCS + [("empty.py", "")], SOURCE, 2, 3)
    lengths = [len(t) for _, t in DOCS]
    d0, d1 = shards.split(lengths, 3)[1]
    assert docs == DOCS[d0:d1]
    assert src == {**SOURCE, "shard": {"index": 2, "count": 3, "start": sum(lengths[:d0]),
                                       "length": sum(lengths), "documents": [d0, d1],
                                       "total_documents": len(DOCS)}}


# ---- recording and reading ---------------------------------------------------------------

def test_probe_record_shard_writes_its_part_and_info_reads_the_folder(model_path, tmp_path, capsys):
    src = tmp_path / "src"
    for name, text in DOCS:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    folder = tmp_path / "rec"
    folder.mkdir()
    for i in (2, 1, 3):  # any order, any machine
        assert main(["record", "--model", str(model_path), "--text", str(src), "--shard", f"{i}/3",
                     "--out", str(folder / f"rec-{i}.h5"), "--quiet"]) == 0
        assert f"shard {i}/3" in capsys.readouterr().out
    assert main(["record", "--model", str(model_path), "--text", str(src), "--out",
                 str(tmp_path / "whole.h5"), "--quiet"]) == 0
    capsys.readouterr()
    with h5py.File(folder / "rec-2.h5") as f:  # an ordinary recording that says which part it is
        assert json.loads(f.attrs["source"])["shard"]["index"] == 2
    with open_recording(folder / "rec-2.h5") as part, open_recording(folder) as rec, \
            open_recording(tmp_path / "whole.h5") as whole:
        assert 0 < len(part) < len(rec) == len(whole)
        assert rec.text == whole.text and rec.source == whole.source
        T = len(rec)
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["length"] == T and info["documents"] == len(DOCS)
    assert info["shards"] == "3 files, rec-1.h5 … rec-3.h5"
    assert main(["info", str(folder), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out


def test_a_sharded_recording_reads_identically_to_the_unsharded_one(pair):
    with open_recording(pair[0]) as a, open_recording(pair[1]) as b:
        assert len(b.parts) == 3 and len(a) == len(b) > 3 * h5format.CHUNK_T
        assert (b.layers, b.units, b.streams, b.layer_ids, b.dtype, b.chunks) == \
            (a.layers, a.units, a.streams, a.layer_ids, a.dtype, a.chunks)
        assert (b.model_sha256, b.model_config, b.source, b.mode, b.unknown_chars, b.checksums) == \
            (a.model_sha256, a.model_config, a.source, a.mode, a.unknown_chars, a.checksums)
        assert b.text == a.text
        np.testing.assert_array_equal(b.codepoints, a.codepoints)
        pd.testing.assert_frame_equal(b.documents, a.documents)
        assert b.document_spans == a.document_spans
        np.testing.assert_array_equal(b.loss, a.loss)  # bit for bit, NaN at each document start
        for name in ("documents/start", "documents/stop", "loss"):
            np.testing.assert_array_equal(b.dataset(name)[:], a.dataset(name)[:])
        for k in a.layer_ids:
            for s in a.streams:  # bit for bit: the state restarts at every document start
                np.testing.assert_array_equal(b.stream(k, s)[:], a.stream(k, s)[:], err_msg=f"{k} {s}")
        edge = int(b.offsets[1])  # the first character of the second shard
        lo, hi = edge - 100, edge + 100
        np.testing.assert_array_equal(b.unit(1, "c", 3, lo, hi), a.unit(1, "c", 3, lo, hi))
        np.testing.assert_array_equal(b.window(0, "f", lo, hi), a.window(0, "f", lo, hi))
        pd.testing.assert_frame_equal(b.frame(1, "h", units=[0, 5], start=lo, stop=hi),
                                      a.frame(1, "h", units=[0, 5], start=lo, stop=hi))
        np.testing.assert_array_equal(b.document_of([0, edge - 1, edge, len(b) - 1]),
                                      a.document_of([0, edge - 1, edge, len(b) - 1]))


def test_the_lazy_dataset_slices_as_consumers_do(pair):
    with open_recording(pair[0]) as a, open_recording(pair[1]) as b:
        x, y = a.stream(0, "c"), b.stream(0, "c")
        edge, T = int(b.offsets[1]), len(a)
        assert y.shape == x.shape and len(y) == len(x) and y.dtype == x.dtype and y.chunks == x.chunks
        for key in [slice(None), slice(edge - 5, edge + 5), (slice(edge - 5, edge + 5), 3),
                    (slice(0, T, 7), slice(2, 6)), edge, -1, (edge, 4), slice(T, T + 10),
                    slice(edge, edge), (slice(edge - 3, edge + 3), [1, 4]), Ellipsis]:
            np.testing.assert_array_equal(y[key], x[key], err_msg=str(key))
        np.testing.assert_array_equal(y[edge - 9:edge + 9][:, [0, 7]], x[edge - 9:edge + 9][:, [0, 7]])
        rows = np.array([edge + 1, 3, edge - 1, 3, T - 1])  # any order, repeats: as numpy does
        np.testing.assert_array_equal(y[rows], x[:][rows])
        with pytest.raises(IndexError):
            y[T]
        assert list(y.bad_rows()) == []


def test_a_read_touches_only_the_shards_it_spans(pair, monkeypatch):
    touched = []
    read = Dataset.__getitem__

    def spy(self, key):
        touched.append(self.where.name)
        return read(self, key)
    monkeypatch.setattr(Dataset, "__getitem__", spy)
    with open_recording(pair[1]) as rec:
        a, b = int(rec.offsets[1]), int(rec.offsets[2])  # the second shard is [a, b)
        ds = rec.stream(1, "h")
        touched.clear()
        ds[a + 1:b - 1]
        assert touched == ["part-2-of-3.h5"]
        touched.clear()
        ds[a - 1:a + 1, 2]
        assert touched == ["part-1-of-3.h5", "part-2-of-3.h5"]


def test_c_differs_at_most_in_the_last_bits_where_blocks_are_cut_differently(model, tmp_path, monkeypatch):
    """The recorder runs the text in blocks (record.BLOCK) counted from each file's first
    character; a block edge inside a document restarts c's recurrence from the state nn.LSTM
    carried, which can differ from the recurrence's own in the last bit. Everything else is
    bit for bit identical wherever the blocks are cut."""
    monkeypatch.setattr(recorder, "BLOCK", 256)  # block edges inside documents, at other places
    whole, folder = record_whole(model, tmp_path / "w.h5"), record_shards(model, tmp_path / "s", 4)
    with open_recording(whole) as a, open_recording(folder) as b:
        np.testing.assert_array_equal(b.loss, a.loss)
        for k in a.layer_ids:
            for s in a.streams:
                x, y = a.stream(k, s)[:], b.stream(k, s)[:]
                if s == "c":
                    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6)
                else:
                    np.testing.assert_array_equal(y, x, err_msg=f"{k} {s}")


def test_damage_in_a_shard_is_named_by_its_file(model, tmp_path, capsys):
    folder = record_shards(model, tmp_path / "rec", 3, compression="none")
    part = folder / "part-2-of-3.h5"
    with h5py.File(part) as f:
        at = f["layers/1/c"].id.get_chunk_info_by_coord((64, 0)).byte_offset + 10
    data = bytearray(part.read_bytes())
    data[at] ^= 0x40
    part.write_bytes(data)
    with open_recording(folder) as rec:
        start = int(rec.offsets[1])
        rec.stream(1, "c")[:start]  # the first shard reads
        with pytest.raises(ProbeError, match=r"part-2-of-3.h5: damaged data in layers/1/c rows 64–128"):
            rec.stream(1, "c")[start:]
    assert main(["info", str(folder), "--verify"]) == 1
    out = capsys.readouterr().out
    assert out == f"{folder}: damaged: part-2-of-3.h5: layers/1/c rows 64–128\n"


# ---- every consumer ------------------------------------------------------------------------

def test_scores_and_the_cached_analysis_equal_the_unsharded_ones(pair, monkeypatch):
    whole, folder = pair
    with open_recording(whole) as a, open_recording(folder) as b:
        pd.testing.assert_frame_equal(detectors.scores(b), detectors.scores(a))
        pd.testing.assert_frame_equal(detectors.saturation(b), detectors.saturation(a))
    with open_recording(whole) as a, open_recording(folder) as b:
        ra, rb = analysis.analysis(a), analysis.analysis(b)
    for key in ("scores", "best", "saturation"):
        pd.testing.assert_frame_equal(rb[key], ra[key])
    assert analysis.cache_path(folder) == folder / "sharded.analysis.npz"  # the folder keeps its cache
    assert (folder / "sharded.analysis.npz").is_file()
    calls = []
    scan = detectors.scores_and_saturation
    monkeypatch.setattr(detectors, "scores_and_saturation", lambda *a, **k: calls.append(1) or scan(*a, **k))
    with open_recording(folder) as rec:
        analysis.analysis(rec)
        assert calls == []  # read from the cache
        part = folder / "part-2-of-3.h5"
        st = part.stat()
        os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a shard re-recorded in place
        analysis.analysis(rec)
    assert calls == [1]  # the cache is keyed by every shard


def test_probe_analyze_match_render_and_export_accept_a_folder(pair, tmp_path, capsys):
    whole, folder = pair
    assert main(["analyze", str(folder), "--top", "2"]) == 0
    assert "in_string" in capsys.readouterr().out
    with open_recording(folder) as rec:
        edge = int(rec.offsets[1])
        on = rec.window(0, "h", edge - 3, len(rec)) >= 0.1  # [n, units]
        # a span of 3 characters (from near the first shard edge) where a cell turns on and stays on
        a = next(a for a in range(1, len(on) - 3) if (~on[a - 1] & on[a:a + 3].all(axis=0)).any())
        span = f"{edge - 3 + a}:{edge + a}"
    outputs = []
    for path in (whole, folder):
        assert main(["match", str(path), "--layer", "0", "--stream", "h", "--span", span,
                     "--threshold", "0.1", "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and outputs[1]["matches"]
    assert sorted(p.name for p in folder.glob("*.npy")) == ["sharded.match-0-h-0.1.npy"]  # inside
    pages = []
    for path, name in ((whole, "w.html"), (folder, "s.html")):
        assert main(["render", str(path), "--layer", "1", "--stream", "c", "--unit", "2", "--start",
                     str(edge - 50), "--stop", str(edge + 50), "--out", str(tmp_path / name)]) == 0
        pages.append((tmp_path / name).read_text().replace(path.name, "REC"))
    assert pages[0] == pages[1]
    assert main(["export-lstmvis", str(folder), str(tmp_path / "vis"), "--quiet"]) == 0
    with open_recording(whole) as rec:
        export_lstmvis(rec, tmp_path / "vis-whole", progress=False)
    with h5py.File(tmp_path / "vis" / "states.hdf5") as s, h5py.File(tmp_path / "vis-whole" / "states.hdf5") as w:
        assert sorted(s) == sorted(w)
        for name in w:
            np.testing.assert_array_equal(s[name][:], w[name][:])
    assert "name: \"sharded\"" in (tmp_path / "vis" / "lstm.yml").read_text()


def test_the_dashboard_lists_and_opens_a_folder_of_shards(pair, tmp_path):
    from apps.cells.store import Store
    from apps.cells.tabs.match import index_ready
    recs = tmp_path / "recordings"
    recs.mkdir()
    shutil.copy(pair[0], recs / "whole.h5")
    shutil.copytree(pair[1], recs / "sharded")
    (recs / "notes").mkdir()  # a folder without shards is not a recording
    store = Store(recs)
    try:
        assert store.names() == ["sharded", "whole.h5"]
        rec = store.recording("sharded")
        assert len(rec.parts) == 3 and rec.text == store.recording("whole.h5").text
        np.testing.assert_array_equal(store.column("sharded", 1, "c", 4), store.column("whole.h5", 1, "c", 4))
        res = store.analysis("sharded").result(timeout=60)
        assert not res["best"].empty and (recs / "sharded" / "sharded.analysis.npz").is_file()
        index_ready(store, "sharded", 0, "h", 0.3).result(timeout=60)  # the match tab's background index
        assert (recs / "sharded" / "sharded.match-0-h-0.3.npy").is_file()
        assert store.names() == ["sharded", "whole.h5"]  # caches are not recordings
        with pytest.raises(ProbeError, match="no recording named 'notes'"):
            store.check_name("notes")
    finally:
        store.close()


# ---- bad shard sets ------------------------------------------------------------------------

def other_model(tmp_path):
    torch.manual_seed(1)
    m = CharRNN(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4)
    save_checkpoint(tmp_path / "other.pt", m.eval())
    return load_model(tmp_path / "other.pt")


def fake_shard(model, folder, name, d0, d1, index, count=3):
    """A shard of documents [d0, d1) that says it is shard index/count (for gaps and overlaps)."""
    lengths = [len(t) for _, t in DOCS]
    info = {"index": index, "count": count, "start": sum(lengths[:d0]), "length": sum(lengths),
            "documents": [d0, d1], "total_documents": len(DOCS)}
    recorder.record(model, DOCS[d0:d1], folder / name, source={**SOURCE, "shard": info}, dtype="float32",
                    progress=False, force=True)


def break_set(how, model, folder, tmp_path):
    """Spoil a complete set of 3 shards in ``folder``; return the file the message must name."""
    parts = sorted(folder.glob("*.h5"))
    (d0, d1), (e0, e1), _ = shards.split([len(t) for _, t in DOCS], 3)
    if how == "missing":
        parts[1].unlink()
    elif how == "twice":
        shutil.copy(parts[0], folder / "part-1-again.h5")
        return "part-1-again.h5"
    elif how == "model":
        docs, src = shards.take(DOCS, SOURCE, 2, 3)
        recorder.record(other_model(tmp_path), docs, parts[1], source=src, dtype="float32", progress=False,
                        force=True)
        return parts[1].name
    elif how == "text":
        docs, src = shards.take(DOCS, {**SOURCE, "fingerprint": "0" * 64}, 3, 3)
        recorder.record(model, docs, parts[2], source=src, dtype="float32", progress=False, force=True)
        return parts[2].name
    elif how == "dtype":
        docs, src = shards.take(DOCS, SOURCE, 3, 3)
        recorder.record(model, docs, parts[2], source=src, dtype="float16", progress=False, force=True)
        return parts[2].name
    elif how == "split":
        docs, src = shards.take(DOCS, SOURCE, 2, 4)
        recorder.record(model, docs, parts[1], source=src, dtype="float32", progress=False, force=True)
        return parts[1].name
    elif how == "gap":
        fake_shard(model, folder, parts[1].name, e0 + 1, e1, 2)
        return parts[1].name
    elif how == "overlap":
        fake_shard(model, folder, parts[1].name, e0 - 1, e1, 2)
        return parts[1].name
    elif how == "unsharded":
        record_whole(model, folder / "zz-whole.h5")
        return "zz-whole.h5"
    elif how == "broken":
        (folder / "notes.h5").write_bytes(b"not HDF5")
        return "notes.h5"
    elif how == "empty":
        for p in parts:
            p.unlink()
    return None


@pytest.mark.parametrize("how, said", [
    ("missing", "missing shard 2/3 (found 2 of 3)"),
    ("twice", "shard 1/3 twice: part-1-again.h5 and part-1-of-3.h5"),
    ("model", "differ in model (sha256 of the checkpoint)"),
    ("text", "were recorded from different text (source fingerprint:"),
    ("dtype", "differ in dtype ('float16' vs 'float32')"),
    ("split", "is shard 2/4 of"),
    ("gap", "a gap after part-1-of-3.h5 (which ends at character"),
    ("overlap", "an overlap after part-1-of-3.h5 (which ends at character"),
    ("unsharded", "zz-whole.h5 is not a shard (recorded without --shard)"),
    ("broken", "notes.h5: not a readable HDF5 file"),
    ("empty", "no shards (*.h5 files) in this folder"),
])
def test_bad_shard_sets_are_refused_in_one_line(how, said, model, tmp_path, capsys):
    folder = record_shards(model, tmp_path / "set", 3)
    culprit = break_set(how, model, folder, tmp_path)
    with pytest.raises(ProbeError) as e:
        open_recording(folder)
    msg = str(e.value)
    assert said in msg and "\n" not in msg
    assert str(folder) in msg and (culprit is None or culprit in msg)
    assert main(["info", str(folder)]) == 1  # the CLI: one line naming the folder and the file
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("probe: error: ") and said in err


def test_bad_shard_flags_are_one_line(model_path, tmp_path, capsys):
    src = tmp_path / "two.py"
    src.write_text(TEXT)
    out = tmp_path / "r.h5"
    for spec, said in (("3/2", "there is no shard 3 of 2"),
                       ("2/5", "cannot split 1 document into 5 shards")):
        assert main(["record", "--model", str(model_path), "--text", str(src), "--shard", spec,
                     "--out", str(out), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err
        assert not out.exists()
