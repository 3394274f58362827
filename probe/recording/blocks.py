"""Feeding a text to the model in blocks: one after another, or many pieces side by side.

``record`` writes a recording block by block, so memory does not grow with the text.
``sequential`` carries the state from block to block (the model reads the text as it
would); ``batched`` runs B pieces of PIECE characters as one batch, each warmed up on up
to ``burn_in`` characters before it (docs/recording-format.md). Either yields (start,
streams, loss in bits) in text order, one block late: a worker thread computes a block's
streams while this thread runs the next block's forward pass (``one_late``).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.nn as nn

from probe.lm.model import LOG2E, CharRNN
from probe.lm.parts import embedded, logits
from probe.recording import h5format
from probe.recording.layers import forward, stream_values

PIECE = 2048          # characters per piece in batched mode (B pieces run as one batch)


def pieces(documents: list[tuple[int, int]], piece: int, burn_in: int) -> list[tuple[int, int, int]]:
    """(warm_start, start, stop) of pieces of at most ``piece`` characters, never straddling
    a document; each is warmed up on up to ``burn_in`` preceding characters of its document
    (at least 1, so its first character has a prediction)."""
    out = []
    for d0, d1 in documents:
        for s in range(d0, d1, piece):
            warm = s if s == d0 else max(d0, s - max(burn_in, 1))
            out.append((warm, s, min(s + piece, d1)))
    return out


def one_late(items, pool: ThreadPoolExecutor):
    """Yield each (start, parts, loss) with ``parts`` (a list of futures of streams dicts)
    resolved and joined, one item late: the worker computes a block's gates while this
    thread runs the next block's forward pass (torch ops release the GIL)."""
    def resolve(item):
        start, parts, loss = item
        joined: dict = {}  # parts are time segments (same keys) or layers (other keys)
        for p in parts:
            for k, v in p.result().items():
                joined.setdefault(k, []).append(v)
        return start, {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in joined.items()}, loss
    pending = None
    for item in items:
        if pending is not None:
            yield resolve(pending)
        pending = item
    if pending is not None:
        yield resolve(pending)


def sequential(model, ids, documents, modules, dtype, pool, block: int, keep=None):
    """Yield (start, streams {key: [n, units]}, loss [n]) blocks of ``block`` characters in order,
    the state carried from block to block (reset at each document's start)."""
    starts = np.array([d0 for d0, _ in documents])  # documents are contiguous and sorted
    doc_starts = set(starts.tolist())

    def blocks():
        state, last_logp = None, None
        for b0 in range(0, len(ids), block):
            b1 = min(b0 + block, len(ids))
            inside = starts[np.searchsorted(starts, b0, "right"):np.searchsorted(starts, b1, "left")]
            cuts = [b0, *inside.tolist(), b1]
            parts, losses = [], []
            for s0, s1 in zip(cuts[:-1], cuts[1:]):
                if s0 in doc_starts:
                    state, last_logp = None, None
                x = torch.from_numpy(ids[s0:s1])
                inputs, logp, state = forward(model, x[None], state, modules)
                parts.append(pool.submit(lambda inputs=inputs: {
                    k: v[0] for k, v in stream_values(model, modules, inputs, dtype, keep).items()}))
                loss = torch.empty(s1 - s0)
                loss[1:] = -logp[0, :-1].gather(1, x[1:, None])[:, 0]
                loss[0] = -last_logp[x[0]] if last_logp is not None else float("nan")
                last_logp = logp[0, -1]
                losses.append(loss)
            yield b0, parts, torch.cat(losses) * LOG2E
    return one_late(blocks(), pool)


@torch.no_grad()
def warm_up(model: CharRNN, modules: list, seqs: list[np.ndarray]) -> tuple[list, torch.Tensor]:
    """Run each sequence (non-empty, of different lengths) from a zero state: the state each
    one ends in, per layer ((h, c) each [n, units]; c None but for an LSTM), and the
    log-probabilities of the character after each one's last ([n, V]). Packed, so a short
    sequence's state is taken at its own end, not after padding."""
    lengths = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
    for j, s in enumerate(seqs):
        x[j, :len(s)] = torch.from_numpy(s)
    packed = nn.utils.rnn.pack_padded_sequence(embedded(model, x), lengths, batch_first=True, enforce_sorted=False)
    state = []
    for w in modules:  # ``recurrence.Layer``s, PyTorch's fused loop
        dev = w.w_hh.device
        packed, h, c = w.fused(packed, torch.zeros(len(seqs), w.out, device=dev),
                               torch.zeros(len(seqs), w.units, device=dev) if w.cell == "lstm" else None)
        state.append((h, c))
    return state, torch.log_softmax(logits(model, state[-1][0]), dim=-1).cpu()


def batched(model, ids, documents, modules, batch, burn_in, dtype, pool, keep=None):
    """Like ``sequential``, but B pieces of the text run side by side as one batch. Each
    piece first reads up to ``burn_in`` characters before it (its warm-up, a separate packed
    run: no gates are computed there), then its own characters from that state."""
    cut = pieces(documents, PIECE, burn_in)
    lstm = model.cell == "lstm"
    wanted = keep if keep is not None else {(k, s) for k in range(model.layers) for s in h5format.STREAMS[model.cell]}

    def blocks():
        for g0 in range(0, len(cut), batch):
            group = cut[g0:g0 + batch]
            n = len(group)
            dev = modules[0].w_hh.device
            state = [(torch.zeros(n, w.out, device=dev), torch.zeros(n, w.units, device=dev) if lstm else None)
                     for w in modules]
            before = torch.full((n, len(model.vocab)), float("nan"))  # logp before each piece
            warm = [j for j, (w, s0, _) in enumerate(group) if s0 > w]  # not at a document start
            if warm:
                ws, wlogp = warm_up(model, modules, [ids[group[j][0]:group[j][1]] for j in warm])
                for k, (h, c) in enumerate(ws):
                    state[k][0][warm] = h
                    if lstm:
                        state[k][1][warm] = c
                before[warm] = wlogp
            L = max(s1 - s0 for _, s0, s1 in group)
            x = torch.zeros(n, L, dtype=torch.long)  # right-padded: padding comes after, harmless
            for j, (_, s0, s1) in enumerate(group):
                x[j, :s1 - s0] = torch.from_numpy(ids[s0:s1])
            inputs, logp, _ = forward(model, x, state, modules)

            def own(keys, inputs=inputs, group=group):
                streams = stream_values(model, modules, inputs, dtype, keys)
                return {key: torch.cat([v[j, :s1 - s0] for j, (_, s0, s1) in enumerate(group)])
                        for key, v in streams.items()}
            losses = []
            for j, (_, s0, s1) in enumerate(group):
                m = s1 - s0
                loss = torch.empty(m)
                loss[0] = -before[j, x[j, 0]]  # NaN at a document start
                loss[1:] = -logp[j, :m - 1].gather(1, x[j, 1:m, None])[:, 0]
                losses.append(loss)
            # the batched forward pass leaves this thread time to spare: it computes layer 0's
            # gates itself while the worker computes the other layers'
            here = Future()
            later = pool.submit(own, {key for key in wanted if key[0] != 0})
            here.set_result(own({key for key in wanted if key[0] == 0}))
            yield group[0][1], [here, later], torch.cat(losses) * LOG2E
    return one_late(blocks(), pool)
