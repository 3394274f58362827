"""The ``probe`` command line: thin wrappers over the library, one subcommand each."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from probe.analysis import cache as analysis
from probe.analysis import detectors, match
from probe.causal import gradients, intervene
from probe.errors import ProbeError
from probe.files import atomic, check_target
from probe.lm.model import NAMED, SHIPPED, file_sha256, load_model, model_from_checkpoint, read_checkpoint, shipped
from probe.lm.sample import sample
from probe.lm.train import DEFAULT_STEPS, TrainConfig, train
from probe.output.export import export_lstmvis
from probe.output.render import render_recording
from probe.recording import derived, shards
from probe.recording.h5format import COMPRESSIONS
from probe.recording.reader import open_recording, summary, verify
from probe.recording.record import record
from probe.text.corpus import encode, load
from probe.text.features import parse_feature_args

EPILOG = "examples:\n  "
# help for probe train's flags, one per TrainConfig field (the defaults come from the field)
TRAIN_HELP = {
    "layers": "LSTM layers", "units": "units per layer", "embedding": "character embedding size",
    "dropout": "dropout between layers and before the head",
    "batch": "rows of text read side by side per step",
    "seq": "characters per TBPTT window",
    "steps": f"optimizer steps (default {DEFAULT_STEPS}; with --resume, a larger number extends the run)",
    "lr": "peak learning rate (Adam)", "warmup": "steps of linear warmup",
    "min_lr_frac": "the cosine schedule decays to lr x this", "clip": "gradient-norm clip",
    "eval_every": "steps between validations (and checkpoints)",
    "eval_chars": "validation characters per evaluation", "seed": "random seed",
}


def _source_flags(p: argparse.ArgumentParser, limit: int | None, limit_help: str) -> None:
    """--model and the text to read (--corpus | --text, --glob, --split, --limit): the same
    flags for every command that runs a model over text."""
    p.add_argument("--model", help="checkpoint, or a shipped model: lstm (default), gru, rnn")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", default="stdlib", help="built-in corpus: stdlib (default) or linux")
    src.add_argument("--text", help="a UTF-8 text file or a folder of them")
    p.add_argument("--glob", default="**/*", help="files to take from a --text folder (default **/*)")
    p.add_argument("--split", default="test", help="split of a built-in corpus: train, val, test (default)")
    p.add_argument("--limit", type=int, default=limit, help=limit_help)


def _cluster_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--workers N | --scheduler ADDR: run on a Dask cluster (probe.analysis.cluster)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, metavar="N", help=f"start a local Dask cluster of N worker "
                   f"processes and {what}")
    g.add_argument("--scheduler", metavar="ADDR", help="the same on a running Dask cluster (its scheduler's "
                   "address, like tcp://10.0.0.5:8786); the workers must see the same folders at the same paths")


def _train_flags(t: argparse.ArgumentParser) -> None:
    """One flag per numeric TrainConfig field, its default taken from the field."""
    for f in dataclasses.fields(TrainConfig):
        if f.name not in TRAIN_HELP:
            continue
        kind = int if f.name == "steps" else type(f.default)
        default = "" if f.default is None else f" (default {f.default})"
        t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                       help=TRAIN_HELP[f.name] + ("" if f.name == "steps" else default))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probe", description="Look inside character-level "
                                "LSTM language models, one cell at a time.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a character-level LSTM language model", formatter_class=fmt,
                       epilog=EPILOG + "probe train --out runs/stdlib.pt              # the shipped model (about 1 h)\n"
                       "  probe train --text notes.txt --out runs/notes.pt --units 128 --steps 500\n"
                       "  probe train --out runs/stdlib.pt --resume")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--corpus", default="stdlib", help="built-in corpus: stdlib (default) or linux")
    src.add_argument("--text", help="a UTF-8 text file or a folder of them")
    t.add_argument("--glob", default="**/*", help="files to take from a --text folder (default **/*)")
    t.add_argument("--out", required=True, help="checkpoint to write (best validation weights)")
    t.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"],
                   help="recurrent cell: lstm (default), gru, or rnn (vanilla, tanh)")
    _train_flags(t)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--resume", action="store_true", help="continue from OUT's .resume.pt")
    t.add_argument("--init", metavar="CKPT", help="start from CKPT's weights, widened to --units "
                   "(same function at step 0; its vocabulary, layers and embedding are kept)")
    t.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate text from a model", formatter_class=fmt,
                       epilog=EPILOG + "probe sample --prime 'def ' --length 400 --temperature 0.7 --seed 1\n"
                       "  probe sample --prime 'x = ' --clamp 0:89:c=0 --seed 1     # the quote cell held at 0")
    s.add_argument("--model", help="checkpoint, or a shipped model: lstm (default), gru, rnn")
    s.add_argument("--prime", default="\n", help="text to start from")
    s.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    s.add_argument("--temperature", type=float, default=0.8, help="1 = model's distribution, 0 = greedy")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: a different sample each run)")
    s.add_argument("--clamp", action="append", default=[], metavar="L:U=VALUE",
                   help="pin unit U of layer L to VALUE at every step (h; L:U:c=VALUE pins the cell "
                        "state); repeatable")

    i = sub.add_parser("info", help="describe a model checkpoint, a recording, or a directions/dictionary file",
                       formatter_class=fmt,
                       epilog=EPILOG + "probe info probe/models/stdlib.pt\n  probe info recordings/stdlib-test.h5\n"
                       "  probe info recordings/stdlib-test.h5 --verify\n  probe info dict.pt --json\n"
                       "  probe info stdlib-10.ngram.npz")
    i.add_argument("path", nargs="?", help="a .pt checkpoint, a .h5 recording, or a file from probe directions "
                   "or probe dictionary (default: shipped model)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--verify", action="store_true",
                   help="read every chunk of a recording and check its checksum (exit 1 if damaged)")

    r = sub.add_parser("record", help="record every layer's gates and states into HDF5", formatter_class=fmt,
                       epilog=EPILOG + "probe record --corpus stdlib --split test --limit 200000 "
                       "--out recordings/stdlib-test.h5\n  probe record --text mycode/ --glob '**/*.py' "
                       "--out recordings/mycode.h5 --batch 16\n  probe record --corpus stdlib --split train "
                       "--workers 4 --out recordings/stdlib-train   # 4 shards side by side")
    _source_flags(r, None, "record at most N characters")
    r.add_argument("--out", required=True, help="recording to write (.h5); with --workers/--scheduler, "
                   "a folder of shards")
    r.add_argument("--dtype", default="float16", choices=["float16", "float32", "int8"],
                   help="stored precision of the streams (default float16; int8: a quarter of float32, "
                        "each unit coded by its own 256-value codebook, rank order kept, read back as float32)")
    r.add_argument("--keep", metavar="S,S", help="record only these streams (e.g. c,h; default: all of "
                   "the cell's: LSTM i,f,g,o,c,h; GRU r,z,n,h; RNN h)")
    r.add_argument("--layers", metavar="L,L", help="record only these layers (e.g. 1; default: all)")
    r.add_argument("--compression", default="zstd", choices=list(COMPRESSIONS),
                   help="zstd (default: fast, ~25%% smaller; h5py needs `import hdf5plugin`), "
                        "gzip (any HDF5 tool) or none")
    r.add_argument("--batch", type=int, default=1, metavar="B",
                   help="batched mode: run B pieces of the text side by side (default 1: sequential, exact)")
    r.add_argument("--streams", type=int, dest="streams_deprecated", default=None, help=argparse.SUPPRESS)
    r.add_argument("--burn-in", type=int, default=256,
                   help="warm-up characters before each piece in batched mode (default 256)")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: a character-at-a-time LSTM gains little from "
                        "more, and loses a lot when other programs share the cores)")
    r.add_argument("--shard", metavar="I/N", help="record only the I-th (1..N) of N contiguous parts of the "
                   "text (whole documents, balanced by characters); a folder of all N files opens as one "
                   "recording (docs/recording-format.md, Shards)")
    r.add_argument("--force", action="store_true", help="overwrite an existing recording")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _cluster_flags(r, "record N shards side by side, one per worker (then --out is a folder of shards; "
                   "docs/scale.md)")
    r.add_argument("--shards", type=int, metavar="N", help="with --workers/--scheduler: how many shards to "
                   "write (default: one per worker)")

    v = sub.add_parser("render", help="write one cell's coloured text as a standalone HTML page",
                       formatter_class=fmt,
                       epilog=EPILOG + "probe render recordings/stdlib-test.h5 --layer 1 --stream c --unit 42 "
                       "--out cell.html\n  probe render rec.h5 --layer 0 --stream f --unit 7 --start 5000 "
                       "--stop 9000 --out f7.html --force")
    v.add_argument("recording", help="a .h5 recording")
    v.add_argument("--layer", type=int, required=True, help="layer, 0 = nearest the input")
    v.add_argument("--stream", required=True, help="one of i f g o c h (c is coloured by tanh(c))")
    v.add_argument("--unit", type=int, required=True, help="unit within the layer")
    v.add_argument("--start", type=int, default=0, help="first character (default 0)")
    v.add_argument("--stop", type=int, default=None, help="end character (default start + 3000)")
    v.add_argument("--out", required=True, help="HTML file to write")
    v.add_argument("--force", action="store_true", help="overwrite an existing file")

    x = sub.add_parser("export-lstmvis", help="write a recording as an LSTMVis project folder",
                       formatter_class=fmt, epilog=EPILOG + "probe export-lstmvis recordings/stdlib-test.h5 "
                       "lstmvis/stdlib-test --streams c,h")
    x.add_argument("recording", help="a probe recording (.h5)")
    x.add_argument("outdir", help="folder to write (lstm.yml, states.hdf5, chars.hdf5, chars.dict)")
    x.add_argument("--streams", default="c,h", help="comma-separated streams to export (default c,h)")
    x.add_argument("--force", action="store_true", help="replace a non-empty folder")
    x.add_argument("--quiet", action="store_true", help="no progress bar")

    ab = sub.add_parser("ablate", help="pin cells while the model reads, and measure what it costs",
                        formatter_class=fmt, epilog=EPILOG + "probe ablate --cells 0:89 --limit 20000\n"
                        "  probe ablate --layer 0 --feature in_short_string --limit 10000 --csv layer0.csv\n"
                        "  probe ablate --text mycode/ --cells 0:89,1:158 --how mean --json\n"
                        "  probe ablate --directions dirs.pt --feature in_short_string --on h   # a probe direction")
    _source_flags(ab, 20_000, "characters to read (default 20000)")
    which = ab.add_mutually_exclusive_group(required=True)
    which.add_argument("--cells", metavar="L:U[,L:U...]", help="the cells to ablate, e.g. 0:89,1:158")
    which.add_argument("--layer", type=int, help="sweep every unit of this layer")
    which.add_argument("--directions", metavar="D.pt", help="remove each feature's probe direction (a file "
                       "from probe directions) at every step, against random directions")
    ab.add_argument("--feature", action="append", default=[], metavar="NAME",
                    help="feature to measure at (repeatable; default: every binary feature)")
    ab.add_argument("--how", default="zero", help="pin to zero (default), mean (over the text) or a number")
    ab.add_argument("--on", choices=["h", "c"], default=None,
                    help="pin the hidden output h (default) or the cell state c; with --directions, "
                         "edit only that stream's part of each direction (default: every stream it reads)")
    ab.add_argument("--random", type=int, help="random units of the same layer to compare "
                    "with (default 32; with --directions, random directions, default 16)")
    ab.add_argument("--seed", type=int, default=0, help="seed of the random units (default 0)")
    out = ab.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--csv", metavar="OUT", help="write the table as CSV")
    ab.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: every core; use 1 when other programs keep the "
                         "cores busy: waiting threads then slow it down many times)")
    ab.add_argument("--force", action="store_true", help="overwrite an existing --csv file")
    ab.add_argument("--quiet", action="store_true", help="no progress bar")

    mt = sub.add_parser("match", help="select a span's cells and find where else they are on together",
                        formatter_class=fmt, epilog=EPILOG + "probe match recordings/stdlib-test.h5 --layer 0 "
                        "--stream c --span 5010:5016\n"
                        "  probe match rec.h5 --layer 1 --stream c --units 43,158 --top 20 --json")
    mt.add_argument("recording", help="a .h5 recording")
    mt.add_argument("--layer", type=int, required=True, help="layer, 0 = nearest the input")
    mt.add_argument("--stream", required=True, help="one of i f g o c h (c is compared as tanh(c))")
    what = mt.add_mutually_exclusive_group(required=True)
    what.add_argument("--span", metavar="START:STOP", help="select the units on over these characters")
    what.add_argument("--units", metavar="U,U,...", help="search for these units")
    mt.add_argument("--threshold", type=float, default=0.3, help="a unit is on at >= this (default 0.3)")
    mt.add_argument("--top", type=int, default=50, help="matches to show (default 50)")
    mt.add_argument("--mode", default="lstmvis", choices=["lstmvis", "jaccard"],
                    help="ranking: lstmvis (LSTMVis's rule, default) or jaccard (see probe/match.py)")
    mt.add_argument("--off-after", action="store_true",
                    help="select only units that are also off right after the span")
    mt.add_argument("--json", action="store_true", help="machine-readable output")

    gr = sub.add_parser("gradients", help="how far back the loss reaches: gradient norm against steps back",
                        formatter_class=fmt, epilog=EPILOG + "probe gradients --limit 50000 --span 200\n"
                        "  probe gradients --model runs/gru.pt --text mycode/ --json --out gru-flow.json")
    _source_flags(gr, 50_000, "characters to sample positions from (default 50000)")
    gr.add_argument("--span", type=int, default=200, help="steps back, K (default 200)")
    gr.add_argument("--positions", type=int, default=1000, help="positions sampled (default 1000)")
    gr.add_argument("--seed", type=int, default=0, help="seed of the sampled positions (default 0)")
    gr.add_argument("--out", help="also write the result as JSON to this file")
    gr.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    gr.add_argument("--json", action="store_true", help="print the result as JSON")
    gr.add_argument("--quiet", action="store_true", help="no progress bar")

    an = sub.add_parser("analyze", help="rank the cells that track each per-character feature",
                        formatter_class=fmt, epilog=EPILOG + "probe analyze recordings/stdlib-test.h5 --top 3\n"
                        "  probe analyze rec.h5 --feature 'digit=[0-9]' --feature 'self=self\\.' --json\n"
                        "  probe analyze rec.h5 --causal        # ablate the top cells too\n"
                        "  probe analyze recordings/stdlib-train --workers 4   # a folder of shards, 4 processes\n"
                        "results are cached in REC.h5.analysis.npz (FOLDER/FOLDER.analysis.npz); "
                        "--refresh recomputes")
    an.add_argument("recording", help="a .h5 recording, or a folder of shards")
    an.add_argument("--top", type=int, default=5, help="cells per feature (default 5)")
    an.add_argument("--json", action="store_true", help="machine-readable output")
    an.add_argument("--refresh", action="store_true", help="recompute even if cached")
    an.add_argument("--causal", action="store_true", help="also ablate the ranked cells of binary features "
                    "(with the recording's model) and show the effect beside each score")
    an.add_argument("--causal-chars", type=int, default=20_000, metavar="N",
                    help="characters the ablation reads (default 20000, from the recording's start)")
    an.add_argument("--feature", action="append", default=[], metavar="NAME=REGEX",
                    help="extra binary feature: 1 inside matches of REGEX (repeatable)")
    _cluster_flags(an, "score the shards (and streams) side by side; the same scores, bit for bit, "
                   "and the same cache (docs/scale.md)")
    dr = sub.add_parser("directions", help="fit a linear read-out (probe direction) of each feature",
                        formatter_class=fmt, epilog=EPILOG + "probe directions recordings/stdlib-train.h5 --out dirs.pt\n"
                        "  probe directions rec.h5 --features column,bracket_depth --streams h --layers 1 --out d.pt\n"
                        "  probe encode rec.h5 --directions dirs.pt      # then: stream dir, one unit per feature\n"
                        "docs/distributed.md says how they are fitted and scored")
    dr.add_argument("recording", help="a .h5 recording (or a folder of shards) to fit on")
    dr.add_argument("--out", required=True, help="directions file to write (.pt)")
    dr.add_argument("--features", metavar="F,F", help="built-in features to fit (default: all)")
    dr.add_argument("--feature", action="append", default=[], metavar="NAME=REGEX",
                    help="extra binary feature: 1 inside matches of REGEX (repeatable)")
    dr.add_argument("--streams", default="c,h", metavar="S,S", help="streams read (default c,h; c through tanh)")
    dr.add_argument("--layers", metavar="L,L", help="layers read (default: all recorded)")
    dr.add_argument("--sample", type=int, default=200_000, help="positions fitted on at most (default 200000)")
    dr.add_argument("--seed", type=int, default=0, help="seed of the held-out split and sample (default 0)")
    dr.add_argument("--name", default="dir", help="the derived stream's name (default dir)")
    dr.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    dr.add_argument("--json", action="store_true", help="print the held-out scores as JSON")
    dr.add_argument("--quiet", action="store_true", help="no progress bar")

    dc = sub.add_parser("dictionary", help="train a sparse dictionary (top-k autoencoder) of one stream",
                        formatter_class=fmt, epilog=EPILOG + "probe dictionary rec.h5 --layer 1 --stream c --out dict.pt\n"
                        "  probe dictionary rec.h5 --layer 1 --stream h --features 2048 --k 32 --out d.pt\n"
                        "  probe dictionary rec.h5 --layer 1 --stream c --out dict.pt --resume   # after Ctrl-C\n"
                        "  probe info dict.pt --json     # explained_variance, l0, dead_fraction, loss_recovered")
    dc.add_argument("recording", help="a .h5 recording (or a folder of shards) to train on")
    dc.add_argument("--layer", type=int, required=True, help="the layer")
    dc.add_argument("--stream", required=True, help="the stream (c is read through tanh)")
    dc.add_argument("--features", type=int, default=1024, help="dictionary size (default 1024)")
    dc.add_argument("--k", type=int, default=32, help="active features per character (default 32)")
    dc.add_argument("--steps", type=int, help="training steps (default 6000; with --resume, a new total)")
    dc.add_argument("--batch", type=int, default=2048, help="rows per step (default 2048)")
    dc.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    dc.add_argument("--name", default="dict", help="the derived stream's name (default dict)")
    dc.add_argument("--out", required=True, help="dictionary file to write (.pt)")
    dc.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    dc.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    dc.add_argument("--quiet", action="store_true", help="no progress bar")

    en = sub.add_parser("encode", help="add a derived stream (directions or dictionary features) to a recording",
                        formatter_class=fmt, epilog=EPILOG + "probe encode recordings/stdlib-test.h5 --directions dirs.pt\n"
                        "  probe encode rec.h5 --dictionary dict.pt --force   # replace an earlier dict stream\n"
                        "the stream is then analysed, shown and matched like any other (probe analyze, the dashboard)")
    en.add_argument("recording", help="a .h5 recording, or a folder of shards (each shard gets the stream)")
    which = en.add_mutually_exclusive_group(required=True)
    which.add_argument("--directions", metavar="D.pt", help="a file from probe directions")
    which.add_argument("--dictionary", metavar="X.pt", help="a file from probe dictionary")
    en.add_argument("--force", action="store_true", help="apply a file made from another model's recording, "
                    "or replace a derived stream of the same name")
    en.add_argument("--quiet", action="store_true", help="no progress bar")
    ng = sub.add_parser("ngram", help="train a character n-gram model (interpolated Kneser-Ney), the baseline",
                        formatter_class=fmt, epilog=EPILOG + "probe ngram train --corpus stdlib --order 10 --out stdlib-10.ngram.npz\n"
                        "  probe ngram train --text mycode/ --glob '**/*.py' --model runs/my.pt --out my.ngram.npz\n"
                        "characters are read with --model's vocabulary (default the shipped LSTM's), "
                        "so the n-grams and the model score the same symbols")
    ng.add_argument("action", choices=["train"], help="train: count and save")
    _source_flags(ng, None, "train on at most N characters (default all)")
    ng.set_defaults(split="train")
    ng.add_argument("--order", type=int, default=10, help="highest order (default 10; orders 1..N are kept)")
    ng.add_argument("--out", required=True, help="the model file to write (.npz)")
    ng.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    ng.add_argument("--quiet", action="store_true", help="no progress bar")

    er = sub.add_parser("errors", help="the recorded model against n-grams: bits per order, and where it wins",
                        formatter_class=fmt, epilog=EPILOG + "probe errors recordings/stdlib-test.h5\n"
                        "  probe errors rec.h5 --ngram stdlib-10.ngram.npz --json\n"
                        "without --ngram: the order-10 model of the recording's model's training corpus, "
                        "built once (minutes) and kept in ~/.cache/probe ($PROBE_CACHE)")
    er.add_argument("recording", help="a .h5 recording (or a folder of shards) with its loss")
    er.add_argument("--ngram", help="an n-gram model from probe ngram train (default: see below)")
    er.add_argument("--order", type=int, default=10, help="order of the default n-gram model (default 10)")
    er.add_argument("--force", action="store_true", help="compare even if the vocabularies differ; overwrite "
                    "an existing --png file")
    er.add_argument("--json", action="store_true", help="machine-readable output")
    er.add_argument("--store", action="store_true", help="add the per-character results to the recording as "
                    "a derived stream ngram (advantage, ngram_bits, category), for the dashboard's "
                    "\"beyond n-grams\" tab; --force replaces an earlier one")
    er.add_argument("--png", metavar="FILE", help="also draw the two bar charts (distance, oracles) into a PNG "
                    "(needs Debian's chromium and chromium-driver)")
    er.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _names(value: str | None, flag: str) -> list[str] | None:
    """"c,h" -> ["c", "h"] (None when the flag is absent)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ProbeError(f"{flag}: expected a comma-separated list, got {value!r}")
    return names


