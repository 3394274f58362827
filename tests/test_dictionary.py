"""The sparse dictionary (``probe.readout.dictionary``): it finds directions planted in data, its
codes are sparse, its scores mean what they say, a resumed run ends where an uninterrupted
one does, and bad input is one line."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from probe.errors import ProbeError
from probe.lm.model import CharRNN, load_model, save_checkpoint
from probe.readout import dictionary
from probe.recording import derived
from probe.recording.reader import open_recording
from probe.recording.record import record
from probe.text import corpus

torch.set_num_threads(1)

TEXT = '''def greet(name):
    """Say hello (politely)."""
    # a comment with "quotes" and (brackets)
    return f"hello, {name}!" + ('x' * 3)


class Point:
    def __init__(self, x, y=[1, (2, 3)]):
        self.x, self.y = x, y
'''
SMALL = dict(features=16, k=4, steps=30, batch=64, lr=3e-3)  # a run of a fraction of a second


def _recording(root, cell: str = "lstm"):
    """A 2 × 8 model of ``cell`` (recurrent weights × 3, so its gates move; head × 10, so
    its state moves the loss) and its float32 recording of ~10,000 characters in 4 documents."""
    torch.manual_seed(0)
    model = CharRNN(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4, cell=cell)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3)
        model.head.weight.mul_(10)
    save_checkpoint(root / f"{cell}.pt", model.eval())
    docs = [(f"{j}.py", TEXT.replace("Point", name) * 10) for j, name in enumerate(["A", "Bb", "Ccc", "Dddd"])]
    out = root / f"{cell}.h5"
    record(load_model(root / f"{cell}.pt"), docs, out, dtype="float32", progress=False)
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dictionary")
    return {cell: _recording(root, cell) for cell in ("lstm", "gru", "rnn")}


@pytest.fixture
def rec(recordings):
    with open_recording(recordings["lstm"]) as r:
        yield r


def _planted(seed: int = 0, n: int = 20000, D: int = 32, M: int = 64):
    """Rows that are each a sum of 1–3 of M random unit directions in D dimensions, with
    positive strengths, plus a little noise: (X [n, D], directions [M, D])."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(M, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    coef = np.zeros((n, M))
    for j in range(3):
        pick = rng.integers(0, M, n)
        on = rng.random(n) < (1.0 if j == 0 else 0.6)
        coef[np.arange(n)[on], pick[on]] = rng.uniform(0.5, 2.0, on.sum())
    X = coef @ dirs + rng.normal(0, 0.01, (n, D))
    return X.astype(np.float32), dirs


def _spec(rec, layer: int, stream: str, W_enc, W_dec, b_dec, k: int, mean=None, scale=None) -> dict:
    """A hand-made dictionary spec of (layer, stream)."""
    D = W_enc.shape[1]
    return {"format": derived.FORMAT, "version": derived.VERSION, "kind": "dictionary", "stream": "dict",
            "layer": layer, "inputs": [[layer, stream]], "unit_names": [f"f{j}" for j in range(len(W_enc))],
            "model_sha256": rec.model_sha256,
            "fitted_on": {"path": str(rec.path), "length": len(rec), "created": rec.created},
            "mean": torch.zeros(D) if mean is None else mean, "scale": torch.ones(D) if scale is None else scale,
            "params": {"W_enc": W_enc, "b_enc": torch.zeros(len(W_enc)), "W_dec": W_dec, "b_dec": b_dec, "k": k},
            "metrics": {}, "config": {"held_out": 0.2}}


def _exact(rec, layer: int, stream: str, mean=None, scale=None) -> dict:
    """Features ±e_i, k = D: relu keeps |x_i| on one of each pair, so x̂ = x exactly."""
    D = rec.units
    W = torch.cat([torch.eye(D), -torch.eye(D)])
    return _spec(rec, layer, stream, W.clone(), W.clone(), torch.zeros(D), D, mean, scale)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# ---- training ----------------------------------------------------------------------------------
def test_planted_directions_are_each_found_by_a_decoder_row():
    X, dirs = _planted()
    params = dictionary.fit_arrays(X, features=128, k=4, steps=1000, batch=256, lr=3e-3, seed=0)
    W = params["W_dec"].numpy()
    assert np.allclose(np.linalg.norm(W, axis=1), 1, atol=1e-5)  # unit decoder rows
    best = (dirs @ W.T).max(axis=1)  # each planted direction's closest decoder row
    assert best.min() >= 0.9, f"{(best < 0.9).sum()} of {len(dirs)} directions not found"
    assert params["k"] == 4 and params["W_enc"].shape == params["W_dec"].shape == (128, 32)


