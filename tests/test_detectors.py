"""Detectors, contexts and the analysis: streaming scores against plain numpy, planted
cells found, saturation, contexts, the analysis cache, the ``probe analyze`` CLI and its
one-line errors.

Most tests build a synthetic recording with ``write_recording`` (conftest.py:
``h5format.write``, the recording format without a model), with activations chosen by
the test.
"""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import CODE, write_recording

from probe import open_recording
from probe.analysis import cache as analysis
from probe.analysis import contexts, detectors, loops
from probe.cli import main
from probe.errors import ProbeError
from probe.readout import probes
from probe.text import features


def exact_auc(x, y):
    """Mann–Whitney U / (P N) with average ranks for ties."""
    y = np.asarray(y, bool)
    ranks = pd.Series(x).rank(method="average").to_numpy()
    P, N = y.sum(), (~y).sum()
    return (ranks[y].sum() - P * (P + 1) / 2) / (P * N)


def analysed(path, **kw) -> dict:
    """``analysis.analysis`` of the recording at ``path``, open for the call (the tests
    rewrite the file between calls)."""
    with open_recording(path) as rec:
        return analysis.analysis(rec, **kw)


def lookup(scores, layer, stream, unit, feature, metric):
    row = scores[(scores.layer == layer) & (scores.stream == stream) & (scores.unit == unit)
                 & (scores.feature == feature) & (scores.metric == metric)]
    assert len(row) == 1
    return row.score.iloc[0]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streaming_scores_equal_numpy_on_full_arrays(tmp_path, synthetic, dtype):
    path, data, feats = synthetic
    if dtype == "float16":  # the same activations stored as float16: compare with those values
        data = {key: np.asarray(x, np.float16).astype(np.float32) for key, x in data.items()}
        path = write_recording(tmp_path / "syn16.h5", CODE * 25, data, dtype="float16")
    with open_recording(path) as rec:
        sc = detectors.scores(rec, feats, chunk=700)  # several chunks, the last one partial
    assert list(sc.columns) == ["layer", "stream", "unit", "feature", "metric", "score"]
    n_binary = len(features.BINARY)
    assert len(sc) == 2 * 6 * 5 * (len(features.FEATURES) + n_binary)
    worst_r = worst_auc = 0.0
    for (k, s), x in data.items():
        for u in range(5):
            for name in feats.columns:
                f = feats[name].to_numpy(float)
                got = lookup(sc, k, s, u, name, "r")
                if np.std(x[:, u]) == 0 or np.std(f) == 0:
                    assert np.isnan(got)
                    continue
                worst_r = max(worst_r, abs(got - np.corrcoef(x[:, u], f)[0, 1]))
                if name in features.BINARY:
                    worst_auc = max(worst_auc, abs(lookup(sc, k, s, u, name, "auc") - exact_auc(x[:, u], f)))
    assert worst_r < 1e-4
    assert worst_auc < 1e-3


def test_compiled_loops_are_built_and_equal_numpy():
    # pip builds probe/_kernels.c (setup.py); numpy's count_bins_numpy is the reference
    assert detectors.COMPILED, "probe._kernels was not built: is a C compiler installed?"
    rng = np.random.default_rng(0)
    half = (rng.standard_normal((3000, 37)) * 3).astype(np.float16)  # U not a multiple of 8
    codes = half.view(np.uint16)
    pattern = rng.integers(0, 3, 3000).astype(np.int32)
    lut = detectors.bin_table("c").astype(np.int32)
    ours, ref = (np.zeros((37, 3 * detectors.AUC_BINS), np.int64) for _ in range(2))
    detectors.count_bins(codes, pattern, lut, ours)
    detectors.count_bins(codes, pattern, lut, ours)  # adds up
    detectors.count_bins_numpy(codes, pattern, lut, ref)
    detectors.count_bins_numpy(codes, pattern, lut, ref)
    np.testing.assert_array_equal(ours, ref)
    assert ours.sum() == 2 * codes.size

    shift = half.astype(np.float32).mean(axis=0)
    q_c, q_n = np.zeros(37), np.zeros(37)
    x = detectors.shifted(half, shift, q_c)
    np.testing.assert_array_equal(x, half.astype(np.float32) - shift)
    np.testing.assert_allclose(q_c, (x.astype(np.float64) ** 2).sum(axis=0), rtol=1e-12)
    detectors.shifted(half.astype(np.float32), shift, q_n)  # float32 data: the torch path
    np.testing.assert_allclose(q_c, q_n, rtol=1e-5)