def _numbers(value: str | None, flag: str) -> list[int] | None:
    """"0,1" -> [0, 1] (None when the flag is absent)."""
    names = _names(value, flag)
    try:
        return None if names is None else [int(v) for v in names]
    except ValueError:
        raise ProbeError(f"{flag}: expected comma-separated numbers, got {value!r}") from None


def cmd_record(a) -> int:
    if a.streams_deprecated is not None:
        print("probe: --streams is deprecated (it is the batch size); use --batch", file=sys.stderr)
        a.batch = a.streams_deprecated
    if a.workers is not None or a.scheduler is not None:
        return _record_on_cluster(a)
    if a.shards is not None:
        raise ProbeError("--shards needs --workers or --scheduler (one file per shard: --shard I/N)")
    out = check_target(a.out, a.force)  # fail before the slow part
    shard = shards.parse_spec(a.shard) if a.shard else None
    torch.set_num_threads(max(1, a.threads))
    model = load_model(a.model)
    c = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob)
    c = c.limited(a.limit)
    docs, source = shards.take(c.documents, c.source, *shard) if shard else (c.documents, c.source)
    record(model, docs, out, source=source, dtype=a.dtype, batch=a.batch, burn_in=a.burn_in,
           force=a.force, progress=not a.quiet, compression=a.compression,
           keep=_names(a.keep, "--keep"), layers=_numbers(a.layers, "--layers"))
    n = sum(len(t) for _, t in docs)
    print(f"wrote {out}: {n:,} characters, {len(docs)} documents, "
          + (f"shard {shard[0]}/{shard[1]}, " if shard else "") + f"{out.stat().st_size / 1e6:.1f} MB")
    return 0


