"""Linear probes: how many cells a feature is spread over, held out from all over the text."""
import numpy as np
import pytest

from probe import open_recording
from probe.readout import probes


def test_probe_curve_on_planted_cells(synthetic):
    path, _, feats = synthetic
    with open_recording(path) as rec:
        cont = probes.probe_curve(rec, feats, "column", layers=[0], streams=["h"])
        binary = probes.probe_curve(rec, feats, "in_string", ks=[1, 3])
    assert list(cont.columns) == ["k", "score", "metric"]
    assert cont["k"].tolist() == [1, 2, 4, 5] and (cont["metric"] == "r2").all()
    assert cont["score"].iloc[0] > 0.8  # the planted cell alone explains the feature
    assert binary["k"].tolist() == [1, 3] and (binary["metric"] == "auc").all()
    assert binary["score"].iloc[0] > 0.9


def test_probe_holds_out_pieces_from_all_over_the_recording():
    train, held = probes.split_positions(200_000, held_out=0.2)
    assert not (train & held).any() and (train | held).all()
    assert held.mean() == pytest.approx(0.2, abs=0.01)
    # several long pieces, not one tail: both parts reach into every fifth of the text
    pieces = np.flatnonzero(np.diff(held.astype(int)) == 1).size + int(held[0])
    assert 5 <= pieces <= 10
    assert sum(held[q:q + 40_000].any() for q in range(0, 200_000, 40_000)) >= 3
    assert all(train[q:q + 40_000].any() for q in range(0, 200_000, 40_000))
    # a text too short to cut holds out its tail
    train, held = probes.split_positions(1000, held_out=0.2)
    assert held[800:].all() and not held[:800].any()
