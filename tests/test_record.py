"""Recorded gates and states equal what the model computes: ``probe.lm.stepwise`` (the LSTM
equations one character at a time) is the reference, itself checked against nn.LSTM."""
from __future__ import annotations

import copy
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from probe import ProbeError, open_recording
from probe.lm.model import load_model
from probe.lm.stepwise import stepwise
from probe.recording import h5format
from probe.recording.record import activations, record
from probe.text import corpus


@torch.no_grad()
def test_the_step_by_step_cell_agrees_with_nn_lstm(tiny_model, text):
    ids, _ = corpus.encode(text, tiny_model.vocab)
    steps, loss = stepwise(tiny_model, text)
    assert set(steps) == {(k, s) for k in range(2) for s in "ifgoch"}
    out, (hT, cT) = tiny_model.rnn(tiny_model.embed(torch.from_numpy(ids))[None])
    np.testing.assert_allclose(steps[(1, "h")], out[0].numpy(), atol=1e-6)
    for k in range(tiny_model.layers):
        np.testing.assert_allclose(steps[(k, "c")][-1], cT[k, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(steps[(k, "h")][-1], hT[k, 0].numpy(), atol=1e-6)
    logits, _ = tiny_model(torch.from_numpy(ids)[None])
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], torch.from_numpy(ids[1:]), reduction="none")
    np.testing.assert_allclose(loss[1:], ce.numpy() / np.log(2), rtol=1e-5)


@torch.no_grad()
def test_gates_and_states_equal_the_step_by_step_cell(tiny_model, text):
    got, got_loss = activations(tiny_model, text)
    want, want_loss = stepwise(tiny_model, text)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=str(key))
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, equal_nan=True)


@torch.no_grad()
def test_the_edit_hook_sees_every_named_value_and_its_edits_flow_on(tiny_model, text):
    seen = []
    stepwise(tiny_model, "ab", edit=lambda k, s, t, v: seen.append((t, k, s)))
    assert seen == [(t, k, s) for t in range(2) for k in range(2) for s in "ifgoch"]

    def zero_h(k, s, t, v):  # pin unit 5 of layer 0 to 0, at every step
        if (k, s) == (0, "h"):
            v = v.clone()
            v[5] = 0
            return v
    edited, edited_loss = stepwise(tiny_model, text, edit=zero_h)
    assert (edited[(0, "h")][:, 5] == 0).all()
    # the same as cutting the unit's outgoing weights (to itself and to layer 1)
    cut = copy.deepcopy(tiny_model)
    cut.rnn.weight_hh_l0[:, 5] = 0
    cut.rnn.weight_ih_l1[:, 5] = 0
    want, want_loss = stepwise(cut, text)
    for key in want:
        if key != (0, "h"):
            np.testing.assert_allclose(edited[key], want[key], atol=1e-6, err_msg=str(key))
    np.testing.assert_allclose(edited_loss, want_loss, rtol=1e-5, equal_nan=True)
    plain, plain_loss = stepwise(tiny_model, text)
    assert not np.allclose(edited[(1, "h")], plain[(1, "h")])  # the edit did change layer 1


@torch.no_grad()
def test_loss_is_the_models_cross_entropy_in_bits(tiny_model, text):
    ids, _ = corpus.encode(text, tiny_model.vocab)
    _, loss = activations(tiny_model, text)
    logits, _ = tiny_model(torch.from_numpy(ids)[None])
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], torch.from_numpy(ids[1:]), reduction="none")
    assert np.isnan(loss[0])
    np.testing.assert_allclose(loss[1:], ce.numpy() / np.log(2), rtol=1e-5)


def test_recording_matches_in_memory_values_across_documents(recording_path, model_path, text):
    model = load_model(model_path)
    with open_recording(recording_path) as rec:
        docs = rec.documents
        assert list(docs["name"]) == ["a.py", "b.py"]
        for _, d in docs.iterrows():
            doc_text = rec.text[d.start:d.stop]
            want, want_loss = stepwise(model, doc_text)  # fresh state at each document
            assert set(want) == {(k, s) for k in range(rec.layers) for s in rec.streams}
            for (k, s), v in want.items():
                np.testing.assert_allclose(rec.stream(k, s)[d.start:d.stop], v, atol=1e-5)
            np.testing.assert_allclose(rec.loss[d.start:d.stop], want_loss, rtol=1e-5, equal_nan=True)
        assert rec.text == text + (text.replace("Point", "Line") * 2)


