"""Hypothesis search: select on constructed values, search against a plain re-implementation
of LSTMVis's rule, the index cache, explain, and the ``probe match`` CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from probe import ProbeError, open_recording
from probe.analysis import match
from probe.cli import main
from probe.recording import h5format


def recording(path, values: dict, text=None):
    """A recording of one layer whose streams are the given [T, units] arrays."""
    T = len(next(iter(values.values())))
    text = text or ("abcdefghij" * (T // 10 + 1))[:T]
    return h5format.write(path, text, {(0, s): v for s, v in values.items()}, streams=tuple(values))


def test_select_needs_on_throughout_and_off_before(tmp_path):
    T, U = 40, 6
    c = np.full((T, U), -1.0)                      # tanh(-1) < 0.3: off
    c[10:15, 0] = 2.0                              # unit 0: on exactly over 10:15
    c[9:15, 1] = 2.0                               # unit 1: on from one character before
    c[10:14, 2] = 2.0                              # unit 2: off at the span's last character
    c[10:16, 3] = 0.31                             # unit 3: tanh(0.31) = 0.3004 >= 0.3: on
    c[10:16, 4] = 0.30                             # unit 4: tanh(0.30) = 0.291 < 0.3: off
    i = np.zeros((T, U))
    i[10:15, 5] = 0.3                              # a gate is compared raw: 0.3 >= 0.3
    rec_path = recording(tmp_path / "r.h5", {"c": c, "i": i})
    with open_recording(rec_path) as rec:
        assert match.select(rec, 0, "c", 10, 15) == [0, 3]
        assert match.select(rec, 0, "c", 10, 15, off_before=False) == [0, 1, 3]
        assert match.select(rec, 0, "c", 10, 15, off_after=True) == [0]
        assert match.select(rec, 0, "i", 10, 15) == [5]
        with pytest.raises(ProbeError, match=r"no unit of layer 0 c is >= 0.99 on every character of "
                                             r"10:15 and off just before it; try a lower --threshold"):
            match.select(rec, 0, "c", 10, 15, threshold=0.99)
        for span, message in (((30, 30), "span 30:30 is not inside"), ((35, 45), "span 35:45 is not inside")):
            with pytest.raises(ProbeError, match=message):
                match.select(rec, 0, "c", *span)
        with pytest.raises(ProbeError, match="strictly between 0 and 1 for stream i"):
            match.select(rec, 0, "i", 10, 15, threshold=1.0)


def lstmvis_rule(on: np.ndarray, cells: list[int], off_before=False, off_after=False, top=50):
    """LSTMVis's query_similar_activations, precise mode without its candidate cap, written
    as plainly as possible: (n_on, n_union, length, start) of the top matches."""
    T = len(on)
    count = on[:, cells].sum(axis=1)
    candidates = []
    for m in range(len(cells), 0, -1):
        clipped = np.minimum(count, m)
        t = 0
        while t < T:  # run-length encoding of the clipped count
            u = t
            while u < T and clipped[u] == clipped[t]:
                u += 1
            if clipped[t] == m and u - t >= 2 and (u - t, t) not in candidates:
                candidates.append((u - t, t))
            t = u
    found = []
    for length, start in candidates:
        if start < 1 or start + length + 1 > T:
            continue
        active = on[start:start + length].all(axis=0)
        if off_before:
            active &= ~on[start - 1]
        if off_after:
            active &= ~on[start + length]
        n_on = int(active[cells].sum())
        found.append((-n_on, int(active.sum()) + len(cells) - n_on, -length, start))
    found.sort()
    return [(-a, b, -c, d) for a, b, c, d in found[:top]]


@pytest.mark.parametrize("off_before, off_after", [(False, False), (True, False), (True, True)])
def test_search_ranks_as_lstmvis_does(tmp_path, off_before, off_after):
    rng = np.random.default_rng(7)
    T, U = 1500, 70  # more than 64 units: two words per character in the index
    runs = rng.random((T, U)) < 0.2
    c = np.where(np.logical_or(runs, np.roll(runs, 1, axis=0)), 1.5, -1.5)  # runs of 2+ characters
    cells = [3, 17, 40, 64, 69]
    with open_recording(recording(tmp_path / "r.h5", {"c": c})) as rec:
        got = match.search(rec, 0, "c", cells, off_before=off_before, off_after=off_after)
    want = lstmvis_rule(np.tanh(c) >= 0.3, cells, off_before, off_after)
    assert list(zip(got.n_on, got.n_union, got.length, got.start)) == want
    assert (got.stop - got.start == got.length).all() and np.allclose(got.jaccard, got.n_on / got.n_union)


@pytest.mark.parametrize("off_before, off_after", [(False, False), (True, True)])
def test_search_needs_a_neighbour_on_each_side(tmp_path, off_before, off_after):
    """A run at the recording's first or last character has no character before or after
    it, so LSTMVis's rule skips it; one that starts at 1 or ends at T - 1 is kept."""
    T = 30
    c = np.full((T, 2), -1.0)
    c[[0, 1, 2, 10, 11, 12, 13, 27, 28, 29], 0] = 1.0  # unit 0: runs 0:3, 10:14, 27:30 (= T)
    c[[1, 2, 10, 11, 12, 13, 27, 28], 1] = 1.0         # unit 1: runs 1:3, 10:14, 27:29 (= T - 1)
    text = "".join(chr(ord("a") + t % 26) for t in range(T))
    with open_recording(recording(tmp_path / "r.h5", {"c": c}, text)) as rec:
        first = match.search(rec, 0, "c", [0], off_before=off_before, off_after=off_after)
        second = match.search(rec, 0, "c", [1], off_before=off_before, off_after=off_after)
    columns = ["start", "stop", "length", "n_on", "n_union"]
    assert first[columns].values.tolist() == [[10, 14, 4, 1, 2]]  # unit 1 is on throughout too
    assert first.text.tolist() == ["klmn"] and first.jaccard.tolist() == [0.5]
    if off_before:  # unit 0 is on at 0 (before 1:3) and at 29 (after 27:29): not counted there
        want = [[1, 3, 2, 1, 1], [27, 29, 2, 1, 1], [10, 14, 4, 1, 2]]
    else:           # most selected on, then fewest on in all, then longest, then first
        want = [[10, 14, 4, 1, 2], [1, 3, 2, 1, 2], [27, 29, 2, 1, 2]]
    assert second[columns].values.tolist() == want
    assert second.text.tolist() == [text[a:b] for a, b, *_ in want]
    on = np.tanh(c) >= 0.3  # the plain rule agrees
    for units, got in (([0], first), ([1], second)):
        assert lstmvis_rule(on, units, off_before, off_after) == list(
            zip(got.n_on, got.n_union, got.length, got.start))


