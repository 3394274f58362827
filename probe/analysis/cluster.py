"""Recording and analysis on a Dask cluster (``dask.distributed``).

    from probe.analysis import cluster
    with cluster.client(workers=4) as c:             # a LocalCluster of 4 processes
        cluster.record_shards(c, "lstm", corpus.documents, corpus.source, "recordings/big")
        with probe.open_recording("recordings/big") as rec:
            scores, sats = cluster.analyze(c, rec)          # == detectors.scores_and_saturation
    with cluster.client(scheduler="tcp://10.0.0.5:8786") as c:  # a running cluster: the same code
        ...

``probe record … --workers N`` / ``--scheduler ADDR`` and ``probe analyze REC --workers N`` /
``--scheduler ADDR`` are these functions (docs/scale.md). Workers read and write the
recording at the path the client gives them: the client and every worker must see the same
folder at the same path (one machine, or a shared file system).

**Recording.** One task per shard: the worker loads the model itself (from the checkpoint's
path, or a shipped model's name, and checks its sha256 against the client's: a worker that
sees another file under that path is an error) and runs ``probe.recording.record.record`` on the
shard's documents, which the client sends (``probe.recording.shards.take``: the same parts as
``--shard I/N``). The shards are written into a hidden temporary folder beside the target,
renamed into place when all are complete; each shard file is itself written under a
hidden temporary name and renamed when complete, so a worker killed mid-task leaves only a
hidden temporary (removed at the end) and a shard is never half-written under its name.
Dask runs the task of a dead worker again elsewhere; the retry rewrites its own shard
(``force``), so a shard finished by a worker that died before reporting is replaced by an
identical one.

**Analysis.** The client computes the features of the whole text (they depend on the
documents' context) and sends each part (``stats.parts_of``: each shard, or the file)
its rows of them. Tasks per (layer, stream): the shift (``stats.shift_of``), then one
``stats.part_stats`` per part, folded in shard order with ``stats.combine`` and
turned into scores by ``stats.finish``, on the workers; the client gathers one small
frame per (layer, stream). ``detectors.scores_and_saturation`` in one process runs these
same functions on the same parts in the same order (and Σx·f on one torch thread in both),
so the scores are equal bit for bit. Integer counts (AUC histograms, saturation) are exact
in any order anyway.

**Failures.** A worker that dies is noticed by the scheduler, which runs its tasks again
on another worker (up to ``distributed.scheduler.allowed-failures`` deaths per task, 3 by
default); data a dead worker held is recomputed, including each part's features (they are
the argument of a task, not scattered data). Tasks that raise are not retried: every error
here (a damaged shard, a missing file, a bad checkpoint) would happen again.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from probe.analysis import detectors, stats
from probe.analysis import progress as progress_mod
from probe.errors import ProbeError
from probe.files import atomic, check_target

CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler before giving up
NO_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"  # unset for local workers
SHARD_NAME = "part-{index:0{width}d}-of-{count:0{width}d}.h5"


def shard_name(index: int, count: int) -> str:
    """``part-0002-of-0004.h5``: the name ``record_shards`` gives shard ``index`` of ``count``."""
    return SHARD_NAME.format(index=index, count=count, width=max(4, len(str(count))))


def check_workers(workers) -> int:
    """``--workers N``: a whole number >= 1 (one-line error otherwise)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ProbeError(f"--workers must be a whole number >= 1 (Dask worker processes), got {workers!r}")
    return workers


