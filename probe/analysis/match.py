"""Hypothesis search, as in LSTMVis: select a span, find the cells that are on over it,
and find where else those cells are on together — over the whole recording.

    from probe.analysis import match
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        units = match.select(rec, 1, "c", 5010, 5016)            # on throughout, off just before
        hits = match.search(rec, 1, "c", units)                  # start, stop, n_on, jaccard, text
        match.explain(rec, hits)                                 # what the matched spans share

A unit is *on* at a position (a character, or a token of a word-level model) when its value is >= ``threshold``: ``tanh(c)`` for the cell
state (the colour the dashboard shows), the raw value for gates and ``h``. The search reads
a bit-packed index of on/off per position and unit, built once per (layer, stream,
threshold) in one chunked pass and cached beside the recording (``REC.h5.match-…npy``,
rebuilt when the recording changes), so a query touches 1 bit per unit and position. A match's ``text`` is its positions'
text: a word-level recording's tokens with the spacing between them.

``mode="lstmvis"`` applies LSTMVis's rule (Strobelt et al. 2017, ``query_similar_activations``
in its ``lstmdata/data_handler.py``; written anew here): candidate spans are the maximal
runs of at least two positions where at least m of the selected units are on, for m from
all of them down to 1; each candidate is scored by which units of the whole layer are on
throughout it (and off just before / after, when asked); matches rank by most selected
units on throughout, then fewest units on in all (the union with the selection), then the
longest span. Unlike LSTMVis it scores every candidate of the whole recording: its fast
mode reads only the first 500,000 positions and its precise mode keeps only the 10,000
candidates it generates first. ``mode="jaccard"`` ranks the same candidates by the Jaccard
index of the selected units and the units on throughout (how well the selection explains
what is on there), then by length: it prefers spans where the selected cells are on and
few others are.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from probe.errors import ProbeError
from probe.files import atomic
from probe.recording import h5format, shards
from probe.recording.reader import Recording

CHUNK = 32768            # rows per read while building an index
MODES = ("lstmvis", "jaccard")
INDEX_VERSION = 1
_LOADED: OrderedDict = OrderedDict()  # recently used indexes, shared by all callers in a process
_LOCK = threading.Lock()              # the dashboard builds indexes in a background thread
_KEEP = 4


def transform(stream: str, values: np.ndarray) -> np.ndarray:
    """What "on" is measured on: tanh for unbounded streams (c), the value otherwise."""
    return np.tanh(values) if h5format.RANGE.get(stream) is None else values


def check_threshold(stream: str, threshold: float) -> None:
    """A threshold some values of the stream can reach and some cannot."""
    low, high = h5format.RANGE.get(stream) or (-1.0, 1.0)
    if not (isinstance(threshold, (int, float)) and low < threshold < high):
        raise ProbeError(f"--threshold must lie strictly between {low:g} and {high:g} for stream "
                         f"{stream} ({'tanh(c)' if stream == 'c' else stream}), got {threshold!r}")


def _check_span(rec: Recording, start: int, stop: int) -> None:
    T = len(rec)
    if not (0 <= start < stop <= T):
        raise ProbeError(f"{rec.path}: span {start}:{stop} is not inside the recording "
                         f"(0:{T}, start < stop)")


def select(rec: Recording, layer: int, stream: str, start: int, stop: int, threshold: float = 0.3,
           off_before: bool = True, off_after: bool = False) -> list[int]:
    """The units on (value >= threshold) at every position of [start, stop) — and off at
    start - 1 (``off_before``) and at ``stop`` (``off_after``) where those exist: the cells
    that turn on for exactly this span (LSTMVis's selection rule and defaults)."""
    rec.check(layer, stream)
    check_threshold(stream, threshold)
    _check_span(rec, start, stop)
    a, b = max(0, start - 1), min(len(rec), stop + 1)
    on = transform(stream, rec.window(layer, stream, a, b)) >= threshold  # [b - a, units]
    keep = on[start - a:stop - a].all(axis=0)
    if off_before and start > 0:
        keep &= ~on[0]
    if off_after and stop < len(rec):
        keep &= ~on[-1]
    units = np.flatnonzero(keep).tolist()
    if not units:
        raise ProbeError(f"{rec.path.name}: no unit of layer {layer} {stream} is >= {threshold:g} on "
                         f"every {rec.unit_name} of {start}:{stop}"
                         + (" and off just before it" if off_before and start > 0 else "")
                         + "; try a lower --threshold or a shorter span")
    return units


# ---- the index ----------------------------------------------------------------------------

def index_path(rec: Recording, layer: int, stream: str, threshold: float) -> Path:
    return shards.sidecar(rec.path, f".match-{layer}-{stream}-{threshold:g}.npy")  # in a shard folder


def _key(rec: Recording) -> str:
    return json.dumps({"version": INDEX_VERSION, **shards.stamp(rec.path),  # of every shard
                       "created": rec.created})


def index(rec: Recording, layer: int, stream: str, threshold: float = 0.3) -> np.ndarray:
    """On/off of every unit at every position, bit-packed: uint64 [T, ceil(units / 64)]
    (unit u is bit u % 64 of word u // 64). Built in one chunked pass, kept in memory and
    cached beside the recording; rebuilt when the recording changes."""
    rec.check(layer, stream)
    check_threshold(stream, threshold)
    key = (str(rec.path.resolve()), layer, stream, float(threshold), _key(rec))
    with _LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    side = index_path(rec, layer, stream, threshold)
    bits = _read_index(side, key[-1])
    if bits is None:
        bits = _build(rec, layer, stream, threshold)
        try:  # the header line holds the key; a read-only folder just keeps it in memory
            with atomic(side) as tmp, open(tmp, "wb") as f:
                f.write((key[-1] + "\n").encode())
                np.save(f, bits)
        except OSError:
            pass
    with _LOCK:
        _LOADED[key] = bits
        while len(_LOADED) > _KEEP:
            _LOADED.popitem(last=False)
    return bits


def _read_index(side: Path, key: str) -> np.ndarray | None:
    try:
        with open(side, "rb") as f:
            if f.readline().decode().rstrip("\n") != key:
                return None
            return np.load(f, allow_pickle=False)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _build(rec: Recording, layer: int, stream: str, threshold: float) -> np.ndarray:
    T, U = len(rec), rec.width(layer, stream)
    words = -(-U // 64)
    bits = np.zeros((T, words), dtype=np.uint64)
    ds = rec.stream(layer, stream)
    weights = (np.uint64(1) << np.arange(64, dtype=np.uint64))
    for a in range(0, T, CHUNK):
        on = transform(stream, ds[a:a + CHUNK].astype(np.float32)) >= threshold  # [n, U]
        padded = np.zeros((len(on), words * 64), dtype=np.uint64)
        padded[:, :U] = on
        bits[a:a + len(on)] = (padded.reshape(len(on), words, 64) * weights).sum(axis=2, dtype=np.uint64)
    return bits


def _mask(units: list[int], words: int) -> np.ndarray:
    m = np.zeros(words, dtype=np.uint64)
    for u in units:
        m[u // 64] |= np.uint64(1) << np.uint64(u % 64)
    return m


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per row of uint64 [N, W] (column by column: summing over a short last axis
    is several times slower)."""
    pc = np.bitwise_count(x)
    out = pc[:, 0].astype(np.int64)
    for j in range(1, pc.shape[1]):
        out += pc[:, j]
    return out


def count_on(bits: np.ndarray, units: list[int]) -> np.ndarray:
    """How many of ``units`` are on at each row of ``bits`` (the index, or rows of it): only
    the words that hold selected units are read. int16 [rows]."""
    sel = _mask(units, bits.shape[1])
    words = np.flatnonzero(sel)
    out = np.bitwise_count(bits[:, words[0]] & sel[words[0]]).astype(np.int16)
    for w in words[1:]:
        out += np.bitwise_count(bits[:, w] & sel[w])
    return out


# ---- search -------------------------------------------------------------------------------

def _runs(count: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the maximal runs of at least 2 positions where count >= m."""
    on = np.concatenate([[False], count >= m, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    starts, stops = edges[0::2], edges[1::2]
    keep = stops - starts >= 2
    return starts[keep], (stops - starts)[keep]


def search(rec: Recording, layer: int, stream: str, units: list[int], threshold: float = 0.3,
           top: int = 50, mode: str = "lstmvis", off_before: bool = False,
           off_after: bool = False) -> pd.DataFrame:
    """Where else the selected ``units`` are on together, over the whole recording.

    Columns start, stop, length, n_on (selected units on throughout), n_union (units on
    throughout, or selected), jaccard (n_on / n_union), text. ``off_before`` /
    ``off_after`` also require the units to be off just before / after a match (LSTMVis's
    left and right constraints)."""
    if mode not in MODES:
        raise ProbeError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if top < 1:
        raise ProbeError(f"--top must be at least 1, got {top}")
    units = sorted({int(u) for u in units})
    if not units:
        raise ProbeError("no units to search for: select a span or give --units")
    for u in units:
        rec.check(layer, stream, u)
    bits = index(rec, layer, stream, threshold)  # [T, W]
    T, n = len(bits), len(units)
    sel = _mask(units, bits.shape[1])
    count = count_on(bits, units)  # [T] selected units on at each position

    starts, lengths, on_counts, union_counts = [], [], [], []
    kept = 0  # candidates so far with at least m selected units on throughout
    for m in range(n, 0, -1):  # LSTMVis's levels: at least m selected units on
        s, ln = _runs(count, m)
        ok = (s >= 1) & (s + ln + 1 <= T)  # as LSTMVis: a neighbour on each side
        s, ln = s[ok], ln[ok]
        if m < n and len(s):  # a run whose every position has more than m on is the same
            low = np.minimum.reduceat(count, np.stack([s, s + ln], 1).ravel())[0::2]  # run at m + 1
            s, ln = s[low == m], ln[low == m]
        if len(s):
            active = _and_over(bits, s, ln)  # [C, W] units on throughout each candidate
            if off_before:
                active &= ~bits[s - 1]
            if off_after:
                active &= ~bits[s + ln]
            on = _popcount(active & sel)
            starts.append(s)
            lengths.append(ln)
            on_counts.append(on)
            union_counts.append(_popcount(active) + n - on)
        # a run at a lower level has fewer than m selected units on throughout (its least
        # count is below m): once `top` candidates have m or more, none can rank above them
        kept = sum(int((c >= m).sum()) for c in on_counts)
        if mode == "lstmvis" and kept >= top:
            break
    if not starts:
        return _frame(rec, [], [], [], [], [])
    start, length = np.concatenate(starts), np.concatenate(lengths)
    n_on, n_union = np.concatenate(on_counts), np.concatenate(union_counts)
    jaccard = n_on / n_union
    if mode == "lstmvis":
        order = np.lexsort((start, -length, n_union, -n_on))  # last key sorts first
    else:
        order = np.lexsort((start, -length, -jaccard))
    order = order[:top]
    return _frame(rec, start[order], length[order], n_on[order], n_union[order], jaccard[order])


def _and_over(bits: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """AND of bits[s:s + l] for every candidate of one level (disjoint, sorted), segment by
    segment (``np.bitwise_and.reduceat``): over the index itself when the runs cover much of
    it, else over their rows gathered."""
    if len(start) == 0:
        return np.zeros((0, bits.shape[1]), dtype=np.uint64)
    if length.sum() * 8 > len(bits):  # every run ends before the last row: s + l < T
        return np.bitwise_and.reduceat(bits, np.stack([start, start + length], 1).ravel(), axis=0)[0::2]
    offsets = np.concatenate([[0], np.cumsum(length)[:-1]])
    rows = np.repeat(start - offsets, length) + np.arange(int(length.sum()))
    return np.bitwise_and.reduceat(bits[rows], offsets, axis=0)


def _frame(rec, start, length, n_on, n_union, jaccard) -> pd.DataFrame:
    start, length = np.asarray(start, dtype=np.int64), np.asarray(length, dtype=np.int64)
    return pd.DataFrame({"start": start, "stop": start + length, "length": length,
                         "n_on": np.asarray(n_on, dtype=np.int64), "n_union": np.asarray(n_union, dtype=np.int64),
                         "jaccard": np.asarray(jaccard, dtype=np.float64),
                         "text": span_text(rec, start, start + length)})


def span_text(rec, start: np.ndarray, stop: np.ndarray, limit: int = 80) -> list[str]:
    """The text of positions [start, stop): for tokens, from the first token's first character
    to the last one's last (the spacing between them kept), at most ``limit`` characters."""
    return [rec.text_of(a, b)[:limit] for a, b in zip(start.tolist(), stop.tolist())]


def explain(rec: Recording, matches: pd.DataFrame, feats: pd.DataFrame | None = None,
            regex: dict[str, str] | None = None) -> pd.DataFrame:
    """What the matched spans share: for each feature (binary ones: where it holds; counts:
    where it is above 0; at a token's last character for a word-level recording), the
    fraction of matched positions with it against its base rate
    over the recording. Columns feature, matched, overall, enrichment (matched / overall),
    sorted by enrichment."""
    if feats is None:
        feats = rec.features(regex=regex)
    inside = np.zeros(len(rec), dtype=bool)
    for a, b in zip(matches["start"].tolist(), matches["stop"].tolist()):
        inside[a:b] = True
    rows = []
    for name in feats.columns:
        has = feats[name].to_numpy() != 0
        matched = float(has[inside].mean()) if inside.any() else float("nan")
        overall = float(has.mean())
        rows.append({"feature": name, "matched": matched, "overall": overall,
                     "enrichment": matched / overall if overall > 0 else float("nan")})
    return pd.DataFrame(rows).sort_values("enrichment", ascending=False, na_position="last",
                                          ignore_index=True)


def parse_span(spec: str) -> tuple[int, int]:
    """``--span 5010:5016`` → (5010, 5016)."""
    try:
        a, b = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ProbeError(f"--span must be START:STOP (e.g. 5010:5016), got {spec!r}") from None
    return a, b


def parse_units(spec: str) -> list[int]:
    """``--units 3,17,42`` → [3, 17, 42]."""
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ProbeError(f"--units must be whole numbers separated by commas, got {spec!r}") from None



def report(units: list[int], hits: pd.DataFrame, why: pd.DataFrame, layer: int, stream: str,
           threshold: float, mode: str = "lstmvis", unit: str = "character") -> str:
    """What ``probe match`` prints: the selected units, the matches (``search``) and what
    they share (``explain``, its first six features)."""
    lines = [f"{len(units)} units of layer {layer} {stream} on (>= {threshold:g}): {' '.join(map(str, units))}",
             "", f"top {len(hits)} matches ({mode}):", "  start   stop  n_on  union  jaccard  text"]
    for r in hits.itertuples():
        lines.append(f"  {r.start:>6} {r.stop:>6}  {r.n_on:>4}  {r.n_union:>5}  {r.jaccard:7.3f}  {r.text!r}")
    lines += ["", f"what the matches share (fraction of matched {unit}s vs the whole recording):"]
    for r in why.head(6).itertuples():
        lines.append(f"  {r.feature:<16} {r.matched:6.1%} vs {r.overall:6.1%}  ({r.enrichment:.1f}x)")
    return "\n".join(lines)
