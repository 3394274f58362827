"""Every tool works on an imported model as on a shipped one: recorded (every stream exact
against the step-by-step reference, each layer at its own width, h narrower than c under
proj_size), analysed, matched, read out (directions, a dictionary), compared with n-grams,
and shown in the dashboard (live text and intervene included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from models_elsewhere import PRINTABLE, CharRNNShape, OneHotRNN, Projected, TwoWidths, char_rnn_scores, trained_a_little

from probe.analysis import advantage, cache, match
from probe.lm.adapt import adapt
from probe.lm.model import save_checkpoint
from probe.lm.stepwise import stepwise
from probe.readout import dictionary, directions
from probe.recording.reader import open_recording
from probe.recording.record import record
from probe.text import features, ngram

V = len(PRINTABLE)
CODE = ('def greet(name, excited=False):\n    """Say hello."""\n    message = "hello, " + name  # hi\n'
        "    if excited:\n        message += '!' * (len(name) % 3 + 1)\n    return [message, (1, 2)]\n")
DOCS = [(f"f{j}.py", CODE.replace("greet", f"greet{j}").replace("hello", "hi" * (j % 3 + 1))) for j in range(12)]


def imported(name: str):
    torch.manual_seed(0)
    if name == "two widths, tied":
        m = TwoWidths(V)
        return adapt(trained_a_little(m, lambda m, ids: m(ids), V), PRINTABLE, forward=m)
    if name == "proj_size, no biases":
        m = Projected(V)
        return adapt(trained_a_little(m, lambda m, ids: m(ids), V), PRINTABLE, forward=m)
    if name == "one-hot relu rnn":
        m = OneHotRNN(V)
        return adapt(trained_a_little(m, lambda m, ids: m(ids), V), PRINTABLE, forward=m)
    m = CharRNNShape(V, 24, V, "gru", 2)
    m = trained_a_little(m, char_rnn_scores, V)
    return adapt(m, PRINTABLE, forward=lambda ids: char_rnn_scores(m, ids))


SHAPES = ["two widths, tied", "proj_size, no biases", "one-hot relu rnn", "char-rnn gru"]


@pytest.fixture(scope="module", params=SHAPES)
def made(request, tmp_path_factory):
    """(model, its checkpoint, a float32 recording of DOCS)."""
    root = tmp_path_factory.mktemp("imported")
    model = imported(request.param)
    save_checkpoint(root / "m.pt", model)
    model.path = str(root / "m.pt")
    rec = record(model, DOCS, root / "m.h5", dtype="float32", progress=False)
    return model, root / "m.pt", rec


def test_the_recording_is_the_reference_stream_by_stream(made):
    model, _, path = made
    with open_recording(path) as rec:
        at = 0
        for _, text in DOCS[:3]:
            want, want_loss = stepwise(model, text)
            for (layer, stream), values in want.items():
                got = rec.stream(layer, stream)[at:at + len(text)]
                assert rec.width(layer, stream) == values.shape[1]
                # atol 1e-5, or float32 resolution where c grows large (|c| ~ 40: 1e-6 relative)
                np.testing.assert_allclose(got, values, atol=1e-5, rtol=1e-6, err_msg=f"{layer}:{stream}")
            np.testing.assert_allclose(rec.loss[at + 1:at + len(text)], want_loss[1:], atol=1e-4)
            at += len(text)


def test_analyze_and_match_cover_every_unit_of_every_stream(made):
    _, _, path = made
    with open_recording(path) as rec:
        res = cache.analysis(rec)
        scores = res["scores"]
        for (layer, stream), width in rec.widths.items():
            units = scores[(scores["layer"] == layer) & (scores["stream"] == stream)]["unit"].unique()
            assert sorted(units.tolist()) == list(range(width)), (layer, stream)
        top = rec.layers - 1
        h = rec.stream(top, "h")[:]
        t = int(np.flatnonzero(((h[1:] >= 0.3) & (h[:-1] < 0.3)).any(axis=1))[0]) + 1  # a unit turns on
        units = match.select(rec, top, "h", t, t + 1)
        hits = match.search(rec, top, "h", units)
        assert len(units) and len(hits) and {"start", "stop", "jaccard"} <= set(hits.columns)


def test_directions_and_their_ablation(made):
    model, _, path = made
    with open_recording(path) as rec:
        spec = directions.fit(rec, features=["in_string", "column"], streams=("h",), held_out=0.25)
    assert spec["widths"] == [model_width(model, k, "h") for k, _ in spec["inputs"]]
    df = directions.ablate(model, DOCS[:2], spec, random=2, chars=400)
    assert set(df["feature"]) == {"in_string", "column"} and np.isfinite(df["delta_bits"]).all()


def model_width(model, layer, stream):
    from probe.lm.recurrence import widths
    return widths(model)[(layer, stream)]


def test_a_dictionary_and_its_loss_recovered(made):
    model, _, path = made
    top = model.layers - 1
    with open_recording(path) as rec:
        spec = dictionary.train(rec, top, "h", features=16, k=4, steps=30, batch=256, model=model)
        q = dictionary.quality(spec, rec, rows=500, loss_chars=300, model=model)
    assert len(spec["mean"]) == model_width(model, top, "h")
    assert all(np.isfinite(q[k]) for k in ("bits_clean", "bits_reconstructed", "bits_zero"))
    assert abs(q["bits_zero"] - q["bits_clean"]) > 1e-3  # the splice reaches the model


def test_the_ngram_comparison(made):
    _, _, path = made
    with open_recording(path) as rec:
        ng = ngram.train(DOCS, rec.model_config["vocab"], order=3)
        res = advantage.compare(rec, ng)
    assert np.isfinite(res["advantage"]).any()


def test_the_features_of_the_text_do_not_depend_on_the_model(made):
    _, _, path = made
    with open_recording(path) as rec:
        feats = features.compute(rec.text, ["in_string"], documents=rec.document_spans)
    assert feats["in_string"].any()


def test_the_dashboard_shows_an_imported_model_live_text_and_intervene_included(made):
    """The recording's model is its imported checkpoint (found beside it): the window, typed
    text run through it, and a unit zeroed and clamped."""
    from test_app import Page, click, open_tab, serving
    model, _, path = made
    top = model.layers - 1
    with serving(path.parent) as server:
        p = Page(server, recording=path.name, layer=top, stream="h", unit=2)
        try:
            assert p.message == "" and len(p.positions()) > 0
            assert p["unit"].high == model_width(model, top, "h") - 1
            p.set("live-in", value="def f(x): return 'x'")
            p.wait_for(lambda: p.positions("live"))
            assert len(p.positions("live")) == len("def f(x): return 'x'") and p.message == ""
            open_tab(p, "intervene")
            click(p, "intervene-run")
            p.wait_for(lambda: p["intervene-text"].text or "cannot" in p["intervene-note"].text)
            assert f"<th>zeroing {top}:h:2</th>" in p["intervene-summary"].text, p["intervene-note"].text
            p.set("steer-prime", value="def ")
            p.set("steer-length", value=20)
            click(p, "steer-run")
            p.wait_for(lambda: p["steer-clamped"].text or "cannot" in p["steer-note"].text)
            assert f"with {top}:h:2=" in p["steer-clamped"].text and p.message == ""
        finally:
            p.close()
