"""A part's sufficient statistics, their fold in shard order, and the scores they give.

The statistics of a recording are a reduction of per-part statistics: a file is one part,
a folder of shards one part per shard. Each part is scanned from zero accumulators
(``part_stats``) with one shift per stream shared by every part (``shift_of``: the mean of
the recording's first SHIFT_ROWS rows), the parts are added up in shard order
(``combine``) and the sums become scores (``finish``): Pearson r from the running sums
(n, Σx, Σx², Σx·f), ROC AUC from per-unit histograms of the values at positive and
negative characters. ``probe.analysis.cluster`` runs the same functions, one task per
(part, layer, stream), on a Dask cluster: the same operations on the same values in the
same order, so its scores equal ``probe.analysis.detectors``' bit for bit. Asked for, the
same reads also build every unit's summaries (``probe.analysis.summaries``), carried in
the statistics as ``summary`` and folded by ``combine`` like the sums.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from probe.analysis import summaries as summaries_mod
from probe.analysis.featureset import FeatureSet
from probe.analysis.loops import AUC_BINS, bin_table, count_bins, shifted
from probe.analysis.threads import one_torch_thread
from probe.errors import ProbeError
from probe.recording import shards
from probe.recording.reader import Recording

CHUNK = 32768             # rows per streaming read
SUBCHUNK = 4096           # rows converted to float32 at a time (they stay in cache)
BLOCK = 64                # rows per float32 partial sum of Σx·f (then float64), on a grid of the whole
SHIFT_ROWS = 4096         # first rows whose mean every part's sums are taken about (one stored chunk)
SCORE_COLUMNS = ["layer", "stream", "unit", "feature", "metric", "score"]
SATURATION_COLUMNS = ["layer", "stream", "unit", "left", "right"]


# ---- one part -------------------------------------------------------------------------

def parts_of(rec) -> list[Recording]:
    """The parts a recording is scanned in: a folder of shards' shards, else the file itself."""
    return list(rec.parts) if isinstance(rec, shards.ShardedRecording) else [rec]


def shift_of(datasets: list, rows: int = SHIFT_ROWS) -> np.ndarray:
    """float32 per unit: the mean of the first ``rows`` rows of consecutive datasets (one per
    part) read as one. Every part's sums are taken about it (shifted sums: no cancellation
    in Σx² - (Σx)²/n), so the parts' sums add up."""
    pieces, need = [], rows
    for ds in datasets:
        take = min(len(ds), need)
        if take:
            pieces.append(ds[0:take])
            need -= take
        if need == 0:
            break
    raw = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return raw.mean(axis=0, dtype=np.float64).astype(np.float32)


