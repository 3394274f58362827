"""Where to show a cell at work: a window of text where a feature changes most often.

Shared by the pictures of ``bench/findings.py`` (each best cell over real text) and
``bench/distributed.py`` (a direction beside the best single cell).
"""
from __future__ import annotations

import numpy as np


def window_for(rec, feats, feature: str, length: int = 1000) -> int:
    """A start where the feature varies a lot (so the picture shows the cell at work)."""
    v = feats[feature].to_numpy(dtype=float)
    T = len(v)
    if T <= length:
        return 0
    steps = np.abs(np.diff(v, prepend=v[0])) > 0
    counts = np.convolve(steps, np.ones(length), mode="valid")
    return int(np.argmax(counts[: T - length]))
