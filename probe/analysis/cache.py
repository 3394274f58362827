"""The analysis of a recording, computed once and cached beside it, and its reports.

    from probe.analysis import cache as analysis
    from probe.analysis import detectors
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        res = analysis.analysis(rec)    # cached next to the recording
        res["best"]                     # per feature, the top cells by |r| or AUC
        summ = analysis.summaries(rec)  # per-unit summaries, same cache
    print(analysis.report_text(res["best"], detectors.saturation_summary(res["saturation"])))

``analysis`` runs ``probe.analysis.detectors``' scores and saturation in one streaming pass and
keeps them in ``<recording>.analysis.npz`` (plain arrays, no pickle), keyed by the
recording's size, mtime and ANALYSIS_VERSION, so ``probe analyze`` and the dashboard
pay for the pass once. The same pass builds every unit's summaries (``probe.analysis.summaries``:
histogram, top and bottom positions, overview strip), kept in the same file and read by
``summaries``. ``report_text`` and ``report_json`` are what ``probe analyze``
prints.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from probe.analysis import detectors
from probe.analysis import summaries as summaries_mod
from probe.files import atomic
from probe.recording import shards
from probe.recording.reader import Recording
from probe.text.corpus import Corpus

ANALYSIS_VERSION = 5      # bump when scores/saturation change meaning: invalidates caches
                          # (2: the saturation frame's column ``gate`` became ``stream``;
                          # 3: string features follow the after-reading-t convention, prefix
                          # letters and closing quotes now outside: old scores used old labels;
                          # 4: new built-in feature ``preprocessor``, and .c/.h documents get
                          # C lexing rules: cached tables hold the old feature set and labels;
                          # 5: the per-unit summaries are stored beside the scores)


# ---- the cached analysis ---------------------------------------------------------------

def cache_path(path: str | os.PathLike) -> Path:
    """The sidecar file of a recording: ``<recording>.analysis.npz``."""
    return shards.sidecar(path, ".analysis.npz")  # inside a folder of shards


def _cache_key(rec: Recording) -> dict:
    return {"version": ANALYSIS_VERSION, **shards.stamp(rec.path),  # size, mtime_ns (of every shard)
            "created": rec.created}


def _to_arrays(df: pd.DataFrame, prefix: str) -> dict[str, np.ndarray]:
    """Columns as plain arrays (strings as codes + labels), loadable without pickle."""
    out = {}
    for c in df.columns:
        col = df[c]
        if col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(col):
            codes, labels = pd.factorize(col.astype(str))
            out[f"{prefix}/{c}@codes"] = codes.astype(np.int32)
            out[f"{prefix}/{c}@labels"] = np.asarray(labels, dtype=str)
        else:
            out[f"{prefix}/{c}"] = col.to_numpy()
    return out


def _from_arrays(z, prefix: str, columns: list[str]) -> pd.DataFrame:
    data = {}
    for c in columns:
        if f"{prefix}/{c}@codes" in z:
            data[c] = z[f"{prefix}/{c}@labels"][z[f"{prefix}/{c}@codes"]]
        else:
            data[c] = z[f"{prefix}/{c}"]
    return pd.DataFrame(data, columns=columns)


def _summary_arrays(summ: dict) -> dict[str, np.ndarray]:
    """``summaries``' dict as named arrays: ``summaries/<layer>/<stream>/<field>`` and
    ``summaries/strip_edges``; positions and counts in 32 bits where they fit, float32
    values in float16 where that loses nothing (a float16 recording's extremes)."""
    out = {"summaries/strip_edges": summ["strip_edges"]}
    for pair, arrays in summ.items():
        if pair == "strip_edges":
            continue
        k, s = pair
        for field, a in arrays.items():
            if a.dtype == np.int64 and (a.size == 0 or (a.min() >= -2**31 and a.max() < 2**31)):
                a = a.astype(np.int32)
            elif a.dtype == np.float32:
                with np.errstate(over="ignore"):
                    half = a.astype(np.float16)
                if np.array_equal(half.astype(np.float32), a, equal_nan=True):
                    a = half
            out[f"summaries/{k}/{s}/{field}"] = a
    return out


def _summaries_from(z) -> dict:
    """The dict ``summaries`` returns, from an open cache file (arrays as they were computed)."""
    out: dict = {"strip_edges": z["summaries/strip_edges"].astype(np.int64)}
    for name in z.files:
        parts = name.split("/")
        if parts[0] == "summaries" and len(parts) == 4:
            a = z[name]
            out.setdefault((int(parts[1]), parts[2]), {})[parts[3]] = (
                a.astype(np.int64) if a.dtype == np.int32 else a.astype(np.float32) if a.dtype == np.float16 else a)
    return out


def _read_cache(side: Path, key: dict, regex: dict[str, str], want_summaries: bool = False) -> dict | None:
    """The cached analysis if it matches the key and covers the regex features, else None."""
    try:
        with np.load(side, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return None
            cached_regex = meta.get("regex", {})
            if any(cached_regex.get(n) != p for n, p in regex.items()):
                return None
            sc = _from_arrays(z, "scores", detectors.SCORE_COLUMNS)
            sat = _from_arrays(z, "saturation", detectors.SATURATION_COLUMNS)
            summ = _summaries_from(z) if want_summaries else None
    except Exception:  # missing, truncated or from another version: recompute
        return None
    extra = set(cached_regex) - set(regex)
    if extra:  # computed with more regex features than asked for now
        sc = sc[~sc["feature"].isin(extra)].reset_index(drop=True)
    return {"scores": sc, "saturation": sat, "summaries": summ}


def _write_cache(side: Path, key: dict, regex: dict[str, str], sc: pd.DataFrame, sat: pd.DataFrame,
                 summ: dict | None = None) -> bool:
    """Write atomically (temporary name, then rename); False if the folder is not writable."""
    try:
        with atomic(side) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps({"key": key, "regex": regex})),
                                **_to_arrays(sc, "scores"), **_to_arrays(sat, "saturation"),
                                **(_summary_arrays(summ) if summ is not None else {}))
        return True
    except OSError:
        return False


