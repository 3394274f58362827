"""``probe patch``: counterfactual patching — copy cells from a source run into a base run
and measure whether the prediction follows; ``probe circuit``: which upstream cells drive a
cell, checked by intervention."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from probe.causal import circuit, intervene, patch
from probe.causal import pairs as pairs_mod
from probe.cli.common import command, device_flag, source_flags
from probe.cli.ngram import draw_png
from probe.errors import ProbeError
from probe.files import atomic, check_target
from probe.lm.model import load_model, on_device
from probe.text import tokens as toks
from probe.text.corpus import load


def add_patch(sub) -> None:
    p = command(sub, "patch", "copy cells from a counterfactual source run into the base run: does the "
                "prediction follow?", run_patch, [
                    "probe patch --feature in_short_string --cells 0:c:89 --limit 100000",
                    "probe patch --feature in_short_string --layer 0 --stream c --random 16 --json",
                    "probe patch --feature bracket_depth --layer 1 --stream h --steps-back 20 --png when.png",
                    "probe patch --pairs mypairs.jsonl --cells 0:c:89,1:h:158 --csv out.csv"],
                note="pairs: each built-in feature's minimal edit (probe.causal.pairs), or your own JSON lines "
                     '{"base": ..., "source": ..., "position": p, "target": "\'"}; p is a character offset in the '
                     "texts: a word model reads the tokens before the one containing it and target is one of its "
                     "tokens (pairs whose texts tokenize to different numbers of tokens before it are dropped "
                     "and counted)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--feature", help="make pairs for this feature from the text: in_short_string, in_comment, "
                       "bracket_depth, indent, column")
    which.add_argument("--pairs", metavar="FILE.jsonl", help="your own pairs, one JSON object per line")
    source_flags(p, 200_000, "characters to make pairs from (default 200000)")
    device_flag(p)
    cells = p.add_mutually_exclusive_group(required=True)
    cells.add_argument("--cells", metavar="L:S:U[,L:S:U...]", help="the cells to patch, e.g. 0:c:89,1:h:158")
    cells.add_argument("--layer", type=int, help="sweep every unit of this layer's --stream")
    p.add_argument("--stream", default="h", help="with --layer: the stream to sweep (h, or c of an LSTM)")
    p.add_argument("--n", type=int, default=200, help="pairs to make from the text (default 200)")
    p.add_argument("--random", type=int, default=16, help="random cells of the same layer to compare with "
                   "(default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs drawn and the random cells (default 0)")
    p.add_argument("--steps-back", type=int, default=0, metavar="K", help="also patch the top cells one "
                   "position at a time, 0..K-1 steps back from the target: when is it carried?")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    out.add_argument("--csv", metavar="OUT", help="write the rows as CSV")
    p.add_argument("--png", metavar="OUT", help="draw the top cells x steps back (needs --steps-back)")
    p.add_argument("--force", action="store_true", help="overwrite existing --csv / --png files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_patch(a: argparse.Namespace) -> int:
    csv = check_target(a.csv, a.force) if a.csv else None
    png = check_target(a.png, a.force) if a.png else None
    if png is not None and a.steps_back < 1:
        raise ProbeError("--png draws the top cells by steps back: give --steps-back K")
    model = on_device(load_model(a.model), a.device)
    tok = toks.of(model)  # a word model's pairs: positions mapped to its tokens (probe.causal.patch)
    beside = None
    if a.pairs:
        made, made_report = pairs_mod.load(a.pairs, tok), {"feature": None, "offered": None}
    else:
        docs = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit).documents
        made, made_report = pairs_mod.pairs(a.feature, docs, a.n, a.seed, tok)
    cells = [(k, s, u) for k, s, u in intervene.parse_cells(a.cells)] if a.cells else None
    res = patch.effects(model, made, cells, layer=a.layer, stream=a.stream, random=a.random, seed=a.seed,
                        steps_back=a.steps_back, progress=not a.quiet)
    if a.feature:
        from probe.readout.readable import readable
        beside = readable(model, docs, a.feature, a.seed)
    doc = {"feature": a.feature, "pairs": res["pairs"], "offered": made_report["offered"],
           "dropped": res["dropped"], "rows": res["rows"],
           "heat": res["heat"], "readable": beside}
    if csv is not None:
        with atomic(csv) as tmp:
            pd.DataFrame(res["rows"]).to_csv(tmp, index=False)
    if png is not None:
        draw_png(patch.figure(res, f"patching {a.feature or 'your pairs'}: effect on the target by steps back"), png)
    print(json.dumps(doc, default=_plain) if a.json else patch.report(res, a.feature or "", beside))
    return 0


def _plain(x):
    return None if isinstance(x, float) and not np.isfinite(x) else float(x)


def add_circuit(sub) -> None:
    c = command(sub, "circuit", "which upstream cells, at which steps back, drive a cell at a position "
                "(checked by intervention)", run_circuit, [
                    "probe circuit 0:c:89 --at 1730 --limit 5000   # inside a string of the stdlib test split",
                    "probe circuit 0:c:89 --text mycode.py --at 1234",
                    "probe circuit 1:h:158 --text mycode.py --at 500 --steps 30 --top 20 --json"])
    c.add_argument("cell", metavar="L:S:U", help="the cell, e.g. 0:c:89")
    source_flags(c, 100_000, "characters of the text to read (default 100000)")
    c.add_argument("--at", type=int, required=True,
                   help="the position whose value to explain: a character index (a token index for a word-level model)")
    c.add_argument("--steps", type=int, default=20, help="steps back to look (default 20)")
    c.add_argument("--top", type=int, default=15, help="edges kept, the strongest (default 15)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random nodes of the check (default 0)")
    device_flag(c)
    c.add_argument("--json", action="store_true", help="print the result as JSON")


def run_circuit(a: argparse.Namespace) -> int:
    (k, s, u), = intervene.parse_cells(a.cell, "circuit")
    model = on_device(load_model(a.model), a.device)
    text = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit).text
    res = circuit.circuit(model, text, (k, s, u), a.at, steps=a.steps, top=a.top, seed=a.seed)
    print(json.dumps(res, default=_plain) if a.json else circuit.report(res))
    return 0


def add_parser(sub) -> None:
    add_patch(sub)
    add_circuit(sub)