def _record_on_cluster(a) -> int:
    """probe record --workers N | --scheduler ADDR: N shards into the folder --out."""
    from probe.analysis import cluster
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
            compression=a.compression, keep=_names(a.keep, "--keep"), layers=_numbers(a.layers, "--layers"))
    print(f"wrote {out}/: {len(done)} shards, {sum(d['chars'] for d in done):,} characters, "
          f"{sum(d['bytes'] for d in done) / 1e6:.1f} MB")
    return 0


def cmd_train(a) -> int:
    config = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    m = train(a.out, config, resume=a.resume, force=a.force, threads=a.threads, progress=not a.quiet)
    line = f"saved {a.out}: validation {m['val_bpc']:.3f} bits/char"
    if "test_bpc" in m:
        line += f", test {m['test_bpc']:.3f} bits/char"
    print(line + f", {m['chars']:,} characters in {m['train_seconds'] / 60:.1f} min")
    return 0


def cmd_sample(a) -> int:
    torch.set_num_threads(1)  # one character per step: threads only add synchronisation
    model = load_model(a.model)
    clamp = [intervene.parse_clamp(c) for c in a.clamp]
    text = sample(model, a.prime, a.length, a.temperature, a.seed, clamp=clamp)
    unknown = encode(a.prime, model.vocab)[1]
    if unknown:
        print(f"probe: {unknown} character(s) of --prime are outside the model's vocabulary; "
              "read as the unknown symbol", file=sys.stderr)
    print(a.prime + text)
    return 0


