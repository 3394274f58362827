"""Counterfactual patching through time (interchange interventions): copy chosen cells from a
source run into a base run and see whether the prediction follows the source.

    rows, per_pair = sweep(model, made, layer=0, stream="c")      # every unit, batched
    table(rows)   # layer, stream, unit, effect_bits, random_median, ratio, iia

For a pair (``probe.causal.pairs``) both texts go through the one recurrence
(``probe.lm.recurrence``): the source run with a hook keeping the patched stream, the base
run with a hook replacing the chosen cells' values by the source's, in their own rows (row 0
is the base unpatched), at every position from the first difference to the one before the
target (whose state predicts it), or at the positions asked for. The measure is
log2 p(target) at the target position; a cell's **effect** is patched − base, in bits; its
**interchange-intervention accuracy** (IIA) is the fraction of pairs where the patch moves
the prediction at least halfway from the base's to the source's (pairs whose base and
source predictions are equal are left out of it). A unit sweep is one batched base run per
pair, one row per unit, as the ablation sweep is; a steps-back sweep patches one unit at one
position per row ("when is it carried?").

For a word model positions are tokens: a pair's ``position`` is still a character offset in
its texts, mapped to the token whose span contains it (``encoded``); a pair whose base and
source do not tokenize to as many tokens before it cannot be patched position by position,
and ``sweep`` drops and counts it. Character models are as before.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.lm import recurrence
from probe.lm.model import LOG2E
from probe.text import corpus as corpora
from probe.text import tokens as toks

ROWS = 160        # rows (patched variants) per batched base run
SAME = 1e-3       # bits: a pair whose base and source predictions differ by less is left out of the IIA
COLUMNS = ["layer", "stream", "unit", "steps_back", "effect_bits", "random_median", "ratio", "iia", "pairs"]


class Misaligned(ProbeError):
    """A pair a token model cannot patch position by position: its base and source tokenize
    to different numbers of tokens before the target, or read the same tokens there.
    ``sweep`` drops (and counts) such pairs; ``reason`` says which."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where or 'a pair'}: {reason}")
        self.reason = reason


def target_token(tok: toks.Tokenizer, text: str, position: int) -> tuple[np.ndarray, int]:
    """(ids of ``text``, the index of the token at character ``position``): the token whose
    span contains it, or the first one after it when it falls between tokens (a space a
    word tokenizer skips); len(ids) when no token is at or after it."""
    ids, spans, _ = tok.encode(text)
    return ids, int(np.searchsorted(spans[:, 1], position, side="right"))


def encoded(model, pair) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(base ids, source ids) up to the target, the first position they differ, the target's id.

    A character model reads each text's characters before ``pair.position``. A token model
    (a word model) reads the tokens before the one at character ``pair.position`` (the token
    whose span contains it, ``target_token``) and ``pair.target`` is a token of its
    vocabulary; the pair is ``Misaligned`` unless base and source have that token at the
    same index and differ before it."""
    tok = toks.of(model)
    if tok.kind == "chars":
        vocab = model.vocab
        if pair.target not in vocab:
            raise ProbeError(f"target {pair.target!r} is not in the model's vocabulary")
        b = corpora.encode(pair.base[:pair.position], vocab)[0]
        s = corpora.encode(pair.source[:pair.position], vocab)[0]
        diff = np.flatnonzero(b != s)
        if len(diff) == 0:
            raise ProbeError(f"{pair.where or 'a pair'}: base and source read the same before the target")
        return b, s, int(diff[0]), vocab.index(pair.target)
    if pair.target not in tok.index:
        raise ProbeError(f"target {pair.target!r} is not a token of the model's vocabulary")
    b, at = target_token(tok, pair.base, pair.position)
    s, at_source = target_token(tok, pair.source, pair.position)
    if at >= len(b) or at_source >= len(s):
        raise Misaligned(pair.where, f"no token at character {pair.position}")
    if at != at_source:
        raise Misaligned(pair.where, "base and source tokenize to different numbers of tokens before the target")
    diff = np.flatnonzero(b[:at] != s[:at])
    if len(diff) == 0:
        raise Misaligned(pair.where, "base and source read the same tokens before the target")
    return b[:at], s[:at], int(diff[0]), tok.index[pair.target]


def capture(model, ids: np.ndarray, points: set, state=None, start: int = 0) -> tuple[dict, torch.Tensor]:
    """The source run of ``ids`` (positions ``start`` on, from ``state``): {point: its values
    [start + T, units], rows before ``start`` unset} and the top layer's h [1, T, units]."""
    kept: dict = {p: [] for p in points}

    def keep(layer, stream, position, value):
        kept[(layer, stream)].append(value[0].clone())
    top, _ = recurrence.run(model, ids, {p: keep for p in points}, head=False, state=state, start=start)
    out = {}
    for p, v in kept.items():
        values = torch.stack(v)
        out[p] = torch.cat([values.new_zeros(start, values.shape[1]), values]) if start else values
    return out, top


