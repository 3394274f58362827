"""The one recurrence with hook points (``probe.lm.recurrence``): every path equals the
step-by-step reference (``probe.lm.stepwise``) within 1e-5 in float32, for LSTM, GRU and RNN
models, for every kind of edit, on every layer; and the hooks are plain functions one can
write in five lines."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.causal import intervene
from probe.errors import ProbeError
from probe.lm import recurrence
from probe.lm.model import CharRNN
from probe.lm.recurrence import STREAMS, run
from probe.lm.stepwise import stepwise
from probe.readout.ablation import remove
from probe.recording.record import activations
from probe.text import corpus

from conftest import TEXT

ATOL = 1e-5
UNITS = 8
CELLS = ["lstm", "gru", "rnn"]


def three_layers(cell: str, seed: int = 0, **kw) -> CharRNN:
    """A tiny three-layer model with large weights, so every gate moves visibly. A vanilla
    RNN's are scaled less: with weights x 3 it is chaotic, and float32 rounding (1e-7, which
    differs with the order of a sum) grows past 1e-5 within a hundred steps."""
    torch.manual_seed(seed)
    model = CharRNN(corpus.build_vocab(TEXT), layers=3, units=UNITS, embedding=4, cell=cell, **kw)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(2 if cell == "rnn" else 3)
    return model.eval()


@pytest.fixture(scope="module", params=CELLS)
def model(request) -> CharRNN:
    return three_layers(request.param)


def direction(seed: int = 1) -> torch.Tensor:
    v = torch.randn(UNITS, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


# Each edit is a hook written for one point that works on one state [units] (stepwise) and on
# a batch [rows, units] (run) alike.
def pin_from_20(layer, stream, position, value):
    """Unit 3 held at 0.7 from position 20 on."""
    if position >= 20:
        value = value.clone()
        value[..., 3] = 0.7
        return value


def project_out(layer, stream, position, value):
    """A direction removed (its component held at 0.1)."""
    v = direction()
    return value - ((value * v).sum(-1, keepdim=True) - 0.1) * v


def splice(layer, stream, position, value):
    """A stand-in reconstruction: the stream scaled, as a dictionary's splice replaces it."""
    return 0.5 * value


def zero(layer, stream, position, value):
    return torch.zeros_like(value)


EDITS = {"pin": pin_from_20, "project": project_out, "splice": splice, "zero": zero}


def only_at(point, hook):
    """The stepwise edit that applies ``hook`` at ``point`` alone (run calls it only there)."""
    return lambda layer, stream, position, value: hook(layer, stream, position, value) \
        if (layer, stream) == point else None


def captured(model, hooks) -> tuple[dict, np.ndarray]:
    """Every stream of every layer read by capture hooks beside ``hooks``, and bits [T]."""
    seen: dict = {}

    def keep(layer, stream, position, value):
        seen.setdefault((layer, stream), []).append(value[0].clone())
    table = recurrence.hook_table(hooks)
    for k in range(model.layers):
        for s in STREAMS[model.cell]:
            table.setdefault((k, s), []).append(keep)
    logits, _ = run(model, TEXT, table)
    ids = corpus.encode(TEXT, model.vocab)[0]
    loss = np.full(len(ids), np.nan, dtype=np.float32)
    logp = torch.log_softmax(logits[0, :-1], -1)
    loss[1:] = (-logp.gather(1, torch.from_numpy(ids[1:])[:, None].long())[:, 0] * recurrence.LOG2E).numpy()
    return {key: torch.stack(v).numpy() for key, v in seen.items()}, loss


@pytest.mark.parametrize("kind", list(EDITS))
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_every_edit_on_every_stream_and_layer_equals_the_reference(model, kind, layer):
    for stream in STREAMS[model.cell]:
        point = (layer, stream)
        want, want_loss = stepwise(model, TEXT, edit=only_at(point, EDITS[kind]))
        got, got_loss = captured(model, {point: EDITS[kind]})
        for key in want:  # every value the model computes, edited and downstream
            np.testing.assert_allclose(got[key], want[key], atol=ATOL, err_msg=f"{kind} at {point}: {key}")
        np.testing.assert_allclose(got_loss, want_loss, atol=ATOL, equal_nan=True)
        # with only the edit hooked, the layers below and above run fused: the same bits
        fused = recurrence.bits(model, corpus.encode(TEXT, model.vocab)[0], {point: EDITS[kind]}, block=37)
        np.testing.assert_allclose(fused[0], want_loss, atol=ATOL, equal_nan=True)
        _, plain_loss = stepwise(model, TEXT)
        assert np.nanmax(np.abs(want_loss - plain_loss)) > 1e-4, f"{kind} at {point} changed nothing"


