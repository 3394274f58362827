"""Which cells detect which features: correlation, AUC and ranking, and gate saturation.

    from probe import detectors
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        sc = detectors.scores(rec)      # every (layer, stream, unit) against every feature
        detectors.best(sc, top=3)       # per feature, the top cells by |r| or AUC
        detectors.saturation(rec)       # per gate unit (i f o), the fraction < 0.1 / > 0.9

Every (layer, stream, unit) is scored against every per-character feature of
``probe.features`` in one streaming pass over each stream, in row chunks, so memory does
not grow with the text: Pearson r from running sums (n, Σx, Σx², Σx·f) and, for binary
features, ROC AUC from per-unit histograms of the values at positive and negative
characters; the two per-value loops (float16 to float32, histogram counts) run in C
(``probe/_kernels.c``) when it was built, else in numpy. Plain functions over arrays and
DataFrames. One cell's histogram and contexts live in ``probe.contexts``; linear probes
over many cells in ``probe.probes``; the cached analysis of a recording and its reports
in ``probe.analysis``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from . import features as features_mod
from . import h5format
from .errors import ProbeError
from .recording import Recording

try:  # two per-value loops in C (setup.py builds them; optional)
    from . import _kernels
except ImportError:  # no compiler at install time: numpy does the same counting
    _kernels = None

CHUNK = 32768             # rows per streaming read
SUBCHUNK = 4096           # rows converted to float32 at a time (they stay in cache)
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
    streams = list(rec.streams) if streams is None else [streams] if isinstance(streams, str) else list(streams)
    for s in streams:
        if s not in rec.streams:
            raise ProbeError(f"{rec.path}: recording has no stream {s!r} (it has {' '.join(rec.streams)})")
    for k in layers:
        rec.check(k, streams[0] if streams else rec.streams[0])
    return [(int(k), s) for k in layers for s in streams]


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
        cent = [c.astype(np.float64) - m for c, m in zip(cols, self.mean)]
        self.sf = np.array([c.sum() for c in cent])            # Σ(f - mean): ~0
        self.sff = np.array([np.dot(c, c) for c in cent])      # Σ(f - mean)²
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

    def centred(self, a: int, b: int) -> np.ndarray:
        """A column of ones, then rows [a, b) of the centred features: float32 [n, 1 + F]."""
        out = np.empty((b - a, 1 + len(self.cols)), dtype=np.float32)
        out[:, 0] = 1.0
        for j, (c, m) in enumerate(zip(self.cols, self.mean)):
            out[:, 1 + j] = c[a:b].astype(np.float64) - m
        return out


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


def shifted(raw: np.ndarray, shift: np.ndarray, sumsq: np.ndarray) -> np.ndarray:
    """float32 ``raw - shift`` [n, U]; adds each unit's Σ(raw - shift)² to ``sumsq`` (float64).
    float16 chunks go through the compiled loop when it was built."""
    raw = np.ascontiguousarray(raw)
    if _kernels is not None and raw.dtype == np.float16:
        x = np.empty(raw.shape, dtype=np.float32)
        _kernels.shifted(raw.view(np.uint16), _FLOAT16, shift, x, sumsq)
        return x
    import torch  # only when scoring float32 data or without the C loops
    x = torch.from_numpy(raw).float().sub_(torch.from_numpy(shift)).numpy()  # torch converts float16 faster
    for r0 in range(0, len(x), 4096):  # float32 partial sums of 4096 rows, then float64
        xs = x[r0:r0 + 4096]
        sumsq += np.einsum("ij,ij->j", xs, xs)
    return x


def _scan(ds, T: int, chunk: int, fx: _FeatureSet | None, stream: str,
          sat: tuple[float, float] | None = None, bar=None) -> dict:
    """One pass over a [T, U] dataset: sums for r, AUC histograms, saturation counts."""
    import torch  # Σx·f as one matrix product: torch's thread setting holds (numpy's BLAS may not)
    U = ds.shape[1]
    out: dict = {"n": 0}
    if fx is not None:
        nf = len(fx.names)
        sx, sxx, sxf = np.zeros(U), np.zeros(U), np.zeros((U, nf))
        lut = bin_table(stream).astype(np.int32)
        # per group, counts [U, patterns * AUC_BINS]: bin index = pattern * AUC_BINS + bin
        hists = [np.zeros((U, len(p) * AUC_BINS), dtype=np.int64) for _, _, p in fx.groups]
        shift = None
    if sat is not None:
        left, right = np.zeros(U, np.int64), np.zeros(U, np.int64)
        low, high = np.float32(sat[0]), np.float32(sat[1])  # float32: exact for float16 data
    for a in range(0, T, chunk):
        b = min(a + chunk, T)
        raw = ds[a:b]
        if sat is not None:
            left += np.count_nonzero(raw < low, axis=0)
            right += np.count_nonzero(raw > high, axis=0)
        if fx is not None:
            if fx.groups:
                with np.errstate(over="ignore"):
                    half = raw if raw.dtype == np.float16 else raw.astype(np.float16)
                codes = np.ascontiguousarray(half).view(np.uint16)
                for (_, code, _), hist in zip(fx.groups, hists):
                    count_bins(codes, code[a:b], lut, hist)
            if shift is None:  # shifted sums: no cancellation in Σx² - (Σx)²/n
                shift = raw.mean(axis=0, dtype=np.float64).astype(np.float32)
            f = fx.centred(a, b)
            for r0 in range(0, b - a, SUBCHUNK):  # float32 values of a few rows, still in cache
                r1 = min(r0 + SUBCHUNK, b - a)
                x = shifted(raw[r0:r1], shift, sxx)
                # [U, 1 + F]: Σx, then Σx·f (torch: its thread setting holds; this order is fast)
                prod = (torch.from_numpy(f[r0:r1]).T @ torch.from_numpy(x)).numpy().T.astype(np.float64)
                sx += prod[:, 0]
                sxf += prod[:, 1:]
        out["n"] += b - a
        if bar is not None:
            bar.update(b - a)
    if fx is not None:
        out.update(sx=sx, sxx=sxx, sxf=sxf,
                   hists=[h.reshape(U, len(p), AUC_BINS).transpose(1, 0, 2)
                          for h, (_, _, p) in zip(hists, fx.groups)])
    if sat is not None:
        out.update(left=left / max(out["n"], 1), right=right / max(out["n"], 1))
    return out


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
    """AUC per row of [U, B] float histograms of positives and negatives (ties count half)."""
    below = np.cumsum(neg, axis=1)
    below -= 0.5 * neg   # negatives in lower bins, plus half of those in the same bin
    num = np.einsum("ub,ub->u", pos, below)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _aucs(acc: dict, fx: _FeatureSet) -> dict[int, np.ndarray]:
    out = {}
    for (members, _, pats), hist in zip(fx.groups, acc["hists"]):
        total = hist.sum(axis=0)  # [patterns, U, bins] -> [U, bins]
        for col, j in enumerate(members):
            pos = hist[pats[:, col]].sum(axis=0)  # the patterns where feature j is 1
            out[j] = _auc_from_hist(pos.astype(np.float64), (total - pos).astype(np.float64))
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


def _bar(progress: bool, total: int, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="char", unit_scale=True, disable=not progress, desc=desc)


def scores(rec: Recording, feats: pd.DataFrame | None = None, *, layers=None, streams=None,
           chunk: int = CHUNK, progress: bool = False, workers: int = 1) -> pd.DataFrame:
    """Pearson r (metric "r") of every (layer, stream, unit) with every feature, and ROC AUC
    (metric "auc") for binary features: columns layer, stream, unit, feature, metric, score.

    One streaming pass per stream in ``chunk`` rows, so memory does not depend on the
    length. ``feats`` defaults to the built-in features of the recording's text. r comes
    from shifted running sums; AUC from per-unit histograms of AUC_BINS bins over each
    value's float16 rounding (c squashed by x / (1 + |x|)), so two values in the same bin
    count as a tie (half): it matches the exact AUC to ~1e-4. A constant unit or feature
    gives NaN (and a constant unit an AUC of 0.5). ``workers`` threads scan streams side by
    side (numpy and torch release the GIL for the heavy steps); the result does not change.
    """
    res, _ = scores_and_saturation(rec, feats, layers=layers, streams=streams, chunk=chunk,
                                    progress=progress, sat=None, workers=workers)
    return res


def scores_and_saturation(rec: Recording, feats: pd.DataFrame | None, *, layers=None, streams=None,
                          chunk: int = CHUNK, progress: bool = False,
                          sat: tuple[float, float] | None = (0.1, 0.9),
                          workers: int = 1) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """``scores`` and, in the same pass, saturation (``sat`` = (low, high) thresholds) of the
    gate streams scanned: (scores frame, saturation frames per (layer, gate stream))."""
    T = length(rec)
    if chunk < 1:
        raise ProbeError(f"chunk must be a positive number of rows, got {chunk}")
    if workers < 1:
        raise ProbeError(f"workers must be at least 1, got {workers}")
    pairs = layer_streams(rec, layers, streams)
    fx = _FeatureSet(default_features(rec) if feats is None else feats, T, rec.path)
    bar = _bar(progress, len(pairs) * T, "scoring")

    def one(pair):
        k, s = pair
        want_sat = sat if (sat is not None and h5format.is_unit_range(s)) else None
        acc = _scan(rec.stream(k, s), T, chunk, fx, s, want_sat, bar)
        frame = _frame(k, s, fx, _pearson(acc, fx), _aucs(acc, fx))
        if want_sat is None:
            return frame, None
        return frame, pd.DataFrame({"layer": k, "stream": s, "unit": np.arange(len(acc["left"])),
                                    "left": acc["left"], "right": acc["right"]})

    try:
        if workers == 1:
            done = [one(p) for p in pairs]
        else:
            with ThreadPoolExecutor(workers) as pool:
                done = list(pool.map(one, pairs))
    finally:
        bar.close()
    frames = [f for f, _ in done]
    sats = [x for _, x in done if x is not None]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    return df[SCORE_COLUMNS], sats


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
    T = length(rec)
    streams = gates(rec.streams)
    if not streams:
        raise ProbeError(f"{rec.path}: saturation needs gate streams (values in [0, 1], such as i f o); "
                         f"the recording has only {' '.join(rec.streams)}")
    if not low <= high:
        raise ProbeError(f"saturation thresholds must satisfy low <= high, got {low} and {high}")
    frames = []
    for k in rec.layer_ids:
        for g in streams:
            acc = _scan(rec.stream(k, g), T, chunk, None, g, (low, high))
            frames.append(pd.DataFrame({"layer": k, "stream": g, "unit": np.arange(len(acc["left"])),
                                        "left": acc["left"], "right": acc["right"]}))
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
