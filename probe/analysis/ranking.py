"""Ranking cells by their scores: per feature, the cells that detect it best.

Binary features rank by AUC (as max(auc, 1 - auc): a cell that is low on the feature
detects it as well as one that is high), the others by |r|.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from probe.analysis.stats import SCORE_COLUMNS
from probe.errors import ProbeError

BEST_COLUMNS = ["feature", "rank", "layer", "stream", "unit", "metric", "score", "r", "auc"]


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