def model_summary(path: str | None, history: bool = False) -> dict:
    p = shipped(path) if path in NAMED and not Path(path).exists() else Path(path) if path else SHIPPED
    ck = read_checkpoint(p)
    model_from_checkpoint(ck, p)  # refuses weights that do not fit the config, naming the tensor
    cfg = dict(ck["config"])
    vocab = cfg.pop("vocab")
    m = {k: v for k, v in ck["metrics"].items() if history or k != "history"}
    return {"path": str(p), "sha256": file_sha256(p), "vocab_size": len(vocab), **cfg,
            "parameters": sum(v.numel() for v in ck["state_dict"].values()), "metrics": m}


def cmd_info(a) -> int:
    if a.verify:
        if not (a.path and (a.path.endswith((".h5", ".hdf5")) or Path(a.path).is_dir())):  # or shards
            raise ProbeError("--verify checks a recording (.h5); checkpoints are checked whenever loaded")
        bad = verify(a.path, progress=sys.stderr.isatty())
        if bad is None:
            print(f"{a.path}: cannot verify: recorded without checksums (before probe stored them)")
        elif not bad:
            print(f"{a.path}: verified: every chunk of every dataset matches its checksum")
        else:
            print("\n".join(f"{a.path}: damaged: {b}" for b in bad))
            raise ProbeError(f"{a.path}: {len(bad)} damaged range{'s' if len(bad) > 1 else ''} (see above)")
        return 0
    if a.path and (a.path.endswith((".h5", ".hdf5")) or Path(a.path).is_dir()):  # or a folder of shards
        info = summary(a.path)
    elif a.path and a.path.endswith(".npz"):  # an n-gram model (probe ngram train)
        from probe.text import ngram
        info = ngram.summary(a.path)
    elif a.path and derived.is_spec(a.path):  # from probe directions / probe dictionary
        info = derived.summary(a.path)
    else:
        info = model_summary(a.path, history=a.json)  # the learning curve only in JSON
    if a.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_tree(info)
    return 0


