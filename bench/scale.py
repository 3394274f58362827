"""Benchmark: recording and analysis on 1 and 2 local Dask workers against one process.

    python bench/scale.py [--chars 1000000] [--model M] [--dir DIR] [--keep] [--json]

The first --chars characters of the stdlib corpus' train split, the shipped model (or
--model), sequential mode, zstd, one torch thread per process; every time below is
measured in this run (the machine may be shared: compare the ratios, not the seconds).

Recording:
  (a) one process, ``probe.recording.record.record`` into one file (no Dask): the baseline;
  (b) ``probe record --workers 1``: ``cluster.record_shards`` on a local cluster of one
      worker (one shard);
  (c) ``--workers 2``: two workers, two shards side by side.
  Each cluster is started, and its workers have imported probe and torch, before the
  clock starts; the start-up is printed apart. Ratios: (b)/(a), Dask's overhead; (b)/(c),
  the speed-up of a second worker (goal >= 1.6).

Analysis of (c)'s folder (every cell against every built-in feature, saturation):
  (d) one process, one thread: ``detectors.scores_and_saturation(threads=1)``: the baseline
      (timed before and after the cluster runs; the faster counts, so the OS page cache
      favours neither side);
  (e) ``probe analyze --workers 1``: ``cluster.analyze`` on one worker;
  (f) ``--workers 2``.
  (e) and (f) are checked equal to (d) bit for bit. Ratios: (e)/(d), Dask's overhead
  (goal <= 1.2); (e)/(f), the speed-up of a second worker.

The recordings are written under --dir (default: a temporary folder, removed at the end
unless --keep): about 4.6 KB per character each, and (a) and (b) are removed as soon as
they are timed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from probe import load_model, open_recording
from probe.analysis import cluster, detectors
from probe.recording.record import record
from probe.text import corpus


def warm() -> int:
    """On a worker: import what the tasks use, so the clock measures work, not imports."""
    import torch as t

    import probe.analysis.detectors  # noqa: F401
    import probe.recording.record  # noqa: F401
    return t.get_num_threads()


def started(workers: int) -> tuple[object, float]:
    """A running local cluster of ``workers`` (its context manager entered) and its start-up seconds."""
    t0 = time.perf_counter()
    ctx = cluster.client(workers=workers)
    c = ctx.__enter__()
    c.run(warm)
    return (ctx, c), time.perf_counter() - t0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else list(path.glob("*.h5"))
    return sum(f.stat().st_size for f in files) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--chars", type=int, default=1_000_000, help="characters to record (default 1,000,000)")
    p.add_argument("--model", help="checkpoint, or a shipped model's name (default: the shipped LSTM)")
    p.add_argument("--dir", help="where to write the recordings (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the 2-worker recording")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="probe-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    docs = corpus.stdlib("train").limited(a.chars)
    T = sum(len(t) for _, t in docs.documents)
    model = load_model(a.model)
    out: dict = {"chars": T, "documents": len(docs.documents), "model": model.path}
    say = (lambda *x: None) if a.json else (lambda *x: print(*x, flush=True))
    say(f"{T:,} characters of stdlib/train ({len(docs.documents)} documents), model {model.path}, in {root}")
    try:
        # ---- recording ------------------------------------------------------------------
        single = root / "single.h5"
        _, out["record_single_s"] = timed(lambda: record(model, docs.documents, single, source=docs.source,
                                                         progress=False))
        out["record_single_mb"] = size_mb(single)
        single.unlink()
        say(f"(a) record, one process:      {out['record_single_s']:7.1f} s  {T / out['record_single_s']:8,.0f} "
            f"chars/s  {out['record_single_mb']:,.0f} MB")
        folders = {}
        for n in (1, 2):
            (ctx, c), out[f"start_{n}_s"] = started(n)
            try:
                folders[n] = root / f"workers-{n}"
                _, out[f"record_{n}_s"] = timed(lambda: cluster.record_shards(
                    c, a.model, docs.documents, docs.source, folders[n], progress=False))
            finally:
                ctx.__exit__(None, None, None)
            say(f"({'bc'[n - 1]}) record, {n} worker{'s' if n > 1 else ' '}:      {out[f'record_{n}_s']:7.1f} s  "
                f"{T / out[f'record_{n}_s']:8,.0f} chars/s  {size_mb(folders[n]):,.0f} MB  "
                f"(cluster start-up {out[f'start_{n}_s']:.1f} s, not counted)")
        shutil.rmtree(folders[1])
        rec_path = folders[2]
        out["record_overhead"] = out["record_1_s"] / out["record_single_s"]
        out["record_speedup_2"] = out["record_1_s"] / out["record_2_s"]
        say(f"    (b)/(a) Dask overhead {out['record_overhead']:.2f};  (b)/(c) speed-up of 2 workers "
            f"{out['record_speedup_2']:.2f} (goal >= 1.6)")

        # ---- analysis -------------------------------------------------------------------
        def local():
            with open_recording(rec_path) as rec:
                return detectors.scores_and_saturation(rec, None, threads=1)

        def remote(c):
            with open_recording(rec_path) as rec:
                return cluster.analyze(c, rec)

        base, t_local = timed(local)
        runs = {}
        for n in (1, 2):
            (ctx, c), _ = started(n)
            try:
                runs[n], out[f"analyze_{n}_s"] = timed(lambda: remote(c))
            finally:
                ctx.__exit__(None, None, None)
        _, t_local2 = timed(local)
        out["analyze_single_s"] = min(t_local, t_local2)
        out["analyze_single_runs_s"] = [round(t_local, 2), round(t_local2, 2)]
        for n in (1, 2):  # the cluster's scores are the single process's, bit for bit
            pd.testing.assert_frame_equal(runs[n][0], base[0], check_exact=True)
            for x, y in zip(runs[n][1], base[1]):
                pd.testing.assert_frame_equal(x, y, check_exact=True)
        out["exact"] = True
        out["analyze_overhead"] = out["analyze_1_s"] / out["analyze_single_s"]
        out["analyze_speedup_2"] = out["analyze_1_s"] / out["analyze_2_s"]
        say(f"(d) analyze, one process:     {out['analyze_single_s']:7.1f} s  (runs {t_local:.1f}, {t_local2:.1f})")
        for n in (1, 2):
            say(f"({'ef'[n - 1]}) analyze, {n} worker{'s' if n > 1 else ' '}:     {out[f'analyze_{n}_s']:7.1f} s")
        say(f"    (e)/(d) Dask overhead {out['analyze_overhead']:.2f} (goal <= 1.2);  (e)/(f) speed-up of "
            f"2 workers {out['analyze_speedup_2']:.2f};  scores equal bit for bit: yes")
    finally:  # what an interrupted run left, and the 2-worker recording unless --keep
        (root / "single.h5").unlink(missing_ok=True)
        for name in ("workers-1",) if a.keep else ("workers-1", "workers-2"):
            shutil.rmtree(root / name, ignore_errors=True)
        if not a.dir and not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
