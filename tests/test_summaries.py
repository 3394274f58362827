"""Per-unit summaries (``probe.analysis.summaries``), built in the scoring pass: equal to a
brute-force computation over the whole stream (ties, NaN, parts cut anywhere, chunks of any
size), a folder of shards equal to the same text in one file, the cluster equal to one
process, and the analysis cache's round trip and invalidation."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CODE, write_recording
from test_shards import record_shards, record_whole

from probe import open_recording
from probe.analysis import cache as analysis
from probe.analysis import detectors, summaries
from probe.lm.model import load_model
from probe.recording import h5format
from probe.text import features

STREAMS = ("i", "f", "g", "o", "c", "h")


def assert_equal_summaries(got: dict, want: dict, mean_rtol: float = 0.0) -> None:
    for field in summaries.FIELDS:
        if field == "strip_mean" and mean_rtol:
            np.testing.assert_allclose(got[field], want[field], rtol=mean_rtol, err_msg=field)
        else:
            np.testing.assert_array_equal(got[field], want[field], err_msg=field)


def tied_data(T: int, seed: int = 0) -> dict:
    """Activations with many ties: values on a coarse grid, a constant unit, a saturated gate."""
    rng = np.random.default_rng(seed)
    data = {}
    for k in range(2):
        for s in STREAMS:
            lo, hi = h5format.RANGE[s] or (-30.0, 30.0)
            x = np.round(rng.uniform(lo, hi, (T, 6)) * 4) / 4  # a few distinct values: ties
            x[:, 1] = hi if s != "c" else 7.0                  # constant
            x[: T // 3, 2] = lo if s != "c" else -1e4          # saturated at the low end (c: extreme)
            x[:, 3] = rng.normal(0, 1, T) * (40 if s == "c" else 0.2) + (0.5 if h5format.is_unit_range(s) else 0)
            data[(k, s)] = x
    return data


@pytest.fixture(params=["compiled", "numpy"])
def topk(request, monkeypatch):
    """The running top-k in C (``_kernels.topk``) and the numpy reference: the same summaries."""
    if request.param == "compiled":
        assert summaries.COMPILED_TOPK, "probe._kernels was built without topk"
    else:
        monkeypatch.setattr(summaries, "COMPILED_TOPK", False)
    return request.param


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_summaries_equal_brute_force_on_a_synthetic_recording(tmp_path, dtype, topk):
    text = CODE * 25
    data = tied_data(len(text))
    path = write_recording(tmp_path / "tied.h5", text, data, dtype=dtype)
    with open_recording(path) as rec:
        feats = features.compute(rec.text)
        sc, sats, summ = detectors.scores_and_saturation(rec, feats, chunk=700, summaries=True)
        assert set(summ) == {(k, s) for k in (0, 1) for s in STREAMS}
        for (k, s), got in summ.items():
            want = summaries.brute_force(rec.stream(k, s)[:], s)
            assert_equal_summaries(got, want)
            assert got["hist"].sum(axis=1).tolist() == [len(text)] * 6
            # the constant unit: its first K positions, in order, at the top and the bottom
            assert got["top_p"][1].tolist() == list(range(summaries.K)) == got["bottom_p"][1].tolist()
        plain = detectors.scores_and_saturation(rec, feats, chunk=700)  # the scores do not change
    assert plain[0].equals(sc) and all(a.equals(b) for a, b in zip(plain[1], sats))


@pytest.mark.parametrize("T", [150, 3001, 70_001])
@pytest.mark.parametrize("stream", ["c", "i"])
def test_parts_cut_anywhere_fold_to_the_one_pass_summaries(T, stream, topk):
    """Parts (a folder's shards) and chunks of any size, NaN and inf included: the fold of
    the parts' summaries is the brute-force summary of the whole, bit for bit."""
    rng = np.random.default_rng(T)
    x = (rng.integers(-20, 20, (T, 5)) / 8).astype(np.float16)
    x[:, 1] = 1.0
    x[5:9, 2] = np.nan
    x[100 % T, 3] = np.inf
    x[:, 4] = rng.normal(0, 3, T)
    want = summaries.brute_force(x, stream)
    for cuts in ([T], sorted({1, 2, 99 % T or 1, T // 2, T})):
        datasets = [x[a:b] for a, b in zip([0, *cuts[:-1]], cuts)]
        for chunk in (37, 4096):
            acc = detectors.scan(datasets, [None] * len(datasets), stream, chunk=chunk, summaries=True)
            assert_equal_summaries(summaries.finish(acc["summary"]), want)


def test_brute_force_definition():
    """The reference itself on a hand-made unit: ties by position, extremes of the strip."""
    x = np.array([[0.5], [0.9], [0.1], [0.9], [0.1], [0.3]], np.float32)
    want = summaries.brute_force(x, "i")
    assert want["top_p"][0, :6].tolist() == [1, 3, 0, 5, 2, 4]
    assert want["bottom_p"][0, :6].tolist() == [2, 4, 5, 0, 1, 3]
    assert want["top_p"][0, 6:].tolist() == [-1] * (summaries.K - 6) and np.isnan(want["top_v"][0, 6:]).all()
    assert summaries.strip_edges(6).tolist() == list(range(7))
    assert want["strip_first"][0].tolist() == x[:, 0].tolist()
    assert summaries.strip_width(200_000) == 256 and len(summaries.strip_edges(200_000)) - 1 <= summaries.STRIP
    assert want["hist"].sum() == 6 and want["hist"][0, int(0.9 * summaries.HIST_BINS)] == 2


@pytest.fixture
def pair(model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(h5format, "CHUNK_T", 64)  # every shard spans several stored chunks
    model = load_model(model_path)
    return record_whole(model, tmp_path / "whole.h5"), record_shards(model, tmp_path / "sharded", 3)


def test_a_folder_of_shards_summarises_as_the_whole_file(pair):
    whole, folder = pair
    with open_recording(whole) as a, open_recording(folder) as b:
        assert len(b.parts) == 3
        _, _, sa = detectors.scores_and_saturation(a, None, chunk=500, summaries=True)
        _, _, sb = detectors.scores_and_saturation(b, None, chunk=500, summaries=True)
        assert set(sa) == set(sb)
        for key in sa:
            # float32 values: the strip's float64 sums are cut at the shards' edges (last bits)
            assert_equal_summaries(sb[key], sa[key], mean_rtol=1e-6)
            assert_equal_summaries(sa[key], summaries.brute_force(a.stream(*key)[:], key[1]), mean_rtol=1e-6)


def test_the_cluster_summarises_as_one_process_bit_for_bit(pair):
    from probe.analysis import cluster
    _, folder = pair
    with open_recording(folder) as rec, cluster.client(workers=2) as c:
        _, _, local = detectors.scores_and_saturation(rec, None, chunk=500, summaries=True)
        _, _, remote = cluster.analyze(c, rec, chunk=500, summaries=True)
        assert len(cluster.analyze(c, rec, chunk=500, layers=[0], streams=["h"])) == 2  # as before
    assert set(remote) == set(local)
    for key in local:
        assert_equal_summaries(remote[key], local[key])


def test_the_cache_keeps_the_summaries_and_is_invalidated(tmp_path, monkeypatch):
    text = CODE * 25
    path = write_recording(tmp_path / "tied.h5", text, tied_data(len(text)), dtype="float16")
    rec = open_recording(path)  # open throughout: the cache's key is read from the file each call
    summ = analysis.summaries(rec)
    side = analysis.cache_path(path)
    assert side.is_file()
    for k, s in [(0, "i"), (1, "c")]:
        assert_equal_summaries(summ[(k, s)], summaries.brute_force(rec.stream(k, s)[:], s))
    np.testing.assert_array_equal(summ["strip_edges"], summaries.strip_edges(len(text)))

    calls = []
    real = detectors.scores_and_saturation
    monkeypatch.setattr(detectors, "scores_and_saturation", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    again = analysis.summaries(rec)  # from the cache: no scan
    res = analysis.analysis(rec)
    assert calls == [] and set(res) == {"scores", "best", "saturation"}
    assert set(again) == set(summ)
    for key in summ:
        if key != "strip_edges":
            assert_equal_summaries(again[key], summ[key])
            assert again[key]["top_p"].dtype == np.int64 and again[key]["hist"].dtype == np.int64
            assert again[key]["strip_max"].dtype == again[key]["top_v"].dtype == np.float32

    u = summaries.unit(again, 1, "c", 3)
    assert u["hist"].sum() == len(text) and u["top_v"][0] == np.nanmax(u["strip_max"])
    rows = summaries.quantile_samples(u, bins=5, per_bin=2)
    assert rows and all(r["low"] <= r["value"] <= r["high"] for r in rows)
    assert all(u["strip_first"][u["samples"].tolist().index(r["position"])] == np.float32(r["value"]) for r in rows)

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the recording changed
    analysis.summaries(rec)
    assert len(calls) == 1 and calls[0].get("summaries") is True
    monkeypatch.setattr(analysis, "ANALYSIS_VERSION", analysis.ANALYSIS_VERSION + 1)  # an old cache
    analysis.analysis(rec)
    assert len(calls) == 2
    analysis.summaries(rec)
    assert len(calls) == 2  # the rebuilt cache holds the summaries too
    rec.close()
