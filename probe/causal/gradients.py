"""Gradient flow through time: how much the loss at t depends on the state k steps back.

The lectures' claim, measurable: in a vanilla RNN the gradient of the loss at position t
with respect to the hidden state at t − k vanishes (or explodes) as k grows, while the
LSTM's cell state carries it further ("a gradient highway")::

    from probe.causal import gradients
    flow = gradients.flow(model, text, span=200, positions=1000)
    flow["layers"][0]["mean"]   # ‖∂loss_t/∂h_{t-k}‖ for k = 0..span, averaged over positions

For each sampled position t (a character, or a word model's token: k counts positions),
the model reads the ``span`` positions before it, starting
from the state the real text left there (the recurrence run fused up to it, detached), one
step at a time through ``probe.lm.recurrence`` with a hook on every state that keeps its
gradient; one backward pass through all sampled positions at once (a batch) gives
∂loss_t/∂h_{t−k} (and ∂/∂c_{t−k} for an LSTM) for every k. Saliency differentiates the
same recurrence, fused, with respect to its inputs.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.lm import recurrence
from probe.lm.model import LOG2E, CharRNN
from probe.text import tokens as toks

BATCH = 250  # positions per backward pass


@torch.no_grad()
def _states_before(model: CharRNN, ids: np.ndarray, starts: np.ndarray) -> list:
    """The state the real text leaves just before each start (sorted), per start: the
    recurrence run fused from one start to the next, carrying the state (None at 0)."""
    out, state, at = [], None, 0
    for s in starts.tolist():
        if s > at:
            _, state = recurrence.run(model, ids[at:s], state=state, head=False)
            at = s
        out.append(state)
    return out


def _norms(model: CharRNN, ids: np.ndarray, before: list, starts: np.ndarray, span: int) -> tuple:
    """Gradient norms {(layer, stream): [B, span + 1]} and per-unit sizes summed over the
    windows {…: [span + 1, units]} (column / row j: k = span - j) for the windows
    ids[s : s + span + 1] predicting ids[s + span + 1]: one ``recurrence.run`` with a hook
    on every state that keeps its gradient, one backward pass."""
    stack, B = recurrence.layers(model), len(starts)
    state = []
    for k, w in enumerate(stack):  # the state the real text left just before each window
        h0 = torch.zeros(B, w.out, device=w.w_hh.device)
        c0 = torch.zeros(B, w.units, device=w.w_hh.device) if w.cell == "lstm" else None
        for b, st in enumerate(before):
            if st is not None:
                h0[b] = st[k][0][0]
                if c0 is not None:
                    c0[b] = st[k][1][0]
        state.append((h0.requires_grad_(), None if c0 is None else c0.requires_grad_()))  # graph roots
    kept: dict = {}

    def keep(layer: int, stream: str, position: int, value: torch.Tensor) -> None:
        value.retain_grad()
        kept.setdefault((layer, stream), []).append(value)
    hooks = {(k, s): keep for k, w in enumerate(stack) for s in recurrence.PINNABLE[w.cell]}
    window = torch.from_numpy(np.stack([ids[s:s + span + 1] for s in starts]))  # [B, span + 1]
    top, _ = recurrence.run(model, window, hooks, state=state, grad=True, head=False, block=span + 1)
    with torch.enable_grad():
        target = torch.from_numpy(ids[starts + span + 1]).to(top.device)
        logits = recurrence.logits(model, top[:, -1])  # [B, V], the head's weights constants
        torch.nn.functional.cross_entropy(logits, target, reduction="sum").backward()
    norms = {key: torch.stack([t.grad.norm(dim=1) for t in ts], 1).cpu().numpy() for key, ts in kept.items()}
    sizes = {key: torch.stack([t.grad.abs().sum(0) for t in ts]).cpu().numpy() for key, ts in kept.items()}
    return norms, sizes


def flow(model: CharRNN, text: str, span: int = 200, positions: int = 1000, seed: int = 0,
         batch: int = BATCH, progress: bool = False) -> dict:
    """‖∂loss_t/∂h_{t−k}‖ (and c for an LSTM) for k = 0…``span``, over ``positions`` sampled
    positions t of ``text``: {"k", "layers": [{layer, stream, mean, q10, q90}],
    "memory_span": [{layer, stream, units: [k per unit]}]} — a unit's memory span is the
    first k at which its mean |gradient| falls below 1 % of its value at k = 0."""
    model = model.eval()
    ids, _ = toks.encode(model, text)
    if span < 1 or positions < 1:
        raise ProbeError(f"--span and --positions must be >= 1, got {span} and {positions}")
    if len(ids) < span + 2:
        unit = toks.of(model).unit
        raise ProbeError(f"--span {span} needs a text of at least {span + 2} {unit}s, got {len(ids)}")
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(len(ids) - span - 1, size=min(positions, len(ids) - span - 1), replace=False))
    before = _states_before(model, ids, starts)
    norms, units = {}, {}
    for a in tqdm(range(0, len(starts), batch), desc="gradients", disable=not progress):
        n, u = _norms(model, ids, before[a:a + batch], starts[a:a + batch], span)
        for key in n:
            norms.setdefault(key, []).append(n[key])
            units.setdefault(key, []).append(u[key])
    k = np.arange(span, -1, -1)  # column j holds k = span - j
    order = np.argsort(k)
    layers, spans = [], []
    for (layer, stream), parts in sorted(norms.items()):
        g = np.concatenate(parts)[:, order]  # [positions, span + 1], k ascending
        layers.append({"layer": layer, "stream": stream, "mean": g.mean(0).tolist(),
                       "q10": np.quantile(g, 0.1, axis=0).tolist(), "q90": np.quantile(g, 0.9, axis=0).tolist()})
        per_unit = (sum(units[(layer, stream)]) / len(starts))[order]  # [span + 1, units] mean |grad|
        below = per_unit < 0.01 * per_unit[0]
        first = np.where(below.any(axis=0), below.argmax(axis=0), span + 1)
        spans.append({"layer": layer, "stream": stream, "units": first.astype(int).tolist()})
    return {"k": list(range(span + 1)), "positions": int(len(starts)), "cell": model.cell,
            "layers": layers, "memory_span": spans}


def saliency(model: CharRNN, text: str, position: int, window: int = 200) -> tuple[int, np.ndarray, float]:
    """How much each of the ``window`` positions up to ``position`` (inclusive) moved the
    prediction of the position after it: gradient × input (the gradient of the log-loss
    of position + 1 with respect to each position's embedding, dotted with the embedding;
    positive: it made the prediction worse). A position is a character, or a word model's
    token (``salient`` gives each its text and span). The window is read from a zero state.
    Returns (first position of the window, values [n], the cost in bits of the position
    predicted)."""
    ids, _ = toks.encode(model, text)
    if not 0 <= position < len(ids) - 1:
        raise ProbeError(f"position {position} has no next {toks.of(model).unit} to explain "
                         f"(positions are 0..{len(ids) - 2})")
    if window < 1:
        raise ProbeError(f"window must be >= 1, got {window}")
    start = max(0, position + 1 - window)
    model = model.eval()
    x = recurrence.embedded(model, torch.from_numpy(ids[start:position + 1])).requires_grad_()  # [n, in]
    top, _ = recurrence.run(model, x[None], grad=True, head=False)  # the recurrence, fused
    with torch.enable_grad():
        logits = recurrence.logits(model, top[0, -1])
        loss = torch.nn.functional.cross_entropy(logits[None], torch.tensor([int(ids[position + 1])],
                                                                             device=logits.device))
        (grad,) = torch.autograd.grad(loss, x)
    return start, (grad * x).sum(dim=1).detach().cpu().numpy(), loss.item() * LOG2E


def salient(model: CharRNN, text: str, position: int, window: int = 200, top: int = 10) -> dict:
    """``saliency`` with its positions as the model's tokens (characters for a character
    model): {"start", "values" [n], "bits", "spans" [n, 2] (each position's [start, stop) in
    ``text``), "tokens" [n] (their text), "predicted" (the text of position + 1), "top":
    [(position, token, value)] of the ``top`` largest |value|} — which earlier tokens matter."""
    start, values, bits = saliency(model, text, position, window)
    _, spans, _ = toks.of(model).encode(text)
    mine = spans[start:position + 1]
    words = [text[a:b] for a, b in mine.tolist()]
    order = np.argsort(-np.abs(values), kind="stable")[:top]
    a, b = spans[position + 1]
    return {"start": start, "values": values, "bits": bits, "spans": mine, "tokens": words,
            "predicted": text[a:b], "top": [(start + int(j), words[j], float(values[j])) for j in order]}


def report(res: dict, model: str = "") -> str:
    """What ``probe gradients`` prints from ``flow``'s result: the mean gradient norm per
    (layer, stream) at a few k, and each stream's units whose gradient outlives the span.
    ``model`` names it in the first line (like ``lstm 2 x 256``)."""
    span = len(res["k"]) - 1
    ks = [k for k in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if k <= span]
    lines = [f"{model + ': ' if model else ''}mean |d loss_t / d state_(t-k)| over {res['positions']:,} positions",
             "  layer stream " + "".join(f"{'k=' + str(k):>10}" for k in ks)]
    for r in res["layers"]:
        lines.append(f"  {r['layer']:>5} {r['stream']:<6} " + "".join(f"{r['mean'][k]:10.2e}" for k in ks))
    for r in res["memory_span"]:
        spans = np.array(r["units"])
        lines.append(f"  layer {r['layer']} {r['stream']}: units whose gradient stays above 1 % of k=0 for all "
                     f"{span} steps: {int((spans > span).sum())} of {len(spans)}; median memory span "
                     f"{int(np.median(spans))} steps")
    return "\n".join(lines)