def target_bits(model, top_last: torch.Tensor, target: int) -> np.ndarray:
    """log2 p(target) per row from the top layer's last h [rows, units]."""
    logp = torch.log_softmax(recurrence.logits(model, top_last), -1)
    return (logp[:, target] * LOG2E).cpu().numpy()


def patch_hook(values: torch.Tensor, rows: list[int], units: list[int], at: list[int] | None,
               first: int, last: int):
    """The hook setting value[rows[j], units[j]] to the source's ``values`` [T, units]: at
    every position of [first, last], or only at ``at[j]`` for row j."""
    rows_t, units_t = torch.tensor(rows), torch.tensor(units)
    at_np = None if at is None else np.asarray(at)

    def hook(layer, stream, t, value):
        if not first <= t <= last:
            return None
        if at_np is None:
            value[rows_t.to(value.device), units_t.to(value.device)] = values[t, units_t].to(value.device)
            return value
        sel = torch.from_numpy(at_np == t)
        if sel.any():
            value[rows_t[sel].to(value.device), units_t[sel].to(value.device)] = \
                values[t, units_t[sel]].to(value.device)
        return value
    return hook


def run_pair(model, pair, cells: list[tuple[int, str, int, int | None]], *, rows: int = ROWS) -> tuple:
    """(base, source, patched [len(cells)]) log2 p(target) for one pair; each cell (layer,
    stream, unit, steps_back) patched in its own row: with steps_back None at every position
    from the first difference to the one before the target, else only at that many steps
    back from it (0: the state that predicts the target)."""
    b, s, first, target = encoded(model, pair)
    last = len(b) - 1  # the state after reading position - 1 predicts the target
    # the texts agree before ``first``: that prefix is read once, and both runs go on from it
    prefix = recurrence.run(model, b[:first], head=False)[1] if first else None
    src, src_top = capture(model, s[first:], {(k, st) for k, st, _, _ in cells}, prefix, first)
    source = float(target_bits(model, src_top[0, -1:], target)[0])
    out = np.empty(len(cells))
    base = float("nan")
    for a in range(0, len(cells), rows):
        part = cells[a:a + rows]
        plan: dict = {}  # (point, positioned?) -> (rows, units, positions)
        for j, (k, st, u, back) in enumerate(part, 1):
            r, us, ps = plan.setdefault(((k, st), back is not None), ([], [], []))
            r.append(j)
            us.append(u)
            ps.append(None if back is None else last - back)
        hooks: dict = {}
        for (point, positioned), (r, us, ps) in plan.items():
            hooks.setdefault(point, []).append(patch_hook(src[point], r, us, ps if positioned else None, first, last))
        top, _ = recurrence.run(model, b[first:], hooks, rows=1 + len(part), head=False, state=prefix, start=first)
        got = target_bits(model, top[:, -1], target)
        base = float(got[0])
        out[a:a + len(part)] = got[1:]
    return base, source, out