def _distributed():
    try:
        import distributed
    except ImportError:  # a dependency of probe: only a broken installation lacks it
        raise ProbeError("--workers/--scheduler need dask.distributed: pip install 'dask[distributed]'") from None
    return distributed


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def client(workers: int | None = None, scheduler: str | None = None, *,
           timeout: float | None = None) -> Iterator:
    """A ``dask.distributed.Client``: of a new local cluster of ``workers`` processes (one
    thread each, listening on 127.0.0.1 only, no dashboard, quiet logs; closed on exit), or
    of the running cluster whose scheduler is at ``scheduler`` (``tcp://HOST:PORT``). An
    address that cannot be reached within ``timeout`` seconds (default CONNECT_TIMEOUT) is a
    one-line ProbeError."""
    distributed = _distributed()
    if workers is not None and scheduler is not None:
        raise ProbeError("--workers and --scheduler: give one (--workers starts a local cluster, "
                         "--scheduler uses a running one)")
    if scheduler is None:
        n = check_workers((os.cpu_count() or 1) if workers is None else workers)
        import dask
        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc map fresh
        # pages for every large array: the analysis ran 2-4x slower in a worker than here
        with warnings.catch_warnings(), dask.config.set({NO_TRIM: None}):
            warnings.simplefilter("ignore")  # e.g. a port already in use: another is picked
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address=None,
                                               silence_logs=logging.ERROR)
        try:
            c = distributed.Client(cluster, set_as_default=False)
            try:
                yield c
            finally:
                c.close()
        finally:
            cluster.close()
        return
    address = str(scheduler).strip()
    if not address:
        raise ProbeError("--scheduler: give the scheduler's address, like tcp://10.0.0.5:8786")
    try:
        c = distributed.Client(address, timeout=CONNECT_TIMEOUT if timeout is None else timeout,
                               set_as_default=False)
    except Exception as e:  # OSError (timed out, refused), ValueError (no port), …
        raise ProbeError(f"--scheduler {address}: cannot reach a Dask scheduler there ({_one_line(e)})") from None
    try:
        yield c
    finally:
        c.close()


def _workers(c) -> int:
    """Workers connected now; a one-line error if there are none (tasks would wait forever)."""
    n = len(c.scheduler_info().get("workers", {}))
    if n == 0:
        raise ProbeError(f"no workers are connected to the scheduler at {c.scheduler.address}: start "
                         "`dask worker ADDRESS` on machines that see the recording's folder")
    return n


def _wait(c, futures: list, bar, size: dict, release: bool = False) -> None:
    """Wait for ``futures``, advancing ``bar`` by ``size[key]`` as each completes; errors become
    one-line ProbeErrors (a task's own ProbeError as it is). ``release``: empty the list and
    drop each future once done, so the cluster can free its result."""
    distributed = _distributed()
    pending = distributed.as_completed(futures, loop=c.loop)
    if release:
        futures.clear()
    try:
        for fut in pending:
            if fut.status != "finished":
                fut.result()  # raises the task's exception
            bar.update(size.get(fut.key, 0))
    except ProbeError:
        raise
    except distributed.scheduler.KilledWorker as e:
        raise ProbeError(f"the workers running a task kept dying, out of memory? ({_one_line(e)})") from None
    except (distributed.CancelledError, OSError) as e:  # the scheduler or the connection to it is gone
        raise ProbeError(f"lost the Dask cluster ({_one_line(e)})") from None


def _one_thread(threads: int = 1) -> None:
    import torch
    torch.set_num_threads(threads)  # the parallelism is one task per worker thread


def _where(path: str) -> str:
    return f"{path} (on worker {socket.gethostname()})"


def _seen(path: str) -> None:
    """A worker that cannot see a path the client gave: say so (they must share the folder)."""
    if not Path(path).exists():
        raise ProbeError(f"{_where(path)}: no such file or folder: the workers must see the recording at the "
                         "same path as the client (one machine, or a shared folder)")


# ---- recording ------------------------------------------------------------------------------

def _model_spec(model) -> str | None:
    """What a worker loads: a shipped model's name as is (its own installation has it), a
    checkpoint as an absolute path (the worker reads the file the client names)."""
    from probe.lm.model import NAMED
    if model is None or (str(model) in NAMED and not Path(model).exists()):
        return None if model is None else str(model)
    return str(Path(model).resolve())


