"""Per-unit summaries of a recording, built in the scan that scores it (``probe.analysis.stats``).

    from probe.analysis import cache as analysis
    from probe.analysis import summaries
    s = analysis.summaries("recordings/stdlib-test.h5")   # cached beside the recording
    u = summaries.unit(s, 1, "c", 42)    # histogram, top/bottom, overview strip, samples
    summaries.quantile_samples(u, bins=5, per_bin=2)

What the dashboard shows for one cell without reading the cell over the whole recording.
For every (layer, stream, unit), from the rows the scan already reads (no second read):

- ``hist`` int64 [HIST_BINS]: counts over fixed bins of the value's float16 rounding,
  ``loops.bin_table(stream, HIST_BINS)``: the stream's ``h5format.RANGE`` (gates
  [0, 1], g and h [-1, 1]), an unbounded stream (c) squashed by x / (1 + |x|) onto [-1, 1]
  first, as the AUC bins are; NaN counts in bin 0, values outside the range in the end
  bins. ``edges`` gives the bins' edges in value space.
- ``top_v``/``top_p`` and ``bottom_v``/``bottom_p`` [K]: the K highest (lowest) finite values
  and their positions, highest (lowest) first, ties broken by position (lower first);
  position -1 (value NaN) pads a unit with fewer than K finite values.
- the overview strip, at most STRIP bins of positions ``strip_edges(T)``: bins of
  ``strip_width(T)`` positions (ceil(T / STRIP) rounded up to a power of two; the last
  bin may be shorter), the same for every unit: per bin ``strip_min``, ``strip_max``,
  ``strip_mean`` (float64 sum of the values / count; NaN propagates into all three) and
  ``strip_first``, the value at the bin's first position: the quantile samples' pool (a
  sample of positions spread evenly over the recording).

Built per part (``start``, ``update`` per chunk, ``merge`` of consecutive parts in shard
order, ``finish``), with memory bounded by the chunk: top-k keeps K candidates per unit and
a chunk only offers the values that beat the current K-th (``probe.analysis.topk``); the
strip keeps the bins a part touches; a chunk is first reduced per block of ``block_width``
rows (max, min, sum), and top-k reads only the blocks whose max can still enter. Each is
exact (equal to a brute-force computation over the whole stream): counts are integers; top-k
is the first K of an order (value, then position) that is total, and the K best of a union
are the K best of the parts' K best; min, max and the first value do not depend on where the
rows were cut. Strip sums are float64 sums of the values in row order; for float16
recordings every partial sum is exact (float16 values are multiples of 2**-24, so sums below
2**29 in magnitude are exact in float64), elsewhere they agree to the last bits across
different cuts (and bit for bit between this process and a cluster, which run the same cuts).
"""
from __future__ import annotations

import numpy as np

from probe.analysis import loops, topk
from probe.analysis.topk import K
from probe.compiled import kernels
from probe.recording import h5format

HIST_BINS = 256      # fixed histogram bins per unit
STRIP = 1000         # overview strip bins over the whole recording
SUB = 4096           # rows converted to float32 at a time
FIELDS = ("hist", "top_v", "top_p", "bottom_v", "bottom_p", "strip_min", "strip_max", "strip_mean",
          "strip_first")


# ---- bins ------------------------------------------------------------------------------

def hist_table(stream: str) -> np.ndarray:
    """int32 [65536]: the histogram bin of every float16 bit pattern (``loops.bin_table``)."""
    return loops.bin_table(stream, HIST_BINS).astype(np.int32)


def hist_edges(stream: str) -> np.ndarray:
    """float64 [HIST_BINS + 1]: the histogram's bin edges in value space (c: unsquashed,
    so its end edges are -inf and inf)."""
    rng = h5format.RANGE.get(stream)
    lo, hi = rng if rng is not None else (-1.0, 1.0)
    e = np.linspace(lo, hi, HIST_BINS + 1)
    if rng is None:  # x / (1 + |x|) = s  <=>  x = s / (1 - |s|)
        with np.errstate(divide="ignore"):
            e = e / (1 - np.abs(e))
    return e


