"""How spread out a feature is: linear probes on the top-k cells, for growing k.

    from probe.analysis import detectors
    from probe.readout import probes
    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        probes.probe_curve(rec, None, "column")          # k, score (held-out R² or AUC), metric

A single cell can miss a feature the model knows, spread over many cells. A probe reads
a sample of positions of every ``c``/``h`` unit, ranks the cells on the training part
(as ``probe.analysis.detectors`` does), and fits ridge regression (continuous features) or L2
logistic regression (binary ones) on the top k, scored on long held-out pieces from all
over the recording (``rows.split_positions``).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from probe.analysis.detectors import default_features, layer_streams, length
from probe.analysis.metrics import auc_exact
from probe.analysis.ranking import strength, wide_table
from probe.errors import ProbeError
from probe.readout.rows import read_rows, sample_from, split_positions
from probe.recording.reader import Recording
from probe.text import features as features_mod

RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # penalty per row on standardized columns


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    sst = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


class _Ridge:
    """Closed-form ridge on the leading k columns, for any k, from Gram matrices computed
    once. The penalty is chosen on the validation rows (``val``, a boolean mask; with none,
    the default penalty is used), then the model is refitted on all of them."""

    def __init__(self, X: np.ndarray, y: np.ndarray, val: np.ndarray):
        self.y = y
        self.X_val, self.y_val = X[val], y[val]
        fit, y_fit = X[~val], y[~val]
        self.n_fit = len(y_fit)
        self.mean_fit, self.mean_all = y_fit.mean(), y.mean()
        self.G_fit, self.g_fit = fit.T @ fit, fit.T @ (y_fit - self.mean_fit)
        self.G, self.g = X.T @ X, X.T @ (y - self.mean_all)

    @staticmethod
    def _solve(G, g, n, alpha):
        return np.linalg.solve(G + alpha * n * np.eye(len(g)), g)

    def r2(self, k: int, Xte: np.ndarray, yte: np.ndarray) -> float:
        """R² on (Xte, yte) of the probe on the first k columns."""
        val, y_val = self.X_val[:, :k], self.y_val
        alpha = RIDGE_ALPHAS[1]
        if len(y_val) > 1:
            fits = [_r2(y_val, val @ self._solve(self.G_fit[:k, :k], self.g_fit[:k], self.n_fit, a) + self.mean_fit)
                    for a in RIDGE_ALPHAS]
            if np.isfinite(fits).any():
                alpha = RIDGE_ALPHAS[int(np.nanargmax(fits))]
        w = self._solve(self.G[:k, :k], self.g[:k], len(self.y), alpha)
        return _r2(yte, Xte @ w + self.mean_all)


def logistic_auc(Xtr, ytr, Xte, yte, l2: float = 1e-3, steps: int = 200) -> float:
    """L2-regularised logistic regression (torch LBFGS, full batch), AUC on held-out rows."""
    import torch
    if len(np.unique(ytr)) < 2:
        return float("nan")
    X = torch.from_numpy(np.ascontiguousarray(Xtr, dtype=np.float32))
    y = torch.from_numpy(ytr.astype(np.float32))
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.from_numpy(np.ascontiguousarray(Xte, dtype=np.float32)) @ w + b).numpy()
    return auc_exact(pred.astype(np.float64), yte)


def probe_curve(rec: Recording, feats: pd.DataFrame | None, feature: str,
                scores_df: pd.DataFrame | None = None, ks: Iterable[int] | None = None,
                held_out: float = 0.2, layers=None, streams=("c", "h"), *,
                max_rows: int = 20000, seed: int = 0) -> pd.DataFrame:
    """How distributed a feature is: a linear probe on the top-k cells, for growing k.

    Ridge regression (R² on held-out; penalty chosen on a quarter of the training rows) for
    a continuous feature, L2 logistic regression (AUC on held-out) for a binary one. The
    held-out part is ``held_out`` of the recording's segments (see ``split_positions``):
    long contiguous pieces spread over the whole text, so it looks like the rest, with
    no leakage through neighbouring positions (characters, or a word-level recording's tokens). Cells are ranked on the training part only,
    unless ``scores_df`` is given (which must then come from training positions only, or
    the curve leaks). Up to ``max_rows`` training rows and half as many held-out rows are
    sampled. ``ks`` defaults to 1, 2, 4, ... and all cells. Columns k, score, metric.
    """
    T = length(rec)
    feats = default_features(rec) if feats is None else feats
    if feature not in feats.columns:
        raise ProbeError(f"unknown feature {feature!r}: available are {', '.join(map(str, feats.columns))}")
    if len(feats) != T:
        raise ProbeError(f"{rec.path}: features have {len(feats)} rows but the recording has {T} {rec.unit_name}s")
    if not 0 < held_out < 1:
        raise ProbeError(f"held_out must be a fraction between 0 and 1, got {held_out}")
    y_all = feats[feature].to_numpy()
    binary = features_mod.is_binary(feature, y_all)
    rng = np.random.default_rng(seed)
    train_part, test_part = split_positions(T, held_out, seed=seed)
    if train_part.sum() < 2 or test_part.sum() < 2:
        raise ProbeError(f"{rec.path}: too short ({T} {rec.unit_name}s) to hold out {held_out:.0%} for a probe")
    tr = sample_from(train_part, max_rows, rng)
    te = sample_from(test_part, max(1, max_rows // 2), rng)
    pairs = layer_streams(rec, layers, streams)
    cells, Xtr, Xte = [], [], []
    for k, s in pairs:
        ds = rec.stream(k, s)
        Xtr.append(read_rows(ds, tr))
        Xte.append(read_rows(ds, te))
        cells += [(k, s, u) for u in range(ds.shape[1])]
    Xtr, Xte = np.concatenate(Xtr, axis=1).astype(np.float64), np.concatenate(Xte, axis=1).astype(np.float64)
    ytr, yte = y_all[tr].astype(np.float64), y_all[te].astype(np.float64)
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd

    # rank the cells
    if scores_df is not None:
        if not (scores_df["feature"] == feature).any():
            raise ProbeError(f"the scores table has no rows for feature {feature!r}")
        w = wide_table(scores_df[scores_df["feature"] == feature])
        _, key = strength(w)
        lookup = dict(zip(zip(w["layer"], w["stream"], w["unit"]), key))
        ranking = np.array([lookup.get(c, np.nan) for c in cells])
    elif binary:
        ranking = np.array([auc_exact(Xtr[:, j], ytr) for j in range(Xtr.shape[1])])
        ranking = np.maximum(ranking, 1 - ranking)
    else:
        yc = ytr - ytr.mean()
        ysd = np.sqrt((yc ** 2).mean())
        ranking = np.abs(Xtr.T @ yc / len(yc)) / ysd if ysd > 0 else np.full(len(cells), np.nan)
    order = np.argsort(-np.nan_to_num(ranking, nan=-np.inf), kind="stable")
    Xtr, Xte = Xtr[:, order], Xte[:, order]

    n = len(cells)
    if ks is None:
        ks = [2 ** i for i in range(n.bit_length()) if 2 ** i < n] + [n]
    ks = [int(k) for k in ks]
    for k in ks:
        if not 1 <= k <= n:
            raise ProbeError(f"k={k} is out of range: there are {n} cells")
    if not binary:  # Gram matrices once: the top-k columns are their leading block
        # the penalty is chosen on a quarter of the training rows, in pieces from all over
        _, val = split_positions(len(tr), 0.25, min_segment=256, seed=seed + 1)
        ridge = _Ridge(Xtr[:, :max(ks)], ytr, val=val)
    rows = []
    for k in ks:
        if binary:
            score = logistic_auc(Xtr[:, :k], ytr, Xte[:, :k], yte)
        else:
            score = ridge.r2(k, Xte[:, :k], yte)
        rows.append({"k": k, "score": score, "metric": "auc" if binary else "r2"})
    return pd.DataFrame(rows, columns=["k", "score", "metric"])