def test_without_hooks_it_is_the_models_own_forward(model):
    ids = torch.from_numpy(corpus.encode(TEXT, model.vocab)[0])[None]
    want, _ = model(ids)
    for block in (1, 5, 256):  # fused and stepped blocks alike
        got, state = run(model, ids, block=block)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert len(state) == 3 and state[0][0].shape == (1, UNITS)
    assert (state[0][1] is not None) == (model.cell == "lstm")


def test_rows_carry_their_own_edits_side_by_side(model):
    """A batch of variants: row 0 unedited, row j pins unit j − 1 of layer 1's h to 0.5 —
    each row is the reference with its own edit, as an ablation sweep runs."""
    ids = corpus.encode(TEXT, model.vocab)[0]
    rows = torch.arange(1, UNITS + 1)

    def pins(layer, stream, position, value):
        value[rows, rows - 1] = 0.5
        return value
    got = recurrence.bits(model, ids, {"1:h": pins}, rows=UNITS + 1)
    assert got.shape == (UNITS + 1, len(ids))
    _, plain = stepwise(model, TEXT)
    np.testing.assert_allclose(got[0], plain, atol=ATOL, equal_nan=True)
    for u in range(UNITS):
        _, want = stepwise(model, TEXT, edit=intervene.Edit(1, "h", u, 0.5).hook())
        np.testing.assert_allclose(got[1 + u], want, atol=ATOL, equal_nan=True, err_msg=f"unit {u}")


def test_hooks_on_one_point_compose_in_order(model):
    point = (1, "h")
    both = {point: [splice, pin_from_20]}  # scaled, then pinned: the pin wins from 20 on
    got, _ = captured(model, both)

    def in_order(layer, stream, position, value):  # a hook's None keeps the value it was given
        scaled = splice(layer, stream, position, value)
        pinned = pin_from_20(layer, stream, position, scaled)
        return scaled if pinned is None else pinned
    want, _ = stepwise(model, TEXT, edit=only_at(point, in_order))
    np.testing.assert_allclose(got[point], want[point], atol=ATOL)
    assert np.allclose(got[point][20:, 3], 0.7)
    other, _ = captured(model, {point: [pin_from_20, splice]})  # the other order: 0.35
    assert np.allclose(other[point][20:, 3], 0.35)


def test_going_on_from_a_state_is_reading_on(model):
    ids = torch.from_numpy(corpus.encode(TEXT, model.vocab)[0])
    hooks = {"0:h": pin_from_20}
    whole, end = run(model, ids, hooks)
    first, mid = run(model, ids[:50], hooks)
    second, end2 = run(model, ids[50:], hooks, state=mid, start=50)  # positions go on from 50
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=ATOL, rtol=0)
    for (h, c), (h2, c2) in zip(end, end2):
        torch.testing.assert_close(h2, h, atol=ATOL, rtol=0)


def test_hooks_that_keep_the_gradient(model):
    """A capture hook keeps each h in the graph: the gradient of the last prediction with
    respect to layer 0's h at position t equals autograd through the reference."""
    ids = torch.from_numpy(corpus.encode(TEXT[:30], model.vocab)[0])
    kept = []

    def keep(layer, stream, position, value):
        value.retain_grad()
        kept.append(value)
    logits, _ = run(model, ids, {"0:h": keep}, grad=True)
    logits[0, -1, 5].backward()
    grads = torch.stack([h.grad[0] for h in kept])  # [T, units]

    # the same derivative by finite differences of the reference: nudge h at position 10
    def nudged(eps):
        def add(layer, stream, position, value):
            if (layer, stream, position) == (0, "h", 10):
                value = value.clone()
                value[:, 2] += eps
                return value
        out, _ = run(model, ids, [((0, "h"), add)])
        return float(out[0, -1, 5])
    numeric = (nudged(1e-2) - nudged(-1e-2)) / 2e-2
    assert grads[10, 2].item() == pytest.approx(numeric, rel=1e-2, abs=1e-4)
    assert grads[-1].abs().sum() > 0 and all(p.grad is None for p in model.parameters())  # weights are constants