def _print_tree(d: dict, indent: int = 0) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            print(" " * indent + f"{k}:")
            _print_tree(v, indent + 2)
        else:
            print(" " * indent + f"{k}: {v}")


def cmd_render(a) -> int:
    out = check_target(a.out, a.force)
    page = render_recording(a.recording, a.layer, a.stream, a.unit, a.start, a.stop)
    with atomic(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"wrote {out}: layer {a.layer}, stream {a.stream}, unit {a.unit}, {len(page) / 1e3:.0f} kB")
    return 0


def cmd_directions(a) -> int:
    from probe.readout import directions
    out = check_target(a.out, a.force)
    regex = parse_feature_args(a.feature)
    with open_recording(a.recording) as rec:
        spec = directions.fit(rec, features=_names(a.features, "--features"), regex=regex,
                              streams=tuple(_names(a.streams, "--streams")), layers=_numbers(a.layers, "--layers"),
                              sample=a.sample, seed=a.seed, progress=not a.quiet, name=a.name)
    derived.save(spec, out)
    if a.json:
        print(json.dumps({"out": str(out), "metrics": spec["metrics"]}, indent=2, default=str))
    else:
        print(derived.report(spec))
        print(f"wrote {out}; add it to a recording with: probe encode REC.h5 --directions {out}")
    return 0


