"""``probe directions``, ``probe dictionary`` and ``probe encode``: read-outs fitted on one
recording (probe directions, a sparse dictionary), then written into any recording as a
derived stream."""
from __future__ import annotations

import argparse
import json

from probe.cli.common import Renamed, command, names, numbers
from probe.errors import ProbeError
from probe.files import check_target
from probe.readout import dictionary, directions
from probe.recording import derived
from probe.recording.reader import open_recording
from probe.text.features import parse_feature_args


def add_directions(sub) -> None:
    dr = command(sub, "directions", "fit a linear read-out (probe direction) of each feature", run_directions, [
        "probe directions recordings/stdlib-train --out dirs.pt",
        "probe directions rec.h5 --features column,bracket_depth --streams h --layers 1 --out d.pt",
        "probe encode rec.h5 --directions dirs.pt      # then: stream dir, one unit per feature"],
        note="docs/distributed.md says how they are fitted and scored")
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


def run_directions(a: argparse.Namespace) -> int:
    out = check_target(a.out, a.force)
    regex = parse_feature_args(a.feature)
    with open_recording(a.recording) as rec:
        spec = directions.fit(rec, features=names(a.features, "--features"), regex=regex,
                              streams=tuple(names(a.streams, "--streams")), layers=numbers(a.layers, "--layers"),
                              sample=a.sample, seed=a.seed, progress=not a.quiet, name=a.name)
    derived.save(spec, out)
    if a.json:
        print(json.dumps({"out": str(out), "metrics": spec["metrics"]}, indent=2, default=str))
    else:
        print(derived.report(spec))
        print(f"wrote {out}; add it to a recording with: probe encode REC.h5 --directions {out}")
    return 0


def add_dictionary(sub) -> None:
    dc = command(sub, "dictionary", "train a sparse dictionary (top-k autoencoder) of one stream", run_dictionary, [
        "probe dictionary recordings/stdlib-train --layer 1 --stream c --out dict.pt",
        "probe dictionary rec.h5 --layer 1 --stream h --size 2048 --k 32 --out d.pt",
        "probe dictionary rec.h5 --layer 1 --stream c --out dict.pt --resume   # after Ctrl-C",
        "probe info dict.pt --json     # explained_variance, l0, dead_fraction, loss_recovered"])
    dc.add_argument("recording", help="a .h5 recording (or a folder of shards) to train on")
    dc.add_argument("--layer", type=int, required=True, help="the layer")
    dc.add_argument("--stream", required=True, help="the stream (c is read through tanh)")
    dc.add_argument("--size", type=int, default=dictionary.FEATURES, metavar="N",
                    help=f"dictionary size: units of the derived stream (default {dictionary.FEATURES})")
    dc.add_argument("--features", dest="size", type=int, action=Renamed, new="--size")
    dc.add_argument("--k", type=int, default=32, help="active units per position (default 32)")
    dc.add_argument("--steps", type=int, help="training steps (default 6000; with --resume, a new total)")
    dc.add_argument("--batch", type=int, default=2048, help="rows per step (default 2048)")
    dc.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    dc.add_argument("--name", default="dict", help="the derived stream's name (default dict)")
    dc.add_argument("--out", required=True, help="dictionary file to write (.pt)")
    dc.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    dc.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    dc.add_argument("--quiet", action="store_true", help="no progress bar")


def run_dictionary(a: argparse.Namespace) -> int:
    with open_recording(a.recording) as rec:
        spec = dictionary.train(rec, a.layer, a.stream, features=a.size, k=a.k, steps=a.steps, batch=a.batch,
                                seed=a.seed, out=a.out, resume=a.resume, force=a.force, progress=not a.quiet,
                                name=a.name)
    print(derived.report(spec))
    print(f"wrote {a.out}; add it to a recording with: probe encode REC.h5 --dictionary {a.out}")
    return 0


def add_encode(sub) -> None:
    en = command(sub, "encode", "add a derived stream (probe directions or a dictionary) to a recording",
                 run_encode, [
                     "probe encode recordings/stdlib-test.h5 --directions dirs.pt",
                     "probe encode rec.h5 --dictionary dict.pt --force   # replace an earlier dict stream"],
                 note="the stream is then analysed, shown and matched like any other (probe analyze, the dashboard)")
    en.add_argument("recording", help="a .h5 recording, or a folder of shards (each shard gets the stream)")
    which = en.add_mutually_exclusive_group(required=True)
    which.add_argument("--directions", metavar="D.pt", help="a file from probe directions")
    which.add_argument("--dictionary", metavar="X.pt", help="a file from probe dictionary")
    en.add_argument("--force", action="store_true", help="apply a file made from another model's recording, "
                    "or replace a derived stream of the same name")
    en.add_argument("--quiet", action="store_true", help="no progress bar")


def run_encode(a: argparse.Namespace) -> int:
    spec_path = a.directions or a.dictionary
    kind = "directions" if a.directions else "dictionary"
    spec = derived.load(spec_path)
    if spec["kind"] != kind:
        raise ProbeError(f"{spec_path}: is a {spec['kind']} file; pass it as --{spec['kind']}")
    with open_recording(a.recording) as rec:
        written = derived.encode(rec, spec_path, force=a.force, progress=not a.quiet)
    for file, layer, name in written:
        print(f"{file}: added stream {name} to layer {layer} ({len(spec['unit_names'])} units)")
    return 0


def add_parser(sub) -> None:
    add_directions(sub)
    add_dictionary(sub)
    add_encode(sub)