def test_the_recorders_fast_path_equals_the_hooked_run(model):
    """``probe record`` and the live text compute every stream at once from the same layers;
    they equal what the hooks read one step at a time."""
    fast, fast_loss = activations(model, TEXT)
    hooked, loss = captured(model, {})
    for key in hooked:
        np.testing.assert_allclose(fast[key], hooked[key], atol=ATOL, err_msg=str(key))
    np.testing.assert_allclose(fast_loss, loss, atol=ATOL, equal_nan=True)


def test_a_relu_rnn_and_a_layer_without_biases_run_as_pytorch_runs_them():
    for kw in ({"cell": "rnn"}, {"cell": "lstm"}, {"cell": "gru"}):
        model = three_layers(**kw)
        model.rnn = type(model.rnn)(4, UNITS, 3, batch_first=True, bias=False,
                                    **({"nonlinearity": "relu"} if kw["cell"] == "rnn" else {}))
        ids = torch.from_numpy(corpus.encode(TEXT, model.vocab)[0])[None]
        want, _ = model(ids)
        for hooks in ({}, {"1:h": lambda layer, stream, position, value: None}):  # fused; stepped
            got, _ = run(model, ids, hooks)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_the_layers_are_kept_until_a_weight_changes():
    model = three_layers("lstm")
    assert recurrence.layers(model) is recurrence.layers(model)
    before, _ = run(model, TEXT)
    with torch.no_grad():
        model.rnn.weight_hh_l1.mul_(0.5)  # in place, as training does
    after, _ = run(model, TEXT)
    want, _ = model(torch.from_numpy(corpus.encode(TEXT, model.vocab)[0])[None])
    torch.testing.assert_close(after, want, atol=ATOL, rtol=0)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("hooks, message", [
    ({"0:x": zero}, "no stream 'x' in layer 0: lstm layers have i f g o c h"),
    ({"3:h": zero}, "no layer 3 in the model (layers are 0..2)"),
    ({"h": zero}, "hook point 'h' is not LAYER:STREAM (e.g. 0:c)"),
    ({"0:h": "zero"}, "the hook on 0:h is not a function"),
])
def test_a_bad_hook_point_is_one_line(hooks, message):
    with pytest.raises(ProbeError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        run(three_layers("lstm"), TEXT, hooks)


def test_rows_must_match_the_texts():
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ProbeError, match="rows must be the batch of ids"):
        run(three_layers("gru"), ids, rows=3)


def test_the_readme_examples():
    """The three hooks of the README's API section, on the shipped-shape model in small."""
    model = three_layers("lstm")
    seen = []
    logits, state = run(model, TEXT, hooks={"1:c": lambda layer, stream, t, c: seen.append(c[0].clone())})
    c = torch.stack(seen)  # [T, units]: layer 1's cell state after each character
    assert c.shape == (len(TEXT), UNITS) and logits.shape == (1, len(TEXT), len(model.vocab))

    def pin(layer, stream, t, c):  # unit 5 of layer 0's c held at 0 from position 100
        if t >= 100:
            c[:, 5] = 0
        return c
    pinned, _ = run(model, TEXT, hooks={"0:c": pin})
    torch.testing.assert_close(pinned[:, :100], logits[:, :100], atol=ATOL, rtol=0)
    assert not torch.allclose(pinned[:, 100:], logits[:, 100:], atol=1e-3)

    v = direction()
    out, _ = run(model, TEXT, hooks={"1:h": lambda layer, stream, t, h: h - (h @ v)[:, None] * v})
    want, _ = stepwise(model, TEXT, edit=only_at((1, "h"), lambda *a: remove(a[3][None], v[None], 0.0, "h")[0]))
    seen2 = []
    run(model, TEXT, hooks={"1:h": [lambda layer, stream, t, h: h - (h @ v)[:, None] * v,
                                    lambda layer, stream, t, h: seen2.append(h[0].clone())]})
    np.testing.assert_allclose(torch.stack(seen2).numpy(), want[(1, "h")], atol=ATOL)
    assert np.abs(want[(1, "h")] @ v.numpy()).max() < 1e-5  # nothing left along v


def test_the_stream_names_are_the_recordings():
    from probe.recording import h5format  # the reader's copy: reading a recording needs no torch
    assert recurrence.STREAMS == h5format.STREAMS
