"""Bring your own model: ``probe.adapt`` finds the parts of models written the way public code
writes them, proves the adapted model computes what each one's own forward computes, refuses
what it cannot represent in one line, and the result works with probe's tools."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from models_elsewhere import (
    PRINTABLE,
    CharRNNShape,
    OneHotRNN,
    Projected,
    TwoWidths,
    WordLMShape,
    char_rnn_scores,
    trained_a_little,
    word_lm_scores,
)

from probe.causal import gradients, intervene
from probe.errors import ProbeError
from probe.lm import recurrence
from probe.lm.adapt import adapt
from probe.lm.model import load_model, save_checkpoint
from probe.lm.sample import sample
from probe.lm.stepwise import stepwise
from probe.recording.record import activations

V = len(PRINTABLE)
TEXT = "def add(a, b):\n    return a + b  # sum\n\nprint(add(1, 2), 'ok')\n" * 3


def own(model):
    """The user's own forward as a callable ids [B, T] -> scores [B, T, V]."""
    if isinstance(model, WordLMShape):
        return lambda ids: word_lm_scores(model, ids)
    if isinstance(model, CharRNNShape):
        return lambda ids: char_rnn_scores(model, ids)
    return model


def shapes():
    torch.manual_seed(0)
    return {
        "word-lm lstm, seq-first, tied": WordLMShape("LSTM", V, 32, 32, 2, dropout=0.2, tie_weights=True),
        "word-lm gru": WordLMShape("GRU", V, 16, 24, 2),
        "char-rnn gru, one step per call": CharRNNShape(V, 24, V, "gru", 2),
        "char-rnn lstm": CharRNNShape(V, 20, V, "lstm", 1),
        "two lstms of different widths, tied": TwoWidths(V),
        "one-hot relu rnn": OneHotRNN(V),
        "lstm with proj_size, no biases": Projected(V),
    }


MODELS = {name: trained_a_little(m, lambda m, ids, f=None: own(m)(ids), V) for name, m in shapes().items()}


@pytest.fixture(params=list(MODELS))
def theirs(request):
    return MODELS[request.param]


def test_adapt_finds_the_parts_and_proves_parity(theirs):
    model = adapt(theirs, PRINTABLE, forward=own(theirs))
    parity = model.config["parity"]
    assert parity["reference"] == "forward" and parity["max_abs_diff"] <= 1e-5
    assert set(parity["checked"]) == {"random ids", "a text"}
    ids = torch.randint(V, (3, 50), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = torch.log_softmax(own(theirs)(ids), -1)
    got = torch.log_softmax(recurrence.run(model, ids)[0], -1)
    assert float((got - want).abs().max()) <= 1e-5
    plain = adapt(theirs, PRINTABLE)  # no forward: the parts composed in order are the reference
    assert plain.config["parity"]["reference"] == "parts"


def test_every_stream_of_an_imported_model_is_the_step_by_step_reference(theirs):
    """The record path (every stream at once) and the hooked recurrence equal the reference,
    with layers of different widths, h narrower than c under proj_size, one-hot input."""
    model = adapt(theirs, PRINTABLE, forward=own(theirs))
    want, want_loss = stepwise(model, TEXT)
    got, loss = activations(model, TEXT)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=str(key))
        assert got[key].shape[1] == recurrence.widths(model)[key]
    np.testing.assert_allclose(loss, want_loss, atol=1e-5, equal_nan=True)


def test_the_widths_are_each_layers_own():
    two = adapt(MODELS["two lstms of different widths, tied"], PRINTABLE)
    assert (two.layers, two.cell) == (2, "lstm") and two.config["tied"]
    assert recurrence.widths(two)[(0, "c")] == 40 and recurrence.widths(two)[(1, "h")] == 24
    proj = adapt(MODELS["lstm with proj_size, no biases"], PRINTABLE)
    assert recurrence.widths(proj)[(0, "c")] == 40 and recurrence.widths(proj)[(0, "h")] == 24
    onehot = adapt(MODELS["one-hot relu rnn"], PRINTABLE)
    assert onehot.embed is None and onehot.config["embedding"] == 0


