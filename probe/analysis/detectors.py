"""Which cells detect which features: correlation, AUC and ranking, and gate saturation.

    from probe.analysis import detectors
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        sc = detectors.scores(rec)      # every (layer, stream, unit) against every feature
        detectors.best(sc, top=3)       # per feature, the top cells by |r| or AUC
        detectors.saturation(rec)       # per gate unit (i f o), the fraction < 0.1 / > 0.9

Every (layer, stream, unit) is scored against every per-character feature of
``probe.text.features`` in one streaming pass over each stream, in row chunks, so memory does
not grow with the text: Pearson r from running sums (n, Σx, Σx², Σx·f) and, for binary
features, ROC AUC from per-unit histograms of the values at positive and negative
characters; the two per-value loops (float16 to float32, histogram counts) run in C
(``probe/_kernels.c``) when it was built, else in numpy. Plain functions over arrays and
DataFrames. One cell's histogram and contexts live in ``probe.analysis.contexts``; linear probes
over many cells in ``probe.readout.probes``; the cached analysis of a recording and its reports
in ``probe.analysis.cache``.

The statistics of a recording are a reduction of per-part statistics: a file is one
part, a folder of shards one part per shard. Each part is scanned from zero accumulators
(``part_stats``) with one shift per stream shared by every part (``shift_of``: the mean of
the recording's first SHIFT_ROWS rows), the parts are added up in shard order
(``combine``) and the sums become scores (``finish``). ``probe.analysis.cluster`` runs the same
functions, one task per (part, layer, stream), on a Dask cluster: the same operations on
the same values in the same order, so its scores equal these bit for bit. Asked for
(``summaries=True``), the same reads also build every unit's summaries (``probe.analysis.summaries``:
histogram, top and bottom positions, overview strip), carried in the statistics as
``summary`` and folded by ``combine`` like the sums.
"""
from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pandas as pd

from probe.analysis import summaries as summaries_mod
from probe.compiled import kernels as _kernels  # None where not built: numpy does the same
from probe.errors import ProbeError
from probe.recording import h5format, shards
from probe.recording.reader import Recording
from probe.text import features as features_mod

CHUNK = 32768             # rows per streaming read
SUBCHUNK = 4096           # rows converted to float32 at a time (they stay in cache)
BLOCK = 64                # rows per float32 partial sum of Σx·f (then float64), on a grid of the whole
SHIFT_ROWS = 4096         # first rows whose mean every part's sums are taken about (one stored chunk)
AUC_BINS = 2048           # histogram bins per unit for AUC (ties within a bin count half)
HIST_UNITS = 32           # units histogrammed together (counts of a block fit in cache)
MAX_COMBOS = 8            # distinct 0/1 patterns of binary features histogrammed together
SCORE_COLUMNS = ["layer", "stream", "unit", "feature", "metric", "score"]
BEST_COLUMNS = ["feature", "rank", "layer", "stream", "unit", "metric", "score", "r", "auc"]
SATURATION_COLUMNS = ["layer", "stream", "unit", "left", "right"]
COMPILED = _kernels is not None  # the C loops were built


# ---- inputs ---------------------------------------------------------------------------

def length(rec: Recording) -> int:
    """T, the recording's length; a one-line error if it is empty (nothing to score)."""
    T = len(rec)
    if T == 0:
        raise ProbeError(f"{rec.path}: empty recording (0 characters)")
    return T


def default_features(rec: Recording, regex: dict[str, str] | None = None) -> pd.DataFrame:
    """The built-in features (plus ``regex`` ones) of the recording's text, per document."""
    length(rec)
    return features_mod.compute(rec.text, documents=rec.document_spans,
                                document_names=rec.documents["name"].tolist(), regex=regex)


def gates(streams) -> list[str]:
    """The streams whose values lie in [0, 1] (the sigmoid gates): the ones that saturate."""
    return [s for s in streams if h5format.is_unit_range(s)]


