"""Which cells detect which features: correlation, AUC and ranking, and gate saturation.

    from probe.analysis import detectors
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        sc = detectors.scores(rec)      # every (layer, stream, unit) against every feature
        detectors.best(sc, top=3)       # per feature, the top cells by |r| or AUC
        detectors.saturation(rec)       # per gate unit (i f o), the fraction < 0.1 / > 0.9

The entry points. Every (layer, stream, unit) is scored against every per-position
feature of ``probe.text.features`` (``Recording.features``: for a word-level recording
each feature read at a token's last character, one row per token) in one streaming pass over each stream, in row chunks,
so memory does not grow with the text: Pearson r from running sums and, for binary
features, ROC AUC from per-unit histograms. ``scan_all`` is the pass; it returns a
``Scan`` (scores, saturation, per-unit summaries); ``scores`` and ``saturation`` are its
parts, and ``scores_and_saturation`` the older tuple (two items, three with summaries).

The pieces live beside this module, one idea each: ``featureset`` (the features as the
scan needs them), ``loops`` (the per-value inner loops, compiled or numpy), ``stats`` (a
part's sufficient statistics, their fold in shard order, the scores they give),
``threads`` (one torch thread while scanning), ``progress`` (the bar) and ``ranking``
(best cells per feature). One cell's histogram and contexts live in
``probe.analysis.contexts``; linear probes over many cells in ``probe.readout.probes``;
the cached analysis of a recording and its reports in ``probe.analysis.cache``;
the same scan on a Dask cluster in ``probe.analysis.cluster``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pandas as pd

from probe.analysis import progress as progress_mod
from probe.analysis.featureset import FeatureSet
from probe.analysis.loops import (
    AUC_BINS,
    COMPILED,
    bin_table,
    count_bins,
    count_bins_numpy,
    shifted,
)
from probe.analysis.metrics import auc_exact
from probe.analysis.ranking import BEST_COLUMNS, best, check_top, strength, wide_table
from probe.analysis.stats import (
    CHUNK,
    SATURATION_COLUMNS,
    SCORE_COLUMNS,
    SHIFT_ROWS,
    assemble,
    combine,
    finish,
    finish_all,
    offsets,
    part_stats,
    parts_of,
    reduce_parts,
    scan,
    shift_of,
)
from probe.analysis.threads import check_threads, one_torch_thread
from probe.errors import ProbeError
from probe.recording import h5format
from probe.recording.reader import Recording

__all__ = [  # the entry points, and the pieces callers have long reached through this module
    "Scan", "scan_all", "scores", "scores_and_saturation", "saturation", "saturation_summary", "prepare",
    "length", "default_features", "gate_streams", "gates", "layer_streams", "want_saturation",
    "AUC_BINS", "COMPILED", "bin_table", "count_bins", "count_bins_numpy", "shifted",
    "BEST_COLUMNS", "auc_exact", "best", "check_top", "strength", "wide_table",
    "CHUNK", "SATURATION_COLUMNS", "SCORE_COLUMNS", "SHIFT_ROWS", "assemble", "combine", "finish",
    "finish_all", "offsets", "part_stats", "parts_of", "reduce_parts", "scan", "shift_of",
    "one_torch_thread", "FeatureSet",
]


class Scan(NamedTuple):
    """What one pass over a recording gives: the scores table (``SCORE_COLUMNS``), the
    saturation frames of the gate streams scanned, and the per-unit summaries
    {(layer, stream): ``summaries.finish``'s arrays} (None unless asked for)."""
    scores: pd.DataFrame
    saturation: list[pd.DataFrame]
    summaries: dict | None


# ---- inputs ---------------------------------------------------------------------------

def length(rec: Recording) -> int:
    """T, the recording's length; a one-line error if it is empty (nothing to score)."""
    T = len(rec)
    if T == 0:
        raise ProbeError(f"{rec.path}: empty recording (0 {rec.unit_name}s)")
    return T


def default_features(rec: Recording, regex: dict[str, str] | None = None) -> pd.DataFrame:
    """The built-in features (plus ``regex`` ones) of the recording's text, per document."""
    length(rec)
    return rec.features(regex=regex)


def gate_streams(streams) -> list[str]:
    """The names of the streams whose values lie in [0, 1] (the sigmoid gates): the ones
    that saturate."""
    return [s for s in streams if h5format.is_unit_range(s)]


gates = gate_streams  # its old name (the dashboard's saturation tab)


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


def prepare(rec: Recording, feats: pd.DataFrame | None, layers=None, streams=None, chunk: int = CHUNK
            ) -> tuple[list[tuple[int, str]], FeatureSet, list[Recording], list[FeatureSet]]:
    """What a scan of ``rec`` needs, checked (one-line errors): the (layer, stream) pairs,
    the whole text's features, the parts (``parts_of``) and each part's rows of features."""
    T = length(rec)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ProbeError(f"chunk must be a positive number of rows, got {chunk}")
    pairs = layer_streams(rec, layers, streams)
    fx = FeatureSet(default_features(rec) if feats is None else feats, T, rec.path, rec.unit_name)
    parts = parts_of(rec)
    edges = np.cumsum([0] + [len(p) for p in parts]).tolist()
    return pairs, fx, parts, [fx.part(a, b) for a, b in zip(edges[:-1], edges[1:])]


def want_saturation(stream: str, sat: tuple[float, float] | None) -> tuple[float, float] | None:
    """The saturation thresholds to count for this stream: ``sat`` for gates, else None."""
    return sat if (sat is not None and h5format.is_unit_range(stream)) else None


# ---- the pass -------------------------------------------------------------------------

def scan_all(rec: Recording, feats: pd.DataFrame | None = None, *, layers=None, streams=None,
             chunk: int = CHUNK, progress: bool = False, sat: tuple[float, float] | None = (0.1, 0.9),
             threads: int = 1, summaries: bool = False) -> Scan:
    """One streaming pass over every (layer, stream) asked for: ``scores``, and in the same
    reads saturation (``sat`` = (low, high) thresholds) of the gate streams and, with
    ``summaries``, the per-unit summaries (``probe.analysis.summaries``). ``threads``
    threads scan streams side by side; the result does not change."""
    threads = check_threads(threads)
    pairs, fx, parts, fxs = prepare(rec, feats, layers, streams, chunk)
    bar = progress_mod.bar(progress, len(pairs) * len(rec), "scoring")

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
    return Scan(sc, sats, {pair: d[2] for pair, d in zip(pairs, done)} if summaries else None)


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
    threads = check_threads(threads, workers, stacklevel=3)
    return scan_all(rec, feats, layers=layers, streams=streams, chunk=chunk, progress=progress, sat=None,
                    threads=threads).scores


def scores_and_saturation(rec: Recording, feats: pd.DataFrame | None, *, layers=None, streams=None,
                          chunk: int = CHUNK, progress: bool = False,
                          sat: tuple[float, float] | None = (0.1, 0.9),
                          threads: int = 1, workers: int | None = None, summaries: bool = False
                          ) -> tuple:
    """``scan_all`` as the older tuple: (scores frame, saturation frames per (layer, gate
    stream)), and with ``summaries`` a third item, the per-unit summaries. The cached
    analysis (``probe.analysis.cache``) computes through this function."""
    threads = check_threads(threads, workers, stacklevel=3)
    found = scan_all(rec, feats, layers=layers, streams=streams, chunk=chunk, progress=progress,
                     sat=sat, threads=threads, summaries=summaries)
    return tuple(found) if summaries else tuple(found[:2])


# ---- saturation -----------------------------------------------------------------------

def saturation(rec: Recording, low: float = 0.1, high: float = 0.9, chunk: int = CHUNK) -> pd.DataFrame:
    """Per layer, gate stream (values in [0, 1]: i f o) and unit: fraction of positions
    with the gate < ``low`` (``left``) and > ``high`` (``right``). Streaming."""
    length(rec)
    streams = gate_streams(rec.streams)
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
