"""Many edited copies of a model read one text as one batch: bits per character per copy.

Row 0 of the batch is the model as it is; every other row carries its own edits. An edit
of (layer, stream) is a function of that stream's values [rows, units] at a step, applied
as soon as they are computed: an edited c feeds h = o · tanh(c) and the next step; an
edited h the layer above, the head and the next step (``probe.lm.stepwise``'s hook does
the same for one row). The layers below the lowest edited one cannot see an edit: they run
once, fused; that layer and those above run one step at a time, one row per copy, with the
equations of ``probe.lm.stepwise`` (PyTorch's gate order). ``intervene.losses`` (units
pinned) and ``probe.readout.ablation.losses`` (directions removed) are this pass.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from probe.errors import ProbeError
from probe.lm.model import LOG2E
from probe.recording.layers import layer_modules

BLOCK = 256       # characters per block (memory: BLOCK x rows x vocab logits)
EDITABLE = {"lstm": ("c", "h"), "gru": ("h",), "rnn": ("h",)}  # the streams a step can edit

StreamEdit = Callable[[torch.Tensor], torch.Tensor]  # values [rows, units] -> edited values


@torch.no_grad()
def bits(model, ids: np.ndarray, rows: int, edits: dict[tuple[int, str], StreamEdit], *,
         lowest: int | None = None, done: Callable[[int], None] | None = None) -> np.ndarray:
    """Bits per character float32 [rows, T] of the encoded text ``ids`` read from a zero
    state by ``rows`` copies of ``model`` (loss[t] is the cost of character t; NaN at 0).

    ``edits`` maps (layer, stream) to the edit of that stream in every row (an edit leaves
    the rows it does not change exactly as they are). ``lowest`` is the first layer run
    step by step (default: the lowest edited one; every layer if there is no edit and it is
    0). ``done(n)`` is called after each block of n characters."""
    cell = getattr(model, "cell", "lstm")
    for layer, stream in edits:
        if not 0 <= layer < model.layers or stream not in EDITABLE.get(cell, ()):
            raise ProbeError(f"cannot edit {stream} of layer {layer} in this {cell} model")
    T, H, B = len(ids), model.units, int(rows)
    lo = min((k for k, _ in edits), default=model.layers) if lowest is None else int(lowest)
    modules = layer_modules(model)
    x = model.embed(torch.from_numpy(ids))  # [T, E]
    for k in range(lo):  # below every edit: once, fused
        x = modules[k](x[None])[0][0]
    weights = [(m.weight_ih_l0, m.weight_hh_l0.T.contiguous(),
                m.bias_ih_l0 + m.bias_hh_l0 if cell == "lstm" else m.bias_ih_l0, m.bias_hh_l0)
               for m in modules[lo:]]
    h_state = [torch.zeros(B, H) for _ in weights]
    c_state = [torch.zeros(B, H) for _ in weights]
    target = torch.from_numpy(ids)
    out = np.full((B, T), np.nan, dtype=np.float32)
    for a in range(0, T, BLOCK):
        b = min(a + BLOCK, T)
        inp = x[a:b]  # [L, in]: the same for every row at the lowest stepped layer
        for j, (w_ih, w_hh_t, b_in, b_hh) in enumerate(weights):
            on_c, on_h = edits.get((lo + j, "c")), edits.get((lo + j, "h"))
            pre = inp @ w_ih.T + b_in
            if pre.dim() == 2:
                pre = pre[:, None, :].expand(-1, B, -1)
            h, c = h_state[j], c_state[j]
            hs = torch.empty(b - a, B, H)
            for t in range(b - a):
                if cell == "lstm":
                    z = torch.addmm(pre[t], h, w_hh_t)  # [B, 4H], PyTorch's order i f g o
                    i, f = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H:2 * H])
                    g, o = torch.tanh(z[:, 2 * H:3 * H]), torch.sigmoid(z[:, 3 * H:])
                    c = f * c + i * g
                    if on_c is not None:
                        c = on_c(c)
                    h = o * torch.tanh(c)
                elif cell == "gru":
                    gh = torch.addmm(b_hh, h, w_hh_t)  # [B, 3H], PyTorch's order r z n
                    r = torch.sigmoid(pre[t, :, :H] + gh[:, :H])
                    zg = torch.sigmoid(pre[t, :, H:2 * H] + gh[:, H:2 * H])
                    n = torch.tanh(pre[t, :, 2 * H:] + r * gh[:, 2 * H:])
                    h = (1 - zg) * n + zg * h
                else:
                    h = torch.tanh(pre[t] + torch.addmm(b_hh, h, w_hh_t))
                if on_h is not None:
                    h = on_h(h)
                hs[t] = h
            h_state[j], c_state[j] = h, c
            inp = hs  # [L, B, H]
        if inp.dim() == 2:  # nothing stepped: the fused pass gave it all
            inp = inp[:, None, :].expand(-1, B, -1)
        logp = torch.log_softmax(model.head(inp), dim=-1)  # [L, B, V]: the next character
        n = min(b, T - 1) - a  # positions of this block with a next character
        if n > 0:
            nxt = target[a + 1:a + 1 + n]
            got = logp[:n].gather(2, nxt[:, None, None].expand(-1, B, 1))[..., 0]  # [n, B]
            out[:, a + 1:a + 1 + n] = (-got * LOG2E).T.numpy()
        if done is not None:
            done(b - a)
    return out