def analysis(rec: Recording, refresh: bool = False, progress=False, *,
             regex: dict[str, str] | None = None, client=None, with_summaries: bool = False) -> dict:
    """``{"scores", "best", "saturation"}`` of an open recording (see ``scores``, ``best`` with
    top=5, ``saturation``), computed once and cached in ``<recording>.analysis.npz``; with
    ``with_summaries`` also ``"summaries"`` (as ``summaries`` returns, from the same read of
    the cache). ``progress``: a terminal bar if true, or a function called with
    (positions scanned, total) as the pass goes (the dashboard's notice).

    The cache is keyed by the recording's size, mtime_ns, ``created`` attribute and
    ANALYSIS_VERSION (and must cover the ``regex`` features asked for); ``refresh``
    recomputes. If the folder is read-only the result is simply not cached. ``client``
    computes on a Dask cluster (``probe.analysis.cluster.analyze``: the same scores, bit for bit, and
    the same cache): a ``dask.distributed.Client``, or a function returning a context
    manager that yields one (``lambda: cluster.client(workers=4)``), entered only when the
    cache misses.
    """
    cached = _cached(rec, refresh, progress, regex, client, want_summaries=with_summaries)
    out = {"scores": cached["scores"], "best": detectors.best(cached["scores"]),
           "saturation": cached["saturation"]}
    if with_summaries:
        out["summaries"] = cached["summaries"]
    return out


def summaries(rec: Recording, refresh: bool = False, progress=False, *,
              regex: dict[str, str] | None = None, client=None) -> dict:
    """The per-unit summaries of an open recording (``probe.analysis.summaries``), from the analysis cache
    (computed with the scores, as ``analysis`` does, when it misses): {(layer, stream):
    {"hist", "top_v", "top_p", "bottom_v", "bottom_p", "strip_min", "strip_max",
    "strip_mean", "strip_first": arrays with one row per unit}, "strip_edges": [STRIP + 1]}.
    ``summaries.unit`` picks one unit's. No whole stream is read on a cache hit."""
    return _cached(rec, refresh, progress, regex, client, want_summaries=True)["summaries"]


def _cached(rec: Recording, refresh: bool, progress: bool, regex, client, want_summaries: bool = False) -> dict:
    """{"scores", "saturation", "summaries" (None unless ``want_summaries``)} from the cache,
    or computed in one pass (scores, saturation and summaries) and cached."""
    regex = dict(regex or {})
    side = cache_path(rec.path)
    key = _cache_key(rec)
    cached = None if refresh else _read_cache(side, key, regex, want_summaries)
    if cached is None:
        feats = detectors.default_features(rec, regex)
        if client is None:
            sc, sats, summ = detectors.scores_and_saturation(rec, feats, progress=progress, sat=(0.1, 0.9),
                                                             threads=min(4, os.cpu_count() or 1),
                                                             summaries=True)
        else:
            from probe.analysis import cluster
            with (client() if callable(client) else nullcontext(client)) as c:
                sc, sats, summ = cluster.analyze(c, rec, feats, progress=progress, sat=(0.1, 0.9),
                                                 summaries=True)
        summ = {"strip_edges": summaries_mod.strip_edges(len(rec)), **summ}
        sat = (pd.concat(sats, ignore_index=True)[detectors.SATURATION_COLUMNS] if sats
               else pd.DataFrame({c: [] for c in detectors.SATURATION_COLUMNS}))
        _write_cache(side, key, regex, sc, sat, summ)
        cached = {"scores": sc, "saturation": sat, "summaries": summ if want_summaries else None}
    return cached


