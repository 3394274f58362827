"""Recorded gates and states equal what the model computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe import corpus, open_recording
from probe.model import load_model
from probe.record import activations, record, run


def reference_cell(model, ids):
    """An independent step-by-step LSTM in plain torch ops, PyTorch gate order i f g o."""
    H = model.units
    x = model.embed(torch.as_tensor(ids))  # [T, E]
    out = {}
    for k in range(model.layers):
        w_ih = getattr(model.lstm, f"weight_ih_l{k}")
        w_hh = getattr(model.lstm, f"weight_hh_l{k}")
        b = getattr(model.lstm, f"bias_ih_l{k}") + getattr(model.lstm, f"bias_hh_l{k}")
        h, c = torch.zeros(H), torch.zeros(H)
        rows = {s: [] for s in "ifgoch"}
        for t in range(len(x)):
            z = w_ih @ x[t] + w_hh @ h + b
            i, f, g, o = (torch.sigmoid(z[:H]), torch.sigmoid(z[H:2 * H]),
                          torch.tanh(z[2 * H:3 * H]), torch.sigmoid(z[3 * H:]))
            c = f * c + i * g
            h = o * torch.tanh(c)
            for s, v in zip("ifgoch", (i, f, g, o, c, h)):
                rows[s].append(v)
        for s in "ifgoch":
            out[(k, s)] = torch.stack(rows[s]).detach().numpy()
        x = torch.stack(rows["h"])
    return out


@torch.no_grad()
def test_gates_and_states_equal_an_independent_cell(tiny_model, text):
    ids, _ = corpus.encode(text, tiny_model.vocab)
    got, _ = activations(tiny_model, text)
    want = reference_cell(tiny_model, ids)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=str(key))
    # and h, c agree with nn.LSTM's own outputs
    out, (hT, cT) = tiny_model.lstm(tiny_model.embed(torch.from_numpy(ids))[None])
    np.testing.assert_allclose(got[(1, "h")], out[0].numpy(), atol=1e-6)
    for k in range(tiny_model.layers):
        np.testing.assert_allclose(got[(k, "c")][-1], cT[k, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(got[(k, "h")][-1], hT[k, 0].numpy(), atol=1e-6)


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
            want, want_loss = activations(model, doc_text)  # fresh state at each document
            for (k, s), v in want.items():
                np.testing.assert_allclose(rec.stream(k, s)[d.start:d.stop], v, atol=1e-6)
            np.testing.assert_allclose(rec.loss[d.start:d.stop], want_loss, rtol=1e-5, equal_nan=True)
        assert rec.text == text + (text.replace("Point", "Line") * 2)


def test_streaming_in_blocks_equals_one_pass(tiny_model, tmp_path, monkeypatch, text):
    import probe.record as rec_mod
    long = text * 40  # > several blocks
    monkeypatch.setattr(rec_mod, "BLOCK", 512)
    monkeypatch.setattr(rec_mod, "CHUNK_T", 256)
    out = record(tiny_model, [("long.py", long)], tmp_path / "long.h5", dtype="float32", progress=False)
    want, want_loss = activations(tiny_model, long)
    with open_recording(out) as rec:
        for (k, s), v in want.items():
            np.testing.assert_allclose(rec.stream(k, s)[:], v, atol=2e-5)
        np.testing.assert_allclose(rec.loss, want_loss, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_batched_mode_is_close_to_sequential(tiny_model, tmp_path, monkeypatch, text):
    import probe.record as rec_mod
    long = text * 20
    monkeypatch.setattr(rec_mod, "BLOCK", 1024)
    seq = record(tiny_model, [("a", long)], tmp_path / "seq.h5", dtype="float32", progress=False)
    bat = record(tiny_model, [("a", long)], tmp_path / "bat.h5", dtype="float32", streams=4,
                 burn_in=200, progress=False)
    with open_recording(seq) as a, open_recording(bat) as b:
        assert len(a) == len(b) == len(long)
        h_a, h_b = a.stream(1, "h")[:], b.stream(1, "h")[:]
        assert np.abs(h_a - h_b).mean() < 0.05
        # the first piece starts at the document start, so it is exact
        np.testing.assert_allclose(h_a[:100], h_b[:100], atol=1e-5)
        assert np.isnan(b.loss[0]) and np.isfinite(b.loss[1:]).all()
