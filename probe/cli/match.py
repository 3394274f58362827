"""``probe match``: LSTMVis's hypothesis search — select a span's units (or name them) and
find where else they are on together."""
from __future__ import annotations

import argparse
import json

import numpy as np

from probe.analysis import match
from probe.cli.common import command
from probe.recording.reader import open_recording


def add_parser(sub) -> None:
    mt = command(sub, "match", "select a span's units and find where else they are on together", run, [
        "probe match recordings/stdlib-test.h5 --layer 0 --stream c --span 5010:5016",
        "probe match rec.h5 --layer 1 --stream c --units 43,158 --top 20 --json"])
    mt.add_argument("recording", help="a .h5 recording, or a folder of shards")
    mt.add_argument("--layer", type=int, required=True, help="layer, 0 = nearest the input")
    mt.add_argument("--stream", required=True, help="one of i f g o c h (c is compared as tanh(c)), or a "
                    "derived stream")
    what = mt.add_mutually_exclusive_group(required=True)
    what.add_argument("--span", metavar="START:STOP", help="select the units on over these positions "
                      "(characters, or tokens of a word-level recording)")
    what.add_argument("--units", metavar="U,U,...", help="search for these units of the stream")
    mt.add_argument("--threshold", type=float, default=0.3, help="a unit is on at >= this (default 0.3)")
    mt.add_argument("--top", type=int, default=50, help="matches to show (default 50)")
    mt.add_argument("--mode", default="lstmvis", choices=list(match.MODES),
                    help="ranking: lstmvis (LSTMVis's rule, default) or jaccard (see probe/analysis/match.py)")
    mt.add_argument("--off-after", action="store_true",
                    help="select only units that are also off right after the span")
    mt.add_argument("--json", action="store_true", help="machine-readable output")


def run(a: argparse.Namespace) -> int:
    with open_recording(a.recording) as rec:
        if a.span:
            start, stop = match.parse_span(a.span)
            units = match.select(rec, a.layer, a.stream, start, stop, a.threshold, off_after=a.off_after)
        else:
            units = match.parse_units(a.units)
        hits = match.search(rec, a.layer, a.stream, units, a.threshold, a.top, a.mode)
        why = match.explain(rec, hits)
        unit = rec.unit_name
    if a.json:
        print(json.dumps({"units": units,
                          "matches": hits.drop(columns="text").to_dict("records"),
                          "explain": why.replace({np.nan: None}).to_dict("records")}, indent=2, default=float))
    else:
        print(match.report(units, hits, why, a.layer, a.stream, a.threshold, a.mode, unit))
    return 0
