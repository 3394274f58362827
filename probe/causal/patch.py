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

ROWS = 160        # rows (patched variants) per batched base run
SAME = 1e-3       # bits: a pair whose base and source predictions differ by less is left out of the IIA
COLUMNS = ["layer", "stream", "unit", "steps_back", "effect_bits", "random_median", "ratio", "iia", "pairs"]


def encoded(model, pair) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(base ids, source ids) up to the target, the first position they differ, the target's id."""
    vocab = model.vocab
    if pair.target not in vocab:
        raise ProbeError(f"target {pair.target!r} is not in the model's vocabulary")
    b = corpora.encode(pair.base[:pair.position], vocab)[0]
    s = corpora.encode(pair.source[:pair.position], vocab)[0]
    diff = np.flatnonzero(b != s)
    if len(diff) == 0:
        raise ProbeError(f"{pair.where or 'a pair'}: base and source read the same before the target")
    return b, s, int(diff[0]), vocab.index(pair.target)


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


def check_cells(model, cells) -> None:
    recurrence.check_cells(model, [(k, s, u) for k, s, u, _ in cells])


def sweep(model, made: list, cells: list[tuple[int, str, int, int | None]], *, progress: bool = False,
          done: Callable[[int], None] | None = None) -> dict:
    """Per pair and cell: {"base" [P], "source" [P], "patched" [P, C]} in log2 p(target)."""
    if not made:
        raise ProbeError("no pairs to patch")
    check_cells(model, cells)
    model = model.eval()
    base, source, patched = [], [], []
    for pair in tqdm(made, desc="patching", unit="pair", disable=not progress):
        b, s, p = run_pair(model, pair, cells)
        base.append(b)
        source.append(s)
        patched.append(p)
        if done is not None:
            done(1)
    return {"base": np.array(base), "source": np.array(source), "patched": np.array(patched)}


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
