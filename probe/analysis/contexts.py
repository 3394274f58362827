"""One cell at a time: the histogram of its values and the text where it fires.

    from probe.analysis import contexts
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        values = rec.unit(1, "c", 42)                          # [T]
        contexts.top_contexts(values, rec.documents)          # highest and lowest positions
        contexts.quantile_samples(values, rec.documents)      # random positions per quantile bin

What the dashboard's cell card and the README figures show for a selected cell: unlike
``probe.analysis.detectors``, which scans every cell of a recording, these take one cell's values
over the recording and the documents' bounds (a frame with ``start`` and ``stop``
columns, as ``Recording.documents``), and return small DataFrames of positions and their
context windows, clipped to the document. Positions are characters, or a word-level
recording's tokens (``Recording.tokens`` gives each one's text). Plain arrays in, so a caller that already holds
the values (the dashboard) does not read them again.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from probe.errors import ProbeError


def histogram(values, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the finite values; an empty input gives zero counts on [0, 1]."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
    return np.histogram(v, bins=bins)


def _values(values, documents: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values as float32 [T] and the documents' start and stop, checked against each other."""
    v = np.asarray(values).reshape(-1)
    if v.size == 0:
        raise ProbeError("no values: the recording is empty (0 positions)")
    starts = np.asarray(documents["start"], dtype=np.int64)
    stops = np.asarray(documents["stop"], dtype=np.int64)
    if len(starts) == 0 or starts[0] != 0 or stops[-1] != v.size:
        raise ProbeError(f"documents cover 0..{stops[-1] if len(stops) else 0}, "
                         f"but there are {v.size} values")
    return v.astype(np.float32, copy=False), starts, stops


def _contexts(starts: np.ndarray, stops: np.ndarray, positions: np.ndarray,
              width: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, stop) of ``width`` positions either side, clipped to the document."""
    positions = np.asarray(positions, dtype=np.int64)
    d = np.searchsorted(starts, positions, side="right") - 1
    return np.maximum(starts[d], positions - width), np.minimum(stops[d], positions + width + 1)


def context_bounds(documents: pd.DataFrame, positions, width: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """[start, stop) of ``width`` positions either side of each position, clipped to its
    document (``Recording.documents``): the context windows of ``top_contexts``."""
    starts = np.asarray(documents["start"], dtype=np.int64)
    stops = np.asarray(documents["stop"], dtype=np.int64)
    return _contexts(starts, stops, np.asarray(positions, dtype=np.int64), width)


def _pick(order: np.ndarray, k: int, width: int, T: int) -> list[int]:
    """The first ``k`` positions of ``order``, skipping any within ``width`` of one taken."""
    blocked = np.zeros(T, dtype=bool)
    out: list[int] = []
    for p in order:
        if len(out) == k:
            break
        if not blocked[p]:
            out.append(int(p))
            blocked[max(0, p - width):p + width + 1] = True
    return out


def smallest_first(s: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` smallest values (and all ties of the n-th), sorted stably: the
    same prefix as a full stable argsort, in O(T). ``n`` = k (2 width + 1) candidates always
    leave k picks, since each pick blocks at most 2 width others."""
    if n >= len(s):
        return np.argsort(s, kind="stable")
    threshold = np.partition(s, n - 1)[n - 1]
    cand = np.flatnonzero(s <= threshold)
    return cand[np.argsort(s[cand], kind="stable")]


def top_contexts(values, documents: pd.DataFrame, k: int = 10, width: int = 40) -> pd.DataFrame:
    """The ``k`` highest (kind "top", highest first) and lowest ("bottom", lowest first)
    positions of a cell's ``values`` [T], none within ``width`` positions of another of
    its kind (earlier positions win ties). Columns kind, position, value, start, stop: the
    context is ``width`` positions either side, clipped to the position's document."""
    if k < 1 or width < 0:
        raise ProbeError(f"k must be >= 1 and width >= 0, got k={k}, width={width}")
    v, starts, stops = _values(values, documents)
    T = len(v)
    finite = np.flatnonzero(np.isfinite(v))
    rows = []
    for kind, sign in (("top", -1.0), ("bottom", 1.0)):
        order = finite[smallest_first(sign * v[finite], k * (2 * width + 1))]
        picked = np.array(_pick(order, k, width, T), dtype=np.int64)
        start, stop = _contexts(starts, stops, picked, width)
        rows.append(pd.DataFrame({"kind": kind, "position": picked, "value": v[picked].astype(float),
                                  "start": start, "stop": stop}))
    return pd.concat(rows, ignore_index=True)


def quantile_samples(values, documents: pd.DataFrame, bins: int = 5, per_bin: int = 2,
                     width: int = 40, seed: int = 0) -> pd.DataFrame:
    """``per_bin`` random positions from each of ``bins`` quantile bins of a cell's
    ``values`` [T] (lowest bin first). Columns bin, low, high, position, value, start, stop;
    bins that ties leave empty are skipped."""
    if bins < 1 or per_bin < 1:
        raise ProbeError(f"bins and per_bin must be >= 1, got bins={bins}, per_bin={per_bin}")
    v, starts, stops = _values(values, documents)
    finite = np.flatnonzero(np.isfinite(v))
    cols = ["bin", "low", "high", "position", "value", "start", "stop"]
    if finite.size == 0:
        return pd.DataFrame(columns=cols)
    edges = np.quantile(v[finite].astype(np.float64), np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, v[finite], side="right") - 1, 0, bins - 1)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(bins):
        members = finite[which == i]
        if members.size == 0:
            continue
        pick = np.sort(rng.choice(members, min(per_bin, members.size), replace=False))
        start, stop = _contexts(starts, stops, pick, width)
        rows.append(pd.DataFrame({"bin": i, "low": edges[i], "high": edges[i + 1], "position": pick,
                                  "value": v[pick].astype(float), "start": start, "stop": stop}))
    return pd.concat(rows, ignore_index=True)[cols]