def cmd_dictionary(a) -> int:
    from probe.readout import dictionary
    with open_recording(a.recording) as rec:
        spec = dictionary.train(rec, a.layer, a.stream, features=a.features, k=a.k, steps=a.steps, batch=a.batch,
                                seed=a.seed, out=a.out, resume=a.resume, force=a.force, progress=not a.quiet,
                                name=a.name)
    print(derived.report(spec))
    print(f"wrote {a.out}; add it to a recording with: probe encode REC.h5 --dictionary {a.out}")
    return 0


def cmd_encode(a) -> int:
    spec_path = a.directions or a.dictionary
    kind = "directions" if a.directions else "dictionary"
    spec = derived.load(spec_path)
    if spec["kind"] != kind:
        raise ProbeError(f"{spec_path}: is a {spec['kind']} file; pass it as --{spec['kind']}")
    for file, layer, name in derived.encode(a.recording, spec_path, force=a.force, progress=not a.quiet):
        print(f"{file}: added stream {name} to layer {layer} ({len(spec['unit_names'])} units)")
    return 0


def cmd_ngram(a) -> int:
    from probe.text import ngram
    out = check_target(a.out, a.force)
    ngram.check_order(a.order)
    model = load_model(a.model)
    source = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob)
    if a.limit is not None:
        source = source.limited(a.limit)
    ng = ngram.train(source.documents, model.vocab, a.order, progress=not a.quiet,
                     info={**source.source, "model_sha256": model.sha256})
    ngram.save(ng, out)
    print(f"wrote {out}: orders 1..{ng.order} over {ng.info['characters']:,} characters, "
          f"{ng.nbytes / 1e6:.0f} MB of counts")
    return 0


