"""Ridge regression from streamed sums: many features and penalties from one pass.

A directions fit never holds its sample in memory: rows are added to running sums
(``add``: n, Σx, Σxxᵀ, Σy, Σy², Σxyᵀ, about a shift), which give the centred normal
equations (``centred``). One eigendecomposition of them serves every feature and every
penalty at once (``paths``); ``choose`` picks each feature's penalty by the squared error on
validation rows, computed from the validation rows' own sums (no second pass).
"""
from __future__ import annotations

import numpy as np


def zero_sums(D: int, F: int) -> dict:
    """Empty running sums for D inputs and F targets."""
    return {"n": 0, "sx": np.zeros(D), "sxx": np.zeros((D, D)), "sy": np.zeros(F), "syy": np.zeros(F),
            "sxy": np.zeros((D, F))}


def add(acc: dict, x: np.ndarray, y: np.ndarray) -> None:
    """Add rows (already shifted, float64) to running sums."""
    if len(x):
        acc["n"] += len(x)
        acc["sx"] += x.sum(0)
        acc["sxx"] += x.T @ x
        acc["sy"] += y.sum(0)
        acc["syy"] += (y * y).sum(0)
        acc["sxy"] += x.T @ y


def centred(acc: dict) -> tuple:
    """n, means (shifted), and the sums of squares and products about the part's own means."""
    n = acc["n"]
    mx, my = acc["sx"] / n, acc["sy"] / n
    return (n, mx, my, acc["sxx"] - n * np.outer(mx, mx), acc["sxy"] - n * np.outer(mx, my),
            acc["syy"] - n * my * my)


def paths(Czz: np.ndarray, Czy: np.ndarray, lambdas) -> np.ndarray:
    """Ridge weights [L, D, F] for every penalty and feature from one eigendecomposition of
    the centred, standardised normal equations: w = V diag(1 / (e + λ)) Vᵀ g."""
    e, V = np.linalg.eigh(Czz)
    proj = V.T @ Czy  # [D, F]
    return np.stack([V @ (proj / (e + lam)[:, None]) for lam in lambdas])


def choose(fit: dict, val: dict, shift: np.ndarray, yshift: np.ndarray, mean: np.ndarray, scale: np.ndarray,
           lambdas: list[float], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's penalty [F], chosen from ``lambdas`` (absolute, on the standardised
    sample of ``n`` rows) by the squared error on the validation rows' sums ``val`` of a fit
    on the rows' sums ``fit`` (λ scaled to its rows); and each penalty's validation R² [L, F].
    Without two rows on either side: the middle penalty, and NaN R²."""
    F = len(fit["sy"])
    chosen = np.full(F, lambdas[len(lambdas) // 2])
    val_r2 = np.full((len(lambdas), F), np.nan)
    if fit["n"] > 1 and val["n"] > 1:
        ss = np.outer(scale, scale)
        nf, mxf, myf, Cf, Cfy, _ = centred(fit)
        nv, mxv, myv, Cv, Cvy, Cvyy = centred(val)
        Ws = paths(Cf / ss, Cfy / scale[:, None], [lam * nf / n for lam in lambdas])
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
    return chosen, val_r2
