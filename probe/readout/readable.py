"""How readable a feature is from the model's states, to put beside what patching finds:
the best single cell's AUC and a linear read-out's held-out AUC.

"Is the read-out causal?" needs both numbers side by side: a feature can be readable from a
cell the model does not use, and used through cells no single one of which reads it well.
Both are measured on the same documents the pairs came from, every state the model has (h,
an LSTM's c through tanh) at every position, the feature as ``probe.text.features`` labels
it (a count feature: its value > 0; a word-level model's positions are its tokens, each
labelled at its last character, the state after reading it). The read-out is a logistic regression over all the
states, fitted on every other document and scored on the rest.
"""
from __future__ import annotations

import numpy as np

from probe.analysis.metrics import column_aucs
from probe.errors import ProbeError
from probe.readout.probes import logistic_auc
from probe.recording.layers import activations
from probe.text import features as features_mod
from probe.text import tokens as tokens_mod

MAX_ROWS = 20_000  # positions the read-out is fitted and scored on, at most


def states(model, documents: list[tuple[str, str]], feature: str) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """(X [n, D] every state at every position, y [n] 0/1, the cell of each column, the
    document index of each row)."""
    xs, ys, docs, names = [], [], [], None
    tok = tokens_mod.of(model)
    for j, (_, text) in enumerate(documents):
        _, spans, _ = tok.encode(text)
        if len(spans) < 2:
            continue
        streams, _ = activations(model, text)
        keys = sorted(k for k in streams if k[1] in ("h", "c"))
        names = names or [(k, s, u) for k, s in keys for u in range(streams[(k, s)].shape[1])]
        xs.append(np.concatenate([np.tanh(streams[k]) if k[1] == "c" else streams[k] for k in keys], axis=1))
        ys.append(features_mod.compute(text, [feature], spans=None if tok.kind == "chars" else spans)
                  [feature].to_numpy() > 0)
        docs.append(np.full(len(spans), j))
    if not xs:
        raise ProbeError("no text to read the feature from")
    return np.concatenate(xs), np.concatenate(ys), names, np.concatenate(docs)


def readable(model, documents: list[tuple[str, str]], feature: str, seed: int = 0, cells=()) -> dict:
    """{"best_cell": "L:S:U", "best_cell_auc", "direction_auc", "positions", "cells": {cell:
    AUC} for each (layer, stream, unit) of ``cells``}: a single cell's AUC is taken as
    max(AUC, 1 − AUC) (a cell may read the feature with either sign)."""
    X, y, names, doc = states(model, documents, feature)
    rng = np.random.default_rng(seed)
    if len(y) > MAX_ROWS:
        keep = np.sort(rng.choice(len(y), MAX_ROWS, replace=False))
        X, y, doc = X[keep], y[keep], doc[keep]
    if y.all() or not y.any():
        return {"best_cell": None, "best_cell_auc": float("nan"), "direction_auc": float("nan"),
                "positions": int(len(y)), "cells": {c: float("nan") for c in cells}}
    auc = column_aucs(X.astype(np.float64), y[:, None].astype(np.float64))[:, 0]
    folded = np.maximum(auc, 1 - auc)
    best = int(np.nanargmax(folded))
    train = doc % 2 == 0
    if train.all() or not train.any():  # one document: alternate blocks of it instead
        train = (np.arange(len(y)) // 500) % 2 == 0
    mean, scale = X[train].mean(0), X[train].std(0) + 1e-6
    direction = logistic_auc((X[train] - mean) / scale, y[train], (X[~train] - mean) / scale, y[~train])
    k, s, u = names[best]
    return {"best_cell": f"{k}:{s}:{u}", "best_cell_auc": float(folded[best]), "direction_auc": float(direction),
            "positions": int(len(y)), "cells": {c: float(folded[names.index(c)]) for c in cells}}
