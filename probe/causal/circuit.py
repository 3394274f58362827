"""The circuit behind a cell: which upstream cells, at which steps back, drive its value at a
position, pruned to the strongest and checked by intervention.

    res = circuit(model, text, (0, "c", 89), at=1234, steps=20, top=15)
    res["edges"]   # [{"from": {layer, stream, unit, steps_back}, "to": {...}, "weight"}]
    res["check"]   # {"top_k_effect", "random_effect", "ratio"}

**Attribution: gradient × activation.** The text up to ``at`` goes through the one recurrence
(``probe.lm.recurrence``) with every state (h, and c for an LSTM) of every layer kept in the
graph over the last ``steps`` positions; one backward pass from the cell gives ∂cell/∂node,
and a node's weight is that gradient times the node's value: the first-order share of the
cell's value that flows through it. It is the same rule for LSTM, GRU and RNN, and for the
LSTM's linear path (c_t = f⊙c_{t−1} + i⊙g is linear in c_{t−1} given the run's gates) it is
the exact share; through the gates' nonlinearities it is an approximation. That is why the
result is always checked by intervention: the top-k upstream nodes are zeroed at their
positions (all at once) and the cell's change is compared with that of k random upstream
nodes (the median over ``sets`` random draws).
"""
from __future__ import annotations

import numpy as np
import torch

from probe.errors import ProbeError
from probe.causal.patch import patch_hook
from probe.lm import recurrence
from probe.text import tokens as toks

SETS = 20  # random draws of k nodes for the check


def _ids(model, text: str, at: int) -> tuple[np.ndarray, str]:
    """The ids read up to position ``at`` (a character, or a word model's token) and its text."""
    tok = toks.of(model)
    ids, spans, _ = tok.encode(text)
    if not 0 <= at < len(ids):
        raise ProbeError(f"position {at} is outside the text ({tok.unit} positions 0..{len(ids) - 1})")
    return ids[:at + 1], text[spans[at, 0]:spans[at, 1]]


def attribution(model, ids: np.ndarray, cell: tuple[int, str, int], steps: int) -> tuple[float, list[dict]]:
    """(the cell's value at the last position, [node with its gradient × activation]) over
    every state of every layer at 0..``steps`` steps back (the cell itself left out)."""
    layer, stream, unit = cell
    stack = recurrence.layers(model)
    at = len(ids) - 1
    lo = at - steps
    kept: dict = {}
    target = {}

    def keep(k, s, t, value):
        if t >= lo:
            value.retain_grad()
            kept[(k, s, t)] = value
        if (k, s, t) == (layer, stream, at):
            target["value"] = value

    states = {(k, s) for k, w in enumerate(stack) for s in recurrence.PINNABLE[w.cell]}
    points = states | {(layer, stream)}
    # the text before the window is read once, fused and without a graph; the window with it
    prefix = recurrence.run(model, ids[:lo], head=False)[1] if lo > 0 else None
    recurrence.run(model, ids[lo:], {p: keep for p in points}, grad=True, head=False, state=prefix, start=lo)
    value = target["value"][0, unit]
    value.backward()
    nodes = []
    for (k, s, t), v in kept.items():
        if v.grad is None or (k, s) not in states:
            continue
        share = (v.grad[0] * v.detach()[0]).cpu().numpy()
        for u in np.flatnonzero(share):
            if (k, s, int(u), t) != (layer, stream, unit, at):
                nodes.append({"layer": k, "stream": s, "unit": int(u), "steps_back": at - t, "weight": float(share[u])})
    return float(value.detach()), nodes


def zeroing(nodes_per_row: list[list[dict]], at: int) -> dict:
    """Hooks zeroing each row's nodes (row j + 1 takes ``nodes_per_row[j]``) at their positions:
    ``patch.patch_hook`` with a source of zeros."""
    plan: dict = {}
    for j, nodes in enumerate(nodes_per_row, 1):
        for n in nodes:
            rows, units, ts = plan.setdefault((n["layer"], n["stream"]), ([], [], []))
            rows.append(j)
            units.append(n["unit"])
            ts.append(at - n["steps_back"])
    return {point: patch_hook(torch.zeros(at + 1, max(units) + 1), rows, units, ts, 0, at)
            for point, (rows, units, ts) in plan.items()}


