"""Every layer of a model, run on its own: the values of each of its streams at every step.

``torch.nn.LSTM`` returns only the top layer's h per step. To record everything exactly,
each layer is run on its own with PyTorch's fused loop (``probe.lm.recurrence.Layer``, the
layers every tool runs, ``probe.lm.parts.layers``; ``forward``: that layer's h at every step), then the gates are recomputed for all steps at
once from x_t and h_{t-1} with the same weights, and an LSTM's c is rebuilt with the
recurrence c_t = f_t * c_{t-1} + i_t * g_t (``stream_values``; the recurrence in C when it
was built). Streams, in PyTorch's gate order: LSTM i f g o c h; GRU r z n h; vanilla RNN h
(``h5format.STREAMS``). ``activations`` does it all in memory for a short text.
"""
from __future__ import annotations

import numpy as np
import torch

from probe.compiled import kernels
from probe.errors import ProbeError
from probe.lm.model import LOG2E, CharRNN
from probe.lm.parts import Layer, embedded, logits
from probe.lm.parts import layers as model_layers
from probe.recording import h5format
from probe.text import tokens as toks


@torch.no_grad()
def forward(model: CharRNN, ids: torch.Tensor, state: list | None = None,
            modules: list[Layer] | None = None) -> tuple[list, torch.Tensor, list]:
    """The model's own forward pass over ids [B, L] from ``state`` (per layer (h0, c0), each
    [B, units]; c0 None but for an LSTM; None = zeros), one layer module at a time.

    Returns per layer what its gates are recomputed from, (x, h, h0, c0) (input [B, L, in],
    output [B, L, units], initial state); ``logp`` [B, L, V] (log-probabilities of the next
    character after each position); and the final state per layer.
    """
    modules = modules or model_layers(model)
    B = ids.shape[0]
    x = embedded(model, ids)  # [B, L, E]: the embedding's rows, or one-hot vectors
    inputs, new_state = [], []
    for k, w in enumerate(modules):
        h0, c0 = state[k] if state else (x.new_zeros(B, w.out), x.new_zeros(B, w.units) if w.cell == "lstm" else None)
        h, hT, cT = w.fused(x, h0.contiguous(), None if c0 is None else c0.contiguous(), batch_first=True)
        new_state.append((hT, cT))
        inputs.append((x, h, h0, c0))
        x = h
    return inputs, torch.log_softmax(logits(model, x), dim=-1).cpu(), new_state


