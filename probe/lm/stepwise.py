"""The model, one character at a time, with every gate named: the reference for what
``probe.recording.record`` stores, and the place to edit a unit while the model runs. Written for
the LSTM below; ``gru_step`` and ``rnn_step`` do the same for the other cell types.

Like char-rnn's ``LSTM.lua``: the LSTM equations written out, step by step, in PyTorch's
gate order (i f g o), for layer k at position t (x_t is the character's embedding for
k = 0, else layer k−1's h_t)::

    z   = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh        # [4 units]
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o)  # gates
    g   = tanh(z_g)                                     # candidate
    c_t = f · c_{t−1} + i · g                           # cell state
    h_t = o · tanh(c_t)                                 # hidden state

A hook ``edit(layer, stream, position, value)`` — the same function ``probe.lm.recurrence``
hooks on, here with value [units] — sees each named value as soon as it is computed and may
return a replacement (or None to keep it); everything computed after it uses the
replacement. So editing ``c`` changes ``h`` (h = o · tanh(c)) and the next step, editing
``h`` changes the layer above and the next step::

    def ablate(layer, stream, position, value):      # zero the cell state of unit 89
        if (layer, stream) == (0, "c"):
            value = value.clone(); value[89] = 0
            return value

    streams, loss = stepwise(model, "x = 'a'\\n", edit=ablate)

It is slow (a few Python operations per character and layer) and deliberately independent:
``probe.lm.recurrence`` runs the same equations over batches and blocks, and
``probe.recording.record`` computes the values for whole blocks at once; the tests hold
both equal to this.
"""
from __future__ import annotations

import numpy as np
import torch

from probe.errors import ProbeError
from probe.lm.model import LOG2E, CharRNN
from probe.lm.parts import Layer, layers
from probe.lm.recurrence import Hook
from probe.text import tokens as toks


def _namer(edit: Hook | None, position: int, layer: int, out: dict):
    """named(stream, value): passes each value through the edit hook (if any) and keeps the
    result in ``out``; what is computed next uses the returned value."""
    def named(stream: str, value: torch.Tensor) -> torch.Tensor:
        if edit is not None:
            new = edit(layer, stream, position, value)
            if new is not None:
                value = new
        out[stream] = value
        return value
    return named


def lstm_step(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weights: tuple,
              edit: Hook | None = None, position: int = 0, layer: int = 0) -> dict[str, torch.Tensor]:
    """One LSTM step: x [in], h and c → {"i", "f", "g", "o", "c", "h"}, each [units] (h [proj]
    under ``proj_size``: h = W_hr (o · tanh(c)))."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    H = c.shape[0]
    z = w_ih @ x + b_ih + w_hh @ h + b_hh  # [4 units], PyTorch's order i f g o
    out: dict[str, torch.Tensor] = {}
    named = _namer(edit, position, layer, out)
    i = named("i", torch.sigmoid(z[:H]))
    f = named("f", torch.sigmoid(z[H:2 * H]))
    g = named("g", torch.tanh(z[2 * H:3 * H]))
    o = named("o", torch.sigmoid(z[3 * H:]))
    c = named("c", f * c + i * g)
    m = o * torch.tanh(c)
    named("h", m if w_hr is None else w_hr @ m)
    return out


def gru_step(x: torch.Tensor, h: torch.Tensor, weights: tuple, edit: Hook | None = None,
             position: int = 0, layer: int = 0) -> dict[str, torch.Tensor]:
    """One GRU step, as PyTorch computes it: {"r", "z", "n", "h"}, each [units]::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)          # reset gate
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)          # update gate
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))       # candidate
        h' = (1 - z) * n + z * h
    """
    w_ih, w_hh, b_ih, b_hh, _ = weights
    H = h.shape[0]
    gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh  # [3 units] each, PyTorch's order r z n
    out: dict[str, torch.Tensor] = {}
    named = _namer(edit, position, layer, out)

    r = named("r", torch.sigmoid(gi[:H] + gh[:H]))
    z = named("z", torch.sigmoid(gi[H:2 * H] + gh[H:2 * H]))
    n = named("n", torch.tanh(gi[2 * H:] + r * gh[2 * H:]))
    named("h", (1 - z) * n + z * h)
    return out


def rnn_step(x: torch.Tensor, h: torch.Tensor, weights: tuple, edit: Hook | None = None,
             position: int = 0, layer: int = 0) -> dict[str, torch.Tensor]:
    """One vanilla RNN step: {"h": tanh(W_ih x + b_ih + W_hh h + b_hh)} (relu for a relu RNN)."""
    w_ih, w_hh, b_ih, b_hh, relu = weights
    out: dict[str, torch.Tensor] = {}
    z = w_ih @ x + b_ih + w_hh @ h + b_hh
    _namer(edit, position, layer, out)("h", torch.relu(z) if relu else torch.tanh(z))
    return out


def _raw_weights(w: Layer) -> tuple:
    """(W_ih, W_hh, b_ih, b_hh, W_hr or relu): biases as zeros when the layer has none; a GRU
    keeps its two biases apart (r scales only W_hn h + b_hn)."""
    zero = torch.zeros(w.w_hh.shape[0])
    b_ih = zero if w.b_ih is None else w.b_ih
    b_hh = zero if w.b_hh is None else w.b_hh
    return w.w_ih, w.w_hh, b_ih, b_hh, (w.relu if w.cell == "rnn" else w.w_hr)


@torch.no_grad()
def stepwise(model: CharRNN, text: str, edit: Hook | None = None) -> tuple[dict, np.ndarray]:
    """Run ``text`` through ``model`` one character at a time from a zero state.

    Returns ({(layer, stream): float32 [T, units]}, loss [T]): the same layout as
    ``probe.recording.record.activations``; loss[t] is −log2 p(char t | chars before it), NaN at 0.
    """
    ids, _ = toks.encode(model, text)
    if len(ids) == 0:
        raise ProbeError("empty text")
    model = model.eval()
    stack = layers(model)  # each layer's weights, however the model names its modules
    cell = stack[0].cell
    weights = [_raw_weights(w) for w in stack]
    h = [torch.zeros(w.out) for w in stack]
    c = [torch.zeros(w.units) for w in stack]
    rows: dict[tuple[int, str], list] = {}
    loss = np.full(len(ids), np.nan, dtype=np.float32)
    for t, char in enumerate(ids.tolist()):
        # [in]: the embedding's row, or the one-hot vector of a model without one
        x = model.embed.weight[char] if model.embed is not None else torch.eye(len(model.vocab))[char]
        for k, w in enumerate(weights):
            if cell == "lstm":
                values = lstm_step(x, h[k], c[k], w, edit, t, k)
                c[k] = values["c"]
            else:
                values = (gru_step if cell == "gru" else rnn_step)(x, h[k], w, edit, t, k)
            h[k] = values["h"]
            for s, v in values.items():
                rows.setdefault((k, s), []).append(v)
            x = h[k]
        logp = torch.log_softmax(model.head(x), dim=-1)  # [V]: the next character
        if t + 1 < len(ids):
            loss[t + 1] = -float(logp[ids[t + 1]]) * LOG2E
    return {key: torch.stack(v).numpy() for key, v in rows.items()}, loss