@torch.no_grad()
def check(model, ids: np.ndarray, cell: tuple[int, str, int], top_nodes: list[dict], pool: list[dict],
          sets: int = SETS, seed: int = 0) -> dict:
    """|change of the cell| with the top nodes zeroed, against ``sets`` draws of as many
    random nodes from ``pool`` (their median)."""
    layer, stream, unit = cell
    at = len(ids) - 1
    rng = np.random.default_rng(seed)
    k = len(top_nodes)
    chosen = {(n["layer"], n["stream"], n["unit"], n["steps_back"]) for n in top_nodes}
    others = [n for n in pool if (n["layer"], n["stream"], n["unit"], n["steps_back"]) not in chosen]
    # random draws from the nodes not chosen: with fewer than k of them there is nothing to compare
    draws = [[others[i] for i in rng.choice(len(others), k, replace=False)] for _ in range(sets)] \
        if k and len(others) >= k else []
    seen = {}

    def read(kk, s, t, value):
        if t == at:
            seen["v"] = value[:, unit].clone()
    hooks = recurrence.hook_table(zeroing([top_nodes, *draws], at))
    hooks.setdefault((layer, stream), []).append(read)
    lo = at - max((n["steps_back"] for n in pool), default=0)  # nothing is zeroed before: read once
    prefix = recurrence.run(model, ids[:lo], head=False)[1] if lo > 0 else None
    recurrence.run(model, ids[lo:], hooks, rows=2 + len(draws), head=False, state=prefix, start=lo)
    v = seen["v"].cpu().numpy()
    top_effect = float(abs(v[1] - v[0]))
    random_effect = float(np.median(np.abs(v[2:] - v[0]))) if draws else float("nan")
    return {"k": k, "top_k_effect": top_effect, "random_effect": random_effect,
            "ratio": top_effect / random_effect if random_effect else float("nan"), "random_sets": len(draws)}


def circuit(model, text: str, cell: tuple[int, str, int], at: int, *, steps: int = 20, top: int = 15,
            k: int | None = None, sets: int = SETS, seed: int = 0) -> dict:
    """The top ``top`` upstream nodes of ``cell`` (layer, stream, unit) at position ``at`` of
    ``text`` over ``steps`` steps back, by gradient × activation, and the check: the top
    ``k`` (default: all ``top``) zeroed against ``k`` random upstream nodes. A position is a
    character, or a word model's token (``at`` a token index, steps back counted in tokens);
    the target's ``char`` is that position's text (the token's, for a word model) and
    ``position_unit`` says which."""
    layer, stream, unit = cell
    stack = recurrence.layers(model)
    recurrence.check_points(stack, {(layer, stream): []})
    if not 0 <= unit < stack[layer].width(stream):
        raise ProbeError(f"no unit {unit} in layer {layer} {stream} (units are 0..{stack[layer].width(stream) - 1})")
    if steps < 1 or top < 1:
        raise ProbeError(f"--steps and --top must be >= 1, got {steps} and {top}")
    model = model.eval()
    ids, shown = _ids(model, text, at)
    value, nodes = attribution(model, ids, cell, min(steps, at))
    if not nodes:
        raise ProbeError(f"{layer}:{stream}:{unit} at position {at} has no upstream node to explain it "
                         f"(the first {toks.of(model).unit} of the text?)")
    nodes.sort(key=lambda n: -abs(n["weight"]))
    chosen = nodes[:top]
    k = len(chosen) if k is None else min(k, len(chosen))
    to = {"layer": layer, "stream": stream, "unit": unit, "steps_back": 0}
    edges = [{"from": {key: n[key] for key in ("layer", "stream", "unit", "steps_back")}, "to": to,
              "weight": n["weight"]} for n in chosen]
    return {"target": {**to, "position": at, "value": value, "char": shown,
                       "position_unit": toks.of(model).unit},
            "steps": min(steps, at),
            "method": "gradient x activation", "nodes": len(nodes), "edges": edges,
            "check": check(model, ids, cell, chosen[:k], nodes, sets, seed)}


def report(res: dict) -> str:
    """What ``probe circuit`` prints: the target, the edges, the check."""
    t = res["target"]
    what = "token " if t.get("position_unit") == "token" else ""
    lines = [f"circuit of {t['layer']}:{t['stream']}:{t['unit']} at position {t['position']} ({what}{t['char']!r}), "
             f"value {t['value']:+.3f}; {res['method']} over {res['steps']} steps back, "
             f"top {len(res['edges'])} of {res['nodes']:,} upstream nodes",
             "  from            steps back      weight"]
    for e in res["edges"]:
        f = e["from"]
        lines.append(f"  {f['layer']}:{f['stream']}:{f['unit']:<10}  {f['steps_back']:>10}  {e['weight']:+10.4f}")
    c = res["check"]
    lines.append(f"check: zeroing the top {c['k']} moves the cell by {c['top_k_effect']:.4f}; {c['k']} random "
                 f"upstream nodes by {c['random_effect']:.4f} (median of {c['random_sets']}): ratio {c['ratio']:.1f}")
    return "\n".join(lines)