@torch.no_grad()
def stream_values(model: CharRNN, modules: list[Layer], inputs: list, dtype: torch.dtype = torch.float32,
          keep: set | None = None) -> dict:
    """Every stream {(layer, s): [B, L, units]} of ``forward``'s ``inputs``, computed in
    float32 for all steps at once from x_t and h_{t-1} with the layer's weights, as PyTorch
    computes them, and stored as ``dtype``. LSTM: i, f, g, o = act(W_i x + b_i + W_h h + b_h),
    c_t = f_t * c_{t-1} + i_t * g_t; GRU: r, z = sigmoid(W_i x + b_i + W_h h + b_h),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); RNN: h itself. ``keep`` (a set of
    (layer, stream)) limits the work and the result to those streams."""
    streams = {}
    for k, (module, (x, h, h0, c0)) in enumerate(zip(modules, inputs)):
        B, L, P = h.shape  # h is P wide: the units H, or an LSTM's proj_size
        H = module.units
        wanted = {s for kk, s in keep if kk == k} if keep is not None else set(h5format.STREAMS[model.cell])
        if not wanted - {"h"}:  # h is the layer's output: no gate to recompute
            streams.update({(k, "h"): h.to(dtype)} if wanted else {})
            continue
        # 2-D matrix products ([B*L, in] x [in, nH]): twice as fast as batched 3-D ones here
        x2 = x.reshape(B * L, -1)
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1).reshape(B * L, P)
        w_ih, w_hh = module.w_ih, module.w_hh
        zero = torch.zeros(w_ih.shape[0], device=w_ih.device)  # a layer without biases
        b_ih = zero if module.b_ih is None else module.b_ih
        b_hh = zero if module.b_hh is None else module.b_hh
        if module.cell == "gru":
            gi = torch.addmm(b_ih, x2, w_ih.T)  # [B*L, 3H] in PyTorch's order r z n
            gh = torch.addmm(b_hh, h_prev, w_hh.T)
            r = torch.sigmoid(gi[:, :H] + gh[:, :H])
            z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            streams.update({(k, s): v.reshape(B, L, H).to(dtype)
                            for s, v in zip(h5format.STREAMS["gru"], (r, z, n)) if s in wanted})
            streams[(k, "h")] = h.to(dtype)
            continue
        pre = torch.addmm(b_ih + b_hh, x2, w_ih.T).addmm_(h_prev, w_hh.T)  # [B*L, 4H]: i f g o
        i, f, o = (torch.sigmoid(pre[:, j * H:(j + 1) * H]).reshape(B, L, H) for j in (0, 1, 3))
        g = torch.tanh(pre[:, 2 * H:3 * H]).reshape(B, L, H)
        streams.update({(k, s): v.to(dtype) for s, v in zip("ifgo", (i, f, g, o)) if s in wanted})
        del pre
        # c_t = f_t * c_{t-1} + i_t * g_t, time-major so each step is one contiguous row
        f_t = f.transpose(0, 1).contiguous().cpu().numpy()  # [L, B, H]
        c_t = (i * g).transpose(0, 1).contiguous().cpu().numpy()  # i * g, then c in place
        recurrence(f_t.reshape(L, -1), c_t.reshape(L, -1), np.ascontiguousarray(c0.cpu().numpy()).reshape(-1))
        streams[(k, "c")] = torch.from_numpy(c_t).transpose(0, 1).to(device=h.device, dtype=dtype)
        streams[(k, "h")] = h.to(dtype)
    return {key: v.cpu() for key, v in streams.items() if key[1] in h5format.STREAMS[model.cell]
            and (keep is None or key in keep)}


def run(model: CharRNN, ids: torch.Tensor, state: list | None = None,
        modules: list[Layer] | None = None, dtype: torch.dtype = torch.float32,
        ) -> tuple[dict, torch.Tensor, list]:
    """``forward`` then ``stream_values``: (streams {(layer, s): [B, L, units]}, logp [B, L, V],
    final state per layer)."""
    modules = modules or model_layers(model)
    inputs, logp, state = forward(model, ids, state, modules)
    return stream_values(model, modules, inputs, dtype), logp, state


def activations(model: CharRNN, text: str) -> tuple[dict, np.ndarray]:
    """In memory, for short texts (the dashboard's live box): {(layer, s): [T, units]}, loss [T]."""
    ids, _ = toks.encode(model, text)
    if len(ids) == 0:
        raise ProbeError("empty text")
    streams, logp, _ = run(model.eval(), torch.from_numpy(ids)[None])
    loss = np.full(len(ids), np.nan, dtype=np.float32)
    nxt = torch.from_numpy(ids[1:])
    loss[1:] = (-logp[0, :-1].gather(1, nxt[:, None].to(logp.device))[:, 0] * LOG2E).cpu().numpy()
    return {key: v[0].cpu().numpy() for key, v in streams.items()}, loss


def recurrence_numpy(f: np.ndarray, c: np.ndarray, c0: np.ndarray) -> None:
    """c[t] = f[t] * c[t - 1] + c[t] in place over rows t (c[-1] = c0), float32 [L, N]:
    the reference for the C loop (``_kernels.recurrence``), and the fallback without it."""
    prev = c0
    for t in range(len(c)):
        row = c[t]
        row += f[t] * prev
        prev = row


recurrence = kernels.recurrence if kernels is not None else recurrence_numpy
