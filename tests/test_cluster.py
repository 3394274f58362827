"""Recording and analysis on a Dask cluster (``probe.analysis.cluster``): the scores equal the
single-process scores bit for bit, ``probe record --workers N`` writes the shards
``--shard I/N`` writes, a worker killed mid-task is retried and changes nothing, and bad
cluster arguments are one-line errors.

One local cluster of two worker processes serves the module (``cluster.client(workers=2)``,
what ``--workers 2`` starts); ``--scheduler`` is tested against its address.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEXT

from probe import ProbeError, open_recording
from probe.analysis import cache as analysis
from probe.analysis import cluster, detectors
from probe.cli import main
from probe.lm.model import CharRNN, load_model, save_checkpoint
from probe.recording import record as recorder
from probe.recording import shards
from probe.text import corpus

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hooks below run on the workers

# seven documents of 60..~1800 characters, as in test_shards.py
DOCS = [(f"pkg/m{i}.py", (TEXT.replace("Point", f"P{i}") * (1 + 3 * i))[: 60 + 250 * i]) for i in range(7)]
SOURCE = {"kind": "text", "path": "/somewhere/pkg", "glob": "**/*.py", "documents": len(DOCS),
          "fingerprint": corpus.fingerprint("".join(t for _, t in DOCS))}
CHUNK = 500  # rows per read: every shard spans several chunks


@pytest.fixture(scope="module")
def dask_client():
    with cluster.client(workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """conftest's tiny model, saved once for the module (the workers load it from this path)."""
    torch.manual_seed(0)
    model = CharRNN(corpus.build_vocab(TEXT), layers=2, units=8, embedding=4)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model.eval(), {"kind": "text", "fingerprint": corpus.fingerprint(TEXT)})
    return path


def record_by_hand(model_path, folder, n):
    """The N files ``probe record --shard I/N`` writes, one after another, in one process."""
    model = load_model(model_path)
    folder.mkdir()
    for i in range(1, n + 1):
        part, src = shards.take(DOCS, SOURCE, i, n)
        recorder.record(model, part, folder / f"part-{i}.h5", source=src, progress=False)
    return folder


@pytest.fixture(scope="module")
def sharded(model_path, tmp_path_factory):
    return record_by_hand(model_path, tmp_path_factory.mktemp("rec") / "sharded", 3)


def assert_same_recording(a, b):
    """Text, documents, loss and every stream equal, bit for bit."""
    with open_recording(a) as x, open_recording(b) as y:
        assert x.text == y.text
        pd.testing.assert_frame_equal(x.documents, y.documents, check_exact=True)
        np.testing.assert_array_equal(x.loss, y.loss)
        assert (x.layer_ids, x.streams) == (y.layer_ids, y.streams)
        for k in x.layer_ids:
            for s in x.streams:
                np.testing.assert_array_equal(x.stream(k, s)[:], y.stream(k, s)[:])
        for p, q in zip(x.parts, y.parts):
            assert p.source == q.source  # the same shard descriptions


def assert_same_scores(got, want):
    (sc, sats), (sc0, sats0) = got, want
    pd.testing.assert_frame_equal(sc, sc0, check_exact=True)
    assert len(sats) == len(sats0) > 0
    for s, s0 in zip(sats, sats0):
        pd.testing.assert_frame_equal(s, s0, check_exact=True)


# ---- exactness -------------------------------------------------------------------------------

def test_cluster_scores_equal_the_single_process_scores_exactly(dask_client, sharded, model_path, tmp_path):
    with open_recording(sharded) as rec:
        local = detectors.scores_and_saturation(rec, None, chunk=CHUNK)
        assert detectors.scores_and_saturation(rec, None, chunk=CHUNK, threads=2)[0].equals(local[0])
        assert_same_scores(cluster.analyze(dask_client, rec, chunk=CHUNK), local)
    # a file is one part: its streams are scanned side by side on the workers, the same scores
    whole = recorder.record(load_model(model_path), DOCS, tmp_path / "whole.h5", source=SOURCE, progress=False)
    with open_recording(whole) as rec:
        local_whole = detectors.scores_and_saturation(rec, None, chunk=CHUNK)
        assert_same_scores(cluster.analyze(dask_client, rec, chunk=CHUNK), local_whole)
    # the shards' scores are the file's up to float rounding (c can differ in its last bit)
    pd.testing.assert_frame_equal(local[0], local_whole[0], atol=1e-6)


