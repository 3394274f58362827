"""Probe directions: one linear read-out per known feature, over many cells at once.

    from probe.recording import derived
    from probe.readout import directions
    with probe.open_recording("recordings/stdlib-train.h5") as rec:
        spec = directions.fit(rec)                        # ridge per feature, held-out scores
    derived.save(spec, "dirs.pt")
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        units = directions.apply(spec, rec, 0, 10_000)    # [n, features]: each one's prediction
    df = directions.ablate(model, documents, spec)        # remove each direction: what it costs

The model spreads what it knows over many cells. Fitted on 200,000 characters of the
shipped model's recording of the stdlib training split and scored on held-out pieces of
it, a ridge read-out of tanh(c) and h of both layers reaches r 0.91 with the column and
0.91 with the bracket depth, AUC 0.98 inside comments, where the best single cell
reaches |r| 0.68, 0.76 and AUC 0.88. ``fit`` makes that read-out, one *direction* per
feature, and stores it as a derived-stream spec (``probe.recording.derived``): encoded into a
recording, each derived unit is the read-out's prediction of its feature, a stream to
look at like any cell. ``ablate`` asks whether the model *uses* a direction: it removes it from the state
at every step and measures the cost in bits, against random directions.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import torch

from probe.analysis.detectors import auc_exact, default_features, length, one_torch_thread
from probe.errors import ProbeError
from probe.readout.probes import _sample_from, split_positions
from probe.recording import derived, h5format
from probe.text import corpus as corpora
from probe.text import features as features_mod

LAMBDAS = (10.0, 1e3, 1e5)  # ridge penalties tried, on the standardised training sample
VALIDATION = 0.25           # of the training sample, in contiguous pieces: chooses the penalty
SCALE_FLOOR = 1e-3          # a column varying less is constant (float16 steps are ~5e-4 near 1)
ROWS = 8192                 # rows per read and per Gram update (float64 [ROWS, D] in memory)
MIN_TRAIN, MIN_HELD = 100, 20   # rows a fit needs in the training and held-out parts
BLOCK = 256                 # characters per block of the ablation's batched pass
LOG2E = 1.4426950408889634
EFFECT_COLUMNS = ["feature", "where", "delta_bits", "delta_bits_elsewhere", "random_median",
                  "random_max", "ratio", "percentile", "positions"]


# ---- checks -----------------------------------------------------------------------------

def check_spec(spec) -> None:
    """A one-line error unless ``spec`` is a well-formed directions spec."""
    derived.check(spec, "spec")
    if spec["kind"] != "directions":
        raise ProbeError(f"spec: a {spec['kind']!r} spec, not probe directions")
    D, F = len(spec["mean"]), len(spec["unit_names"])
    p = spec["params"]
    if not isinstance(p, dict) or any(k not in p for k in ("W", "b", "state_mean")):
        raise ProbeError("spec: directions params need W, b and state_mean")
    if tuple(p["W"].shape) != (D, F) or tuple(p["b"].shape) != (F,) or tuple(p["state_mean"].shape) != (D,):
        raise ProbeError(f"spec: W must be [{D}, {F}], b [{F}] and state_mean [{D}]")


def _widths(spec: dict, units: int) -> list[int]:
    """Columns of each input block: the inputs split D evenly (every stream has ``units``)."""
    n = len(spec["inputs"])
    D = len(spec["mean"])
    if D != n * units:
        raise ProbeError(f"the spec reads {D} columns from {n} streams; here each stream has {units} units "
                         f"({n * units} columns)")
    return [units] * n


def _blocks(widths: list[int]) -> list[slice]:
    edges = np.cumsum([0, *widths]).tolist()
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _names(wanted, available: list[str], what: str) -> list[str]:
    """``wanted`` checked against ``available`` (None: all of them), duplicates dropped."""
    if wanted is None:
        return list(available)
    wanted = [wanted] if isinstance(wanted, str) else list(dict.fromkeys(wanted))
    if not wanted:
        raise ProbeError("no features named")
    for name in wanted:
        if name not in available:
            raise ProbeError(f"unknown feature {name!r}: {what} {', '.join(map(str, available)) or 'none'}")
    return wanted


# ---- reading ----------------------------------------------------------------------------

def _pieces(rows: np.ndarray, most: int = ROWS) -> list[tuple[int, int, int]]:
    """(start, stop, index of start in ``rows``) of contiguous runs of sorted ``rows``, each
    at most ``most`` long."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    out = []
    for i, j in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
        for a in range(i, j, most):
            b = min(a + most, j)
            out.append((int(rows[a]), int(rows[b - 1]) + 1, a))
    return out