def test_the_same_seed_gives_the_same_dictionary_and_another_seed_another():
    X, _ = _planted(n=2000)
    a, b, c = (dictionary.fit_arrays(X, **SMALL, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[n], b[n]) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    assert not torch.equal(a["W_dec"], c["W_dec"])


def test_train_writes_a_spec_in_the_derived_format_that_loads_weights_only(rec, tmp_path):
    out = tmp_path / "d.pt"
    spec = dictionary.train(rec, 1, "c", **SMALL, out=out, name="dict1c")
    assert out.is_file() and not (tmp_path / "d.resume.pt").exists()
    loaded = derived.load(out)  # weights_only=True inside
    plain = torch.load(out, weights_only=True)
    assert plain["kind"] == loaded["kind"] == "dictionary"
    assert (loaded["stream"], loaded["layer"], loaded["inputs"]) == ("dict1c", 1, [[1, "c"]])
    assert loaded["unit_names"] == [f"f{j}" for j in range(16)]
    assert loaded["model_sha256"] == rec.model_sha256 != ""
    assert loaded["fitted_on"] == {"path": str(rec.path), "length": len(rec), "created": rec.created}
    assert loaded["params"]["k"] == 4 and isinstance(loaded["params"]["k"], int)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(loaded["params"][n], spec["params"][n])
    assert loaded["mean"].dtype == loaded["scale"].dtype == torch.float32 and loaded["mean"].shape == (8,)
    for key in ("explained_variance", "l0", "dead_fraction", "loss_recovered"):
        assert np.isfinite(loaded["metrics"][key]), key
    assert {"features", "k", "steps", "batch", "lr", "seed", "held_out"} <= set(loaded["config"])
    x = derived.read_inputs(rec, loaded["inputs"], 0, 500)
    assert np.array_equal(dictionary.transform(loaded, x), derived.transform(spec, x))


def test_codes_are_nonnegative_with_at_most_k_per_row_however_they_are_batched(rec, monkeypatch):
    spec = dictionary.train(rec, 0, "h", **SMALL)
    x = derived.read_inputs(rec, spec["inputs"], 0, len(rec))
    codes = dictionary.transform(spec, x)
    assert codes.shape == (len(rec), 16) and codes.dtype == np.float32
    assert (codes >= 0).all() and ((codes != 0).sum(axis=1) <= 4).all() and (codes != 0).any()
    monkeypatch.setattr(dictionary, "EVAL_BATCH", 37)
    assert np.array_equal(dictionary.transform(spec, x), codes)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(rec, tmp_path, monkeypatch):
    monkeypatch.setattr(dictionary, "CHUNK_ROWS", 256)  # 4 batches a chunk: resume mid-chunk
    monkeypatch.setattr(dictionary, "SAVE_EVERY", 5)
    whole = dictionary.train(rec, 1, "h", **SMALL, seed=3)

    step, calls = dictionary._step, []

    def interrupted(*args, **kwargs):  # SIGINT during the 13th step, as Ctrl-C would
        calls.append(1)
        if len(calls) == 13:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    monkeypatch.setattr(dictionary, "_step", interrupted)
    out = tmp_path / "d.pt"
    with pytest.raises(ProbeError) as e:
        dictionary.train(rec, 1, "h", **SMALL, seed=3, out=out)
    assert "interrupted at step 13" in _one_line(e) and "resum" in str(e.value)
    assert not out.exists() and (tmp_path / "d.resume.pt").is_file()
    monkeypatch.setattr(dictionary, "_step", step)
    resumed = dictionary.train(rec, 1, "h", out=out, resume=True)
    assert not (tmp_path / "d.resume.pt").exists() and out.is_file()
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(resumed["params"][n], whole["params"][n]), n
    assert resumed["config"] == whole["config"] and resumed["metrics"] == whole["metrics"]


def test_a_recording_without_a_model_is_scored_without_loss_recovered(synthetic):
    path, _, _ = synthetic
    with open_recording(path) as r:
        spec = dictionary.train(r, 1, "c", features=8, k=2, steps=10, batch=64)
    assert "loss_recovered" not in spec["metrics"] and "no model" in spec["metrics"]["note"]
    assert 0 <= spec["metrics"]["dead_fraction"] <= 1 and spec["metrics"]["l0"] <= 2


# ---- scores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell, layer, stream", [("lstm", 0, "c"), ("lstm", 1, "h"), ("lstm", 0, "f"),
                                                  ("gru", 0, "h"), ("rnn", 1, "h")])
