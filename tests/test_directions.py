"""Probe directions: a planted linear feature is recovered where no single unit finds it,
``transform`` is its formula, a spec survives ``derived.save``/``load``, removing a
direction equals the step-by-step cell with the same projection in its edit hook, and
bad input is one line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CODE, TEXT, write_recording

from probe import open_recording
from probe.analysis import detectors
from probe.errors import ProbeError
from probe.lm.model import CharRNN, load_model, save_checkpoint
from probe.lm.stepwise import stepwise
from probe.readout import directions
from probe.readout.probes import split_positions
from probe.recording import derived
from probe.recording.record import record
from probe.text import corpus

UNITS = 8
PLANTED = [(0, 1.0), (6, 0.8), (9, -1.0), (14, 0.6), (21, 1.0), (27, -0.7)]  # (column, weight)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 2-layer recording of c and h (8 units) over 24,000 characters of random activations,
    and two features that are linear read-outs of six columns of the inputs as
    ``derived.read_inputs`` gives them (standardised): ``planted`` (plus noise) and
    ``planted_bin`` (that read-out above a threshold)."""
    text = (CODE * 200)[:24_000]
    T = len(text)
    rng = np.random.default_rng(0)
    data = {}
    for k in range(2):
        data[(k, "c")] = (1.5 * rng.standard_normal((T, UNITS))).astype(np.float32)
        data[(k, "h")] = np.tanh(rng.standard_normal((T, UNITS))).astype(np.float32)
    path = write_recording(tmp_path_factory.mktemp("dir") / "planted.h5", text, data, streams=("c", "h"))
    with open_recording(path) as rec:
        x = derived.read_inputs(rec, [[0, "c"], [0, "h"], [1, "c"], [1, "h"]], 0, T).astype(np.float64)
        feats = detectors.default_features(rec)
    w = np.zeros(4 * UNITS)
    for col, weight in PLANTED:
        w[col] = weight
    signal = ((x - x.mean(0)) / x.std(0)) @ w
    feats["planted"] = signal + 0.3 * rng.standard_normal(T)
    feats["planted_bin"] = (signal + 0.3 * rng.standard_normal(T) > 0.5).astype(np.int8)
    return path, feats, w


@pytest.fixture(scope="module")
def planted_spec(planted):
    path, feats, _ = planted
    with open_recording(path) as rec:
        return directions.fit(rec, feats, features=["planted", "planted_bin", "in_string", "column"])