def cmd_errors(a) -> int:
    from probe.analysis import advantage
    from probe.text import ngram
    with open_recording(a.recording) as rec:
        ng = ngram.load(a.ngram) if a.ngram else advantage.default_ngram(rec, ngram.check_order(a.order),
                                                                          progress=not a.quiet)
        res = advantage.compare(rec, ng, force=a.force)
    if a.store:
        name = Path(a.ngram).name if a.ngram else f"the default order-{ng.order} model"
        layer, stream = advantage.store(a.recording, res, name, ng.order, force=a.force, progress=not a.quiet)
        print(f"{a.recording}: added stream {stream} to layer {layer} ({', '.join(advantage.STORED)})",
              file=sys.stderr)
    if a.png:
        from probe.output import browser
        png = check_target(a.png, a.force)
        if not browser.available():
            raise ProbeError("--png needs Debian's chromium and chromium-driver (apt-get install chromium "
                             "chromium-driver)")
        import os

        from bokeh.io import export_png
        os.environ.setdefault("BOKEH_IN_DOCKER", "1")  # root: chromium needs --no-sandbox
        export_png(advantage.figure(res), filename=str(png))
    if a.json:
        print(json.dumps({"bpc": res["bpc"], "characters": res["characters"],
                          "advantage_by_distance": res["by_distance"], "advantage_by_feature": res["by_feature"],
                          "wrong": res["wrong"], "errors": res["errors"],
                          **({"note": res["note"]} if res["note"] else {})}, indent=2))
    else:
        print(advantage.report(res, title=f"{a.recording}: the recorded model against n-grams"))
    return 0


def cmd_export_lstmvis(a) -> int:
    streams = tuple(_names(a.streams, "--streams"))
    out = export_lstmvis(a.recording, a.outdir, streams, force=a.force, progress=not a.quiet)
    print(f"wrote {out}/ (lstm.yml, states.hdf5, chars.hdf5, chars.dict)")
    return 0


def cmd_analyze(a) -> int:
    regex = parse_feature_args(a.feature)
    detectors.check_top(a.top)  # before the slow part
    client = None
    if a.workers is not None or a.scheduler is not None:
        from probe.analysis import cluster
        if a.workers is not None:
            cluster.check_workers(a.workers)
        client = lambda: cluster.client(a.workers, a.scheduler)  # noqa: E731 (started on a cache miss)
    res = analysis.analysis(a.recording, refresh=a.refresh, progress=sys.stderr.isatty(), regex=regex,
                            client=client)
    top = detectors.best(res["scores"], a.top)
    if a.causal:
        effect = analysis.causal(a.recording, top, chars=a.causal_chars, progress=sys.stderr.isatty())
        top = top.merge(effect[["feature", "rank", "delta_bits", "random_median", "ratio"]],
                        on=["feature", "rank"], how="left")
    sat = detectors.saturation_summary(res["saturation"])
    if a.json:
        print(analysis.report_json(top, sat, recording=str(a.recording)))
    else:
        print(analysis.report_text(top, sat, title=f"{a.recording}: top {a.top} cells per feature"))
    return 0