def strip_width(T: int) -> int:
    """Positions per strip bin: ceil(T / STRIP) rounded up to a power of two (>= 1), so at
    most STRIP bins and a whole number of ``block_width`` blocks per bin."""
    w = max(1, -(-int(T) // STRIP))
    return 1 << (w - 1).bit_length()


def block_width(T: int) -> int:
    """Rows per block in which a chunk is first reduced (max, min, sum): min(64, strip width)."""
    return min(64, strip_width(T))


def strip_edges(T: int) -> np.ndarray:
    """int64 [bins + 1]: strip bin j is positions [edges[j], edges[j + 1]), j * ``strip_width``
    up to T (the last bin may be shorter); ceil(T / width) <= STRIP bins."""
    return np.r_[np.arange(0, int(T), strip_width(T)), int(T)].astype(np.int64)


# ---- one part ----------------------------------------------------------------------------

COMPILED_TOPK = kernels is not None and hasattr(kernels, "topk")  # the running top-k in C; else numpy's


def start(units: int, offset: int, total: int) -> dict:
    """Empty summaries of a part whose first row is ``offset`` of a recording of ``total`` rows."""
    pad_v = np.full((units, K), -np.inf, np.float32)
    pad_p = np.full((units, K), -1, np.int64)
    return {"units": units, "offset": int(offset), "total": int(total), "rows": 0,
            "hist": np.zeros((units, HIST_BINS), np.int64),
            "top_v": pad_v, "top_p": pad_p, "bottom_v": pad_v.copy(), "bottom_p": pad_p.copy(),
            "strip_lo": 0, "strip_sum": np.zeros((0, units)), "strip_min": np.zeros((0, units), np.float32),
            "strip_max": np.zeros((0, units), np.float32), "strip_first": np.zeros((0, units), np.float32),
            "strip_has_first": np.zeros(0, bool)}


def count(codes: np.ndarray, lut: np.ndarray, hist: np.ndarray) -> None:
    """hist[u, lut[codes[t, u]]] += 1 (codes: float16 bit patterns [n, U]); by the compiled
    loop when it was built (``probe.analysis.loops``)."""
    loops.count_bins(codes, np.zeros(len(codes), np.int32), lut, hist, HIST_BINS)


def hist_from_auc(hist: np.ndarray, patterns: int, auc_bins: int) -> np.ndarray:
    """The HIST_BINS-bin counts [U, HIST_BINS] from one group's AUC counts [U, patterns *
    auc_bins] of the same rows: summed over patterns, then over runs of auc_bins / HIST_BINS
    bins (``bin_table``'s bins nest: floor(floor(2^a y) / 2^b) = floor(2^(a-b) y))."""
    U = hist.shape[0]
    return hist.reshape(U, patterns, HIST_BINS, auc_bins // HIST_BINS).sum(axis=(1, 3))


def update(st: dict, raw: np.ndarray, codes: np.ndarray | None, lut: np.ndarray, row: int,
           x: np.ndarray | None = None) -> None:
    """Add a chunk to a part's summaries: ``raw`` [n, U] values of the recording's rows
    [row, row + n) (global), ``codes`` their float16 bit patterns (None: the caller counts
    the histogram), ``lut`` ``hist_table``, ``x`` the values as float32 if at hand."""
    n = len(raw)
    if n == 0:
        return
    if codes is not None:
        count(codes, lut, st["hist"])
    T = st["total"]
    W, bk = strip_width(T), block_width(T)
    _strip(st, np.arange(row // W, (row + n - 1) // W + 1))  # the bins these rows touch
    edges = [0, *range(-row % SUB or SUB, n, SUB), n]  # on the recording's grid of SUB rows
    compiled = kernels if COMPILED_TOPK else None  # the running top-k in C, else numpy
    cuts, bmax, bmin, bsum = [], [], [], []
    for a, b in zip(edges[:-1], edges[1:]):  # a few rows at a time: their float32 values stay in cache
        xs = x[a:b] if x is not None else loops.as_float32(raw[a:b])
        c, mx, mn, sm = topk.blocks(xs, row + a, bk)
        if compiled is not None:
            compiled.topk(np.ascontiguousarray(xs, dtype=np.float32), row + a, c.astype(np.int64),
                          np.ascontiguousarray(mx, dtype=np.float32), np.ascontiguousarray(mn, dtype=np.float32),
                          st["top_v"], st["top_p"], st["bottom_v"], st["bottom_p"])
        cuts.append(c[:-1] + a)
        bmax.append(mx), bmin.append(mn), bsum.append(sm)
        j = np.arange(-(-(row + a) // W), -(-(row + b) // W))  # bins starting in these rows
        if len(j):
            seg = _strip(st, j)
            st["strip_first"][seg] = xs[j * W - row - a]
            st["strip_has_first"][seg] = True
    cuts = np.r_[np.concatenate(cuts), n]
    bmax, bmin, bsum = np.concatenate(bmax), np.concatenate(bmin), np.concatenate(bsum)
    src = x if x is not None else raw
    for key, sign, bm in (("top", 1, bmax), ("bottom", -1, -bmin)) if compiled is None else ():
        vals, rows = topk.candidates(src, sign, cuts, bm, st[f"{key}_v"][:, K - 1])
        pos = np.where(rows >= 0, rows + row, -1)
        st[f"{key}_v"], st[f"{key}_p"] = topk.merge(st[f"{key}_v"], st[f"{key}_p"], vals, pos)
    # the strip: bins of W rows (a multiple of bk), so blocks group into bins
    b = (row + cuts[:-1]) // W  # the bin of each block
    firsts = np.r_[0, np.flatnonzero(np.diff(b)) + 1]
    seg = _strip(st, b[firsts])
    st["strip_sum"][seg] += np.add.reduceat(bsum, firsts, axis=0)
    st["strip_min"][seg] = np.minimum(st["strip_min"][seg], np.minimum.reduceat(bmin, firsts, axis=0))
    st["strip_max"][seg] = np.maximum(st["strip_max"][seg], np.maximum.reduceat(bmax, firsts, axis=0))
    st["rows"] += n


def _strip(st: dict, js: np.ndarray) -> np.ndarray:
    """Indices into the part's strip arrays of bins ``js`` (grown to hold them)."""
    if not len(js):
        return js
    if len(st["strip_has_first"]) == 0:
        st["strip_lo"] = int(js[0])
    need = int(js[-1]) - st["strip_lo"] + 1
    have = len(st["strip_has_first"])
    if need > have:
        U, extra = st["units"], need - have
        st["strip_sum"] = np.concatenate([st["strip_sum"], np.zeros((extra, U))])
        st["strip_min"] = np.concatenate([st["strip_min"], np.full((extra, U), np.inf, np.float32)])
        st["strip_max"] = np.concatenate([st["strip_max"], np.full((extra, U), -np.inf, np.float32)])
        st["strip_first"] = np.concatenate([st["strip_first"], np.full((extra, U), np.nan, np.float32)])
        st["strip_has_first"] = np.concatenate([st["strip_has_first"], np.zeros(extra, bool)])
    return js - st["strip_lo"]


def merge(a: dict, b: dict) -> dict:
    """The summaries of two consecutive parts (a's rows before b's): a new dict."""
    out = {"units": a["units"], "offset": a["offset"], "total": a["total"], "rows": a["rows"] + b["rows"],
           "hist": a["hist"] + b["hist"]}
    for key in ("top", "bottom"):
        out[f"{key}_v"], out[f"{key}_p"] = topk.merge(a[f"{key}_v"], a[f"{key}_p"], b[f"{key}_v"], b[f"{key}_p"])
    out.update({k: a[k].copy() for k in ("strip_sum", "strip_min", "strip_max", "strip_first", "strip_has_first")})
    out["strip_lo"] = a["strip_lo"]
    nb = len(b["strip_has_first"])
    if nb:
        seg = _strip(out, np.arange(b["strip_lo"], b["strip_lo"] + nb))
        out["strip_sum"][seg] += b["strip_sum"]
        out["strip_min"][seg] = np.minimum(out["strip_min"][seg], b["strip_min"])
        out["strip_max"][seg] = np.maximum(out["strip_max"][seg], b["strip_max"])
        take = b["strip_has_first"] & ~out["strip_has_first"][seg]
        out["strip_first"][seg[take]] = b["strip_first"][take]
        out["strip_has_first"][seg[take]] = True
    return out


def finish(st: dict) -> dict[str, np.ndarray]:
    """The summaries of a whole (layer, stream) as arrays per unit (``FIELDS``): hist [U, B],
    top_/bottom_ v and p [U, K], strip_min/max/mean/first [U, bins] (float32, bins:
    ``strip_edges``)."""
    U = st["units"]
    edges = strip_edges(st["total"])
    sizes = np.diff(edges)
    full = {k: np.full((len(sizes), U), np.nan, dt) for k, dt in
            (("strip_min", np.float32), ("strip_max", np.float32), ("strip_first", np.float32),
             ("strip_sum", np.float64))}
    nb = len(st["strip_has_first"])
    sl = slice(st["strip_lo"], st["strip_lo"] + nb)
    for k in full:
        full[k][sl] = st[k]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (full["strip_sum"] / sizes[:, None]).astype(np.float32)
    out = {"hist": st["hist"]}
    for key in ("top", "bottom"):
        v, p = st[f"{key}_v"], st[f"{key}_p"]
        out[f"{key}_v"] = np.where(p >= 0, v if key == "top" else -v, np.nan).astype(np.float32)
        out[f"{key}_p"] = p
    out.update(strip_min=full["strip_min"].T.copy(), strip_max=full["strip_max"].T.copy(),
               strip_mean=mean.T.copy(), strip_first=full["strip_first"].T.copy())
    return out


# ---- the reference, and reading the stored summaries ------------------------------------------

def brute_force(values: np.ndarray, stream: str) -> dict[str, np.ndarray]:
    """``finish``'s arrays computed directly from a whole stream [T, U]: the definition
    (the tests compare the streaming summaries with it)."""
    x = np.asarray(values)
    T, U = x.shape
    x32 = x.astype(np.float32)
    with np.errstate(over="ignore"):
        codes = x.astype(np.float16).view(np.uint16)
    hist = np.stack([np.bincount(hist_table(stream)[codes[:, u]], minlength=HIST_BINS) for u in range(U)])
    out = {"hist": hist.astype(np.int64)}
    pos = np.arange(T)
    for key, sign in (("top", -1.0), ("bottom", 1.0)):
        v = np.full((U, K), np.nan, np.float32)
        p = np.full((U, K), -1, np.int64)
        for u in range(U):
            ok = np.flatnonzero(np.isfinite(x32[:, u]))
            order = ok[np.lexsort((pos[ok], sign * x32[ok, u]))][:K]
            v[u, :len(order)], p[u, :len(order)] = x32[order, u], order
        out[f"{key}_v"], out[f"{key}_p"] = v, p
    e = strip_edges(T)
    for k in ("strip_min", "strip_max", "strip_mean", "strip_first"):
        out[k] = np.full((U, len(e) - 1), np.nan, np.float32)
    for j in range(len(e) - 1):
        a, b = e[j], e[j + 1]
        out["strip_min"][:, j] = x32[a:b].min(axis=0)
        out["strip_max"][:, j] = x32[a:b].max(axis=0)
        out["strip_mean"][:, j] = (x32[a:b].astype(np.float64).sum(axis=0) / (b - a)).astype(np.float32)
        out["strip_first"][:, j] = x32[a]
    return out


def unit(summ: dict, layer: int, stream: str, unit: int) -> dict:
    """One unit's summaries from ``analysis.summaries``' dict: the ``FIELDS`` for this unit,
    plus ``edges`` (the histogram's, in value space), ``strip_edges`` and ``samples`` (the
    positions of ``strip_first``)."""
    arrays = summ[(int(layer), stream)]
    out = {k: arrays[k][int(unit)] for k in FIELDS}
    out.update(stream=stream, edges=hist_edges(stream), strip_edges=summ["strip_edges"],
               samples=summ["strip_edges"][:-1])
    return out


def quantile_samples(u: dict, bins: int = 5, per_bin: int = 2, seed: int = 0) -> list[dict]:
    """``per_bin`` random positions (with their values) for each of ``bins`` quantile bins,
    from a unit's summaries (``unit``): the quantiles' edges come from the histogram (the
    value edge where the cumulative count crosses i / bins), the positions from the strip's
    samples (``strip_first``) whose value lies between them. Lowest bin first; empty bins
    are skipped. Rows: bin, low, high, position, value."""
    hist, edges = u["hist"], u["edges"]
    cum = np.cumsum(hist)
    total = cum[-1] if len(cum) else 0
    vals, pos = u["strip_first"], u["samples"]
    ok = np.isfinite(vals)
    vals, pos = vals[ok], pos[ok]
    if total == 0 or not len(vals):
        return []
    cuts = [np.searchsorted(cum, total * i / bins, side="left") for i in range(1, bins)]
    qe = np.array([-np.inf] + [edges[c + 1] for c in cuts] + [np.inf])
    lo = np.r_[edges[0], qe[1:-1]]
    hi = np.r_[qe[1:-1], edges[-1]]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(bins):
        members = np.flatnonzero((vals >= qe[i]) & (vals < qe[i + 1]))
        if not len(members):
            continue
        pick = np.sort(rng.choice(members, min(per_bin, len(members)), replace=False))
        rows += [{"bin": i, "low": float(lo[i]), "high": float(hi[i]), "position": int(pos[m]),
                  "value": float(vals[m])} for m in pick]
    return rows


def colour_scale(u: dict, low: float = 0.01, high: float = 0.99) -> tuple[float, float]:
    """The range a derived stream's unit is coloured over (``render.scaled``): from its
    histogram, the bin edges where the cumulative count crosses ``low`` and ``high`` of the
    total (so one outlier does not wash the rest out), kept within its least and greatest
    value (the overview strip). Never empty."""
    hist, edges = np.asarray(u["hist"]), np.asarray(u["edges"], dtype=np.float64)
    lo_v, hi_v = np.asarray(u["strip_min"]), np.asarray(u["strip_max"])
    lo_v, hi_v = lo_v[np.isfinite(lo_v)], hi_v[np.isfinite(hi_v)]
    vmin = float(lo_v.min()) if len(lo_v) else 0.0
    vmax = float(hi_v.max()) if len(hi_v) else 1.0
    cum = np.cumsum(hist)
    total = cum[-1] if len(cum) else 0
    if total == 0:
        return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)
    a = int(np.searchsorted(cum, total * low, side="left"))
    b = int(np.searchsorted(cum, total * high, side="left"))
    lo = max(vmin, edges[a]) if np.isfinite(edges[a]) else vmin
    hi = min(vmax, edges[b + 1]) if np.isfinite(edges[b + 1]) else vmax
    if hi <= lo:
        lo, hi = vmin, vmax
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)