def grid_edges(start: int, stop: int, step: int, origin: int) -> list[int]:
    """[start, ..., stop]: start, stop and every origin + k * step strictly between."""
    first = origin + -(-(start - origin) // step) * step  # the first grid line >= start
    if first == start:
        first += step
    return [start, *range(first, stop, step), stop]


def block_sums(f: np.ndarray, x: np.ndarray, g: int) -> np.ndarray:
    """Σ over rows of f[:, i] * x[:, u] as float64 [1 + F, U], from float32 sums of blocks of
    BLOCK rows that lie on a grid of the whole recording (``g``: the global row of row 0).

    A folder of shards and the same text in one file then sum differently only in the
    blocks a shard's edge cuts: their scores agree within 1e-8 on the tests' recordings,
    where float32 sums over whole subchunks (4,096 rows, cut at other rows in every shard)
    differed by 2e-8 in r."""
    import torch
    n = len(x)
    head = min(-g % BLOCK, n)
    mid = (n - head) // BLOCK * BLOCK
    ft, xt = torch.from_numpy(f), torch.from_numpy(x)
    out = torch.zeros((f.shape[1], x.shape[1]), dtype=torch.float64)
    if head:
        out += (ft[:head].T @ xt[:head]).double()
    if mid:
        fb = ft[head:head + mid].view(-1, BLOCK, f.shape[1])
        xb = xt[head:head + mid].view(-1, BLOCK, x.shape[1])
        out += torch.bmm(fb.transpose(1, 2), xb).double().sum(0)
    if head + mid < n:
        out += (ft[head + mid:].T @ xt[head + mid:]).double()
    return out.numpy()


def part_stats(ds, fx: FeatureSet | None, stream: str, shift: np.ndarray | None = None,
               chunk: int = CHUNK, sat: tuple[float, float] | None = None, bar=None,
               offset: int = 0, total: int | None = None) -> dict:
    """The sufficient statistics of one part: a [n, U] dataset and ``fx``, its rows'
    features (``FeatureSet.part``), scanned from zero accumulators. ``offset`` is the
    part's first row in the whole recording: reads, float32 conversions and partial sums
    follow grids of the whole (``chunk``, SUBCHUNK and BLOCK rows), so a folder of shards
    sums as the same text in one file does, but at the shards' edges.

    ``n``; with features ``sx`` Σ(x - shift), ``sxx`` Σ(x - shift)², ``sxf`` Σ(x - shift)·f
    (float64) and ``hists`` (int64 [U, patterns * AUC_BINS] per group of binary features);
    with ``sat`` the integer counts ``left`` (< low) and ``right`` (> high) per unit; with
    ``total`` (the whole recording's rows) ``summary``, the per-unit summaries of
    ``probe.analysis.summaries`` from the same reads."""
    T, U = ds.shape[0], ds.shape[1]
    out: dict = {"n": T}
    if fx is not None:
        if shift is None:
            raise ProbeError("part_stats needs the recording's shift (shift_of) to score features")
        nf = len(fx.names)
        sx, sxx, sxf = np.zeros(U), np.zeros(U), np.zeros((U, nf))
        lut = bin_table(stream).astype(np.int32)
        # per group, counts [U, patterns * AUC_BINS]: bin index = pattern * AUC_BINS + bin
        hists = [np.zeros((U, len(p) * AUC_BINS), dtype=np.int64) for _, _, p in fx.groups]
    if sat is not None:
        left, right = np.zeros(U, np.int64), np.zeros(U, np.int64)
        low, high = np.float32(sat[0]), np.float32(sat[1])  # float32: exact for float16 data
    if total is not None:
        summ, hlut = summaries_mod.start(U, offset, total), summaries_mod.hist_table(stream)
        auc_hist = fx is not None and bool(fx.groups)
    edges = grid_edges(offset, offset + T, chunk, 0) if T else [offset]
    with one_torch_thread():  # Σx·f on one thread: the same sums on any machine's core count
        for ga, gb in zip(edges[:-1], edges[1:]):
            a, b = ga - offset, gb - offset
            raw = ds[a:b]
            if sat is not None:
                left += np.count_nonzero(raw < low, axis=0)
                right += np.count_nonzero(raw > high, axis=0)
            if total is not None or (fx is not None and fx.groups):
                with np.errstate(over="ignore"):
                    half = raw if raw.dtype == np.float16 else raw.astype(np.float16)
                codes = np.ascontiguousarray(half).view(np.uint16)
            if total is not None and fx is None:  # the histogram comes from the AUC counts if any
                summaries_mod.update(summ, raw, codes, hlut, ga)
            if fx is not None:
                if fx.groups:
                    for (_, code, _), hist in zip(fx.groups, hists):
                        count_bins(codes, code[a:b], lut, hist)
                f = fx.centred(a, b)
                sub = grid_edges(ga, gb, SUBCHUNK, ga // chunk * chunk)  # the whole's subchunks
                for g0, g1 in zip(sub[:-1], sub[1:]):  # float32 values of a few rows, still in cache
                    r0, r1 = g0 - ga, g1 - ga
                    if total is None:
                        x = shifted(raw[r0:r1], shift, sxx)
                    else:  # the summaries take the same rows' float32 values from the same pass
                        values = np.empty((r1 - r0, U), np.float32)
                        x = shifted(raw[r0:r1], shift, sxx, values)
                        summaries_mod.update(summ, raw[r0:r1], None if auc_hist else codes[r0:r1], hlut, g0,
                                             x=values)
                    prod = block_sums(f[r0:r1], x, g0).T  # [U, 1 + F]: Σx, then Σx·f
                    sx += prod[:, 0]
                    sxf += prod[:, 1:]
            if bar is not None:
                bar.update(b - a)
    if fx is not None:
        out.update(sx=sx, sxx=sxx, sxf=sxf, hists=hists)
    if sat is not None:
        out.update(left=left, right=right)
    if total is not None:
        if auc_hist:
            summ["hist"] = summaries_mod.hist_from_auc(hists[0], len(fx.groups[0][2]), AUC_BINS)
        out["summary"] = summ
    return out


# ---- the fold and the scores ---------------------------------------------------------

def combine(acc: dict, more: dict) -> dict:
    """The statistics of two consecutive parts (``part_stats``): sums added, a new dict.
    Parts are folded in order, ``combine(combine(p1, p2), p3)``…, here and on a cluster."""
    out = {"n": acc["n"] + more["n"]}
    for key in ("sx", "sxx", "sxf", "left", "right"):
        if key in acc:
            out[key] = acc[key] + more[key]
    if "hists" in acc:
        out["hists"] = [h + g for h, g in zip(acc["hists"], more["hists"])]
    if "summary" in acc:
        out["summary"] = summaries_mod.merge(acc["summary"], more["summary"])
    return out


def reduce_parts(stats) -> dict:
    """The left fold of ``combine`` over the parts' statistics, in order."""
    acc = None
    for st in stats:
        acc = st if acc is None else combine(acc, st)
    return acc


def finish(acc: dict, fx: FeatureSet | None, layer: int, stream: str
           ) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The scores frame (r and AUC, as ``scores``) and the saturation frame of one
    (layer, stream) from its reduced statistics (either None where not computed)."""
    scored = sat = None
    if fx is not None:
        U = acc["sx"].shape[0]
        hists = [h.reshape(U, len(p), AUC_BINS).transpose(1, 0, 2)  # [patterns, U, bins]
                 for h, (_, _, p) in zip(acc["hists"], fx.groups)]
        scored = scores_frame(layer, stream, fx, pearson(acc, fx), aucs({**acc, "hists": hists}, fx))
    if "left" in acc:
        n = max(acc["n"], 1)
        sat = pd.DataFrame({"layer": layer, "stream": stream, "unit": np.arange(len(acc["left"])),
                            "left": acc["left"] / n, "right": acc["right"] / n})
    return scored, sat


def finish_all(acc: dict, fx: FeatureSet | None, layer: int, stream: str) -> tuple:
    """``finish``'s (scores, saturation) frames, and the per-unit summaries
    (``summaries.finish``) if they were computed, else None."""
    frame, sat = finish(acc, fx, layer, stream)
    return frame, sat, (summaries_mod.finish(acc["summary"]) if "summary" in acc else None)


def offsets(lengths) -> list[int]:
    """The first row of each part in the whole recording."""
    return np.cumsum([0, *lengths[:-1]]).astype(int).tolist() if len(lengths) else []


def scan(datasets: list, fxs: list, stream: str, chunk: int = CHUNK,
         sat: tuple[float, float] | None = None, bar=None, summaries: bool = False) -> dict:
    """The reduced statistics of one (layer, stream) over its parts' datasets, each with its
    rows' features (``fxs``, or Nones): the shift, each part's statistics, their fold (with
    ``summaries`` also the per-unit summaries, ``probe.analysis.summaries``)."""
    shift = shift_of(datasets) if fxs[0] is not None else None
    lengths = [len(ds) for ds in datasets]
    starts = offsets(lengths)
    total = sum(lengths) if summaries else None
    return reduce_parts(part_stats(ds, fx, stream, shift, chunk, sat, bar, o, total)
                        for ds, fx, o in zip(datasets, fxs, starts))


def pearson(acc: dict, fx: FeatureSet) -> np.ndarray:
    """r [U, F] from the running sums; NaN where a unit or feature is constant."""
    n = acc["n"]
    mx, mf = acc["sx"] / n, fx.sf / n
    ex2 = acc["sxx"] / n
    vx = ex2 - mx ** 2
    vf = fx.sff / n - mf ** 2
    cov = acc["sxf"] / n - mx[:, None] * mf[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(np.outer(vx, vf))
    bad_x = ~(vx > 1e-10 * ex2 + 1e-30)
    bad_f = ~(vf > 1e-10 * (fx.sff / n) + 1e-30)
    r[bad_x, :] = np.nan
    r[:, bad_f] = np.nan
    return np.clip(r, -1.0, 1.0)


def auc_from_hist(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC per row of [U, B] integer histograms of positives and negatives (ties count half).

    In int64, twice the Mann–Whitney count, so the sum is exact whatever its order (up to
    ~3e9 characters); one rounding, in the final division."""
    pos, neg = pos.astype(np.int64), neg.astype(np.int64)
    below = 2 * np.cumsum(neg, axis=1) - neg   # twice: negatives in lower bins, half the same bin's
    num = (pos * below).sum(axis=1)
    den = 2 * pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def aucs(acc: dict, fx: FeatureSet) -> dict[int, np.ndarray]:
    """AUC [U] per binary feature (by index) from the groups' histograms [patterns, U, bins]."""
    out = {}
    for (members, _, pats), hist in zip(fx.groups, acc["hists"]):
        total = hist.sum(axis=0)  # [patterns, U, bins] -> [U, bins]
        for col, j in enumerate(members):
            pos = hist[pats[:, col]].sum(axis=0)  # the patterns where feature j is 1
            out[j] = auc_from_hist(pos, total - pos)
    return out


def scores_frame(layer: int, stream: str, fx: FeatureSet, r: np.ndarray, auc: dict) -> pd.DataFrame:
    """One (layer, stream)'s long table (SCORE_COLUMNS): r of every unit and feature, then AUC."""
    U, nf = r.shape
    parts = [pd.DataFrame({"layer": layer, "stream": stream, "unit": np.repeat(np.arange(U), nf),
                           "feature": np.tile(fx.names, U), "metric": "r", "score": r.reshape(-1)})]
    if auc:
        js = sorted(auc)
        a = np.stack([auc[j] for j in js], axis=1)
        parts.append(pd.DataFrame({"layer": layer, "stream": stream, "unit": np.repeat(np.arange(U), len(js)),
                                   "feature": np.tile([fx.names[j] for j in js], U), "metric": "auc",
                                   "score": a.reshape(-1)}))
    return pd.concat(parts, ignore_index=True)


def assemble(done: list[tuple]) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """``finish``'s (scores, saturation) frames of every (layer, stream), in order, as
    ``scores_and_saturation`` returns them (``finish_all``'s triples: the first two)."""
    frames = [d[0] for d in done if d[0] is not None]
    sats = [d[1] for d in done if d[1] is not None]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    return df[SCORE_COLUMNS], sats