def test_the_index_is_cached_beside_the_recording_and_rebuilt_when_it_changes(tmp_path):
    c = np.full((50, 3), -1.0)
    c[5:9, 0] = 1.0
    path = recording(tmp_path / "r.h5", {"c": c})
    with open_recording(path) as rec:
        bits = match.index(rec, 0, "c", 0.3)
        side = match.index_path(rec, 0, "c", 0.3)
    assert side.exists() and side.name == "r.h5.match-0-c-0.3.npy"
    assert bits.shape == (50, 1) and [t for t in range(50) if bits[t, 0] & 1] == [5, 6, 7, 8]
    c[20:25, 0] = 1.0  # a new recording at the same path
    path = recording(tmp_path / "r.h5", {"c": c})
    with open_recording(path) as rec:
        again = match.index(rec, 0, "c", 0.3)
    assert [t for t in range(50) if again[t, 0] & 1] == [5, 6, 7, 8, 20, 21, 22, 23, 24]


def test_explain_says_what_the_matches_share(tmp_path):
    text = "x = 'abc' + y\n" * 10
    T = len(text)
    c = np.full((T, 2), -1.0)
    inside = np.array([0 < text.rfind("'", 0, t + 1) - text.rfind("\n", 0, t + 1) and
                       text[:t + 1].count("'") % 2 == 1 for t in range(T)])
    c[inside, 0] = 1.0  # unit 0: on inside the strings
    with open_recording(recording(tmp_path / "r.h5", {"c": c}, text)) as rec:
        hits = match.search(rec, 0, "c", [0], top=5)
        why = match.explain(rec, hits).set_index("feature")
    assert why.loc["in_short_string", "matched"] == 1.0
    assert why.index[0] in ("in_short_string", "in_string") and why.iloc[0].enrichment > 3


def test_probe_match_json_and_bad_input(recording_path, capsys):
    with open_recording(recording_path) as rec:  # a character where some unit turns on
        h = rec.stream(0, "h")[:]
        t = int(np.flatnonzero(((h[1:] >= 0.1) & (h[:-1] < 0.1)).any(axis=1))[0]) + 1
        want = match.select(rec, 0, "h", t, t + 1, threshold=0.1)
    assert main(["match", str(recording_path), "--layer", "0", "--stream", "h", "--span",
                 f"{t}:{t + 1}", "--threshold", "0.1", "--top", "5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"units", "matches", "explain"} and doc["units"] == want
    assert len(doc["matches"]) <= 5
    assert all(set(m) == {"start", "stop", "length", "n_on", "n_union", "jaccard"} for m in doc["matches"])
    assert {"feature", "matched", "overall", "enrichment"} == set(doc["explain"][0])
    assert main(["match", str(recording_path), "--layer", "1", "--stream", "c", "--units", "0,3",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["units"] == [0, 3] and len(doc["matches"]) <= 50
    for argv, message in ((["--span", "5:2"], "span 5:2 is not inside"),
                          (["--span", "x"], "--span must be START:STOP"),
                          (["--units", "0,99"], "no unit 99"),
                          (["--units", "1", "--threshold", "1.5"], "strictly between -1 and 1")):
        assert main(["match", str(recording_path), "--layer", "0", "--stream", "c", *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