def _record_task(model: str | None, sha256: str, documents, source: dict, target: str,
                 threads: int, options: dict) -> dict:
    """One shard, on a worker: load the model, check it is the client's, record."""
    _one_thread(threads)
    from probe.lm.model import load_model
    from probe.recording import record as recorder
    if model is not None and Path(model).is_absolute():
        _seen(model)
    _seen(str(Path(target).parent))
    m = load_model(model)
    if sha256 and m.sha256 != sha256:
        raise ProbeError(f"{_where(m.path)}: not the checkpoint the client loaded (sha256 {m.sha256[:12]}… "
                         f"vs {sha256[:12]}…): every worker must see the same model file")
    out = recorder.record(m, documents, target, source=source, force=True, progress=False, **options)
    return {"path": str(out), "chars": sum(len(t) for _, t in documents), "bytes": out.stat().st_size}


def record_shards(c, model, documents: list[tuple[str, str]], source: dict, out: str | os.PathLike, *,
                  shards: int | None = None, force: bool = False, progress: bool = True, threads: int = 1,
                  **options) -> list[dict]:
    """Record ``documents`` as ``shards`` shards (default: one per connected worker) into the
    folder ``out``, one task per shard on the cluster of client ``c``: the files
    ``probe record … --shard I/N`` writes, named ``part-000I-of-000N.h5``; the folder opens as
    one recording. ``model`` is a checkpoint path or a shipped model's name (None: the
    shipped LSTM), loaded by each worker: a path every worker sees, not pickled weights, so
    every shard records the checkpoint's own sha256 and path, as ``probe record`` does.
    ``options`` go to ``probe.recording.record.record`` (dtype, batch, burn_in, compression, keep,
    layers, checksums). An existing non-empty folder is replaced only with ``force``, and
    only when every shard is complete. Returns, per shard, its path, characters and bytes."""
    from probe.lm.model import load_model
    from probe.recording import shards as shards_mod
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ProbeError("record_shards takes a checkpoint's path or a shipped model's name: each worker "
                         "loads the model itself")
    out = Path(out)
    if out.suffix == ".h5":
        raise ProbeError(f"{out}: with --workers/--scheduler, --out is a folder of shards; name it "
                         "without .h5 (like recordings/stdlib-train)")
    check_target(out, force, folder=True)
    documents = [(n, t) for n, t in documents if t]
    if not documents:
        raise ProbeError("empty text: nothing to record")
    connected = _workers(c)  # none: a one-line error, not tasks waiting forever
    count = connected if shards is None else shards
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ProbeError(f"--shards must be a whole number >= 1, got {count!r}")
    shards_mod.split([len(t) for _, t in documents], count)  # too many shards: a one-line error now
    spec = _model_spec(model)
    sha256 = load_model(model).sha256  # a bad checkpoint fails here, before any work
    token = uuid.uuid4().hex[:8]
    with atomic(out.resolve(), folder=True) as tmp:
        futures, size = [], {}
        for i in range(1, count + 1):
            part, src = shards_mod.take(documents, source, i, count)
            key = f"probe-record-{i}-of-{count}-{token}"
            size[key] = sum(len(t) for _, t in part)
            futures.append(c.submit(_record_task, spec, sha256, part, src, str(tmp / shard_name(i, count)),
                                    threads, options, key=key, pure=False))
        bar = progress_mod.bar(progress, sum(size.values()), f"recording {count} shards")
        try:
            _wait(c, futures, bar, size)
        except BaseException:
            c.cancel(futures)
            raise
        finally:
            bar.close()
        done = c.gather(futures)
        for leftover in tmp.glob(".*.tmp-*"):  # temporaries of workers killed mid-shard
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    for d in done:
        d["path"] = str(out / Path(d["path"]).name)
    return done


# ---- analysis -------------------------------------------------------------------------------

def _hold(value):
    """A task that returns its argument: data the scheduler can recompute if a worker dies."""
    return value