def test_probe_analyze_on_a_running_cluster_fills_the_same_cache(dask_client, sharded, capsys, monkeypatch):
    (sharded / "sharded.analysis.npz").unlink(missing_ok=True)
    assert main(["analyze", str(sharded), "--scheduler", dask_client.scheduler.address, "--top", "2"]) == 0
    assert "top 2 cells per feature" in capsys.readouterr().out
    assert (sharded / "sharded.analysis.npz").is_file()
    with open_recording(sharded) as rec:
        local = analysis.analysis(rec, refresh=True)  # one process, written over the cache
        monkeypatch.setattr(cluster, "analyze", lambda *a, **k: pytest.fail("cache missed"))
        cached = analysis.analysis(rec, client=dask_client)
        for key in ("scores", "best", "saturation"):
            pd.testing.assert_frame_equal(cached[key], local[key], check_exact=True)
        monkeypatch.undo()
        remote = analysis.analysis(rec, refresh=True, client=dask_client)
    for key in ("scores", "best", "saturation"):
        pd.testing.assert_frame_equal(remote[key], local[key], check_exact=True)


# ---- recording -------------------------------------------------------------------------------

def test_probe_record_workers_writes_the_shards_that_shard_i_of_n_writes(model_path, tmp_path, capsys):
    src = tmp_path / "pkg"
    src.mkdir()
    for name, text in DOCS:
        (src / name.split("/")[1]).write_text(text)
    common = ["record", "--text", str(src), "--model", str(model_path), "--quiet"]
    out = tmp_path / "on-cluster"
    assert main([*common, "--workers", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}/: 2 shards, ")
    assert sorted(p.name for p in out.iterdir()) == ["part-0001-of-0002.h5", "part-0002-of-0002.h5"]
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside it
    hand = tmp_path / "by-hand"
    hand.mkdir()
    for i in (1, 2):
        assert main([*common, "--shard", f"{i}/2", "--out", str(hand / f"part-{i}.h5")]) == 0
    assert_same_recording(out, hand)
    # an existing folder is replaced only with --force
    assert main([*common, "--workers", "2", "--out", str(out)]) == 1
    assert "not empty; pass --force" in capsys.readouterr().err


# ---- a worker killed mid-task ---------------------------------------------------------------

def _install_hook(module: str, owner: str, attr: str, claim: str, pidfile: str) -> None:
    """On a worker: the first call of ``owner.attr`` on any worker (the one that creates
    ``claim``) writes its process id to ``pidfile`` and sleeps until it is killed."""
    import importlib
    target = importlib.import_module(module)
    if owner:
        target = getattr(target, owner)
    original = getattr(target, attr)

    def hooked(*args, **kwargs):
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return original(*args, **kwargs)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)
        time.sleep(600)

    hooked.original = original
    setattr(target, attr, hooked)


def _remove_hook(module: str, owner: str, attr: str) -> None:
    import importlib
    target = importlib.import_module(module)
    if owner:
        target = getattr(target, owner)
    fn = getattr(target, attr)
    setattr(target, attr, getattr(fn, "original", fn))


def run_and_kill(c, hook: tuple[str, str, str], tmp_path, work, check=None):
    """Run ``work()`` in a thread while the first call of ``hook`` on a worker blocks; kill that
    worker with SIGKILL (``check()`` first, while it blocks) and return ``work()``'s result."""
    claim, pidfile = str(tmp_path / "claim"), str(tmp_path / "pid")
    c.run(_install_hook, *hook, claim, pidfile)
    result = {}

    def target():
        try:
            result["value"] = work()
        except BaseException as e:  # handed to the test below
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 120
        while not os.path.exists(pidfile):
            assert time.monotonic() < deadline, "no task reached the hook"
            assert thread.is_alive(), f"finished without reaching the hook: {result}"
            time.sleep(0.05)
        pid = int(open(pidfile).read())
        assert pid in c.run(os.getpid).values()  # a worker process, not this one
        if check is not None:
            check()
        os.kill(pid, signal.SIGKILL)
        thread.join(180)
        assert not thread.is_alive(), "the work did not finish after the worker was killed"
    finally:
        c.run(_remove_hook, *hook)
        c.wait_for_workers(2, timeout=120)  # the nanny restarts the killed worker
    if "error" in result:
        raise result["error"]
    assert pid not in c.run(os.getpid).values()  # it really died
    return result["value"]