# ---- the causal column -------------------------------------------------------------------

def causal(rec: Recording, best_df: pd.DataFrame, *, chars: int = 20_000, random: int = 32,
           seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """``best_df``'s rows of binary features with the ablation effect of each cell beside
    its score: ``delta_bits``, ``random_median`` and ``ratio`` (see ``intervene.effects``),
    measured on the open recording's first ``chars`` characters with its model (which reads
    them as it was trained: characters or tokens).
    A ``c`` cell is ablated by pinning its cell state to 0, any other by pinning the
    unit's h (a gate's own value is not an edit the model can take)."""
    from probe.causal import intervene  # runs the model: torch only when asked for
    from probe.lm.model import for_recording
    model, _ = for_recording(rec)
    docs = Corpus(rec.document_texts(), rec.source).limited(chars).documents
    rows = best_df[best_df["metric"] == "auc"].copy()
    rows["on"] = np.where(rows["stream"] == "c", "c", "h")
    parts = []
    for on, g in rows.groupby("on"):
        cells = sorted({(k, on, u) for k, u in zip(g["layer"].astype(int), g["unit"].astype(int))})
        eff = intervene.effects(model, docs, cells, feature_names=sorted(set(g["feature"])),
                                random=min(random, model.units), seed=seed, progress=progress)
        parts.append(g.merge(eff[["layer", "unit", "feature", "delta_bits", "random_median", "ratio"]],
                             on=["layer", "unit", "feature"], how="left"))
    if not parts:
        return rows.assign(delta_bits=[], random_median=[], ratio=[]).drop(columns="on")
    return pd.concat(parts).sort_values(["feature", "rank"]).drop(columns="on").reset_index(drop=True)


# ---- reports (the CLI's output) --------------------------------------------------------

def _fmt(metric: str, value: float) -> str:
    if not np.isfinite(value):
        return ""
    return f"r={value:+.3f}" if metric == "r" else f"auc={value:.3f}"


def report_text(best_df: pd.DataFrame, sat_summary: pd.DataFrame, title: str = "", unit: str = "character") -> str:
    """Per feature a table of its top cells, then the mean saturation per layer and gate."""
    lines = [title] if title else []
    for feature, g in best_df.groupby("feature", sort=False):
        metric = g["metric"].iloc[0]
        how = "binary: by AUC distance from 0.5" if metric == "auc" else "by |r|"
        effect = "delta_bits" in g and g["delta_bits"].notna().any()
        lines += ["", f"{feature}  ({how})", "  rank  layer  stream   unit  score      other"
                  + ("      ablated: delta_bits  ratio" if effect else "")]
        for row in g.itertuples():
            other = _fmt("r", row.r) if metric == "auc" else _fmt("auc", row.auc)
            causal_part = f"  {row.delta_bits:+17.4f}  {row.ratio:+5.1f}" if effect else ""
            lines.append(f"  {row.rank:>4}  {row.layer:>5}  {row.stream:<6} {row.unit:>5}  "
                         f"{_fmt(metric, row.score):<9}  {other:<9}{causal_part}".rstrip())
    if best_df.empty:
        lines += ["", "no feature varies in this recording: nothing to rank"]
    if not sat_summary.empty:
        lines += ["", f"saturation: mean fraction of {unit}s with gate < 0.1 (left) / > 0.9 (right)",
                  "  layer  stream   left  right"]
        for row in sat_summary.itertuples():
            lines.append(f"  {row.layer:>5}  {row.stream:<6}  {row.left:5.3f}  {row.right:5.3f}")
    return "\n".join(lines)


def report_json(best_df: pd.DataFrame, sat_summary: pd.DataFrame, **extra) -> str:
    """The same as ``report_text``, machine-readable (NaN becomes null)."""
    def records(df):
        return [{k: (None if isinstance(v, float) and not np.isfinite(v) else
                     v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                for r in df.to_dict("records")]
    return json.dumps({**extra, "best": records(best_df), "saturation": records(sat_summary)}, indent=2)
