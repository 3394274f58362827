"""The features a scan scores cells against, in the two forms it needs.

Every feature as a centred float column (for Pearson r's running sums), and the binary
ones packed into groups of pattern codes: a group's rows show at most MAX_COMBOS distinct
0/1 patterns, so one histogram per (group, pattern) gives every binary feature's AUC.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from probe.analysis.loops import aligned_empty
from probe.errors import ProbeError
from probe.text import features as features_mod

MAX_COMBOS = 8            # distinct 0/1 patterns of binary features histogrammed together


class FeatureSet:
    """Features as centred columns, plus the binary ones packed into pattern codes."""

    def __init__(self, feats: pd.DataFrame, T: int, where: object, unit: str = "character"):
        if not isinstance(feats, pd.DataFrame):
            raise ProbeError(f"features must be a DataFrame with one row per {unit}")
        if len(feats) != T:
            raise ProbeError(f"{where}: features have {len(feats)} rows but the recording has {T} {unit}s")
        if feats.shape[1] == 0:
            raise ProbeError("no features to score")
        self.names = [str(c) for c in feats.columns]
        if len(set(self.names)) != len(self.names):
            raise ProbeError(f"feature names must be unique, got {self.names}")
        cols = []
        for name in self.names:
            v = feats[name].to_numpy()
            if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
                raise ProbeError(f"feature {name!r}: values must be numbers, got dtype {v.dtype}")
            cols.append(v)
        self.cols = cols
        self.mean = np.array([np.mean(c, dtype=np.float64) for c in cols])
        self.sf, self.sff = np.zeros(len(cols)), np.zeros(len(cols))
        cent = aligned_empty((len(feats),), np.float64)  # aligned: np.dot's rounding can depend on it
        for j, (c, m) in enumerate(zip(cols, self.mean)):  # one float64 column at a time
            np.subtract(c, m, out=cent, dtype=np.float64)
            self.sf[j] = cent.sum()                           # Σ(f - mean): ~0
            self.sff[j] = np.dot(cent, cent)                  # Σ(f - mean)²
        self.binary = [j for j, n in enumerate(self.names) if features_mod.is_binary(n, cols[j])]
        self.groups = group([(j, cols[j] != 0) for j in self.binary])

    def part(self, a: int, b: int) -> "FeatureSet":
        """The features of rows [a, b) (rows 0..b-a of one part), with the whole text's
        means, sums and binary groups: what a part's scan needs, and no more rows."""
        out = object.__new__(FeatureSet)
        out.__dict__.update(self.__dict__)
        out.cols = [c[a:b] for c in self.cols]
        out.groups = [(members, code[a:b], pats) for members, code, pats in self.groups]
        return out

    def centred(self, a: int, b: int) -> np.ndarray:
        """A column of ones, then rows [a, b) of the centred features: float32 [n, 1 + F]."""
        out = aligned_empty((b - a, 1 + len(self.cols)), np.float32)
        out[:, 0] = 1.0
        for j, (c, m) in enumerate(zip(self.cols, self.mean)):
            out[:, 1 + j] = c[a:b].astype(np.float64) - m
        return out


def group(bits: list[tuple[int, np.ndarray]]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """Pack binary features into groups whose rows show at most MAX_COMBOS distinct
    patterns; each group is (feature indices, code per row, patterns [C, g])."""
    groups, cur = [], []

    def pack(members):
        key = np.zeros(len(members[0][1]), dtype=np.int64)
        for b, (_, m) in enumerate(members):
            key |= m.astype(np.int64) << b
        uniq, code = np.unique(key, return_inverse=True)
        pats = ((uniq[:, None] >> np.arange(len(members))) & 1).astype(bool)
        return uniq, code.astype(np.int32), pats

    for item in bits:
        trial = cur + [item]
        if cur and len(pack(trial)[0]) > MAX_COMBOS:
            groups.append(cur)
            trial = [item]
        cur = trial
    if cur:
        groups.append(cur)
    out = []
    for members in groups:
        _, code, pats = pack(members)
        out.append(([j for j, _ in members], code, pats))
    return out
