"""Exact scores of a read-out against a feature: AUC and Pearson r, of one column or many.

The plain definitions, in float64, on rows in memory: ``auc_exact`` (Mann–Whitney, ties
averaged) is what the streaming histograms of ``stats`` are checked against and what the
probes and directions report; ``column_aucs`` and ``column_rs`` score every column of a
block of inputs against every feature at once (the best single cell beside a direction).
"""
from __future__ import annotations

import math

import numpy as np


def auc_exact(score: np.ndarray, y: np.ndarray) -> float:
    """Mann–Whitney AUC with average ranks for ties; NaN if y has one class."""
    y = y.astype(bool)
    P, N = int(y.sum()), int((~y).sum())
    if P == 0 or N == 0:
        return float("nan")
    return float((ranks(score)[y].sum() - P * (P + 1) / 2) / (P * N))


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties averaged (as ``auc_exact`` ranks)."""
    order = np.argsort(x, kind="stable")
    s = x[order]
    first = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    out = np.empty(len(s))
    out[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average rank of each run of ties
    return out


def column_aucs(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """AUC [U, F] of every column of x [n, U] for every 0/1 column of Y [n, F]: one ranking
    per column serves all features (``auc_exact``'s value)."""
    P = Y.sum(axis=0)
    N = len(Y) - P
    out = np.full((x.shape[1], Y.shape[1]), np.nan)
    ok = (P > 0) & (N > 0)
    if ok.any():
        for u in range(x.shape[1]):
            out[u, ok] = (ranks(x[:, u]) @ Y[:, ok] - P[ok] * (P[ok] + 1) / 2) / (P[ok] * N[ok])
    return out


def column_rs(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson r [U, F] of every column of x [n, U] with every column of Y [n, F]."""
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    yc = Y - Y.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc.T @ yc) / np.sqrt(np.outer((xc ** 2).sum(0), (yc ** 2).sum(0)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two vectors (float64 sums); NaN if either is constant."""
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")
