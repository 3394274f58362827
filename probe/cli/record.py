"""``probe record``: run a model over a text and keep every layer's gates and states in HDF5
(one file, one shard of it, or all shards side by side on a Dask cluster)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from probe.cli.common import (
    Renamed,
    cluster_flags,
    command,
    device_flag,
    names,
    numbers,
    source_flags,
)
from probe.errors import ProbeError
from probe.files import check_target
from probe.lm.model import load_model, on_device
from probe.recording import shards
from probe.recording.reader import open_recording
from probe.recording.h5format import COMPRESSIONS
from probe.recording.record import record
from probe.text.corpus import load


def add_parser(sub) -> None:
    r = command(sub, "record", "record every layer's gates and states into HDF5", run, [
        "probe record --corpus stdlib --split test --limit 200000 --out recordings/stdlib-test.h5",
        "probe record --text mycode/ --glob '**/*.py' --out recordings/mycode.h5 --batch 16",
        "probe record --corpus stdlib --split train --workers 4 --out recordings/stdlib-train   # 4 shards "
        "side by side"], note="the --out folder is created if missing")
    source_flags(r, None, "record at most N characters (of text, whatever the model reads)")
    device_flag(r)
    r.add_argument("--out", required=True, help="recording to write (.h5); with --workers/--scheduler, "
                   "a folder of shards")
    r.add_argument("--dtype", default="float16", choices=["float16", "float32", "int8"],
                   help="stored precision of the streams (default float16; int8: a quarter of float32, "
                        "each unit coded by its own 256-value codebook, rank order kept, read back as float32)")
    r.add_argument("--keep", metavar="S,S", help="record only these streams (e.g. c,h; default: all of "
                   "the model's: LSTM i,f,g,o,c,h; GRU r,z,n,h; RNN h)")
    r.add_argument("--layers", metavar="L,L", help="record only these layers (e.g. 1; default: all)")
    r.add_argument("--compression", default="zstd", choices=list(COMPRESSIONS),
                   help="zstd (default: fast, ~25%% smaller; h5py needs `import hdf5plugin`), "
                        "gzip (any HDF5 tool) or none")
    r.add_argument("--batch", type=int, default=1, metavar="B",
                   help="batched mode: run B pieces of the text side by side (default 1: sequential, exact)")
    r.add_argument("--streams", dest="batch", type=int, action=Renamed, new="--batch")  # it was the batch size
    r.add_argument("--burn-in", type=int, default=256,
                   help="warm-up positions (characters, or a word model's tokens) before each piece in "
                        "batched mode (default 256)")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: a character-at-a-time LSTM gains little from "
                        "more, and loses a lot when other programs share the cores)")
    r.add_argument("--shard", metavar="I/N", help="record only the I-th (1..N) of N contiguous parts of the "
                   "text (whole documents, balanced by characters); a folder of all N files opens as one "
                   "recording (docs/recording-format.md, Shards)")
    r.add_argument("--force", action="store_true", help="overwrite an existing recording")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    cluster_flags(r, "record N shards side by side, one per worker (then --out is a folder of shards; "
                  "docs/scale.md)")
    r.add_argument("--shards", type=int, metavar="N", help="with --workers/--scheduler: how many shards to "
                   "write (default: one per worker)")


def run(a: argparse.Namespace) -> int:
    if a.workers is not None or a.scheduler is not None:
        return run_on_cluster(a)
    if a.shards is not None:
        raise ProbeError("--shards needs --workers or --scheduler (one file per shard: --shard I/N)")
    out = check_target(a.out, a.force)  # fail before the slow part
    shard = shards.parse_spec(a.shard) if a.shard else None
    torch.set_num_threads(max(1, a.threads))
    model = on_device(load_model(a.model), a.device)
    c = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit)
    docs, source = shards.take(c.documents, c.source, *shard) if shard else (c.documents, c.source)
    record(model, docs, out, source=source, dtype=a.dtype, batch=a.batch, burn_in=a.burn_in,
           force=a.force, progress=not a.quiet, compression=a.compression,
           keep=names(a.keep, "--keep"), layers=numbers(a.layers, "--layers"))
    n = sum(len(t) for _, t in docs)
    print(f"wrote {out}: {length(out, n)}, {len(docs)} documents, "
          + (f"shard {shard[0]}/{shard[1]}, " if shard else "") + f"{out.stat().st_size / 1e6:.1f} MB")
    return 0


def length(path, chars: int) -> str:
    """What was recorded, as the line after it says: "N characters", or "T tokens (N
    characters)" for a model that reads tokens (read back from the recording written)."""
    with open_recording(path) as rec:
        if rec.char_level:
            return f"{chars:,} characters"
        return f"{len(rec):,} tokens ({chars:,} characters)"


def run_on_cluster(a: argparse.Namespace) -> int:
    """probe record --workers N | --scheduler ADDR: N shards into the folder --out."""
    from probe.analysis import cluster  # Dask: only when asked for
    if a.shard:
        raise ProbeError("--shard I/N records one shard here; with --workers/--scheduler every shard is "
                         "recorded (--shards N sets how many)")
    if a.workers is not None:
        cluster.check_workers(a.workers)
    if a.shards is not None and a.shards < 1:
        raise ProbeError(f"--shards must be at least 1, got {a.shards}")
    out = Path(a.out)
    if out.suffix == ".h5":
        raise ProbeError(f"{out}: with --workers/--scheduler, --out is a folder of shards; name it "
                         "without .h5 (like recordings/stdlib-train)")
    check_target(out, a.force, folder=True)  # fail before the slow part
    load_model(a.model)  # a bad checkpoint: one line, before starting a cluster
    c = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit)
    with cluster.client(a.workers, a.scheduler) as client:
        done = cluster.record_shards(
            client, a.model, c.documents, c.source, out, shards=a.shards, force=a.force, progress=not a.quiet,
            threads=max(1, a.threads), dtype=a.dtype, batch=a.batch, burn_in=a.burn_in,
            compression=a.compression, keep=names(a.keep, "--keep"), layers=numbers(a.layers, "--layers"))
    print(f"wrote {out}/: {len(done)} shards, {length(out, sum(d['chars'] for d in done))}, "
          f"{sum(d['bytes'] for d in done) / 1e6:.1f} MB")
    return 0
