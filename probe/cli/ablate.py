"""``probe ablate``: pin cells (or remove probe directions) while the model reads, and
measure what it costs at each feature, against random units (or directions)."""
from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np
import torch

from probe.causal import intervene
from probe.cli.common import Renamed, command, device_flag, source_flags
from probe.files import atomic, check_target
from probe.lm.model import load_model, on_device
from probe.readout import directions
from probe.recording import derived
from probe.text import tokens as toks
from probe.text.corpus import load


def add_parser(sub) -> None:
    ab = command(sub, "ablate", "pin cells while the model reads, and measure what it costs", run, [
        "probe ablate --cells 0:c:89 --limit 20000",
        "probe ablate --layer 0 --stream c --feature in_short_string --limit 10000 --csv layer0.csv",
        "probe ablate --text mycode/ --cells 0:c:89,1:h:158 --how mean --json",
        "probe ablate --directions dirs.pt --feature in_short_string --stream h   # a probe direction"],
        note="a cell is LAYER:STREAM:UNIT, its stream h (the hidden output) or c (the cell state)")
    source_flags(ab, 20_000, "characters to read (default 20000)")
    device_flag(ab)
    which = ab.add_mutually_exclusive_group(required=True)
    which.add_argument("--cells", metavar="L:S:U[,L:S:U...]", help="the cells to ablate, e.g. 0:c:89,1:h:158")
    which.add_argument("--layer", type=int, help="sweep every unit of this layer's --stream")
    which.add_argument("--directions", metavar="D.pt", help="remove each feature's probe direction (a file "
                       "from probe directions) at every step, against random directions")
    ab.add_argument("--feature", action="append", default=[], metavar="NAME",
                    help="feature to measure at (repeatable; default: every binary feature)")
    ab.add_argument("--how", default="zero", help="pin to zero (default), mean (over the text) or a number")
    ab.add_argument("--stream", choices=["h", "c"], default=None,
                    help="with --layer: pin each unit's hidden output h (default) or cell state c; with "
                         "--directions, edit only that stream's part of each direction (default: every "
                         "stream it reads)")
    ab.add_argument("--on", dest="stream", choices=["h", "c"], action=Renamed, new="--stream")
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


def run(a: argparse.Namespace) -> int:
    how = intervene.parse_how(a.how)
    cells = intervene.parse_cells(a.cells) if a.cells else None
    csv = check_target(a.csv, a.force) if a.csv else None
    if a.threads:
        torch.set_num_threads(max(1, a.threads))
    model = on_device(load_model(a.model), a.device)
    unit = toks.of(model).unit  # a position: a character, or a word model's token
    docs = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit).documents
    if a.directions:
        spec = derived.load(a.directions)
        with warnings.catch_warnings(record=True) as said:  # a spec from another checkpoint: one line
            warnings.simplefilter("always")
            df = directions.ablate(model, docs, spec, a.feature or None, random=16 if a.random is None else a.random,
                                   seed=a.seed, chars=a.limit,
                                   streams=(a.stream,) if a.stream else None, progress=not a.quiet)
        for w in said:
            print(f"probe: note: {a.directions}: {w.message}", file=sys.stderr)
        report = directions.report(df, unit)
    else:
        df = intervene.effects(model, docs, cells, layer=a.layer, feature_names=a.feature or None, how=how,
                               stream=a.stream or "h", random=32 if a.random is None else a.random, seed=a.seed,
                               progress=not a.quiet)
        report = intervene.report(df, how=str(how), unit=unit)
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