def layer_streams(rec: Recording, layers=None, streams=None) -> list[tuple[int, str]]:
    """(layer, stream) pairs to scan, checked against the recording (one-line errors)."""
    layers = list(rec.layer_ids) if layers is None else list(np.atleast_1d(layers))
    for k in layers:
        rec.check(k, rec.streams[0])
    if streams is None:  # every stream of each layer, its derived ones included
        return [(int(k), s) for k in layers for s in rec.streams_of(int(k))]
    streams = [streams] if isinstance(streams, str) else list(streams)
    every = set().union(*(rec.streams_of(int(k)) for k in layers))
    for s in streams:
        if s not in every:
            raise ProbeError(f"{rec.path}: recording has no stream {s!r} (it has {' '.join(sorted(every))})")
    return [(int(k), s) for k in layers for s in streams if s in rec.streams_of(int(k))]


class _FeatureSet:
    """Features as centred columns, plus the binary ones packed into pattern codes."""

    def __init__(self, feats: pd.DataFrame, T: int, where: object):
        if not isinstance(feats, pd.DataFrame):
            raise ProbeError("features must be a DataFrame with one row per character")
        if len(feats) != T:
            raise ProbeError(f"{where}: features have {len(feats)} rows but the recording has {T} characters")
        if feats.shape[1] == 0:
            raise ProbeError("no features to score")
        self.names = [str(c) for c in feats.columns]
        if len(set(self.names)) != len(self.names):
            raise ProbeError(f"feature names must be unique, got {self.names}")
        cols = []
        for name in self.names:
            v = feats[name].to_numpy()
            if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
                raise ProbeError(f"feature {name!r}: values must be numbers, got dtype {v.dtype}")
            cols.append(v)
        self.cols = cols
        self.mean = np.array([np.mean(c, dtype=np.float64) for c in cols])
        self.sf, self.sff = np.zeros(len(cols)), np.zeros(len(cols))
        cent = aligned_empty((len(feats),), np.float64)  # aligned: np.dot's rounding can depend on it
        for j, (c, m) in enumerate(zip(cols, self.mean)):  # one float64 column at a time
            np.subtract(c, m, out=cent, dtype=np.float64)
            self.sf[j] = cent.sum()                           # Σ(f - mean): ~0
            self.sff[j] = np.dot(cent, cent)                  # Σ(f - mean)²
        self.binary = [j for j, n in enumerate(self.names) if features_mod.is_binary(n, cols[j])]
        self.groups = self._group([(j, cols[j] != 0) for j in self.binary])

    @staticmethod
    def _group(bits: list[tuple[int, np.ndarray]]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """Pack binary features into groups whose rows show at most MAX_COMBOS distinct
        patterns; each group is (feature indices, code per row, patterns [C, g])."""
        groups, cur = [], []

        def pack(members):
            key = np.zeros(len(members[0][1]), dtype=np.int64)
            for b, (_, m) in enumerate(members):
                key |= m.astype(np.int64) << b
            uniq, code = np.unique(key, return_inverse=True)
            pats = ((uniq[:, None] >> np.arange(len(members))) & 1).astype(bool)
            return uniq, code.astype(np.int32), pats

        for item in bits:
            trial = cur + [item]
            if cur and len(pack(trial)[0]) > MAX_COMBOS:
                groups.append(cur)
                trial = [item]
            cur = trial
        if cur:
            groups.append(cur)
        out = []
        for members in groups:
            _, code, pats = pack(members)
            out.append(([j for j, _ in members], code, pats))
        return out

    def part(self, a: int, b: int) -> "_FeatureSet":
        """The features of rows [a, b) (rows 0..b-a of one part), with the whole text's
        means, sums and binary groups: what a part's scan needs, and no more rows."""
        out = object.__new__(_FeatureSet)
        out.__dict__.update(self.__dict__)
        out.cols = [c[a:b] for c in self.cols]
        out.groups = [(members, code[a:b], pats) for members, code, pats in self.groups]
        return out

    def centred(self, a: int, b: int) -> np.ndarray:
        """A column of ones, then rows [a, b) of the centred features: float32 [n, 1 + F]."""
        out = aligned_empty((b - a, 1 + len(self.cols)), np.float32)
        out[:, 0] = 1.0
        for j, (c, m) in enumerate(zip(self.cols, self.mean)):
            out[:, 1 + j] = c[a:b].astype(np.float64) - m
        return out


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty`` whose data starts on a 64-byte boundary. The float32 products of Σx·f
    (MKL through torch) may round differently for differently aligned inputs, and where a
    plain allocation lands depends on the heap's history: aligned inputs make the sums the
    same in every process (this one, or a cluster worker)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + nbytes].view(dtype).reshape(shape)