def test_streaming_in_blocks_equals_one_pass(tiny_model, tmp_path, monkeypatch, text):
    import probe.recording.record as rec_mod
    long = text * 40  # > several blocks
    monkeypatch.setattr(rec_mod, "BLOCK", 512)
    monkeypatch.setattr(h5format, "CHUNK_T", 256)
    out = record(tiny_model, [("long.py", long)], tmp_path / "long.h5", dtype="float32", progress=False)
    want, want_loss = activations(tiny_model, long)
    with open_recording(out) as rec:
        for (k, s), v in want.items():
            np.testing.assert_allclose(rec.stream(k, s)[:], v, atol=2e-5)
        np.testing.assert_allclose(rec.loss, want_loss, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_batched_mode_is_close_to_sequential(tiny_model, tmp_path, monkeypatch, text):
    import probe.recording.record as rec_mod
    long = text * 20
    monkeypatch.setattr(rec_mod, "BLOCK", 1024)
    seq = record(tiny_model, [("a", long)], tmp_path / "seq.h5", dtype="float32", progress=False)
    bat = record(tiny_model, [("a", long)], tmp_path / "bat.h5", dtype="float32", batch=4,
                 burn_in=200, progress=False)
    with open_recording(seq) as a, open_recording(bat) as b:
        assert len(a) == len(b) == len(long)
        h_a, h_b = a.stream(1, "h")[:], b.stream(1, "h")[:]
        assert np.abs(h_a - h_b).mean() < 0.05
        # the first piece starts at the document start, so it is exact
        np.testing.assert_allclose(h_a[:100], h_b[:100], atol=1e-5)
        assert np.isnan(b.loss[0]) and np.isfinite(b.loss[1:]).all()


@pytest.mark.parametrize("cell, streams", [("gru", "rznh"), ("rnn", "h")])
@torch.no_grad()
def test_gru_and_rnn_recordings_equal_their_step_by_step_cells(tmp_path, text, cell, streams):
    from probe.lm.model import CharRNN
    torch.manual_seed(0)
    model = CharRNN(corpus.build_vocab(text), layers=2, units=6, embedding=4, cell=cell).eval()
    steps, loss = stepwise(model, text)
    assert set(steps) == {(k, s) for k in range(2) for s in streams}
    ids = torch.from_numpy(corpus.encode(text, model.vocab)[0])
    out, hT = model.rnn(model.embed(ids)[None])  # PyTorch's own cell: h of the top layer
    np.testing.assert_allclose(steps[(1, "h")], out[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(steps[(0, "h")][-1], hT[0, 0].numpy(), atol=1e-5)
    logits, _ = model(ids[None])
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], ids[1:], reduction="none")
    np.testing.assert_allclose(loss[1:], ce.numpy() / np.log(2), rtol=1e-5)
    path = record(model, [("a.py", text)], tmp_path / f"{cell}.h5", dtype="float32", progress=False)
    with open_recording(path) as rec:
        assert rec.streams == tuple(streams)
        for (k, s), v in steps.items():
            np.testing.assert_allclose(rec.stream(k, s)[:], v, atol=1e-5, err_msg=f"{k} {s}")
        with pytest.raises(ProbeError, match="no stream 'c'"):
            rec.unit(0, "c", 0)


def test_every_codec_stores_the_same_values_and_plain_h5py_reads_zstd(tiny_model, tmp_path, monkeypatch, text):
    monkeypatch.setattr(h5format, "CHUNK_T", 256)  # several chunks, the last one partial
    long = text * 12
    paths = {c: record(tiny_model, [("a.py", long)], tmp_path / f"{c}.h5", compression=c, progress=False)
             for c in h5format.COMPRESSIONS}
    recs = {c: open_recording(p) for c, p in paths.items()}
    for c, rec in recs.items():
        assert rec.compression == c
        for k in range(2):
            for s in rec.streams:
                np.testing.assert_array_equal(rec.stream(k, s)[:], recs["none"].stream(k, s)[:])
    assert paths["zstd"].stat().st_size < paths["none"].stat().st_size
    # outside probe: h5py with hdf5plugin imported reads the Zstandard chunks probe wrote itself
    code = ("import sys, h5py, hdf5plugin; f = h5py.File(sys.argv[1], 'r'); "
            "sys.stdout.buffer.write(f['layers/1/c'][:].tobytes())")
    out = subprocess.run([sys.executable, "-c", code, str(paths["zstd"])], capture_output=True, check=True)
    assert out.stdout == recs["none"].stream(1, "c")[:].tobytes()


def test_a_recording_needing_a_missing_filter_is_refused_in_one_line(tiny_model, tmp_path, monkeypatch, text):
    out = record(tiny_model, [("a.py", text)], tmp_path / "z.h5", progress=False)
    real = h5py.h5z.filter_avail
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda fid: fid != h5format.ZSTD and real(fid))
    with pytest.raises(ProbeError, match=r"z\.h5: /layers/0/i is compressed with an HDF5 filter that is "
                                         r"not available here: zstd \(pip install hdf5plugin"):
        open_recording(out)