def _shift_task(files: list[str], layer: int, stream: str):
    from probe.recording.reader import Recording
    _one_thread()
    recs = []
    try:
        for f in files:
            _seen(f)
            recs.append(Recording(f))
        return stats.shift_of([r.stream(layer, stream) for r in recs])
    finally:
        for r in recs:
            r.close()


def _scan_task(file: str, layer: int, stream: str, shift, fx, chunk: int, sat, offset: int,
               total: int | None = None) -> dict:
    from probe.recording.reader import Recording
    _one_thread()
    _seen(file)
    with Recording(file) as rec:
        return stats.part_stats(rec.stream(layer, stream), fx, stream, shift, chunk, sat, None, offset,
                                    total)


def analyze(c, rec, feats=None, *, regex: dict[str, str] | None = None, layers=None,
            streams=None, chunk: int = stats.CHUNK, sat: tuple[float, float] | None = (0.1, 0.9),
            progress: bool = False, summaries: bool = False):
    """``detectors.scores_and_saturation`` of the open recording ``rec`` (a folder of shards,
    or a file: one part) on the cluster of client ``c``: the same (scores frame, saturation
    frames), equal bit for bit; each worker opens the parts' files itself, at the paths the
    client sees. ``feats`` default to the built-in ones (plus ``regex``).
    With ``summaries`` a third item, the per-unit summaries as ``detectors.scan_all``'s
    (each part's built by its scan task, folded in shard order by ``stats.combine``)."""
    _workers(c)  # before the features: no workers is a one-line error, not a wait
    if feats is None:
        feats = detectors.default_features(rec, regex)
    pairs, fx, parts, fxs = detectors.prepare(rec, feats, layers, streams, chunk)
    files = [str(Path(p.path).resolve()) for p in parts]
    lengths = [len(p) for p in parts]
    starts = stats.offsets(lengths)
    first = [f for f, o in zip(files, starts) if o < stats.SHIFT_ROWS]  # the files the shift reads
    token = uuid.uuid4().hex[:8]
    meta = fx.part(0, 0)  # names, groups and whole-text sums: what finish needs, no rows
    size, scans, finals = {}, [], []
    shift = part = acc = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ll]arge graph")  # each part's features
        held = [c.submit(_hold, fp, key=f"probe-features-{j}-{token}", pure=False) for j, fp in enumerate(fxs)]
    for k, s in pairs:
        name = f"{k}-{s}-{token}"
        shift = c.submit(_shift_task, first, k, s, key=f"probe-shift-{name}", pure=False)
        want = detectors.want_saturation(s, sat)
        part = []
        for j, (f, o) in enumerate(zip(files, starts)):
            key = f"probe-scan-{j}-{name}"
            size[key] = lengths[j]
            part.append(c.submit(_scan_task, f, k, s, shift, held[j], chunk, want, o,
                                  sum(lengths) if summaries else None, key=key, pure=False))
        scans += part
        acc = part[0]
        for j in range(1, len(part)):  # the left fold, in shard order, as stats.reduce_parts
            acc = c.submit(stats.combine, acc, part[j], key=f"probe-combine-{j}-{name}", pure=False)
        finals.append(c.submit(stats.finish_all, acc, meta, k, s, key=f"probe-finish-{name}", pure=False))
    del held, shift, part, acc  # the scheduler frees each intermediate once its consumer ran
    bar = progress_mod.bar(progress, len(pairs) * sum(lengths), "scoring")
    try:
        _wait(c, scans, bar, size, release=True)
        _wait(c, finals, bar, {})
        done = c.gather(finals)
    except BaseException:
        c.cancel(finals)  # and so every task only they needed
        raise
    finally:
        bar.close()
    sc, sats = stats.assemble(done)
    if summaries:
        return sc, sats, {pair: d[2] for pair, d in zip(pairs, done)}
    return sc, sats