def test_a_checkpoint_of_an_imported_model_is_data_and_loads_back(tmp_path, theirs):
    model = adapt(theirs, PRINTABLE, forward=own(theirs))
    save_checkpoint(tmp_path / "m.pt", model)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # data only
    assert raw["config"]["kind"] == "imported" and raw["config"]["parity"]["max_abs_diff"] <= 1e-5
    back = load_model(tmp_path / "m.pt")
    ids = torch.randint(V, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(recurrence.run(back, ids)[0], recurrence.run(model, ids)[0], atol=0, rtol=0)


@pytest.mark.parametrize("name", ["two lstms of different widths, tied", "char-rnn gru, one step per call",
                                  "one-hot relu rnn", "lstm with proj_size, no biases"])
def test_ablation_clamping_sampling_and_gradients_work_on_imported_models(name):
    model = adapt(MODELS[name], PRINTABLE, forward=own(MODELS[name]))
    top = model.layers - 1
    edit = intervene.Edit(top, "h", 3, 0.5)
    bits = intervene.losses(model, TEXT, [edit])
    _, want = stepwise(model, TEXT, edit=edit.hook())
    np.testing.assert_allclose(bits[1], want, atol=1e-5, equal_nan=True)
    sweep = intervene.effects(model, [("a.py", TEXT)], layer=0, stream="h", random=4,
                              feature_names=["in_string"])
    assert len(sweep) == recurrence.widths(model)[(0, "h")]
    text = sample(model, "def ", 30, temperature=0.8, seed=0, clamp=[edit])
    assert len(text) == 30 and set(text) <= set(PRINTABLE)
    flow = gradients.flow(model, TEXT, span=8, positions=5)
    assert {(r["layer"], r["stream"]) for r in flow["layers"]} >= {(0, "h"), (top, "h")}
    start, values, cost = gradients.saliency(model, TEXT, 40, window=20)
    assert len(values) == 20 and np.isfinite(values).all() and cost > 0


def test_a_forward_that_does_something_else_is_named():
    m = MODELS["two lstms of different widths, tied"]
    with pytest.raises(ProbeError, match="after the head fc: the model's forward changes its output"):
        adapt(m, PRINTABLE, forward=lambda ids: m(ids) / 0.7)  # a temperature probe does not see

    class Between(TwoWidths):  # a layer norm between the recurrent layers and the decoder
        def __init__(self):
            super().__init__(V)
            self.norm = nn.LayerNorm(24)

        def forward(self, x):
            x, _ = self.lstm1(self.embedding(x))
            x, _ = self.lstm2(x)
            return self.fc(self.norm(x))
    b = Between().eval()
    with pytest.raises(ProbeError, match="between lstm2 and fc that probe does not see"):
        adapt(b, PRINTABLE, forward=b)

    class Learned(OneHotRNN):  # a learned initial state
        def __init__(self):
            super().__init__(V)
            self.h0 = nn.Parameter(torch.randn(2, 1, 32))

        def forward(self, ids):
            x = nn.functional.one_hot(ids, V).float()
            return self.out(self.rnn(x, self.h0.expand(-1, ids.shape[0], -1).contiguous())[0])
    learned = Learned().eval()
    with pytest.raises(ProbeError, match="recurrent layers' output differs .*a learned initial state"):
        adapt(learned, PRINTABLE, forward=learned)


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Sequential(nn.Embedding(V, 8), nn.LSTM(8, 8, bidirectional=True), nn.Linear(16, V)),
     "is bidirectional: not a left-to-right language model"),
    (lambda: nn.ModuleDict({"emb": nn.Embedding(V, 8), "cell": nn.LSTMCell(8, 8), "out": nn.Linear(8, V)}),
     "cell is an LSTMCell stepped by the model's own loop"),
    (lambda: nn.Sequential(nn.Embedding(V, 8), nn.Linear(8, V)), "the model has no recurrent module"),
    (lambda: nn.Sequential(nn.Embedding(V + 1, 8), nn.GRU(8, 8), nn.Linear(8, V)),
     "the vocabulary has 100 tokens but the embedding 0 has 101 rows"),
    (lambda: nn.Sequential(nn.Embedding(V, 8), nn.GRU(8, 8), nn.Linear(8, V + 3)),
     "no nn.Linear onto the 100 tokens of the vocabulary"),
    (lambda: nn.Sequential(nn.Embedding(V, 8), nn.GRU(8, 8), nn.LSTM(8, 8), nn.Linear(8, V)),
     "the recurrent modules mix gru and lstm layers"),
])
def test_what_probe_cannot_represent_is_one_line(make, message):
    with pytest.raises(ProbeError, match=message):
        adapt(make(), PRINTABLE)


