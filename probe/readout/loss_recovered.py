"""How much of what the model uses a dictionary keeps: its loss with the stream rebuilt.

A dictionary (``probe.readout.dictionary``) rebuilds one stream of one layer from at most k
features. ``loss_recovered`` lets the model read held-out text three times — clean, with
that stream replaced at every step by its reconstruction (``recon_fn``; through arctanh
for c, which is read through tanh), and with it zeroed — and compares the bits per
character: 1 means nothing the model uses is lost, 0 as bad as no state. The edited layer
runs one step at a time for the three rows at once (``spliced_bits``, the equations of
``probe.lm.stepwise``); the layers below and above it run fused.
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch

from probe.errors import ProbeError
from probe.lm.model import LOG2E
from probe.recording import h5format
from probe.recording.layers import layer_modules
from probe.recording.transforms import decode, dictionary_params, encode
from probe.text import corpus as corpora

EPS = 1e-6           # c = arctanh(clip(x̂, -1 + EPS, 1 - EPS)) for a stream read through tanh


def recon_fn(spec: dict, stream: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """value [n, H] of the stream inside the model → its reconstruction, in the same units."""
    p, k = dictionary_params(spec)
    mean, scale = spec["mean"].float(), spec["scale"].float()
    bounded = h5format.is_bounded(stream)

    def recon(v: torch.Tensor) -> torch.Tensor:
        x = v if bounded else torch.tanh(v)
        xh = decode(p, *encode(p, (x - mean) / scale, k)[:2]) * scale + mean
        return xh if bounded else torch.atanh(xh.clamp(-1 + EPS, 1 - EPS))
    return recon


@torch.no_grad()
def spliced_bits(model, ids: np.ndarray, layer: int, stream: str,
                  recon: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Bits [3, T − 1] of characters 1 … T − 1 of ids read from a zero state: row 0 clean,
    row 1 with ``layer``'s ``stream`` replaced by recon(it) at every step, row 2 with it
    zero. The layers below run once, fused; the edited layer one step at a time (the
    equations of ``probe.lm.stepwise``), for the three rows at once; the layers above fused."""
    cell, H = getattr(model, "cell", "lstm"), model.units
    modules = layer_modules(model)
    x = model.embed(torch.from_numpy(ids))  # [T, E]
    for j in range(layer):
        x = modules[j](x[None])[0][0]
    m = modules[layer]
    gi = torch.addmm(m.bias_ih_l0, x, m.weight_ih_l0.T)  # [T, gates × H]
    w_hh_t, b_hh = m.weight_hh_l0.T.contiguous(), m.bias_hh_l0

    def named(s: str, v: torch.Tensor) -> torch.Tensor:
        if s != stream:
            return v
        v = v.clone()
        v[1] = recon(v[1:2])[0]
        v[2] = 0
        return v

    h, c = torch.zeros(3, H), torch.zeros(3, H)
    hs = torch.empty(3, len(ids), H)
    for t in range(len(ids)):
        gh = torch.addmm(b_hh, h, w_hh_t)  # [3, gates × H]
        if cell == "lstm":  # PyTorch's order i f g o
            z = gi[t] + gh
            i = named("i", torch.sigmoid(z[:, :H]))
            f = named("f", torch.sigmoid(z[:, H:2 * H]))
            g = named("g", torch.tanh(z[:, 2 * H:3 * H]))
            o = named("o", torch.sigmoid(z[:, 3 * H:]))
            c = named("c", f * c + i * g)
            h = named("h", o * torch.tanh(c))
        elif cell == "gru":  # r z n
            r = named("r", torch.sigmoid(gi[t, :H] + gh[:, :H]))
            u = named("z", torch.sigmoid(gi[t, H:2 * H] + gh[:, H:2 * H]))
            n = named("n", torch.tanh(gi[t, 2 * H:] + r * gh[:, 2 * H:]))
            h = named("h", (1 - u) * n + u * h)
        else:
            h = named("h", torch.tanh(gi[t] + gh))
        hs[:, t] = h
    y = hs
    for j in range(layer + 1, model.layers):
        y = modules[j](y)[0]  # [3, T, H]
    logp = torch.log_softmax(model.head(y[:, :-1]), dim=-1)  # [3, T − 1, V]
    nxt = torch.from_numpy(ids[1:])[None, :, None].expand(3, -1, 1)
    return (-logp.gather(2, nxt)[..., 0] * LOG2E).numpy()


def pieces(rec, test: np.ndarray, chars: int) -> list[tuple[int, int]]:
    """[start, stop) of up to ``chars`` held-out characters: the start of each held-out
    segment (an equal share each), cut at document starts."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], test.astype(np.int8), [0]])))
    segments = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
    share = max(2, chars // max(1, len(segments)))
    doc_starts = rec.documents["start"].to_numpy()
    out = []
    for a, b in segments:
        b = min(b, a + share)
        cuts = [a] + [int(s) for s in doc_starts if a < s < b] + [b]
        out += [(u, v) for u, v in pairwise(cuts) if v - u >= 2]
    return out


def loss_recovered(spec: dict, rec, model, test: np.ndarray, chars: int) -> dict:
    """The model reads up to ``chars`` held-out characters (``pieces``) clean, with the
    dictionary's stream replaced by its reconstruction, and with it zeroed (``spliced_bits``):
    loss_recovered = (L_zero − L_recon) / (L_zero − L_clean), and the three in bits."""
    layer, stream = int(spec["inputs"][0][0]), str(spec["inputs"][0][1])
    cell = getattr(model, "cell", "lstm")
    if stream not in h5format.STREAMS.get(cell, ()):
        raise ProbeError(f"loss_recovered replaces a stream of the model: {cell} layers have "
                         f"{' '.join(h5format.STREAMS.get(cell, ()))}, not {stream!r}")
    if not 0 <= layer < model.layers or model.units != len(spec["mean"]):
        raise ProbeError(f"the model ({model.layers} × {model.units}) does not fit a dictionary of "
                         f"layer {layer} with {len(spec['mean'])} inputs")
    model = model.eval()
    recon = recon_fn(spec, stream)
    text = rec.dataset("text")
    sums, n = np.zeros(3), 0
    for a, b in pieces(rec, test, chars):
        ids, _ = corpora.encode(np.asarray(text[a:b]).astype("<u4").tobytes().decode("utf-32-le"), model.vocab)
        bits = spliced_bits(model, ids, layer, stream, recon)
        sums += bits.astype(np.float64).sum(1)
        n += bits.shape[1]
    clean, rec_bits, zero = sums / max(n, 1)
    gap = zero - clean
    return {"loss_recovered": float((zero - rec_bits) / gap) if n and abs(gap) > 1e-9 else float("nan"),
            "bits_clean": float(clean), "bits_reconstructed": float(rec_bits), "bits_zero": float(zero),
            "chars": int(n)}