def sweep(model, made: list, cells: list[tuple[int, str, int, int | None]], *, progress: bool = False,
          done: Callable[[int], None] | None = None) -> dict:
    """Per pair and cell: {"base" [P], "source" [P], "patched" [P, C]} in log2 p(target),
    over the pairs the model can patch: "kept" (their indices in ``made``) and "dropped"
    ({reason: count}, the ``Misaligned`` pairs of a token model; empty for characters)."""
    if not made:
        raise ProbeError("no pairs to patch")
    recurrence.check_cells(model, [(k, s, u) for k, s, u, _ in cells])
    model = model.eval()
    base, source, patched, kept, dropped = [], [], [], [], {}
    for j, pair in enumerate(tqdm(made, desc="patching", unit="pair", disable=not progress)):
        try:
            b, s, p = run_pair(model, pair, cells)
        except Misaligned as e:
            dropped[e.reason] = dropped.get(e.reason, 0) + 1
        else:
            base.append(b)
            source.append(s)
            patched.append(p)
            kept.append(j)
        if done is not None:
            done(1)
    if not kept:
        raise ProbeError(f"none of the {len(made)} pairs can be patched at token level: "
                         + "; ".join(f"{n} {why}" for why, n in dropped.items()))
    return {"base": np.array(base), "source": np.array(source), "patched": np.array(patched).reshape(len(kept), -1),
            "kept": kept, "dropped": dropped}


def summarise(res: dict, cells: list, controls: dict[tuple, list[int]]) -> list[dict]:
    """One row per cell: mean effect in bits, the median |effect| of its random controls (the
    cells in ``controls[cell]``, columns of the same sweep), ratio, IIA."""
    effect = res["patched"] - res["base"][:, None]  # [P, C] bits
    gap = res["source"] - res["base"]
    moved = effect / np.where(np.abs(gap) >= SAME, gap, np.nan)[:, None]
    judged = np.abs(gap) >= SAME
    iia = (moved[judged] >= 0.5).mean(0) if judged.any() else np.full(len(cells), np.nan)
    mean = effect.mean(0)
    rows = []
    for j, (k, s, u, back) in enumerate(cells):
        ctl = controls.get((k, s, u, back), [])
        med = float(np.median(np.abs(mean[ctl]))) if ctl else float("nan")
        rows.append({"layer": k, "stream": s, "unit": u, "steps_back": back, "effect_bits": float(mean[j]),
                     "random_median": med, "ratio": float(mean[j] / med) if med and np.isfinite(med) else float("nan"),
                     "iia": float(iia[j]), "pairs": int(len(effect))})
    return rows


def effects(model, made: list, cells: list[tuple[int, str, int]] | None = None, *, layer: int | None = None,
            stream: str = "h", random: int = 16, seed: int = 0, steps_back: int = 0, heat: int = 12,
            progress: bool = False, done: Callable[[int], None] | None = None) -> dict:
    """Patch each cell (``cells`` [(layer, stream, unit)], or every unit of ``layer``'s
    ``stream``) over the whole span, beside ``random`` random cells of the same layer and
    stream (drawn from the sweep when a layer is swept, seeded). With ``steps_back`` K > 0,
    also patch the ``heat`` cells of largest |effect| one position at a time, 0..K−1 steps
    back from the target. Returns {"rows", "heat": [{layer, stream, unit, effects [K]}],
    "pairs" (those patched), "dropped" ({reason: count}: a token model's pairs whose
    tokenizations do not align, see ``encoded``), "base", "source"}."""
    if (cells is None) == (layer is None):
        raise ProbeError("give cells or a layer to sweep, not both")
    width = recurrence.widths(model)
    if layer is not None:
        recurrence.check_cells(model, [(layer, stream, 0)])
        cells = [(layer, stream, u) for u in range(width[(layer, stream)])]
    cells = list(dict.fromkeys((int(k), str(s), int(u)) for k, s, u in cells))
    recurrence.check_cells(model, cells)
    points = sorted({(k, s) for k, s, _ in cells})
    fewest = min(width[p] for p in points)
    if isinstance(random, bool) or not 0 <= random <= fewest:
        raise ProbeError(f"random controls must be between 0 and the layer's {fewest} units, got {random}")
    rng = np.random.default_rng(seed)
    controls = {p: sorted(rng.choice(width[p], random, replace=False).tolist()) for p in points}
    todo = list(dict.fromkeys(cells + [(k, s, u) for (k, s), us in controls.items() for u in us]))
    col = {c: j for j, c in enumerate(todo)}
    res = sweep(model, made, [(k, s, u, None) for k, s, u in todo], progress=progress, done=done)
    ctl = {(k, s, u, None): [col[(k, s, v)] for v in controls[(k, s)]] for k, s, u in cells}
    allrows = summarise(res, [(k, s, u, None) for k, s, u in todo], ctl)
    rows = [allrows[col[c]] for c in cells]
    out = {"rows": rows, "heat": [], "pairs": len(res["kept"]), "dropped": res["dropped"],
           "base": res["base"].tolist(), "source": res["source"].tolist()}
    if steps_back > 0:
        top = sorted(rows, key=lambda r: -abs(r["effect_bits"]))[:heat]
        at = [(r["layer"], r["stream"], r["unit"], b) for r in top for b in range(steps_back)]
        got = sweep(model, [made[j] for j in res["kept"]], at, progress=progress)
        mean = (got["patched"] - got["base"][:, None]).mean(0).reshape(len(top), steps_back)
        out["heat"] = [{"layer": r["layer"], "stream": r["stream"], "unit": r["unit"], "effects": m.tolist()}
                       for r, m in zip(top, mean)]
    return out


