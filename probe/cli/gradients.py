"""``probe gradients``: how far back the loss reaches — the gradient's norm against steps back,
and each unit's memory span."""
from __future__ import annotations

import argparse
import json

from probe.causal import gradients
from probe.cli.common import command, device_flag, source_flags
from probe.files import atomic, check_target
from probe.lm.model import load_model, on_device
from probe.text.corpus import load


def add_parser(sub) -> None:
    gr = command(sub, "gradients", "how far back the loss reaches: gradient norm against steps back", run, [
        "probe gradients --limit 50000 --span 200",
        "probe gradients --model runs/gru.pt --text mycode/ --json --out gru-flow.json"])
    source_flags(gr, 50_000, "characters to sample positions from (default 50000)")
    device_flag(gr)
    gr.add_argument("--span", type=int, default=200, help="steps back, K (default 200)")
    gr.add_argument("--positions", type=int, default=1000, help="positions sampled (default 1000)")
    gr.add_argument("--seed", type=int, default=0, help="seed of the sampled positions (default 0)")
    gr.add_argument("--out", help="also write the result as JSON to this file")
    gr.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    gr.add_argument("--json", action="store_true", help="print the result as JSON")
    gr.add_argument("--quiet", action="store_true", help="no progress bar")


def run(a: argparse.Namespace) -> int:
    out = check_target(a.out, a.force) if a.out else None
    model = on_device(load_model(a.model), a.device)
    text = load(None if a.text else a.corpus, a.split, text=a.text, glob=a.glob).limited(a.limit).text
    res = gradients.flow(model, text, span=a.span, positions=a.positions, seed=a.seed, progress=not a.quiet)
    doc = json.dumps(res)
    if out is not None:
        with atomic(out) as tmp:
            tmp.write_text(doc)
    print(doc if a.json else gradients.report(res, f"{model.cell} {model.layers} x {model.units}"))
    return 0