def test_compiled_loops_refuse_mismatched_arrays():
    from probe import _kernels as k  # the C extension itself
    codes = np.zeros((10, 4), np.uint16)
    lut = np.zeros(65536, np.int32)
    with pytest.raises(ValueError, match="pattern outside"):
        k.histogram(codes, np.full(10, 5, np.int32), lut, np.zeros((4, 2 * 16), np.int64), 16)
    with pytest.raises(ValueError, match="shapes"):
        k.histogram(codes, np.zeros(9, np.int32), lut, np.zeros((4, 32), np.int64), 16)
    with pytest.raises(ValueError, match="lut holds a bin"):
        k.histogram(codes, np.zeros(10, np.int32), lut + 16, np.zeros((4, 32), np.int64), 16)
    with pytest.raises(ValueError, match="C-contiguous"):
        k.histogram(codes.astype(np.int32), np.zeros(10, np.int32), lut, np.zeros((4, 32), np.int64), 16)
    with pytest.raises(ValueError, match="shapes"):
        k.shifted(codes, np.zeros(65536, np.float32), np.zeros(3, np.float32),
                  np.zeros((10, 4), np.float32), np.zeros(4))


def test_scores_without_the_compiled_loops_are_the_same(tmp_path, synthetic, monkeypatch):
    _, data, feats = synthetic
    path = write_recording(tmp_path / "syn16.h5", CODE * 25, data, dtype="float16")
    with open_recording(path) as rec:
        fast = detectors.scores(rec, feats, chunk=700)
    monkeypatch.setattr(loops, "kernels", None)  # every inner loop in numpy
    with open_recording(path) as rec:
        slow = detectors.scores(rec, feats, chunk=700)
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-6)


def test_scoring_streams_side_by_side_gives_the_same_table(synthetic):
    path, _, feats = synthetic
    with open_recording(path) as rec:
        one = detectors.scores(rec, feats, chunk=700)
        two = detectors.scores(rec, feats, chunk=700, workers=2)
    pd.testing.assert_frame_equal(one, two)
    with open_recording(path) as rec, pytest.raises(ProbeError, match="workers"):
        detectors.scores(rec, feats, workers=0)


def test_progress_can_be_a_function_called_as_the_pass_goes(synthetic):
    """The dashboard's notice: ``progress=f`` calls f(characters scanned, total), from 0 to
    the total (every stream of every layer once), and changes no score."""
    path, _, feats = synthetic
    calls = []
    with open_recording(path) as rec:
        sc = detectors.scores(rec, feats, chunk=700, progress=lambda done, total: calls.append((done, total)))
        total = len(rec) * len(rec.layer_ids) * len(rec.streams)
        pd.testing.assert_frame_equal(sc, detectors.scores(rec, feats, chunk=700))
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 3


def test_constant_feature_gives_nan_not_a_crash(synthetic):
    path, _, feats = synthetic
    feats = feats.assign(zero=0, half=0.5)
    with open_recording(path) as rec:
        sc = detectors.scores(rec, feats, layers=[0], streams=["g"])
    assert sc[sc.feature.isin(["zero", "half"]) & (sc.metric == "r")].score.isna().all()
    assert sc[(sc.feature == "zero") & (sc.metric == "auc")].score.isna().all()  # no positives
    assert np.isnan(lookup(sc, 0, "g", 4, "column", "r"))  # the constant unit
    assert lookup(sc, 0, "g", 4, "in_string", "auc") == 0.5  # all tied


def test_best_ranks_planted_cells_first(synthetic):
    path, _, feats = synthetic
    with open_recording(path) as rec:
        top = detectors.best(detectors.scores(rec, feats), top=3)
    assert list(top.columns) == ["feature", "rank", "layer", "stream", "unit", "metric", "score", "r", "auc"]
    first = top[top["rank"] == 1].set_index("feature")
    assert tuple(first.loc["in_string", ["layer", "stream", "unit", "metric"]]) == (1, "c", 3, "auc")
    assert first.loc["in_string", "score"] > 0.95
    # an inverted cell ranks by AUC distance from 0.5 and keeps its raw score
    assert tuple(first.loc["in_comment", ["layer", "stream", "unit"]]) == (1, "h", 0)
    assert first.loc["in_comment", "score"] < 0.05 and first.loc["in_comment", "r"] < -0.5
    assert tuple(first.loc["column", ["layer", "stream", "unit", "metric"]]) == (0, "h", 2, "r")
    assert first.loc["column", "score"] > 0.9 and np.isnan(first.loc["column", "auc"])
    assert (top.groupby("feature").size() == 3).all()