def report(res: dict, feature: str = "", beside: dict | None = None, top: int = 20) -> str:
    """What ``probe patch`` prints: the cells of largest |effect| with their random baseline
    and IIA; beside them, how readable the feature is (``probe.readout.readable``)."""
    lines = [f"patching {feature or 'the pairs'} ({res['pairs']} pairs): change of log2 p(target) in bits when "
             "the cell takes the source's values (negative: the prediction moves toward the source's for "
             "features whose target the source makes less likely)",
             "  cell          effect_bits  random_median   ratio    iia"]
    for r in sorted(res["rows"], key=lambda r: -abs(r["effect_bits"]))[:top]:
        lines.append(f"  {r['layer']}:{r['stream']}:{r['unit']:<10} {r['effect_bits']:+11.4f}  {r['random_median']:13.4f}"
                     f"  {r['ratio']:+6.1f}  {r['iia']:5.2f}")
    base, source = np.array(res["base"]), np.array(res["source"])
    lines.append(f"base log2 p(target) {base.mean():+.3f}, source {source.mean():+.3f} (mean over pairs)")
    dropped = res.get("dropped") or {}
    if dropped:
        lines.append(f"dropped {sum(dropped.values())} pairs a token model cannot patch position by position: "
                     + "; ".join(f"{n} {why}" for why, n in dropped.items()))
    if beside:
        lines.append(f"beside: best single cell {beside['best_cell']} reads {feature} with AUC "
                     f"{beside['best_cell_auc']:.3f}; a linear read-out of every state, held out: AUC "
                     f"{beside['direction_auc']:.3f} ({beside['positions']:,} positions)")
    for h in res["heat"]:
        lines.append(f"  {h['layer']}:{h['stream']}:{h['unit']} by steps back: "
                     + " ".join(f"{v:+.2f}" for v in h["effects"]))
    return "\n".join(lines)


def figure(res: dict, title: str = ""):
    """A Bokeh heatmap: the top cells (rows) × steps back (columns), the mean effect in bits."""
    from bokeh.models import ColorBar, LinearColorMapper
    from bokeh.palettes import RdBu11
    from bokeh.plotting import figure as bfigure
    if not res["heat"]:
        raise ProbeError("--png draws cells by steps back: give --steps-back K")
    names = [f"{h['layer']}:{h['stream']}:{h['unit']}" for h in res["heat"]]
    K = len(res["heat"][0]["effects"])
    xs, ys, vs = [], [], []
    for name, h in zip(names, res["heat"]):
        for b, v in enumerate(h["effects"]):
            xs.append(b)
            ys.append(name)
            vs.append(v)
    lim = max(1e-6, float(np.max(np.abs(vs))))
    mapper = LinearColorMapper(palette=list(RdBu11), low=-lim, high=lim)
    p = bfigure(y_range=names[::-1], x_range=(-0.5, K - 0.5), width=160 + 28 * K, height=80 + 24 * len(names),
                toolbar_location=None, title=title or "patching one position: effect on the target (bits)",
                x_axis_label="steps back from the target (0: the state that predicts it)")
    p.rect(x="x", y="y", width=1, height=1, source={"x": xs, "y": ys, "v": vs},
           fill_color={"field": "v", "transform": mapper}, line_color=None)
    p.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
    return p