def test_a_vocabulary_must_be_single_characters():
    m = MODELS["one-hot relu rnn"]
    with pytest.raises(ProbeError, match="single characters"):
        adapt(m, ["the", "cat"] + PRINTABLE[2:])
    with pytest.raises(ProbeError, match="lists 'a' twice"):
        adapt(m, ["a"] + PRINTABLE[1:-1] + ["a"])


def test_a_forward_with_the_wrong_shape_is_one_line():
    m = MODELS["word-lm gru"]
    with pytest.raises(ProbeError, match=r"forward must return scores \[batch, positions, vocabulary\]"):
        adapt(m, PRINTABLE, forward=lambda ids: m(ids.T, m.init_hidden(ids.shape[0]))[0])  # flattened


def test_the_users_module_keeps_its_training_mode():
    m = WordLMShape("LSTM", V, 8, 8, 1)
    m.train()
    adapt(m, PRINTABLE, forward=lambda ids: word_lm_scores(m, ids))
    assert m.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_a_model_on_cuda_imports_and_runs_there():  # pragma: no cover - CPU-only machines skip it
    m = TwoWidths(V).cuda().eval()
    model = adapt(m, PRINTABLE, forward=m)  # the user's forward runs on their device
    assert next(model.parameters()).device.type == "cpu"  # the checkpoint is saved from the CPU
    model = model.cuda()
    edit = intervene.Edit(1, "h", 3, 0.5)
    bits = intervene.losses(model, TEXT, [edit])
    cpu_bits = intervene.losses(model.cpu(), TEXT, [edit])
    np.testing.assert_allclose(bits, cpu_bits, atol=1e-4, equal_nan=True)
    model = model.cuda()
    assert len(sample(model, "def ", 10, seed=0, clamp=[edit])) == 10
    assert gradients.flow(model, TEXT, span=5, positions=3)["positions"] == 3
    streams, _ = activations(model, TEXT)
    assert streams[(0, "c")].shape == (len(TEXT), 40)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal is for machines without")
def test_a_device_that_is_not_there_is_one_line(capsys):
    from probe.cli import main
    for argv in (["sample", "--prime", "a", "--length", "3", "--device", "cuda"],
                 ["ablate", "--cells", "0:c:1", "--limit", "200", "--device", "cuda:0"],
                 ["gradients", "--limit", "300", "--span", "5", "--device", "cuda"],
                 ["record", "--limit", "100", "--out", "never.h5", "--device", "cuda"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("probe: error: --device cuda") and "no CUDA device" in err and err.count("\n") == 1
    assert main(["sample", "--prime", "a", "--length", "3", "--device", "tpu-9"]) == 1
    assert "not a device" in capsys.readouterr().err


def test_a_step_by_step_models_mismatch_is_placed_right():
    """A model calling its nn.GRU once per position: the hooks join the calls along time, so
    a temperature is blamed on the head, not on the input's layout."""
    m = MODELS["char-rnn gru, one step per call"]
    with pytest.raises(ProbeError, match="after the head decoder: the model's forward changes its output"):
        adapt(m, PRINTABLE, forward=lambda ids: char_rnn_scores(m, ids) / 0.7)