# the float32 value of every float16 bit pattern
_FLOAT16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def bin_table(stream: str, bins: int = AUC_BINS) -> np.ndarray:
    """Histogram bin of every float16 bit pattern (a monotonic map of the value).

    Gates use their [0, 1] range, g and h [-1, 1]; unbounded streams (c) are squashed by
    x / (1 + |x|) first: like tanh it is monotonic (AUC only depends on order), but it
    does not round every |c| > 9 to 1.0 in float32, which would tie all large values.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        v = _FLOAT16.astype(np.float64)  # (NaN patterns cast with a warning; they land in bin 0)
        if h5format.RANGE.get(stream) is not None:
            lo, hi = h5format.RANGE[stream]
        else:
            v = np.where(np.isinf(v), np.sign(v), v / (1 + np.abs(v)))
            lo, hi = -1.0, 1.0
        b = np.floor((v - lo) / (hi - lo) * bins)
    return np.nan_to_num(np.clip(b, 0, bins - 1), nan=0.0).astype(np.intp)


# ---- the streaming pass ---------------------------------------------------------------

def count_bins_numpy(codes: np.ndarray, pattern: np.ndarray, lut: np.ndarray, hist: np.ndarray) -> None:
    """hist[u, pattern[t] * AUC_BINS + lut[codes[t, u]]] += 1 for every row t and unit u.

    codes: float16 bit patterns [n, U]; pattern: int32 [n]; lut: int32 [65536] bin per
    bit pattern; hist: int64 [U, patterns * AUC_BINS], updated in place. The reference
    for the compiled ``probe._kernels.histogram`` (same counts, about 4x slower).
    """
    U, width = hist.shape
    row_off = (pattern.astype(np.int32) * AUC_BINS)[:, None]
    for u0 in range(0, U, HIST_UNITS):  # a block of units: its counts stay in cache
        u1 = min(u0 + HIST_UNITS, U)
        idx = lut[codes[:, u0:u1]] + row_off
        idx += np.arange(u1 - u0, dtype=np.int32) * width
        hist[u0:u1] += np.bincount(idx.ravel(), minlength=(u1 - u0) * width).reshape(u1 - u0, width)


def count_bins(codes: np.ndarray, pattern: np.ndarray, lut: np.ndarray, hist: np.ndarray) -> None:
    """``count_bins_numpy``, by the compiled loop when it was built (pip builds it if it can)."""
    if _kernels is None:
        count_bins_numpy(codes, pattern, lut, hist)
    else:
        _kernels.histogram(codes, pattern, lut, hist, AUC_BINS)


def shifted(raw: np.ndarray, shift: np.ndarray, sumsq: np.ndarray, values: np.ndarray | None = None
            ) -> np.ndarray:
    """float32 ``raw - shift`` [n, U]; adds each unit's Σ(raw - shift)² to ``sumsq`` (float64);
    with ``values`` (float32 [n, U]) also writes the raw values there as float32, in the same
    pass (the per-unit summaries'). float16 chunks go through the compiled loop when built."""
    raw = np.ascontiguousarray(raw)
    x = aligned_empty(raw.shape, np.float32)
    if _kernels is not None and raw.dtype == np.float16:
        if values is None:
            _kernels.shifted(raw.view(np.uint16), _FLOAT16, shift, x, sumsq)
        else:
            _kernels.shifted(raw.view(np.uint16), _FLOAT16, shift, x, sumsq, values)
        return x
    if values is not None:
        values[:] = raw
    import torch  # only when scoring float32 data or without the C loops
    torch.sub(torch.from_numpy(raw).float(), torch.from_numpy(shift),
              out=torch.from_numpy(x))  # torch converts float16 faster
    for r0 in range(0, len(x), 4096):  # float32 partial sums of 4096 rows, then float64
        xs = x[r0:r0 + 4096]
        sumsq += np.einsum("ij,ij->j", xs, xs)
    return x


_TORCH_LOCK = threading.Lock()
_torch_users = [0, 1]  # scans running, torch's thread count before the first of them


@contextmanager
def one_torch_thread():
    """torch runs Σx·f on one thread while any scan runs (restored after the last).

    A multi-threaded matrix product splits its sums differently with the thread count, so
    its last bits would depend on the machine's cores; one thread makes every scan, in this
    process or on a cluster worker, the same operations in the same order. Scans still run
    side by side (``threads``), one stream each. Set in every thread that scans: OpenMP and
    MKL keep a thread count per calling thread."""
    import torch
    with _TORCH_LOCK:
        if _torch_users[0] == 0:
            _torch_users[1] = torch.get_num_threads()
        torch.set_num_threads(1)
        _torch_users[0] += 1
    try:
        yield
    finally:
        with _TORCH_LOCK:
            _torch_users[0] -= 1
            if _torch_users[0] == 0:
                torch.set_num_threads(_torch_users[1])


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


def _edges(start: int, stop: int, step: int, origin: int) -> list[int]:
    """[start, ..., stop]: start, stop and every origin + k * step strictly between."""
    first = origin + -(-(start - origin) // step) * step  # the first grid line >= start
    if first == start:
        first += step
    return [start, *range(first, stop, step), stop]


def _block_sums(f: np.ndarray, x: np.ndarray, g: int) -> np.ndarray:
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


def part_stats(ds, fx: _FeatureSet | None, stream: str, shift: np.ndarray | None = None,
               chunk: int = CHUNK, sat: tuple[float, float] | None = None, bar=None,
               offset: int = 0, total: int | None = None) -> dict:
    """The sufficient statistics of one part: a [n, U] dataset and ``fx``, its rows'
    features (``_FeatureSet.part``), scanned from zero accumulators. ``offset`` is the
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
    edges = _edges(offset, offset + T, chunk, 0) if T else [offset]
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
                sub = _edges(ga, gb, SUBCHUNK, ga // chunk * chunk)  # the whole's subchunks
                for g0, g1 in zip(sub[:-1], sub[1:]):  # float32 values of a few rows, still in cache
                    r0, r1 = g0 - ga, g1 - ga
                    if total is None:
                        x = shifted(raw[r0:r1], shift, sxx)
                    else:  # the summaries take the same rows' float32 values from the same pass
                        values = np.empty((r1 - r0, U), np.float32)
                        x = shifted(raw[r0:r1], shift, sxx, values)
                        summaries_mod.update(summ, raw[r0:r1], None if auc_hist else codes[r0:r1], hlut, g0,
                                             x=values)
                    prod = _block_sums(f[r0:r1], x, g0).T  # [U, 1 + F]: Σx, then Σx·f
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


def finish(acc: dict, fx: _FeatureSet | None, layer: int, stream: str
           ) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The scores frame (r and AUC, as ``scores``) and the saturation frame of one
    (layer, stream) from its reduced statistics (either None where not computed)."""
    frame = sat = None
    if fx is not None:
        U = acc["sx"].shape[0]
        hists = [h.reshape(U, len(p), AUC_BINS).transpose(1, 0, 2)  # [patterns, U, bins]
                 for h, (_, _, p) in zip(acc["hists"], fx.groups)]
        frame = _frame(layer, stream, fx, _pearson(acc, fx), _aucs({**acc, "hists": hists}, fx))
    if "left" in acc:
        n = max(acc["n"], 1)
        sat = pd.DataFrame({"layer": layer, "stream": stream, "unit": np.arange(len(acc["left"])),
                            "left": acc["left"] / n, "right": acc["right"] / n})
    return frame, sat


def finish_all(acc: dict, fx: _FeatureSet | None, layer: int, stream: str) -> tuple:
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


def _pearson(acc: dict, fx: _FeatureSet) -> np.ndarray:
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


def _auc_from_hist(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC per row of [U, B] integer histograms of positives and negatives (ties count half).

    In int64, twice the Mann–Whitney count, so the sum is exact whatever its order (up to
    ~3e9 characters); one rounding, in the final division."""
    pos, neg = pos.astype(np.int64), neg.astype(np.int64)
    below = 2 * np.cumsum(neg, axis=1) - neg   # twice: negatives in lower bins, half the same bin's
    num = (pos * below).sum(axis=1)
    den = 2 * pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _aucs(acc: dict, fx: _FeatureSet) -> dict[int, np.ndarray]:
    out = {}
    for (members, _, pats), hist in zip(fx.groups, acc["hists"]):
        total = hist.sum(axis=0)  # [patterns, U, bins] -> [U, bins]
        for col, j in enumerate(members):
            pos = hist[pats[:, col]].sum(axis=0)  # the patterns where feature j is 1
            out[j] = _auc_from_hist(pos, total - pos)
    return out


def _frame(layer: int, stream: str, fx: _FeatureSet, r: np.ndarray, aucs: dict) -> pd.DataFrame:
    U, nf = r.shape
    parts = [pd.DataFrame({"layer": layer, "stream": stream, "unit": np.repeat(np.arange(U), nf),
                           "feature": np.tile(fx.names, U), "metric": "r", "score": r.reshape(-1)})]
    if aucs:
        js = sorted(aucs)
        a = np.stack([aucs[j] for j in js], axis=1)
        parts.append(pd.DataFrame({"layer": layer, "stream": stream, "unit": np.repeat(np.arange(U), len(js)),
                                   "feature": np.tile([fx.names[j] for j in js], U), "metric": "auc",
                                   "score": a.reshape(-1)}))
    return pd.concat(parts, ignore_index=True)


class Progress:
    """A progress bar that reports to ``callback(done, total)`` instead of a terminal (the
    dashboard's notice): ``update`` and ``close`` as tqdm's, safe from several threads."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, int(total), 0
        self._lock = threading.Lock()
        callback(0, self.total)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += int(n)
            done = self.done
        self.callback(done, self.total)

    def close(self) -> None:
        pass


def _bar(progress, total: int, desc: str):
    """A tqdm bar on the terminal if ``progress`` is true; if it is a function, a ``Progress``
    that calls it with (characters done, total)."""
    if callable(progress):
        return Progress(progress, total)
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="char", unit_scale=True, disable=not progress, desc=desc)


def scores(rec: Recording, feats: pd.DataFrame | None = None, *, layers=None, streams=None,
           chunk: int = CHUNK, progress: bool = False, threads: int = 1, workers: int | None = None
           ) -> pd.DataFrame:
    """Pearson r (metric "r") of every (layer, stream, unit) with every feature, and ROC AUC
    (metric "auc") for binary features: columns layer, stream, unit, feature, metric, score.

    One streaming pass per stream in ``chunk`` rows, so memory does not depend on the
    length. ``feats`` defaults to the built-in features of the recording's text. r comes
    from shifted running sums; AUC from per-unit histograms of AUC_BINS bins over each
    value's float16 rounding (c squashed by x / (1 + |x|)), so two values in the same bin
    count as a tie (half): it matches the exact AUC to ~1e-4. A constant unit or feature
    gives NaN (and a constant unit an AUC of 0.5). ``threads`` threads scan streams side by
    side (numpy and torch release the GIL for the heavy steps); the result does not change
    (``workers`` is its old name, deprecated: Dask worker processes are ``probe.analysis.cluster``'s).
    A folder of shards is scanned shard by shard and the sums added in shard order, as
    ``probe.analysis.cluster.analyze`` does on a cluster (the same scores, bit for bit).
    """
    if workers is not None:
        threads = _threads(threads, workers, stacklevel=3)
    res, _ = scores_and_saturation(rec, feats, layers=layers, streams=streams, chunk=chunk,
                                    progress=progress, sat=None, threads=threads)
    return res


def prepare(rec: Recording, feats: pd.DataFrame | None, layers=None, streams=None, chunk: int = CHUNK
            ) -> tuple[list[tuple[int, str]], _FeatureSet, list[Recording], list[_FeatureSet]]:
    """What a scan of ``rec`` needs, checked (one-line errors): the (layer, stream) pairs,
    the whole text's features, the parts (``parts_of``) and each part's rows of features."""
    T = length(rec)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ProbeError(f"chunk must be a positive number of rows, got {chunk}")
    pairs = layer_streams(rec, layers, streams)
    fx = _FeatureSet(default_features(rec) if feats is None else feats, T, rec.path)
    parts = parts_of(rec)
    edges = np.cumsum([0] + [len(p) for p in parts]).tolist()
    return pairs, fx, parts, [fx.part(a, b) for a, b in zip(edges[:-1], edges[1:])]


def want_saturation(stream: str, sat: tuple[float, float] | None) -> tuple[float, float] | None:
    """The saturation thresholds to count for this stream: ``sat`` for gates, else None."""
    return sat if (sat is not None and h5format.is_unit_range(stream)) else None


def assemble(done: list[tuple]) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """``finish``'s (scores, saturation) frames of every (layer, stream), in order, as
    ``scores_and_saturation`` returns them (``finish_all``'s triples: the first two)."""
    frames = [d[0] for d in done if d[0] is not None]
    sats = [d[1] for d in done if d[1] is not None]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    return df[SCORE_COLUMNS], sats


def _threads(threads: int, workers: int | None, stacklevel: int = 3) -> int:
    """``threads`` checked; ``workers``, its deprecated old name, wins if given (with a warning
    attributed to the caller of the public function)."""
    if workers is not None:
        warnings.warn("detectors: workers= is deprecated, use threads= (Dask worker processes are "
                      "probe.analysis.cluster's)", DeprecationWarning, stacklevel=stacklevel)
        threads, name = workers, "workers"
    else:
        name = "threads"
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ProbeError(f"{name} must be at least 1, got {threads}")
    return int(threads)


def scores_and_saturation(rec: Recording, feats: pd.DataFrame | None, *, layers=None, streams=None,
                          chunk: int = CHUNK, progress: bool = False,
                          sat: tuple[float, float] | None = (0.1, 0.9),
                          threads: int = 1, workers: int | None = None, summaries: bool = False
                          ) -> tuple:
    """``scores`` and, in the same pass, saturation (``sat`` = (low, high) thresholds) of the
    gate streams scanned: (scores frame, saturation frames per (layer, gate stream)); with
    ``summaries`` a third item, the per-unit summaries from the same reads (``scan_all``)."""
    if workers is not None:
        threads = _threads(threads, workers, stacklevel=3)
    sc, sats, summ = scan_all(rec, feats, layers=layers, streams=streams, chunk=chunk, progress=progress,
                              sat=sat, threads=threads, summaries=summaries)
    return (sc, sats, summ) if summaries else (sc, sats)


def scan_all(rec: Recording, feats: pd.DataFrame | None, *, layers=None, streams=None,
             chunk: int = CHUNK, progress: bool = False, sat: tuple[float, float] | None = (0.1, 0.9),
             threads: int = 1, summaries: bool = False
             ) -> tuple[pd.DataFrame, list[pd.DataFrame], dict | None]:
    """``scores_and_saturation`` and, with ``summaries``, in the same pass the per-unit
    summaries (``probe.analysis.summaries``): {(layer, stream): ``summaries.finish``'s arrays}, else None."""
    threads = _threads(threads, None)
    pairs, fx, parts, fxs = prepare(rec, feats, layers, streams, chunk)
    bar = _bar(progress, len(pairs) * len(rec), "scoring")

    def one(pair):
        k, s = pair
        acc = scan([p.stream(k, s) for p in parts], fxs, s, chunk, want_saturation(s, sat), bar, summaries)
        return finish_all(acc, fx, k, s)

    try:
        if threads == 1:
            done = [one(p) for p in pairs]
        else:
            with ThreadPoolExecutor(threads) as pool:
                done = list(pool.map(one, pairs))
    finally:
        bar.close()
    sc, sats = assemble(done)
    return sc, sats, ({pair: d[2] for pair, d in zip(pairs, done)} if summaries else None)


# ---- ranking --------------------------------------------------------------------------

def wide_table(scores_df: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, stream, unit, feature) with columns r and auc."""
    w = scores_df.set_index(["layer", "stream", "unit", "feature", "metric"])["score"].unstack("metric")
    for m in ("r", "auc"):
        if m not in w:
            w[m] = np.nan
    return w.reset_index()


def strength(w: pd.DataFrame) -> tuple[str, np.ndarray]:
    """Which metric ranks these rows of one feature, and the strength to sort by."""
    if w["auc"].notna().any():
        a = w["auc"].to_numpy(dtype=float)
        return "auc", np.maximum(a, 1 - a)
    return "r", np.abs(w["r"].to_numpy(dtype=float))


def check_top(top: int) -> None:
    """``top`` must be a whole number >= 1 (``probe analyze --top``)."""
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ProbeError(f"--top must be at least 1, got {top}")


def best(scores_df: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per feature, the ``top`` cells: binary features by max(auc, 1 - auc), others by |r|.

    Columns feature, rank (1 = best), layer, stream, unit, metric, score (the raw, signed
    value of the ranking metric), plus r and auc (NaN where not computed).
    """
    check_top(top)
    missing = set(SCORE_COLUMNS) - set(scores_df.columns)
    if missing:
        raise ProbeError(f"scores table lacks columns {sorted(missing)}")
    if scores_df.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    wide = wide_table(scores_df)
    rows = []
    for feature in pd.unique(scores_df["feature"]):
        w = wide[wide["feature"] == feature].reset_index(drop=True)
        metric, key = strength(w)
        key = np.where(np.isnan(key), -np.inf, key)
        order = np.argsort(-key, kind="stable")
        order = [i for i in order if np.isfinite(key[i])][:top]
        for rank, i in enumerate(order, 1):
            rows.append({"feature": feature, "rank": rank, "layer": int(w.at[i, "layer"]),
                         "stream": w.at[i, "stream"], "unit": int(w.at[i, "unit"]), "metric": metric,
                         "score": float(w.at[i, metric]), "r": float(w.at[i, "r"]),
                         "auc": float(w.at[i, "auc"])})
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


# ---- saturation -----------------------------------------------------------------------

def saturation(rec: Recording, low: float = 0.1, high: float = 0.9, chunk: int = CHUNK) -> pd.DataFrame:
    """Per layer, gate stream (values in [0, 1]: i f o) and unit: fraction of characters
    with the gate < ``low`` (``left``) and > ``high`` (``right``). Streaming."""
    length(rec)
    streams = gates(rec.streams)
    if not streams:
        raise ProbeError(f"{rec.path}: saturation needs gate streams (values in [0, 1], such as i f o); "
                         f"the recording has only {' '.join(rec.streams)}")
    if not low <= high:
        raise ProbeError(f"saturation thresholds must satisfy low <= high, got {low} and {high}")
    frames = []
    parts = parts_of(rec)
    for k in rec.layer_ids:
        for g in streams:
            acc = scan([p.stream(k, g) for p in parts], [None] * len(parts), g, chunk, (low, high))
            frames.append(finish(acc, None, k, g)[1])
    return pd.concat(frames, ignore_index=True)[SATURATION_COLUMNS]


def saturation_summary(sat: pd.DataFrame) -> pd.DataFrame:
    """Mean fraction saturated left/right over the units of each (layer, gate stream)."""
    if sat.empty:
        return pd.DataFrame(columns=["layer", "stream", "left", "right"])
    return sat.groupby(["layer", "stream"], sort=False)[["left", "right"]].mean().reset_index()


def auc_exact(score: np.ndarray, y: np.ndarray) -> float:
    """Mann–Whitney AUC with average ranks for ties; NaN if y has one class."""
    y = y.astype(bool)
    P, N = int(y.sum()), int((~y).sum())
    if P == 0 or N == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    s = score[order]
    ranks = np.empty(len(s))
    first = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run of ties
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - P * (P + 1) / 2) / (P * N))
