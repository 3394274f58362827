"""Gradient flow through time: exact against autograd through the step-by-step cell, and
the lectures' lesson on constructed models (a vanilla RNN forgets, an LSTM with an open
forget gate does not)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probe.causal import gradients
from probe.cli import main
from probe.lm.model import CharRNN
from probe.text import corpus


def test_the_norms_are_autograds(tiny_model, text):
    span = 12
    flow = gradients.flow(tiny_model, text, span=span, positions=1, seed=3)
    ids = corpus.encode(text, tiny_model.vocab)[0]
    start = int(np.sort(np.random.default_rng(3).choice(len(ids) - span - 1, 1, replace=False))[0])
    # the same window through PyTorch's own LSTM, one step at a time, from the recorded state
    from probe.recording.record import activations
    streams, _ = activations(tiny_model, text)
    h = [torch.tensor(streams[(k, "h")][start - 1], requires_grad=False) for k in range(2)]
    c = [torch.tensor(streams[(k, "c")][start - 1]) for k in range(2)]
    cells = [torch.nn.LSTMCell(4 if k == 0 else 8, 8) for k in range(2)]
    for k, cell in enumerate(cells):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data = getattr(tiny_model.rnn, f"{name}_l{k}").data
    hs = []
    for j in range(span + 1):
        x = tiny_model.embed.weight[ids[start + j]].detach()[None]
        for k, cell in enumerate(cells):
            hk, ck = cell(x, (h[k][None] if h[k].dim() == 1 else h[k], c[k][None] if c[k].dim() == 1 else c[k]))
            hk.retain_grad()
            hs.append((j, k, hk))
            h[k], c[k], x = hk, ck, hk
    loss = torch.nn.functional.cross_entropy(tiny_model.head(x), torch.tensor([ids[start + span + 1]]))
    loss.backward()
    for layer in (0, 1):
        got = next(r for r in flow["layers"] if (r["layer"], r["stream"]) == (layer, "h"))["mean"]
        want = [float(hk.grad.norm()) for j, k, hk in sorted(hs, key=lambda r: -r[0]) if k == layer]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def constructed(cell: str) -> CharRNN:
    """A tiny model whose memory is set by hand: a vanilla RNN with small recurrent
    weights (it forgets at a fixed rate), an LSTM whose forget gates are held open."""
    torch.manual_seed(0)
    model = CharRNN("abcdefgh\n", layers=1, units=16, embedding=8, cell=cell).eval()
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(0.5)
        if cell == "lstm":
            model.rnn.bias_ih_l0[16:32] = 6.0  # forget gate ~ 1: the cell state is kept
        else:
            model.rnn.weight_hh_l0.mul_(0.5)
    return model


def test_a_vanilla_rnn_forgets_and_an_lstm_keeps():
    text = "abcdefgh\n" * 40
    decay = {}
    for cell in ("rnn", "lstm"):
        flow = gradients.flow(constructed(cell), text, span=30, positions=50)
        mean = next(r for r in flow["layers"] if r["stream"] == "h")["mean"]
        decay[cell] = mean[30] / mean[0]
    assert decay["rnn"] < 1e-4 and decay["lstm"] > 100 * decay["rnn"], decay


def test_probe_gradients_json_and_bad_input(model_path, tmp_path, text, capsys):
    src = tmp_path / "code.py"
    src.write_text(text * 3)
    assert main(["gradients", "--model", str(model_path), "--text", str(src), "--span", "10",
                 "--positions", "20", "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["k"] == list(range(11)) and {(r["layer"], r["stream"]) for r in doc["layers"]} == {
        (0, "h"), (1, "h"), (0, "c"), (1, "c")}
    assert all(len(r["mean"]) == 11 and len(r["q10"]) == 11 for r in doc["layers"])
    assert main(["gradients", "--model", str(model_path), "--text", str(src), "--span", "100000",
                 "--quiet"]) == 1
    assert "--span 100000 needs a text of at least 100002 characters" in capsys.readouterr().err


def test_saliency_sees_only_what_the_prediction_reads():
    """A vanilla RNN with no recurrence reads only the last character: all the saliency
    is there."""
    torch.manual_seed(0)
    model = CharRNN("abcdefgh\n", layers=1, units=8, embedding=4, cell="rnn").eval()
    with torch.no_grad():
        model.rnn.weight_hh_l0.zero_()
    start, s, bits = gradients.saliency(model, "abcdefgh\nabc", position=10, window=6)
    assert start == 5 and len(s) == 6
    ids = torch.tensor([[model.vocab.index("b")]])  # position 10; with no recurrence only it is read
    logp = torch.log_softmax(model(ids)[0][0, -1], dim=-1)
    assert bits == pytest.approx(-logp[model.vocab.index("c")].item() / np.log(2), rel=1e-5)
    assert s[-1] != 0 and np.all(s[:-1] == 0)
    normal = CharRNN("abcdefgh\n", layers=1, units=8, embedding=4, cell="lstm").eval()
    _, s, _ = gradients.saliency(normal, "abcdefgh\nabc", position=10, window=6)
    assert np.all(s[:-1] != 0)  # with a memory, earlier characters count too
    with pytest.raises(Exception, match="has no next character"):
        gradients.saliency(normal, "abc", position=2)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_saliency_and_flow_raise_no_warning(cell):
    """No PyTorch warning (e.g. "Converting a tensor with requires_grad=True to a scalar")
    from either computation: the dashboard's console and the test log stay clean."""
    import warnings
    model = CharRNN("abcdefgh\n", layers=2, units=8, embedding=4, cell=cell).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start, s, bits = gradients.saliency(model, "abcdefgh\nabc", position=10, window=6)
        flow = gradients.flow(model, "abcdefgh\n" * 4, span=5, positions=3)
    assert (start, len(s)) == (5, 6) and np.isfinite(bits) and np.isfinite(s).all()
    assert flow["k"] == list(range(6)) and flow["positions"] == 3