def test_an_exact_dictionary_recovers_all_the_loss_and_zeros_none(recordings, cell, layer, stream):
    with open_recording(recordings[cell]) as r:
        x = derived.read_inputs(r, [[layer, stream]], 0, len(r))
        mean, scale = torch.from_numpy(x.mean(0)), torch.full((8,), 0.5)
        exact = dictionary.quality(_exact(r, layer, stream, mean, scale), r, loss_chars=3000)
        zero = _spec(r, layer, stream, torch.eye(8), torch.zeros(8, 8), torch.zeros(8), 2)
        zero = dictionary.quality(zero, r, loss_chars=3000)
    assert exact["explained_variance"] == pytest.approx(1, abs=1e-6)
    assert exact["loss_recovered"] == pytest.approx(1, abs=1e-3)
    assert abs(exact["bits_zero"] - exact["bits_clean"]) > 0.05  # the layer matters: the ratio means something
    assert zero["loss_recovered"] == pytest.approx(0, abs=1e-6)
    assert zero["bits_zero"] == exact["bits_zero"] and zero["bits_clean"] == exact["bits_clean"]
    assert exact["dead_fraction"] <= 1 and exact["l0"] <= 8 and 0 < exact["chars"] <= 3000


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_clean_row_of_the_step_loop_is_the_recorded_loss(recordings, cell):
    with open_recording(recordings[cell]) as r:
        a, b = r.document_spans[1]
        ids, _ = corpus.encode(r.text[a:b], r.model_config["vocab"])
        model = load_model(r.model_path)
        stream = "c" if cell == "lstm" else "h"
        bits = dictionary._spliced_bits(model, ids, 1, stream, dictionary._recon_fn(_exact(r, 1, stream), stream))
        np.testing.assert_allclose(bits[0], r.loss[a + 1:b], atol=2e-4)
        np.testing.assert_allclose(bits[1], bits[0], atol=2e-4)


def test_held_out_rows_are_not_training_rows(rec):
    train, test = dictionary.split(rec, 0.2)
    assert not (train & test).any() and (train | test).all() and 0.1 < test.mean() < 0.4
    x = dictionary._gather(rec, [[0, "h"]], test, 10**6, np.random.default_rng(0))
    assert len(x) == test.sum()  # all of it, read block by block


# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, says", [
    (dict(k=0), "k must be"), (dict(k=17), "k must be"), (dict(features=0, k=1), "features must be"),
    (dict(steps=0), "steps must be"), (dict(batch=10**6), "fewer than a batch"),
    (dict(held_out=1.5), "held_out"), (dict(lr=-1.0), "lr must be"),
])
def test_bad_settings_are_one_line(rec, kwargs, says):
    with pytest.raises(ProbeError) as e:
        dictionary.train(rec, 1, "c", **{**SMALL, **kwargs})
    assert says in _one_line(e)


def test_bad_inputs_are_one_line(rec, tmp_path):
    with pytest.raises(ProbeError) as e:
        dictionary.train(rec, 7, "c", **SMALL)
    assert "no layer 7" in _one_line(e)
    with pytest.raises(ProbeError) as e:
        dictionary.train(rec, 1, "q", **SMALL)
    assert "no stream 'q'" in _one_line(e)
    with pytest.raises(ProbeError) as e:
        dictionary.fit_arrays(np.zeros((10, 4), np.float32), **SMALL)
    assert "fewer than a batch" in _one_line(e)
    spec = _exact(rec, 0, "h")
    with pytest.raises(ProbeError) as e:
        dictionary.transform({**spec, "kind": "directions"}, np.zeros((3, 8), np.float32))
    assert "not a dictionary" in _one_line(e)
    with pytest.raises(ProbeError) as e:
        dictionary.transform(spec, np.zeros((3, 5), np.float32))
    assert "columns" in _one_line(e)
    with pytest.raises(ProbeError) as e:
        dictionary.train(rec, 1, "c", **SMALL, out=tmp_path / "d.pt", resume=True)
    assert "no resumable state" in _one_line(e)
    (tmp_path / "d.pt").write_bytes(b"mine")
    with pytest.raises(ProbeError) as e:
        dictionary.train(rec, 1, "c", **SMALL, out=tmp_path / "d.pt")
    assert "already exists" in _one_line(e)
    assert (tmp_path / "d.pt").read_bytes() == b"mine"


def test_transform_keeps_the_same_k_features_as_the_training_encoder_even_with_ties(rec):
    """``transform`` picks each row's k largest by a partition (faster than topk); it keeps
    exactly what ``_encode`` keeps, also in rows whose k-th value is tied."""
    rng = np.random.default_rng(3)
    D, F, k = rec.units, 40, 4
    W_enc = torch.from_numpy(rng.normal(size=(F, D)).astype(np.float32))
    spec = _spec(rec, 1, "h", W_enc, W_enc.clone(), torch.zeros(D), k)
    x = rng.normal(size=(500, D)).astype(np.float32)
    x[:50] = 0.0                                   # every pre-activation 0: all F tied
    W_tie = W_enc.clone()
    W_tie[1] = W_tie[0]                            # features 0 and 1 always tied
    spec_tie = _spec(rec, 1, "h", W_tie, W_tie.clone(), torch.zeros(D), k)
    for s in (spec, spec_tie):
        got = dictionary.transform(s, x)
        p, kk = dictionary._torch_params(s)
        vals, idx, _ = dictionary._encode(p, torch.from_numpy(x), kk)
        want = torch.zeros(len(x), F).scatter_(1, idx, vals).numpy()
        np.testing.assert_array_equal(got, want)
        assert ((got > 0).sum(1) <= k).all()