def test_keep_and_layers_record_a_subset_with_the_same_values(tiny_model, tmp_path, text):
    full = open_recording(record(tiny_model, [("a.py", text)], tmp_path / "full.h5", progress=False))
    part = open_recording(record(tiny_model, [("a.py", text)], tmp_path / "part.h5", progress=False,
                                 keep=["h", "c"], layers=[1]))
    assert part.streams == ("c", "h") and part.layer_ids == (1,) and part.layers == 2
    for s in part.streams:
        np.testing.assert_array_equal(part.stream(1, s)[:], full.stream(1, s)[:])
    with pytest.raises(ProbeError, match=r"no layer 0 \(recorded layers are 1 of 0..1\)"):
        part.stream(0, "h")
    with pytest.raises(ProbeError, match="no stream 'f'"):
        part.stream(1, "f")
    only_h = open_recording(record(tiny_model, [("a.py", text)], tmp_path / "h.h5", progress=False, keep="h"))
    np.testing.assert_array_equal(only_h.stream(0, "h")[:], full.stream(0, "h")[:])


@pytest.mark.parametrize("keep, layers, message", [
    (["c", "x"], None, "--keep: a LSTM records streams i,f,g,o,c,h; got c,x"),
    ([], None, "--keep: a LSTM records streams i,f,g,o,c,h; got none"),
    (None, [2], r"--layers: the model has layers 0..1; got 2"),
])
def test_a_bad_subset_is_refused_before_anything_is_written(tiny_model, tmp_path, text, keep, layers, message):
    with pytest.raises(ProbeError, match=message):
        record(tiny_model, [("a.py", text)], tmp_path / "bad.h5", progress=False, keep=keep, layers=layers)
    assert not list(tmp_path.iterdir())


def test_int8_streams_keep_each_units_order_and_read_back_close_to_float16(tiny_model, tmp_path, monkeypatch, text):
    monkeypatch.setattr(h5format, "CHUNK_T", 256)
    long = text * 12
    ref = open_recording(record(tiny_model, [("a.py", long)], tmp_path / "f16.h5", progress=False))
    q = open_recording(record(tiny_model, [("a.py", long)], tmp_path / "q.h5", dtype="int8", progress=False))
    assert q.dtype == "int8" and not list(tmp_path.glob(".probe-int8-*"))  # the scratch files are gone
    for k in range(2):
        for s in q.streams:
            want = ref.stream(k, s)[:].astype(np.float32)
            got = q.stream(k, s)[:]
            assert got.dtype == np.float32
            for u in range(want.shape[1]):  # a larger value never reads back smaller
                order = np.argsort(want[:, u], kind="stable")
                assert np.all(np.diff(got[order, u]) >= 0), (k, s, u)
            # each value within its bin: at most the spread of the unit's values / 50 on average
            spread = want.max(0) - want.min(0)
            assert np.all(np.abs(got - want).mean(0) <= spread / 50 + 1e-6), (k, s)
            # every way the readers slice gives the same values
            np.testing.assert_array_equal(q.stream(k, s)[10:20, 3], got[10:20, 3])
            np.testing.assert_array_equal(q.stream(k, s)[10:20][:, [1, 4]], got[10:20][:, [1, 4]])
            np.testing.assert_array_equal(q.stream(k, s)[17], got[17])
            np.testing.assert_array_equal(q.unit(k, s, 5), got[:, 5])
            np.testing.assert_array_equal(q.window(k, s, 7, 30), got[7:30])
    assert (tmp_path / "q.h5").stat().st_size < (tmp_path / "f16.h5").stat().st_size


def test_int8_scores_stay_within_0_005_of_float16(tmp_path):
    from probe.analysis import detectors
    model = load_model("lstm")  # the shipped model, on held-out code: values as users record them
    docs = corpus.stdlib("test").limited(10_000).documents
    f16 = open_recording(record(model, docs, tmp_path / "f16.h5", progress=False))
    q = open_recording(record(model, docs, tmp_path / "q.h5", dtype="int8", progress=False))
    a, b = detectors.scores(f16), detectors.scores(q)
    assert a[["layer", "stream", "unit", "feature", "metric"]].equals(b[["layer", "stream", "unit", "feature", "metric"]])
    both = a["score"].notna() & b["score"].notna()
    assert both.sum() > 20_000
    for metric in ("r", "auc"):
        rows = both & (a["metric"] == metric)
        assert (a["score"] - b["score"])[rows].abs().max() <= 0.005, metric


def test_the_compiled_recurrence_and_shuffle_equal_their_numpy_references():
    import probe.recording.record as rec_mod
    rng = np.random.default_rng(0)
    f = rng.random((500, 96), dtype=np.float32)
    ig = rng.standard_normal((500, 96), dtype=np.float32)
    c0 = rng.standard_normal(96, dtype=np.float32)
    a, b = ig.copy(), ig.copy()
    rec_mod.recurrence(f, a, c0)
    rec_mod.recurrence_numpy(f, b, c0)
    assert np.array_equal(a, b)  # bit for bit: no fused multiply-add in the C loop
    raw = rng.standard_normal((64, 32)).astype(np.float16)
    assert rec_mod._shuffle(raw) == raw.view(np.uint8).reshape(-1, 2).T.tobytes()
