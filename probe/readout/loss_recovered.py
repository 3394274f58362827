"""How much of what the model uses a dictionary keeps: its loss with the stream rebuilt.

A dictionary (``probe.readout.dictionary``) rebuilds one stream of one layer from at most k
features. ``loss_recovered`` lets the model read held-out text three times — clean, with
that stream replaced at every step by its reconstruction (``recon_fn``; through arctanh
for c, which is read through tanh), and with it zeroed — and compares the bits per
character: 1 means nothing the model uses is lost, 0 as bad as no state. The three reads
are three rows of one ``probe.lm.recurrence`` pass with ``splice`` hooked on the stream
(``spliced_bits``).
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch

from probe.errors import ProbeError
from probe.lm import recurrence
from probe.recording import h5format
from probe.recording.transforms import decode, dictionary_params, encode
from probe.text import corpus as corpora
from probe.text import tokens as toks

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


def splice(recon: Callable[[torch.Tensor], torch.Tensor]) -> recurrence.Hook:
    """The hook of the three rows: row 0 left clean, row 1 replaced by recon(it), row 2 zeroed."""
    def hook(layer: int, stream: str, position: int, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        value[1] = recon(value[1:2])[0]
        value[2] = 0
        return value
    return hook


def spliced_bits(model, ids: np.ndarray, layer: int, stream: str,
                 recon: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Bits [3, T − 1] of positions 1 … T − 1 of ids read from a zero state: row 0 clean,
    row 1 with ``layer``'s ``stream`` replaced by recon(it) at every step, row 2 with it
    zero. One ``probe.lm.recurrence`` pass of three rows with ``splice`` on the point: the
    layers below run once, fused; the edited layer one step at a time; the layers above fused."""
    return recurrence.bits(model, ids, {(layer, stream): splice(recon)}, rows=3)[:, 1:]


def pieces(rec, test: np.ndarray, chars: int) -> list[tuple[int, int]]:
    """[start, stop) of up to ``chars`` held-out positions (characters, or a word-level
    recording's tokens): the start of each held-out segment (an equal share each), cut at
    document starts."""
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


def piece_ids(rec, model, a: int, b: int) -> np.ndarray:
    """The model's ids of positions [a, b) of a recording: their code points for a character
    recording; for a token one, the text from the first token's start to the last one's end,
    tokenized by the model (its own tokens, the recording's when they share a tokenizer)."""
    if rec.char_level:
        text = rec.dataset("text")
        return corpora.encode(np.asarray(text[a:b]).astype("<u4").tobytes().decode("utf-32-le"), model.vocab)[0]
    spans = rec.spans
    return toks.encode(model, rec.text[int(spans[a, 0]):int(spans[b - 1, 1])])[0]


def loss_recovered(spec: dict, rec, model, test: np.ndarray, chars: int) -> dict:
    """The model reads up to ``chars`` held-out positions (``pieces``; a word model's
    tokens, ``piece_ids``) clean, with the
    dictionary's stream replaced by its reconstruction, and with it zeroed (``spliced_bits``):
    loss_recovered = (L_zero − L_recon) / (L_zero − L_clean), and the three in bits."""
    layer, stream = int(spec["inputs"][0][0]), str(spec["inputs"][0][1])
    cell = getattr(model, "cell", "lstm")
    if stream not in h5format.STREAMS.get(cell, ()):
        raise ProbeError(f"loss_recovered replaces a stream of the model: {cell} layers have "
                         f"{' '.join(h5format.STREAMS.get(cell, ()))}, not {stream!r}")
    width = recurrence.widths(model).get((layer, stream))
    if width != len(spec["mean"]):
        raise ProbeError(f"the model's layer {layer} {stream} ({width or 'none'} units; layers 0..{model.layers - 1}) "
                         f"does not fit a dictionary with {len(spec['mean'])} inputs")
    model = model.eval()
    recon = recon_fn(spec, stream)
    sums, n = np.zeros(3), 0
    for a, b in pieces(rec, test, chars):
        bits = spliced_bits(model, piece_ids(rec, model, a, b), layer, stream, recon)
        sums += bits.astype(np.float64).sum(1)
        n += bits.shape[1]
    clean, rec_bits, zero = sums / max(n, 1)
    gap = zero - clean
    return {"loss_recovered": float((zero - rec_bits) / gap) if n and abs(gap) > 1e-9 else float("nan"),
            "bits_clean": float(clean), "bits_reconstructed": float(rec_bits), "bits_zero": float(zero),
            "chars": int(n)}