def test_a_worker_killed_mid_analysis_is_retried_and_the_scores_are_still_exact(dask_client, sharded, tmp_path):
    with open_recording(sharded) as rec:
        local = detectors.scores_and_saturation(rec, None, chunk=CHUNK)
        got = run_and_kill(dask_client, ("probe.analysis.stats", "", "part_stats"), tmp_path,
                           lambda: cluster.analyze(dask_client, rec, chunk=CHUNK))
    assert_same_scores(got, local)


def test_a_worker_killed_mid_shard_leaves_no_half_written_shard(dask_client, model_path, tmp_path):
    out = tmp_path / "rec"

    def half_written():  # while the worker sleeps mid-shard: its shard exists only as a hidden temporary
        (tmp,) = tmp_path.glob(".rec.tmp-*")  # the folder being written, hidden
        assert list(tmp.glob(".part-000?-of-0002.h5.tmp-*"))  # the shard being written, hidden
        assert not out.exists()

    done = run_and_kill(dask_client, ("probe.recording.record", "ChunkWriter", "append"), tmp_path,
                        lambda: cluster.record_shards(dask_client, model_path, DOCS, SOURCE, out, shards=2,
                                                      progress=False), check=half_written)
    assert [d["path"] for d in done] == [str(out / "part-0001-of-0002.h5"), str(out / "part-0002-of-0002.h5")]
    assert sorted(p.name for p in out.iterdir()) == ["part-0001-of-0002.h5", "part-0002-of-0002.h5"]
    assert not list(tmp_path.glob(".rec.tmp-*"))
    assert_same_recording(out, record_by_hand(model_path, tmp_path / "by-hand", 2))


# ---- bad input -------------------------------------------------------------------------------

def test_an_unreachable_scheduler_is_one_line_within_seconds(sharded, capsys):
    t = time.monotonic()
    with pytest.raises(ProbeError, match=r"^--scheduler tcp://127.0.0.1:1: cannot reach a Dask scheduler"):
        with cluster.client(scheduler="tcp://127.0.0.1:1", timeout=1):
            pass
    assert time.monotonic() - t < 10
    t = time.monotonic()
    assert main(["analyze", str(sharded), "--refresh", "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert time.monotonic() - t < 20  # the default timeout is 5 s
    err = capsys.readouterr().err
    assert err.startswith("probe: error: --scheduler tcp://127.0.0.1:1: cannot reach") and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["analyze", "REC", "--workers", "0"], "--workers must be a whole number >= 1"),
    (["record", "--workers", "0", "--out", "OUT"], "--workers must be a whole number >= 1"),
    (["record", "--workers", "2", "--shard", "1/2", "--out", "OUT"], "--shard I/N records one shard here"),
    (["record", "--workers", "2", "--out", "OUT/x.h5"], "--out is a folder of shards"),
    (["record", "--workers", "2", "--shards", "0", "--out", "OUT"], "--shards must be at least 1"),
    (["record", "--shards", "2", "--out", "OUT/x.h5"], "--shards needs --workers or --scheduler"),
])
def test_bad_cluster_arguments_are_one_line(args, message, sharded, tmp_path, capsys):
    args = [str(sharded) if a == "REC" else a.replace("OUT", str(tmp_path / "out")) for a in args]
    assert main(args) == 1  # before any cluster starts
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_workers_and_scheduler_are_one_or_the_other(sharded):
    with pytest.raises(SystemExit):  # argparse refuses both
        main(["analyze", str(sharded), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    with pytest.raises(ProbeError, match="give one"):
        with cluster.client(workers=2, scheduler="tcp://127.0.0.1:1"):
            pass
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ProbeError, match="--workers must be"):
            cluster.check_workers(bad)