def test_saturation_fractions(tmp_path):
    T, text = 1000, "x" * 1000
    i = np.full((T, 3), 0.5)
    i[:250, 0], i[750:, 0] = 0.05, 0.95   # a quarter each side
    i[:, 1] = 0.99                        # always open
    i[::10, 2] = 0.0                      # closed on every tenth character
    path = write_recording(tmp_path / "sat.h5", text, {(0, "i"): i, (0, "f"): np.full((T, 3), 0.5)})
    with open_recording(path) as rec:
        sat = detectors.saturation(rec, chunk=300)
    assert list(sat.columns) == ["layer", "stream", "unit", "left", "right"]
    si = sat[sat.stream == "i"].set_index("unit")
    assert si.loc[0, "left"] == 0.25 and si.loc[0, "right"] == 0.25
    assert si.loc[1, "left"] == 0 and si.loc[1, "right"] == 1
    assert si.loc[2, "left"] == pytest.approx(0.1) and si.loc[2, "right"] == 0
    assert (sat[sat.stream == "f"][["left", "right"]] == 0).all().all()
    # the analysis computes the same in its single pass
    pd.testing.assert_frame_equal(analysed(path)["saturation"], sat)


def test_top_contexts_argmax_first_without_near_duplicates(tmp_path):
    T = 600
    text = ("abcdefghij" * 60)
    x = np.zeros((T, 2))
    x[:, 0] = np.sin(np.arange(T) / 7.0)
    x[305, 0], x[306, 0] = 5.0, 4.9      # a peak; its neighbour must be suppressed
    x[302, 0] = -3.0
    docs = [("a", 0, 300), ("b", 300, 600)]
    path = write_recording(tmp_path / "ctx.h5", text, {(0, "c"): x}, documents=docs)
    with open_recording(path) as rec:
        values = rec.unit(0, "c", 0)
        top = contexts.top_contexts(values, rec.documents, k=4, width=10)
        qs = contexts.quantile_samples(values, rec.documents, bins=4, per_bin=3)
    t, b = top[top.kind == "top"], top[top.kind == "bottom"]
    assert list(top.columns) == ["kind", "position", "value", "start", "stop"]
    assert t.position.iloc[0] == 305 and t.value.iloc[0] == 5.0
    assert b.position.iloc[0] == 302
    assert (t.start.iloc[0], t.stop.iloc[0]) == (300, 316)  # clipped to document "b"
    assert 306 not in t.position.tolist()
    for part in (t, b):
        pos = np.sort(part.position.to_numpy())
        assert len(pos) == 4 and np.diff(pos).min() > 10
    assert list(qs.columns) == ["bin", "low", "high", "position", "value", "start", "stop"]
    assert qs.bin.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert ((qs.value >= qs.low) & (qs.value <= qs.high)).all()
    counts, edges = contexts.histogram(x[:, 0], bins=8)
    assert counts.sum() == T and len(edges) == 9