def test_a_planted_linear_feature_is_recovered_where_no_single_unit_finds_it(planted, planted_spec):
    path, feats, w = planted
    spec = planted_spec
    assert spec["kind"] == "directions" and spec["stream"] == "dir" and spec["layer"] == 1
    assert spec["inputs"] == [[0, "c"], [0, "h"], [1, "c"], [1, "h"]]
    assert spec["unit_names"] == ["planted", "planted_bin", "in_string", "column"]
    m = spec["metrics"]
    assert m["planted"]["metric"] == "r" and m["planted"]["score"] >= 0.95
    assert m["planted_bin"]["metric"] == "auc" and m["planted_bin"]["score"] >= 0.95
    for f in ("planted", "planted_bin"):
        best = m[f]["best_cell"]
        strength = abs(best["score"]) if f == "planted" else max(best["score"], 1 - best["score"])
        assert strength < m[f]["score"] - 0.15, (f, best)  # the read-out beats every single unit
        assert m[f]["lambda"] in (10.0, 1e3, 1e5)
    W = spec["params"]["W"].numpy()
    cos = W[:, 0] @ w / np.linalg.norm(W[:, 0]) / np.linalg.norm(w)
    assert cos > 0.98
    # not planted: nothing to find in random activations
    assert m["in_string"]["metric"] == "auc" and abs(m["in_string"]["score"] - 0.5) < 0.1
    assert abs(m["column"]["score"]) < 0.15

    # the held-out scores are what they say, on the held-out positions (all of them here)
    with open_recording(path) as rec:
        T = len(rec)
        _, test = split_positions(T, 0.2, seed=0)
        x = derived.read_inputs(rec, spec["inputs"], 0, T)[test]
        units = directions.apply(spec, rec)[test]
    y = feats["planted"].to_numpy()[test]
    assert m["planted"]["score"] == pytest.approx(np.corrcoef(units[:, 0], y)[0, 1], abs=1e-5)
    yb = feats["planted_bin"].to_numpy()[test]
    assert m["planted_bin"]["score"] == pytest.approx(detectors.auc_exact(units[:, 1].astype(np.float64), yb),
                                                      abs=1e-4)
    aucs = np.array([detectors.auc_exact(x[:, j], yb) for j in range(x.shape[1])])
    j = int(np.argmax(np.maximum(aucs, 1 - aucs)))
    best = m["planted_bin"]["best_cell"]
    assert (best["layer"], best["stream"], best["unit"]) == (*spec["inputs"][j // UNITS], j % UNITS)
    assert best["score"] == pytest.approx(aucs[j], abs=1e-12)
    rs = np.array([np.corrcoef(x[:, j], y)[0, 1] for j in range(x.shape[1])])
    assert abs(m["planted"]["best_cell"]["score"]) == pytest.approx(np.abs(rs).max(), abs=1e-6)


def test_the_spec_records_how_it_was_made(planted, planted_spec):
    spec = planted_spec
    path, feats, _ = planted
    with open_recording(path) as rec:
        assert spec["fitted_on"] == {"path": str(rec.path), "length": len(rec), "created": rec.created}
        raw = np.concatenate([rec.window(k, s, 0, len(rec)) for k, s in spec["inputs"]], axis=1)
    D = 4 * UNITS
    assert spec["mean"].dtype == torch.float32 and tuple(spec["mean"].shape) == (D,)
    assert tuple(spec["params"]["W"].shape) == (D, 4) and tuple(spec["params"]["b"].shape) == (4,)
    train, _ = split_positions(len(raw), 0.2, seed=0)  # the sample is the whole training part here
    np.testing.assert_allclose(spec["params"]["state_mean"].numpy(), raw[train].mean(0), atol=1e-5)
    c = spec["config"]
    assert c["rows"]["train"] == train.sum() and c["rows"]["fit"] + c["rows"]["validation"] == train.sum()
    assert c["lambdas"] == [10.0, 1e3, 1e5] and c["streams"] == ["c", "h"] and c["layers"] == [0, 1]


def ridge(Z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Ridge on the rows of Z (already standardised), intercept unpenalised: (w, b)."""
    zm, ym = Z.mean(0), y.mean()
    Zc = Z - zm
    w = np.linalg.solve(Zc.T @ Zc + lam * np.eye(Z.shape[1]), Zc.T @ (y - ym))
    return w, ym - zm @ w


def test_fit_standardises_and_picks_the_penalty_with_the_least_validation_error(tmp_path):
    """Against plain numpy on the same rows: the stored mean and scale are the training
    sample's (a constant column keeps scale 1), each feature's λ is the one with the least
    squared error on the validation pieces (fitted on the rest, λ scaled to its rows), the
    validation R², the refitted W and b, and the held-out r and best single column."""
    T, U = 3000, 4
    rng = np.random.default_rng(5)
    c = (2.0 * rng.standard_normal((T, U)) + np.arange(U)).astype(np.float32)  # tanh'd when read
    h = (0.4 * rng.standard_normal((T, U)) + 0.1).astype(np.float32)
    h[:, 3] = 0.25                                                              # constant column
    text = (CODE * 30)[:T]
    path = write_recording(tmp_path / "r.h5", text, {(0, "c"): c, (0, "h"): h}, streams=("c", "h"))
    X = np.concatenate([np.tanh(c), h], axis=1).astype(np.float64)  # as read: c through tanh
    feats = pd.DataFrame({"clean": X @ [1.0, -2.0, 0.5, 0.0, 3.0, 0.0, -1.0, 0.0]
                          + 0.05 * rng.standard_normal(T),   # a read-out: the least penalty wins
                          "noise": rng.standard_normal(T)})  # nothing to read
    lambdas = [0.1, 100.0, 1e5]
    with open_recording(path) as rec:
        spec = directions.fit(rec, feats, streams=("c", "h"), sample=10 * T, lambdas=lambdas)
    assert spec["inputs"] == [[0, "c"], [0, "h"]] and spec["unit_names"] == ["clean", "noise"]
    train, test = split_positions(T, 0.2, seed=0)  # sample > T: the sample is the whole training part
    split = spec["config"]["split"]
    _, val = split_positions(int(train.sum()), split["validation"], min_segment=split["validation_min_segment"],
                             seed=1)
    Xtr, Y = X[train], feats.to_numpy()[train]
    mean, scale = Xtr.mean(0), Xtr.std(0)
    assert scale[7] == 0 and (scale[:7] > 0.01).all()
    scale[7] = 1.0
    np.testing.assert_allclose(spec["mean"].numpy(), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(spec["scale"].numpy(), scale, rtol=1e-6)
    Z = (Xtr - mean) / scale
    assert spec["config"]["rows"] == {"train": len(Z), "fit": int((~val).sum()), "validation": int(val.sum()),
                                      "held_out": int(test.sum())}
    W, b = spec["params"]["W"].numpy(), spec["params"]["b"].numpy()
    for f, name in enumerate(["clean", "noise"]):
        y, yv = Y[:, f], Y[val, f]
        sse = []
        for lam in lambdas:
            w, b0 = ridge(Z[~val], y[~val], lam * (~val).sum() / len(Z))
            sse.append(float(((yv - Z[val] @ w - b0) ** 2).sum()))
        m = spec["metrics"][name]
        np.testing.assert_allclose(m["validation_r2"], 1 - np.array(sse) / ((yv - yv.mean()) ** 2).sum(), rtol=1e-6)
        best = lambdas[int(np.argmin(sse))]
        assert m["lambda"] == best and (name != "clean" or best == lambdas[0]), (name, sse)
        w, b0 = ridge(Z, y, best)
        np.testing.assert_allclose(W[:, f], w, rtol=1e-4, atol=1e-6)
        assert b[f] == pytest.approx(b0, rel=1e-5)
        # held out: the read-out's r, and the single input column with the largest |r|
        Zte, yte = (X[test] - mean) / scale, feats[name].to_numpy()[test]
        assert m["metric"] == "r" and m["score"] == pytest.approx(np.corrcoef(Zte @ w + b0, yte)[0, 1], rel=1e-5)
        rs = [np.corrcoef(X[test, j], yte)[0, 1] for j in range(7)]
        j = int(np.argmax(np.abs(rs)))
        assert m["best_cell"] == {"layer": 0, "stream": "ch"[j // U], "unit": j % U,
                                  "score": pytest.approx(rs[j], rel=1e-5)}


def test_default_features_skip_constant_ones_and_missing_streams(planted):
    path, _, _ = planted
    with open_recording(path) as rec:
        spec = directions.fit(rec, streams=("i", "h"), layers=[1], sample=5000, name="probe")
    assert spec["inputs"] == [[1, "h"]] and spec["stream"] == "probe"
    assert "preprocessor" not in spec["unit_names"] and "preprocessor" in spec["config"]["skipped"]
    assert spec["config"]["rows"]["train"] <= 5000 + 255


def test_transform_is_the_formula(planted, planted_spec):
    path, _, _ = planted
    spec = planted_spec
    with open_recording(path) as rec:
        x = derived.read_inputs(rec, spec["inputs"], 100, 5100)
        via_apply = directions.apply(spec, rec, 100, 5100)
    mean, scale = spec["mean"].numpy(), spec["scale"].numpy()
    W, b = spec["params"]["W"].numpy(), spec["params"]["b"].numpy()
    want = ((x.astype(np.float64) - mean) / scale) @ W + b
    got = directions.transform(spec, x, chunk=999)  # several chunks, the last one partial
    assert got.dtype == np.float32 and got.shape == (5000, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(derived.transform(spec, x), directions.transform(spec, x))
    np.testing.assert_array_equal(via_apply, directions.transform(spec, x))


def test_save_and_load_round_trip(planted_spec, tmp_path):
    spec = planted_spec
    path = derived.save(spec, tmp_path / "dirs.pt")
    back = derived.load(path)  # weights_only=True
    torch.load(path, weights_only=True)
    assert set(back) == set(spec)
    for key in ("kind", "stream", "layer", "inputs", "unit_names", "model_sha256", "fitted_on", "metrics",
                "config"):
        assert back[key] == spec[key], key
    for key in ("mean", "scale"):
        assert torch.equal(back[key], spec[key])
    for key in ("W", "b", "state_mean"):
        assert torch.equal(back["params"][key], spec["params"][key])
    x = np.random.default_rng(1).random((50, len(spec["mean"]))).astype(np.float32)
    np.testing.assert_array_equal(directions.transform(back, x), directions.transform(spec, x))


# ---- ablation ---------------------------------------------------------------------------

def tiny(cell: str, root):
    """A tiny model of ``cell`` saved and loaded, its recording, and a spec fitted on it."""
    torch.manual_seed(0)
    model = CharRNN(corpus.build_vocab(TEXT), layers=2, units=UNITS, embedding=4, cell=cell)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3)
    save_checkpoint(root / f"{cell}.pt", model.eval())
    model = load_model(root / f"{cell}.pt")
    out = root / f"{cell}.h5"
    record(model, [("a.py", TEXT), ("b.py", TEXT.replace("Point", "Line") * 3)], out, dtype="float32",
           progress=False)
    with open_recording(out) as rec:
        spec = directions.fit(rec, features=["in_string", "in_comment", "bracket_depth", "column"])
    return model, spec


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {cell: tiny(cell, root) for cell in ("lstm", "gru", "rnn")}


def hook(row: dict):
    """The stepwise edit hook that removes a direction: ``remove`` where the row edits."""
    def edit(layer, stream, position, value):
        if (layer, stream) in row:
            return directions.remove(value, *row[(layer, stream)], stream)
    return edit


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_removing_a_direction_equals_the_step_by_step_cell_with_the_projection(models, cell):
    model, spec = models[cell]
    assert spec["inputs"] == ([[0, "c"], [0, "h"], [1, "c"], [1, "h"]] if cell == "lstm" else [[0, "h"], [1, "h"]])
    rows = [directions.direction(spec, f) for f in ("in_string", "column")] + directions.random_directions(spec, 2)
    rows.append({(1, "h"): rows[0][(1, "h")]})  # one block only: the layers below run fused
    got = directions.losses(model, TEXT, rows)
    assert got.shape == (1 + len(rows), len(TEXT)) and np.isnan(got[:, 0]).all()
    _, plain = stepwise(model, TEXT)
    np.testing.assert_allclose(got[0], plain, atol=1e-5, equal_nan=True)
    for j, row in enumerate(rows, 1):
        assert set(row) == {tuple(i) for i in spec["inputs"]} or j == len(rows)
        streams, want = stepwise(model, TEXT, edit=hook(row))
        np.testing.assert_allclose(got[j], want, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=f"row {j}")
        assert np.nanmax(np.abs(got[j] - plain)) > 1e-4, f"row {j} changed nothing"
        for key, (v, mu) in row.items():  # the component along v, as the read-out reads it, held at its mean
            seen = np.tanh(streams[key]) if key[1] == "c" else streams[key]
            ok = (np.abs(seen) < 0.999).all(axis=1) if key[1] == "c" else np.ones(len(seen), bool)
            assert ok.mean() > 0.2, key  # (tanh(c) saturated: the edit of c is clipped there)
            np.testing.assert_allclose(seen[ok] @ v.numpy(), mu, atol=1e-4)
            assert abs(float(v.norm()) - 1) < 1e-6


def test_the_direction_is_the_read_out_in_raw_space(models):
    _, spec = models["lstm"]
    row = directions.direction(spec, "column")
    W, scale = spec["params"]["W"].numpy()[:, 3], spec["scale"].numpy()
    state = spec["mean"].numpy()  # of h and tanh(c): the space the read-out reads
    for j, (layer, stream) in enumerate(spec["inputs"]):
        sl = slice(j * UNITS, (j + 1) * UNITS)
        w = W[sl] / scale[sl]
        v, mu = row[(layer, stream)]
        np.testing.assert_allclose(v.numpy(), w / np.linalg.norm(w), atol=1e-6)
        assert mu == pytest.approx(float(state[sl] @ (w / np.linalg.norm(w))), abs=1e-5)


def test_ablate_reports_the_batched_losses_against_random_directions(models):
    model, spec = models["lstm"]
    docs = [("a.py", TEXT), ("b.py", TEXT * 2)]
    df = directions.ablate(model, docs, spec, random=3, chars=500)
    assert list(df.columns) == directions.EFFECT_COLUMNS
    assert df["feature"].tolist() == spec["unit_names"]
    # by hand: the same rows, the same documents cut to 500 characters in all
    rows = [directions.direction(spec, f) for f in spec["unit_names"]] + directions.random_directions(spec, 3)
    texts = [TEXT, (TEXT * 2)[:500 - len(TEXT)]]
    bits = np.concatenate([directions.losses(model, t, rows) for t in texts], axis=1)
    delta = np.full_like(bits[1:], np.nan)
    delta[:, :-1] = bits[1:, 1:] - bits[0, 1:]
    from probe.text import features
    spans = [(0, len(texts[0])), (len(texts[0]), 500)]
    feats = features.compute("".join(texts), documents=spans)
    F = len(spec["unit_names"])
    for j, r in enumerate(df.itertuples()):
        binary = r.feature in features.BINARY
        mask = feats[r.feature].to_numpy() != 0 if binary else np.ones(500, bool)
        assert r.where == ("holds" if binary else "all") and r.positions == mask.sum()
        inside = np.nanmean(delta[:, mask], axis=1)
        rand = np.abs(inside[F:])
        assert r.delta_bits == pytest.approx(inside[j], abs=1e-6)
        assert r.random_median == pytest.approx(np.median(rand), abs=1e-6)
        assert r.random_max == pytest.approx(rand.max(), abs=1e-6)
        assert r.ratio == pytest.approx(inside[j] / np.median(rand), rel=1e-5)
        assert r.percentile == pytest.approx(100 * np.mean(rand <= abs(inside[j])))
        if binary:
            assert r.delta_bits_elsewhere == pytest.approx(np.nanmean(delta[j, ~mask]), abs=1e-6)
        else:
            assert np.isnan(r.delta_bits_elsewhere)
    assert "in_string" in directions.report(df)

    # streams="h": only the h blocks of the directions and the controls are edited
    df = directions.ablate(model, TEXT, spec, ["in_string"], random=2, streams="h")
    rows = [directions.direction(spec, "in_string")] + directions.random_directions(spec, 2)
    rows = [{key: e for key, e in row.items() if key[1] == "h"} for row in rows]
    bits = directions.losses(model, TEXT, rows)
    mask = features.compute(TEXT)["in_string"].to_numpy()[:-1] != 0
    assert df["delta_bits"].iloc[0] == pytest.approx(np.nanmean((bits[1, 1:] - bits[0, 1:])[mask]), abs=1e-6)


# ---- one-line errors --------------------------------------------------------------------

def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_input_is_one_line(planted, planted_spec, models, tmp_path):
    path, feats, _ = planted
    spec = planted_spec
    with open_recording(path) as rec:
        with pytest.raises(ProbeError, match="unknown feature 'nope'") as e:
            directions.fit(rec, feats, features=["nope"])
        one_line(e)
        with pytest.raises(ProbeError, match="none of the streams i f is recorded") as e:
            directions.fit(rec, feats, streams=("i", "f"))
        one_line(e)
        with pytest.raises(ProbeError, match="'preprocessor' is constant") as e:
            directions.fit(rec, feats, features=["preprocessor"])
        one_line(e)
        with pytest.raises(ProbeError, match="no layer 5") as e:
            directions.fit(rec, feats, layers=[5])
        one_line(e)
        for bad in (dict(held_out=1.5), dict(sample=0), dict(lambdas=[-1.0]), dict(name="h"),
                    dict(regex={"digit": "[0-9]"})):
            with pytest.raises(ProbeError) as e:
                directions.fit(rec, feats, **bad)
            one_line(e)
    short = write_recording(tmp_path / "short.h5", CODE[:60], {(0, "h"): np.zeros((60, 3))}, streams=("h",))
    with open_recording(short) as rec, pytest.raises(ProbeError, match="too short") as e:
        directions.fit(rec)
    one_line(e)

    other = dict(spec, kind="dictionary")
    with pytest.raises(ProbeError, match="not probe directions") as e:
        directions.transform(other, np.zeros((2, 32), np.float32))
    one_line(e)
    with pytest.raises(ProbeError, match="not probe directions") as e:
        directions.ablate(models["lstm"][0], TEXT, other)
    one_line(e)
    with pytest.raises(ProbeError, match="columns") as e:
        directions.transform(spec, np.zeros((2, 5), np.float32))
    one_line(e)
    with pytest.raises(ProbeError, match="unknown feature 'nope'") as e:
        directions.ablate(models["lstm"][0], TEXT, models["lstm"][1], features=["nope"])
    one_line(e)

    # inputs the model or the recording does not have
    lstm_spec = models["lstm"][1]
    with pytest.raises(ProbeError, match="ablation removes directions from h of a GRU") as e:
        directions.ablate(models["gru"][0], TEXT, lstm_spec)
    one_line(e)
    one_layer = CharRNN(corpus.build_vocab(TEXT), layers=1, units=UNITS, embedding=4)
    with pytest.raises(ProbeError, match="layer 1") as e:
        directions.ablate(one_layer, TEXT, lstm_spec)
    one_line(e)
    wide = CharRNN(corpus.build_vocab(TEXT), layers=2, units=UNITS + 1, embedding=4)
    with pytest.raises(ProbeError, match="the model: the spec reads 32 values per position; .* have 36") as e:
        directions.ablate(wide, TEXT, lstm_spec)
    one_line(e)
    with open_recording(short) as rec, pytest.raises(ProbeError, match="no layer 1|no stream 'c'") as e:
        directions.apply(spec, rec)
    one_line(e)
    with pytest.raises(ProbeError, match="neither built in nor a regex") as e:
        directions.ablate(models["lstm"][0], TEXT, spec, features=["planted"])
    one_line(e)
    with pytest.raises(ProbeError, match="streams g: the spec reads only c h") as e:
        directions.ablate(models["lstm"][0], TEXT, lstm_spec, streams=("g",))
    one_line(e)
    with pytest.raises(ProbeError, match="empty text") as e:
        directions.ablate(models["lstm"][0], "", lstm_spec)
    one_line(e)
