"""``detectors.scores`` exactly, against plain definitions: values on a coarse grid (many
exact ties, each value in its own histogram bin, so the histogram AUC is the exact one),
features that hold only at the first or only at the last position, and a last chunk of
one row. Also ``auc_exact`` against the pairwise definition."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import write_recording

from probe import open_recording
from probe.analysis import detectors

CHUNK = 100
T = 3 * CHUNK + 1  # the last chunk holds only the last position


def pairwise_auc(x: np.ndarray, y: np.ndarray) -> float:
    """P(x at a positive > x at a negative), ties counting half: every pair compared."""
    pos, neg = x[y != 0][:, None], x[y == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(11)
    h = rng.integers(-8, 9, size=(T, 4)) / 8.0   # multiples of 1/8 in [-1, 1]: exact ties
    h[:, 2] = -1.0
    h[T - 1, 2] = 1.0                             # unit 2: on only at the last position
    h[:, 3] = -0.5
    h[0, 3] = 0.75                                # unit 3: on only at the first position
    c = rng.integers(-40, 41, size=(T, 4)) / 4.0  # c on a grid too (squashed monotonically)
    feats = pd.DataFrame({
        "first": (np.arange(T) == 0).astype(np.int8),
        "last": (np.arange(T) == T - 1).astype(np.int8),
        "half": (rng.random(T) < 0.5).astype(np.int8),
        "count": rng.integers(0, 6, size=T),      # not binary: r only
    })
    feats.loc[rng.random(T) < 0.3, "half"] = 0
    text = ("abcdefghij" * T)[:T]
    path = write_recording(tmp_path / "r.h5", text, {(0, "h"): h, (0, "c"): c}, streams=("h", "c"))
    return path, {"h": h, "c": c}, feats


def test_scores_equal_the_plain_definitions_with_ties_and_edge_positions(case):
    path, values, feats = case
    with open_recording(path) as rec:
        sc = detectors.scores(rec, feats, chunk=CHUNK)
    got = sc.set_index(["stream", "unit", "feature", "metric"])["score"]
    assert len(sc) == 2 * 4 * (4 + 3) and (sc.layer == 0).all()
    for stream, x in values.items():
        for u in range(4):
            for name in feats.columns:
                f = feats[name].to_numpy()
                r = got[(stream, u, name, "r")]
                assert r == pytest.approx(pearson(x[:, u], f.astype(float)), rel=1e-5, abs=1e-6), (stream, u, name)
                if name != "count":
                    auc = got[(stream, u, name, "auc")]
                    assert auc == pytest.approx(pairwise_auc(x[:, u], f), rel=1e-12), (stream, u, name)
    # the planted edges, exactly
    assert got[("h", 2, "last", "auc")] == 1.0 and got[("h", 3, "first", "auc")] == 1.0
    assert got[("h", 2, "first", "auc")] == 0.5 * (T - 2) / (T - 1)  # ties with all but the last
    assert got[("h", 2, "last", "r")] == pytest.approx(1.0, abs=1e-6)
    assert ("h", 0, "count", "auc") not in got.index


def test_auc_exact_is_the_pairwise_definition():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        x = rng.integers(0, 5, size=n).astype(float)   # many ties
        y = rng.random(n) < 0.4
        if y.all() or not y.any():
            assert np.isnan(detectors.auc_exact(x, y))
            continue
        assert detectors.auc_exact(x, y) == pytest.approx(pairwise_auc(x, y), rel=1e-12)
    y = np.zeros(7, bool)
    y[-1] = True  # only the last position
    assert detectors.auc_exact(np.arange(7.0), y) == 1.0 and detectors.auc_exact(-np.arange(7.0), y) == 0.0