def test_analysis_is_cached_reused_and_invalidated(synthetic, monkeypatch):
    path, data, _ = synthetic
    side = analysis.cache_path(path)
    first = analysed(path)
    assert side.exists() and side.name == "syn.h5.analysis.npz"
    assert set(first) == {"scores", "best", "saturation"}
    stamp = side.stat().st_mtime_ns

    calls = []
    real = detectors.scores_and_saturation
    monkeypatch.setattr(detectors, "scores_and_saturation", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    again = analysed(path)
    assert calls == [] and side.stat().st_mtime_ns == stamp  # reused, not rewritten
    for key in first:
        pd.testing.assert_frame_equal(first[key], again[key])

    data[(1, "c")][:, 3] = 0.0  # the recording changes: the planted cell is gone
    write_recording(path, CODE * 25, data)
    changed = analysed(path)
    assert calls == [1] and side.stat().st_mtime_ns != stamp
    assert np.isnan(lookup(changed["scores"], 1, "c", 3, "in_string", "r"))
    analysed(path, refresh=True)
    assert calls == [1, 1]


def test_cache_covers_regex_features(synthetic, monkeypatch):
    path, _, _ = synthetic
    with_regex = analysed(path, regex={"digit": "[0-9]"})
    assert "digit" in set(with_regex["scores"].feature)
    monkeypatch.setattr(detectors, "scores_and_saturation", lambda *a, **kw: pytest.fail("recomputed"))
    plain = analysed(path)  # served from the superset in the cache
    assert "digit" not in set(plain["scores"].feature)


def test_unwritable_folder_means_no_cache(synthetic, monkeypatch):
    path, _, _ = synthetic

    def refuse(*a, **kw):
        raise PermissionError("read-only folder")
    monkeypatch.setattr(analysis.os, "replace", refuse)
    res = analysed(path)
    assert not res["best"].empty
    assert sorted(p.name for p in path.parent.iterdir()) == ["syn.h5"]  # no sidecar, no temp file


def test_cli_analyze_prints_tables(recording_path, capsys):
    assert main(["analyze", str(recording_path), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "in_string" in out and "bracket_depth" in out and "auc=" in out and "r=" in out
    assert "saturation" in out and "layer  stream" in out
    assert analysis.cache_path(recording_path).exists()


def test_cli_analyze_json(recording_path, capsys):
    assert main(["analyze", str(recording_path), "--json", "--top", "1", "--feature", "digit=[0-9]"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["feature"] for r in doc["best"]} >= {"in_string", "column", "digit"}
    assert all(r["rank"] == 1 for r in doc["best"])
    assert {r["stream"] for r in doc["saturation"]} == {"i", "f", "o"}


@pytest.mark.parametrize("argv, message", [
    (["--feature", "bad=("], "does not compile"),
    (["--feature", "noequals"], "expected NAME=REGEX"),
    (["--top", "0"], "--top must be at least 1"),
])
def test_cli_analyze_errors_are_one_line(recording_path, capsys, argv, message):
    assert main(["analyze", str(recording_path), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("probe: error: ") and message in err and err.count("\n") == 1


def test_cli_analyze_missing_file(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope.h5")]) == 1
    assert "no such recording" in capsys.readouterr().err


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_errors(tmp_path, synthetic):
    path, _, feats = synthetic
    only_ch = write_recording(tmp_path / "ch.h5", "abc", {(0, "c"): np.zeros((3, 2))}, streams=("c", "h"))
    with open_recording(only_ch) as rec:
        with pytest.raises(ProbeError) as e:
            detectors.saturation(rec)
        assert "gate streams" in one_line(e) and "ch.h5" in one_line(e)
        with pytest.raises(ProbeError) as e:
            detectors.scores(rec, streams=["f"])
        assert "no stream 'f'" in one_line(e)
    assert analysed(only_ch)["saturation"].empty  # the analysis skips what it cannot do

    empty = write_recording(tmp_path / "empty.h5", "", {(0, "c"): np.zeros((0, 2))})
    with open_recording(empty) as rec:
        for call in (detectors.scores, detectors.saturation):
            with pytest.raises(ProbeError) as e:
                call(rec)
            assert "empty recording" in one_line(e)
        with pytest.raises(ProbeError) as e:
            contexts.top_contexts(rec.unit(0, "c", 0), rec.documents)
        assert "the recording is empty" in one_line(e)
    with open_recording(path) as rec:
        with pytest.raises(ProbeError) as e:
            probes.probe_curve(rec, feats, "no_such_feature")
        assert "unknown feature 'no_such_feature'" in one_line(e)
        with pytest.raises(ProbeError) as e:
            detectors.scores(rec, feats.iloc[:10])
        assert "10 rows" in one_line(e)
        with pytest.raises(ProbeError) as e:
            contexts.top_contexts(rec.unit(0, "c", 0)[:-5], rec.documents)
        assert f"there are {len(rec) - 5} values" in one_line(e)
    with pytest.raises(ProbeError) as e:
        analysed(path, regex={"paren": "("})
    assert "does not compile" in one_line(e)


def test_candidate_preselection_matches_a_full_stable_sort():
    from probe.analysis.contexts import smallest_first
    rng = np.random.default_rng(0)
    for _ in range(200):  # float16-like data: many ties
        s = rng.integers(0, 20, size=int(rng.integers(1, 3000))).astype(np.float32)
        n = int(rng.integers(1, 500))
        full = np.argsort(s, kind="stable")[:min(n, len(s))]
        np.testing.assert_array_equal(smallest_first(s, n)[:len(full)], full)