def _read(rec, inputs, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """``derived.read_inputs`` (float32 [n, D], c through tanh), and the float64 sum of each
    column before tanh (the state as the model carries it)."""
    parts, raw = [], []
    for layer, stream in inputs:
        x = np.asarray(rec.stream(int(layer), str(stream))[start:stop], dtype=np.float32)
        raw.append(x.sum(axis=0, dtype=np.float64))
        if not h5format.is_bounded(str(stream)):
            np.tanh(x, out=x)
        parts.append(x)
    return (np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]), np.concatenate(raw)


def _read_block(rec, layer: int, stream: str, rows: np.ndarray) -> np.ndarray:
    """One input stream at sorted ``rows``, as ``derived.read_inputs`` reads it."""
    ds = rec.stream(int(layer), str(stream))
    x = np.concatenate([np.asarray(ds[a:b], dtype=np.float32) for a, b, _ in _pieces(rows)])
    if not h5format.is_bounded(str(stream)):
        np.tanh(x, out=x)
    return x


# ---- scores -----------------------------------------------------------------------------

def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties averaged (as ``detectors.auc_exact`` ranks)."""
    order = np.argsort(x, kind="stable")
    s = x[order]
    first = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _column_aucs(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """AUC [U, F] of every column of x [n, U] for every 0/1 column of Y [n, F]: one ranking
    per column serves all features (``auc_exact``'s value)."""
    P = Y.sum(axis=0)
    N = len(Y) - P
    out = np.full((x.shape[1], Y.shape[1]), np.nan)
    ok = (P > 0) & (N > 0)
    if ok.any():
        for u in range(x.shape[1]):
            out[u, ok] = (_ranks(x[:, u]) @ Y[:, ok] - P[ok] * (P[ok] + 1) / 2) / (P[ok] * N[ok])
    return out


def _column_rs(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson r [U, F] of every column of x [n, U] with every column of Y [n, F]."""
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    yc = Y - Y.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc.T @ yc) / np.sqrt(np.outer((xc ** 2).sum(0), (yc ** 2).sum(0)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


# ---- fitting ----------------------------------------------------------------------------

def _zero_stats(D: int, F: int) -> dict:
    return {"n": 0, "sx": np.zeros(D), "sxx": np.zeros((D, D)), "sy": np.zeros(F), "syy": np.zeros(F),
            "sxy": np.zeros((D, F))}


def _add(acc: dict, x: np.ndarray, y: np.ndarray) -> None:
    """Add rows (already shifted, float64) to running sums."""
    if len(x):
        acc["n"] += len(x)
        acc["sx"] += x.sum(0)
        acc["sxx"] += x.T @ x
        acc["sy"] += y.sum(0)
        acc["syy"] += (y * y).sum(0)
        acc["sxy"] += x.T @ y


def _centred(acc: dict) -> tuple:
    """n, means (shifted), and the sums of squares and products about the part's own means."""
    n = acc["n"]
    mx, my = acc["sx"] / n, acc["sy"] / n
    return (n, mx, my, acc["sxx"] - n * np.outer(mx, mx), acc["sxy"] - n * np.outer(mx, my),
            acc["syy"] - n * my * my)


def _ridge_paths(Czz: np.ndarray, Czy: np.ndarray, lambdas) -> np.ndarray:
    """Ridge weights [L, D, F] for every penalty and feature from one eigendecomposition of
    the centred, standardised normal equations: w = V diag(1 / (e + λ)) Vᵀ g."""
    e, V = np.linalg.eigh(Czz)
    proj = V.T @ Czy  # [D, F]
    return np.stack([V @ (proj / (e + lam)[:, None]) for lam in lambdas])


def fit(rec, feats: pd.DataFrame | None = None, *, features: list[str] | None = None,
        regex: dict[str, str] | None = None, streams=("c", "h"), layers=None, sample: int = 200_000,
        held_out: float = 0.2, lambdas=LAMBDAS, seed: int = 0, progress: bool = False,
        name: str = "dir") -> dict:
    """A probe direction per feature: a ridge read-out of many cells, scored on held-out text.

    Reads the inputs ``[layer, stream]`` for every layer (default: the recorded ones) and
    stream (``streams``; those the recording lacks are skipped), c through tanh, as
    ``derived.read_inputs`` does, at up to ``sample`` positions of the training part of
    ``probes.split_positions(len(rec), held_out, seed=seed)`` (random aligned blocks of
    256 characters, as ``probes._sample_from`` draws them). Columns are standardised with
    the sample's mean and scale (a column whose scale is below SCALE_FLOOR is constant
    but for rounding: it keeps scale 1, so it stays near 0 and the penalty keeps its
    weight near 0).

    Ridge regression for every feature, binary ones too: one eigendecomposition of the
    D × D normal equations serves every feature and penalty at once (a closed form,
    streamed over the sample, never the sample in memory), where a logistic fit would
    need an iterative solve per feature and penalty; and ridge is what reached held-out
    AUCs of 0.98 to 0.998 (strings, comments) on the shipped model. The penalty λ
    (absolute, on the standardised training sample) is chosen per feature from
    ``lambdas`` by the squared error on VALIDATION of the training sample, in contiguous
    pieces (``split_positions`` again), fitted on the rest with λ scaled to its rows;
    then refitted on the whole sample. Scored on up to
    ``sample // 2`` held-out positions: AUC (``auc_exact``) for a binary feature, Pearson
    r for the others, beside the best single input column on the same rows (``best_cell``:
    the largest max(AUC, 1 − AUC) or |r|, its signed score). ``metrics`` also hold each
    penalty's validation R² (``validation_r2``, in the order of ``lambdas``).

    ``feats`` defaults to ``detectors.default_features(rec, regex)``; ``features`` picks
    columns (default: every one that is not constant over the recording, so a Python
    recording gets no ``preprocessor`` unit). Returns a spec as ``probe.recording.derived``
    describes it (kind "directions", stream ``name``); ``params`` holds W float32
    [D, F] and b [F] (unit f = standardised inputs @ W[:, f] + b[f], the predicted
    feature value) and ``state_mean`` [D], the mean of each input *as the model carries
    it* (c before tanh) over the training sample (for reference: ``ablate`` works in the
    read-out's own space, with ``mean``).
    """
    T = length(rec)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in h5format.RANGE:
        raise ProbeError(f"stream name {name!r}: a word (letters, digits, _) that no recorded stream has")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < MIN_TRAIN:
        raise ProbeError(f"sample must be at least {MIN_TRAIN} positions, got {sample!r}")
    if not isinstance(held_out, (int, float)) or not 0 < held_out < 1:
        raise ProbeError(f"held_out must be a fraction between 0 and 1, got {held_out!r}")
    lambdas = [float(v) for v in np.atleast_1d(lambdas)]
    if not lambdas or not all(math.isfinite(v) and v > 0 for v in lambdas):
        raise ProbeError(f"lambdas must be positive numbers, got {lambdas}")
    if feats is None:
        feats = default_features(rec, regex)
    elif regex:
        raise ProbeError("give feats or regex, not both (regex features are computed into feats)")
    if len(feats) != T:
        raise ProbeError(f"{rec.path}: features have {len(feats)} rows but the recording has {T} characters")
    columns = [str(c) for c in feats.columns]
    names = _names(features, columns, "available are")
    constant = [n for n in names if feats[n].nunique() < 2]
    if features is None:
        names = [n for n in names if n not in constant]
    elif constant:
        raise ProbeError(f"feature {constant[0]!r} is constant on {rec.path}: nothing to fit")
    if not names:
        raise ProbeError(f"{rec.path}: every feature is constant: nothing to fit")

    streams = [streams] if isinstance(streams, str) else list(dict.fromkeys(streams))
    layers = list(rec.layer_ids) if layers is None else list(dict.fromkeys(np.atleast_1d(layers).tolist()))
    kept = [s for s in streams if s in rec.streams]
    if not kept:
        raise ProbeError(f"{rec.path}: none of the streams {' '.join(map(str, streams))} is recorded "
                         f"(streams are {' '.join(rec.streams)})")
    inputs = [[int(k), s] for k in layers for s in kept]
    widths = derived.width(rec, inputs)
    blocks = _blocks(widths)
    D, F = sum(widths), len(names)

    train_part, test_part = split_positions(T, held_out, seed=seed)
    if train_part.sum() < MIN_TRAIN or test_part.sum() < MIN_HELD:
        raise ProbeError(f"{rec.path}: too short ({T:,} characters) to fit directions with {held_out:.0%} "
                         f"held out (needs {MIN_TRAIN} training and {MIN_HELD} held-out positions)")
    rng = np.random.default_rng(seed)
    tr = _sample_from(train_part, int(sample), rng)
    te = _sample_from(test_part, max(MIN_HELD, int(sample) // 2), rng)
    _, val = split_positions(len(tr), VALIDATION, min_segment=256, seed=seed + 1)
    cols = [feats[n].to_numpy() for n in names]
    Ytr, yte = (np.stack([c[rows] for c in cols], axis=1).astype(np.float64) for rows in (tr, te))  # [n, F]
    binary = [features_mod.is_binary(n, feats[n].to_numpy()) for n in names]

    from tqdm.auto import tqdm
    bar = tqdm(total=len(tr) + len(te) * len(inputs), unit="row", unit_scale=True, disable=not progress,
               desc="fitting directions")
    try:
        # one pass over the training sample: shifted sums for the fit and validation pieces
        acc = {"fit": _zero_stats(D, F), "val": _zero_stats(D, F)}
        raw_sum = np.zeros(D)
        shift = yshift = None
        for a, b, i in _pieces(tr):
            x, raw = _read(rec, inputs, a, b)
            raw_sum += raw
            if shift is None:
                shift, yshift = x.mean(axis=0, dtype=np.float64), Ytr[i:i + (b - a)].mean(axis=0)
            xs, ys = x.astype(np.float64) - shift, Ytr[i:i + (b - a)] - yshift
            v = val[i:i + (b - a)]
            _add(acc["fit"], xs[~v], ys[~v])
            _add(acc["val"], xs[v], ys[v])
            bar.update(b - a)
        whole = {k: acc["fit"][k] + acc["val"][k] for k in acc["fit"]}
        n, mx, my, Cxx, Cxy, _ = _centred(whole)
        mean = shift + mx
        scale = np.sqrt(np.maximum(np.diag(Cxx) / n, 0.0))
        scale = np.where(scale < SCALE_FLOOR, 1.0, scale)
        ss = np.outer(scale, scale)

        # the penalty: fit on the fit pieces, squared error on the validation pieces
        chosen = np.full(F, lambdas[len(lambdas) // 2])
        val_r2 = np.full((len(lambdas), F), np.nan)
        if acc["fit"]["n"] > 1 and acc["val"]["n"] > 1:
            nf, mxf, myf, Cf, Cfy, _ = _centred(acc["fit"])
            nv, mxv, myv, Cv, Cvy, Cvyy = _centred(acc["val"])
            Ws = _ridge_paths(Cf / ss, Cfy / scale[:, None], [lam * nf / n for lam in lambdas])
            zf, zv = (shift + mxf - mean) / scale, (shift + mxv - mean) / scale  # part means, standardised
            Czv, Czvy = Cv / ss, Cvy / scale[:, None]
            sse = np.empty((len(lambdas), F))
            for j, W in enumerate(Ws):
                bias = (yshift + myf) - zf @ W
                off = (yshift + myv) - zv @ W - bias  # mean error on the validation rows
                sse[j] = Cvyy - 2 * (W * Czvy).sum(0) + (W * (Czv @ W)).sum(0) + nv * off ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                val_r2 = 1 - sse / Cvyy
            chosen = np.array([lambdas[int(np.argmin(sse[:, f]))] for f in range(F)])

        # refit on the whole training sample with each feature's penalty
        uniq = sorted(set(chosen.tolist()))
        paths = _ridge_paths(Cxx / ss, Cxy / scale[:, None], uniq)
        W = np.stack([paths[uniq.index(chosen[f]), :, f] for f in range(F)], axis=1)  # [D, F]
        bias = (yshift + my) - ((shift + mx - mean) / scale) @ W

        # held-out: the directions' scores and the best single column, one input block at a time
        pred = np.tile(bias, (len(te), 1))
        best = [{"layer": None, "stream": None, "unit": None, "score": np.nan, "strength": -np.inf}
                for _ in names]
        Yb = yte[:, binary] if any(binary) else None
        for (layer, stream), sl in zip(inputs, blocks):
            xb = _read_block(rec, layer, stream, te)
            zb = (xb - mean[sl].astype(np.float32)) / scale[sl].astype(np.float32)
            pred += zb.astype(np.float64) @ W[sl]
            per = np.full((xb.shape[1], F), np.nan)
            if Yb is not None:
                per[:, binary] = _column_aucs(xb, Yb)
            cont = [not b for b in binary]
            if any(cont):
                per[:, cont] = _column_rs(xb, yte[:, cont])
            strength = np.where(binary, np.maximum(per, 1 - per), np.abs(per))
            for f in range(F):
                s = np.where(np.isnan(strength[:, f]), -np.inf, strength[:, f])
                u = int(np.argmax(s))
                if s[u] > best[f]["strength"]:
                    best[f] = {"layer": int(layer), "stream": stream, "unit": u, "score": float(per[u, f]),
                               "strength": float(s[u])}
            bar.update(len(te))
    finally:
        bar.close()

    metrics = {}
    for f, feature in enumerate(names):
        score = auc_exact(pred[:, f], yte[:, f]) if binary[f] else _pearson(pred[:, f], yte[:, f])
        cell = {k: v for k, v in best[f].items() if k != "strength"}
        metrics[feature] = {"metric": "auc" if binary[f] else "r", "score": float(score),
                            "lambda": float(chosen[f]), "best_cell": cell,
                            "validation_r2": [float(v) for v in val_r2[:, f]]}

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    spec = {
        "format": derived.FORMAT, "version": derived.VERSION, "kind": "directions", "stream": name,
        "layer": max(int(k) for k, _ in inputs), "inputs": inputs, "unit_names": list(names),
        "model_sha256": str(rec.model_sha256 or ""),
        "fitted_on": {"path": str(rec.path), "length": int(T), "created": str(rec.created)},
        "mean": tensor(mean), "scale": tensor(scale),
        "params": {"W": tensor(W), "b": tensor(bias), "state_mean": tensor(raw_sum / n)},
        "metrics": metrics,
        "config": {"features": list(names), "skipped": [c for c in constant if c not in names],
                   "regex": dict(regex or {}), "streams": list(kept), "layers": [int(k) for k in layers],
                   "sample": int(sample), "held_out": float(held_out), "lambdas": lambdas, "seed": int(seed),
                   "split": {"segments": 50, "min_segment": 2048, "validation": VALIDATION,
                             "validation_min_segment": 256, "block": 256},
                   "rows": {"train": int(len(tr)), "fit": int(acc["fit"]["n"]), "validation": int(acc["val"]["n"]),
                            "held_out": int(len(te))}},
    }
    derived.check(spec, "directions.fit")
    return spec


# ---- applying ---------------------------------------------------------------------------

def transform(spec: dict, x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Each feature's predicted value at input rows x [n, D] (as ``derived.read_inputs``
    gives them): ``derived.standardise`` then x @ W + b, float32 [n, F] (about 0..1 for a
    binary feature, the count for column or depth), ``chunk`` rows at a time."""
    check_spec(spec)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ProbeError(f"inputs must be a 2-D array [rows, columns], got shape {x.shape}")
    W = spec["params"]["W"].numpy().astype(np.float32)
    b = spec["params"]["b"].numpy().astype(np.float32)
    out = np.empty((len(x), W.shape[1]), dtype=np.float32)
    if len(x) == 0:
        derived.standardise(spec, x)  # the column check
    for a in range(0, len(x), chunk):
        np.matmul(derived.standardise(spec, x[a:a + chunk]), W, out=out[a:a + chunk])
    out += b
    return out


def apply(spec: dict, rec, start: int = 0, stop: int | None = None, chunk: int = 65536) -> np.ndarray:
    """``transform`` of a recording's rows [start, stop): float32 [n, F]. One line if the
    recording lacks an input stream of the spec or its streams have other widths."""
    check_spec(spec)
    widths = derived.width(rec, spec["inputs"])
    if sum(widths) != len(spec["mean"]):
        raise ProbeError(f"{rec.path}: the spec reads {len(spec['mean'])} columns of "
                         f"{' '.join(f'{k}/{s}' for k, s in spec['inputs'])}; the recording has {sum(widths)}")
    start, stop, _ = slice(start, stop).indices(len(rec))
    parts = [transform(spec, derived.read_inputs(rec, spec["inputs"], a, min(a + chunk, stop)))
             for a in range(start, stop, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, len(spec["unit_names"])), np.float32)


# ---- ablation ---------------------------------------------------------------------------

Direction = dict  # {(layer, stream): (v float32 [units], mu float)}: what one ablation removes


def project(value: torch.Tensor, v: torch.Tensor, mu: float | torch.Tensor) -> torch.Tensor:
    """value − (value·v − μ) v: the component along the unit vector v set to μ, the rest
    kept. Works on one state [H] (the ``stepwise`` hook) or a batch [B, H] (v [B, H], μ [B])."""
    if value.dim() == 1:
        return value - (value @ v - mu) * v
    return value - ((value * v).sum(1) - mu)[:, None] * v


def remove(value: torch.Tensor, v: torch.Tensor, mu: float | torch.Tensor, stream: str) -> torch.Tensor:
    """A direction removed from a state as the read-out sees it: ``project`` on h; on c, which
    the read-out reads through tanh, in tanh space — u = tanh(c) projected to u', and c set
    to atanh(u') (u' clipped 1e-6 inside ±1), so tanh(c') = u' but where u' had to be
    clipped. A unit whose clipped u the edit leaves as it was keeps its c exactly (a row the
    edit leaves alone, v = 0, is untouched; a saturated c is not pulled back to the clip).
    One state [H] (``stepwise``'s hook) or a batch [B, H]."""
    if stream != "c":
        return project(value, v, mu)
    edge = 1 - 1e-6
    u = torch.tanh(value).clamp(-edge, edge)
    moved = project(u, v, mu).clamp(-edge, edge)
    return torch.where(moved == u, value, torch.atanh(moved))


def direction(spec: dict, feature: str) -> Direction:
    """The direction of a feature per input block, in the space the read-out reads (h, and
    tanh(c)): v = W_block / scale_block, normalised (the read-out's weights on the inputs
    themselves, not the standardised ones), with μ_v = mean_block · v, the inputs' mean over
    the fitting data. A block the read-out gives no weight is left out. ``remove`` takes it
    out of a state."""
    check_spec(spec)
    names = _names(feature, list(spec["unit_names"]), "the spec's directions are")
    f = list(spec["unit_names"]).index(names[0])
    W = spec["params"]["W"].numpy()[:, f].astype(np.float64)
    scale = spec["scale"].numpy().astype(np.float64)
    state = spec["mean"].numpy().astype(np.float64)  # of h and tanh(c), as read
    n = len(spec["inputs"])
    raw = {}
    for (layer, stream), sl in zip(spec["inputs"], _blocks([len(W) // n] * n)):
        key = (int(layer), str(stream))
        w, m = W[sl] / scale[sl], state[sl]
        if key in raw:  # an input read twice: its weights add up
            w = raw[key][0] + w
        raw[key] = (w, m)
    out = {}
    for key, (w, m) in raw.items():
        norm = float(np.linalg.norm(w))
        if norm > 0:
            v = w / norm
            out[key] = (torch.from_numpy(v.astype(np.float32)), float(m @ v))
    return out


def random_directions(spec: dict, n: int, seed: int = 0) -> list[Direction]:
    """``n`` controls: per input block a random unit vector (Gaussian, normalised), with
    μ_v from the fitting data as for a feature's direction."""
    check_spec(spec)
    rng = np.random.default_rng(seed)
    state = spec["mean"].numpy().astype(np.float64)  # of h and tanh(c), as read
    k = len(spec["inputs"])
    blocks = _blocks([len(state) // k] * k)
    out = []
    for _ in range(n):
        row = {}
        for (layer, stream), sl in zip(spec["inputs"], blocks):
            v = rng.standard_normal(sl.stop - sl.start)
            v /= np.linalg.norm(v)
            row[(int(layer), str(stream))] = (torch.from_numpy(v.astype(np.float32)), float(state[sl] @ v))
        out.append(row)
    return out


def check_model(model, spec: dict) -> None:
    """One line if the model cannot take the spec's ablation: a layer it lacks, a stream
    other than h and c (LSTM) or h (GRU, RNN), streams of another width."""
    check_spec(spec)
    cell = getattr(model, "cell", "lstm")
    allowed = ("c", "h") if cell == "lstm" else ("h",)
    for layer, stream in spec["inputs"]:
        if not 0 <= int(layer) < model.layers:
            raise ProbeError(f"the spec reads layer {layer}; the model's layers are 0..{model.layers - 1}")
        if stream not in allowed:
            raise ProbeError(f"the spec reads {stream} of layer {layer}: ablation removes directions from "
                             f"{' and '.join(allowed)} of {'an' if cell == 'lstm' else 'a'} {cell.upper()} model")
    _widths(spec, model.units)
    sha = getattr(model, "sha256", "")
    if spec["model_sha256"] and sha and sha != spec["model_sha256"]:
        warnings.warn("the spec was fitted on recordings of another checkpoint (model_sha256 differs)",
                      stacklevel=3)


def _stacked(rows: list[Direction], B: int, H: int) -> dict:
    """{(layer, stream): (V [B, H], μ [B])}: row 0 (unedited) and rows without an edit of a
    block have v = 0, which leaves the state exactly as it is."""
    out = {}
    for j, row in enumerate(rows, 1):
        for key, (v, mu) in row.items():
            if key not in out:
                out[key] = (torch.zeros(B, H), torch.zeros(B))
            out[key][0][j] = v
            out[key][1][j] = mu
    return out


def losses(model, text: str, rows: list[Direction]) -> np.ndarray:
    """Bits per character [1 + len(rows), T] of ``text`` read from a zero state: row 0
    unedited, then one row per direction removed (``project`` at every step, in every
    block it names; loss[t] is the cost of character t, NaN at 0).

    One batch: the layers below the lowest edited one run once (they cannot see the edit),
    the rest step by step with one row per direction, as ``intervene.losses`` does. It
    equals ``probe.lm.stepwise`` with ``project`` in its edit hook (tested)."""
    with one_torch_thread(), torch.no_grad():  # a step is a few small products: more threads only wait
        return _losses(model, text, rows)


def _losses(model, text: str, rows: list[Direction]) -> np.ndarray:
    from probe.recording.record import layer_modules
    model = model.eval()
    cell = getattr(model, "cell", "lstm")
    ids, _ = corpora.encode(text, model.vocab)
    if len(ids) == 0:
        raise ProbeError("empty text")
    T, H, B = len(ids), model.units, 1 + len(rows)
    edits = _stacked(rows, B, H)
    for layer, stream in edits:
        if not 0 <= layer < model.layers or stream not in (("c", "h") if cell == "lstm" else ("h",)):
            raise ProbeError(f"cannot edit {stream} of layer {layer} in this {cell} model")
    lo = min((k for k, _ in edits), default=model.layers)
    modules = layer_modules(model)
    x = model.embed(torch.from_numpy(ids))  # [T, E]
    for k in range(lo):  # below every edit: once, fused
        x = modules[k](x[None])[0][0]
    weights = [(m.weight_ih_l0, m.weight_hh_l0.T.contiguous(), m.bias_ih_l0, m.bias_hh_l0) for m in modules[lo:]]
    h_state = [torch.zeros(B, H) for _ in weights]
    c_state = [torch.zeros(B, H) for _ in weights]
    target = torch.from_numpy(ids)
    out = np.full((B, T), np.nan, dtype=np.float32)
    for a in range(0, T, BLOCK):
        b = min(a + BLOCK, T)
        inp = x[a:b]  # [L, in]: the same for every row at the lowest edited layer
        for j, (w_ih, w_hh_t, b_ih, b_hh) in enumerate(weights):
            k = lo + j
            on_c, on_h = edits.get((k, "c")), edits.get((k, "h"))
            pre = inp @ w_ih.T + (b_ih + b_hh if cell == "lstm" else b_ih)
            if pre.dim() == 2:
                pre = pre[:, None, :].expand(-1, B, -1)
            h, c = h_state[j], c_state[j]
            hs = torch.empty(b - a, B, H)
            for t in range(b - a):
                if cell == "lstm":
                    z = torch.addmm(pre[t], h, w_hh_t)  # [B, 4H], PyTorch's order i f g o
                    i, f = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H:2 * H])
                    g, o = torch.tanh(z[:, 2 * H:3 * H]), torch.sigmoid(z[:, 3 * H:])
                    c = f * c + i * g
                    if on_c is not None:
                        c = remove(c, *on_c, "c")
                    h = o * torch.tanh(c)
                elif cell == "gru":
                    gh = torch.addmm(b_hh, h, w_hh_t)  # [B, 3H], PyTorch's order r z n
                    r = torch.sigmoid(pre[t, :, :H] + gh[:, :H])
                    zg = torch.sigmoid(pre[t, :, H:2 * H] + gh[:, H:2 * H])
                    n = torch.tanh(pre[t, :, 2 * H:] + r * gh[:, 2 * H:])
                    h = (1 - zg) * n + zg * h
                else:
                    h = torch.tanh(pre[t] + torch.addmm(b_hh, h, w_hh_t))
                if on_h is not None:
                    h = project(h, *on_h)
                hs[t] = h
            h_state[j], c_state[j] = h, c
            inp = hs  # [L, B, H]
        if inp.dim() == 2:  # nothing edited: the fused pass gave it all
            inp = inp[:, None, :].expand(-1, B, -1)
        logp = torch.log_softmax(model.head(inp), dim=-1)  # [L, B, V]: the next character
        n = min(b, T - 1) - a
        if n > 0:
            nxt = target[a + 1:a + 1 + n]
            got = logp[:n].gather(2, nxt[:, None, None].expand(-1, B, 1))[..., 0]  # [n, B]
            out[:, a + 1:a + 1 + n] = (-got * LOG2E).T.numpy()
    return out


def _documents(text, chars: int) -> list[tuple[str, str]]:
    """[(name, text)] of at most ``chars`` characters in all, empty documents dropped."""
    if isinstance(chars, bool) or not isinstance(chars, (int, np.integer)) or chars < 2:
        raise ProbeError(f"chars must be at least 2, got {chars!r}")
    docs = [("text", text)] if isinstance(text, str) else [(str(n), t) for n, t in text]
    out, left = [], int(chars)
    for name, t in docs:
        if t and left > 0:
            out.append((name, t[:left]))
            left -= len(out[-1][1])
    if not out:
        raise ProbeError("empty text: nothing to ablate")
    return out


def ablate(model, text, spec: dict, features: list[str] | None = None, *, random: int = 16,
           seed: int = 0, chars: int = 20_000, streams=None, progress: bool = False) -> pd.DataFrame:
    """Does the model use a feature's direction? Remove it at every step and measure.

    For each feature's direction (``direction``), in every input block (layer, stream) of
    its read-out the component of the state along v is set to its mean over the fitting
    data, μ_v, at every step (``project``: h' = h − (h·v − μ_v) v), so the read-out loses
    what it reads while the state is not shifted on average. The read-out reads c through
    tanh, so c is edited in tanh space (``remove``): tanh(c) is projected and c moved to
    match (a first version edited c itself, taking tanh as the identity; with many c units
    saturated that left some read-outs intact and reversed others). Edited c feeds
    h = o · tanh(c) and the next step; edited h the
    layer above, the head and the next step, as ``probe.lm.stepwise``'s edit hook would.
    ``random`` controls remove random unit directions of every block the same way, μ from
    the fitting data too (``random_directions``, seeded). All directions and controls run
    as one batch (``losses``) over the documents (``text``: a string or [(name, text)],
    each read from a zero state, the first ``chars`` characters in all). ``streams`` (say
    ``("h",)``) edits only those streams' blocks, directions and controls alike (default:
    every block the read-out reads; on the shipped model the c blocks cost the most).

    As in ``intervene.effects``, the effect at position t is the change in the cost of
    character t + 1 (the state after reading t predicts it). One row per feature:
    ``delta_bits`` is its mean where a binary feature holds, or over all positions for a
    count (column, depth: its direction carries the value everywhere, so there is no
    "elsewhere"); ``delta_bits_elsewhere`` where a binary feature does not hold (NaN for
    counts); ``random_median`` and ``random_max`` of the controls' |delta| over the same
    positions; ``ratio`` = delta_bits / random_median; ``percentile`` of |delta_bits|
    among the controls' (100: larger than every one); ``positions`` counted. Regex
    features are recomputed from the spec's ``config``; others must be built in.
    """
    check_model(model, spec)
    names = _names(features, list(spec["unit_names"]), "the spec's directions are")
    if isinstance(random, bool) or not isinstance(random, (int, np.integer)) or random < 0:
        raise ProbeError(f"random must be a count of random directions (0 or more), got {random!r}")
    docs = _documents(text, chars)
    regex = dict(spec["config"].get("regex") or {})
    for n in names:
        if n not in features_mod.FEATURES and n not in regex:
            raise ProbeError(f"feature {n!r} is neither built in nor a regex of the spec: ablate cannot tell "
                             "where it holds")
    texts = [t for _, t in docs]
    spans = np.cumsum([0] + [len(t) for t in texts])
    feats = features_mod.compute("".join(texts), names,
                                 documents=list(zip(spans[:-1].tolist(), spans[1:].tolist())),
                                 document_names=[n for n, _ in docs],
                                 regex={k: v for k, v in regex.items() if k in names})
    rows = [direction(spec, n) for n in names] + random_directions(spec, int(random), seed)
    if streams is not None:
        streams = [streams] if isinstance(streams, str) else list(streams)
        read = sorted({s for _, s in spec["inputs"]})
        if not set(streams) & set(read):
            raise ProbeError(f"streams {' '.join(map(str, streams))}: the spec reads only {' '.join(read)}")
        rows = [{key: e for key, e in row.items() if key[1] in streams} for row in rows]

    from tqdm.auto import tqdm
    parts = [losses(model, t, rows) for t in tqdm(texts, unit="doc", disable=not progress, desc="ablating")]
    bits = np.concatenate(parts, axis=1)
    delta = np.full_like(bits[1:], np.nan)
    delta[:, :-1] = bits[1:, 1:] - bits[0, 1:]
    F = len(names)
    out = []
    for j, name in enumerate(names):
        values = feats[name].to_numpy()
        binary = features_mod.is_binary(name, values)
        mask = values != 0 if binary else np.ones(len(values), bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a mask with no finite delta: NaN
            inside = np.nanmean(delta[:, mask], axis=1) if mask.any() else np.full(len(delta), np.nan)
            outside = (np.nanmean(delta[j, ~mask]) if binary and (~mask).any() else np.nan)
        rand = np.abs(inside[F:])
        med = float(np.median(rand)) if random else np.nan
        mine = float(inside[j])
        out.append({"feature": name, "where": "holds" if binary else "all", "delta_bits": mine,
                    "delta_bits_elsewhere": float(outside), "random_median": med,
                    "random_max": float(rand.max()) if random else np.nan,
                    "ratio": mine / med if med and np.isfinite(med) else np.nan,
                    "percentile": 100.0 * float(np.mean(rand <= abs(mine))) if random else np.nan,
                    "positions": int(mask.sum())})
    return pd.DataFrame(out, columns=EFFECT_COLUMNS)


def report(df: pd.DataFrame) -> str:
    """The ablation table as text: per feature its direction's effect beside random ones'."""
    lines = ["removing each feature's direction (its component held at its mean): change in bits per next "
             "character", "  feature           positions   delta_bits  elsewhere  random_median  random_max"
             "   ratio  percentile"]
    for r in df.itertuples():
        lines.append(f"  {r.feature:<16} {r.positions:>10,}  {r.delta_bits:+11.4f}  {r.delta_bits_elsewhere:+9.4f}"
                     f"  {r.random_median:13.4f}  {r.random_max:10.4f}  {r.ratio:+6.1f}  {r.percentile:10.1f}")
    return "\n".join(lines)