def cmd_match(a) -> int:
    with open_recording(a.recording) as rec:
        if a.span:
            start, stop = match.parse_span(a.span)
            units = match.select(rec, a.layer, a.stream, start, stop, a.threshold, off_after=a.off_after)
        else:
            units = match.parse_units(a.units)
        hits = match.search(rec, a.layer, a.stream, units, a.threshold, a.top, a.mode)
        why = match.explain(rec, hits)
    if a.json:
        print(json.dumps({"units": units,
                          "matches": hits.drop(columns="text").to_dict("records"),
                          "explain": why.replace({np.nan: None}).to_dict("records")}, indent=2, default=float))
        return 0
    print(f"{len(units)} units of layer {a.layer} {a.stream} on (>= {a.threshold:g}): "
          f"{' '.join(map(str, units))}")
    print(f"\ntop {len(hits)} matches ({a.mode}):\n  start   stop  n_on  union  jaccard  text")
    for r in hits.itertuples():
        print(f"  {r.start:>6} {r.stop:>6}  {r.n_on:>4}  {r.n_union:>5}  {r.jaccard:7.3f}  {r.text!r}")
    print("\nwhat the matches share (fraction of matched characters vs the whole recording):")
    for r in why.head(6).itertuples():
        print(f"  {r.feature:<16} {r.matched:6.1%} vs {r.overall:6.1%}  ({r.enrichment:.1f}x)")
    return 0


def cmd_gradients(a) -> int:
    out = check_target(a.out, a.force) if a.out else None
    model = load_model(a.model)
    text = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit).text
    res = gradients.flow(model, text, span=a.span, positions=a.positions, seed=a.seed, progress=not a.quiet)
    doc = json.dumps(res)
    if out is not None:
        with atomic(out) as tmp:
            tmp.write_text(doc)
    if a.json:
        print(doc)
        return 0
    ks = [k for k in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if k <= a.span]
    print(f"{model.cell} {model.layers} x {model.units}: mean |d loss_t / d state_(t-k)| over "
          f"{res['positions']:,} positions")
    print("  layer stream " + "".join(f"{'k=' + str(k):>10}" for k in ks))
    for r in res["layers"]:
        print(f"  {r['layer']:>5} {r['stream']:<6} " + "".join(f"{r['mean'][k]:10.2e}" for k in ks))
    for r in res["memory_span"]:
        spans = np.array(r["units"])
        print(f"  layer {r['layer']} {r['stream']}: units whose gradient stays above 1 % of k=0 for all "
              f"{a.span} steps: {int((spans > a.span).sum())} of {len(spans)}; median memory span "
              f"{int(np.median(spans))} steps")
    return 0


def cmd_ablate(a) -> int:
    how = intervene.parse_how(a.how)
    cells = intervene.parse_cells(a.cells) if a.cells else None
    csv = check_target(a.csv, a.force) if a.csv else None
    if a.threads:
        torch.set_num_threads(max(1, a.threads))
    model = load_model(a.model)
    docs = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit).documents
    if a.directions:
        from probe.readout import directions
        spec = derived.load(a.directions)
        import warnings
        with warnings.catch_warnings(record=True) as said:  # a spec from another checkpoint: one line
            warnings.simplefilter("always")
            df = directions.ablate(model, docs, spec, a.feature or None, random=16 if a.random is None else a.random,
                                   seed=a.seed, chars=a.limit,
                                   streams=(a.on,) if a.on else None, progress=not a.quiet)
        for w in said:
            print(f"probe: note: {a.directions}: {w.message}", file=sys.stderr)
        report = directions.report(df)
    else:
        df = intervene.effects(model, docs, cells, layer=a.layer, feature_names=a.feature or None, how=how,
                               stream=a.on or "h", random=32 if a.random is None else a.random, seed=a.seed,
                               progress=not a.quiet)
        report = intervene.report(df, how=str(how))
    if csv is not None:
        with atomic(csv) as tmp:
            df.to_csv(tmp, index=False)
        print(f"wrote {csv}: {len(df)} rows")
    elif a.json:
        print(json.dumps([{k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                           for k, v in r.items()} for r in df.to_dict("records")], indent=2, default=float))
    else:
        print(report)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "info": cmd_info, "record": cmd_record,
            "analyze": cmd_analyze, "ablate": cmd_ablate, "match": cmd_match, "gradients": cmd_gradients, "render": cmd_render, "export-lstmvis": cmd_export_lstmvis,
            "directions": cmd_directions, "dictionary": cmd_dictionary, "encode": cmd_encode,
            "ngram": cmd_ngram, "errors": cmd_errors}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ProbeError as e:
        print(f"probe: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("probe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
