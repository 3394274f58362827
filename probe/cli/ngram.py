"""``probe ngram`` and ``probe errors``: the n-gram baseline, and the recorded model against
it — bits per order, where the model wins, and what its errors are."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from probe.analysis import advantage
from probe.cli.common import command, source_flags
from probe.errors import ProbeError
from probe.files import atomic, check_target
from probe.lm.model import load_model
from probe.recording.reader import open_recording
from probe.text import ngram
from probe.text.corpus import BUILTIN, load


def add_ngram(sub) -> None:
    ng = command(sub, "ngram", "train a character (or token) n-gram model (interpolated Kneser-Ney), the baseline",
                 run_ngram, [
        "probe ngram train --corpus stdlib --order 10 --out stdlib-10.ngram.npz",
        "probe ngram train --text mycode/ --glob '**/*.py' --model runs/my.pt --out my.ngram.npz"],
        note="characters are read with --model's vocabulary (default the shipped LSTM's), so the n-grams "
             "and the model score the same symbols; a word-level --model's tokens are read with its tokenizer. "
             "Without --corpus or --text: the --model's own training corpus when it is a built-in one "
             "(stdlib-prose for probe train --tokens words), else stdlib")
    ng.add_argument("action", choices=["train"], help="train: count and save")
    source_flags(ng, None, "train on at most N characters (default all)")
    ng.set_defaults(split="train", corpus=None)  # None: the --model's own training corpus
    ng.add_argument("--order", type=int, default=10, help="highest order (default 10; orders 1..N are kept)")
    ng.add_argument("--out", required=True, help="the model file to write (.npz)")
    ng.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    ng.add_argument("--quiet", action="store_true", help="no progress bar")


def run_ngram(a: argparse.Namespace) -> int:
    out = check_target(a.out, a.force)
    ngram.check_order(a.order)
    model = load_model(a.model)
    corpus = None
    if not a.text:  # the model's own training corpus when it is a built-in one
        own = (getattr(model, "corpus", None) or {}).get("kind")
        corpus = a.corpus or (own if own in BUILTIN else "stdlib")
    source = load(corpus, a.split, text=a.text, glob=a.glob)
    if a.limit is not None:
        source = source.limited(a.limit)
    tokens = model.tokenizer.kind
    ng = ngram.train(source.documents, model.vocab if tokens == "chars" else tuple(model.vocab), a.order,
                     progress=not a.quiet, info={**source.source, "model_sha256": model.sha256}, tokens=tokens)
    ngram.save(ng, out)
    print(f"wrote {out}: orders 1..{ng.order} over {ng.info[ng.unit + 's']:,} {ng.unit}s, "
          f"{ng.nbytes / 1e6:.0f} MB of counts")
    return 0


def add_errors(sub) -> None:
    er = command(sub, "errors", "the recorded model against n-grams: bits per order, and where it wins", run_errors, [
        "probe errors recordings/stdlib-test.h5 --store",
        "probe errors rec.h5 --ngram stdlib-10.ngram.npz --json"],
        note="without --ngram: the order-10 model of the recording's model's training corpus, built once "
             "(minutes) and kept in ~/.cache/probe ($PROBE_CACHE)")
    er.add_argument("recording", help="a .h5 recording (or a folder of shards) with its loss")
    er.add_argument("--ngram", help="an n-gram model from probe ngram train (default: see below)")
    er.add_argument("--order", type=int, default=10, help="order of the default n-gram model (default 10)")
    er.add_argument("--force", action="store_true", help="compare even if the vocabularies differ; overwrite "
                    "an existing --png file")
    er.add_argument("--json", action="store_true", help="machine-readable output")
    er.add_argument("--store", action="store_true", help="add the per-position results to the recording as "
                    "a derived stream ngram (advantage, ngram_bits, category), for the dashboard's "
                    "\"beyond n-grams\" tab; --force replaces an earlier one")
    er.add_argument("--png", metavar="FILE", help="also draw the two bar charts (distance, oracles) into a PNG "
                    "(needs Debian's chromium and chromium-driver)")
    er.add_argument("--quiet", action="store_true", help="no progress bar")


def run_errors(a: argparse.Namespace) -> int:
    png = check_target(a.png, a.force) if a.png else None
    with open_recording(a.recording) as rec:
        ng = ngram.load(a.ngram) if a.ngram else advantage.default_ngram(rec, ngram.check_order(a.order),
                                                                          progress=not a.quiet)
        res = advantage.compare(rec, ng, force=a.force)
        if a.store:
            name = Path(a.ngram).name if a.ngram else f"the default order-{ng.order} model"
            layer, stream = advantage.store(rec, res, name, ng.order, force=a.force, progress=not a.quiet)
            print(f"{a.recording}: added stream {stream} to layer {layer} ({', '.join(advantage.STORED)})",
                  file=sys.stderr)
    if png is not None:
        draw_png(advantage.figure(res), png)
    if a.json:
        unit = res["unit"] + "s"
        print(json.dumps({"bpc": res["bpc"], unit: res[unit],
                          "advantage_by_distance": res["by_distance"], "advantage_by_feature": res["by_feature"],
                          "wrong": res["wrong"], "errors": res["errors"],
                          **({"note": res["note"]} if res["note"] else {})}, indent=2))
    else:
        print(advantage.report(res, title=f"{a.recording}: the recorded model against n-grams"))
    return 0


def draw_png(figure, png: Path) -> None:
    """A Bokeh figure into ``png`` through a headless Chromium, written whole or not at all."""
    from probe.output import browser  # Selenium and Bokeh's export: only when asked for
    if not browser.available():
        raise ProbeError("--png needs Debian's chromium and chromium-driver (apt-get install chromium "
                         "chromium-driver)")
    from bokeh.io.export import get_screenshot_as_png
    os.environ.setdefault("BOKEH_IN_DOCKER", "1")  # root: chromium needs --no-sandbox
    image = get_screenshot_as_png(figure)
    if image.width == 0 or image.height == 0:
        raise ProbeError(f"{png}: the browser drew an empty picture")
    with atomic(png) as tmp:
        image.save(tmp, format="PNG")


def add_parser(sub) -> None:
    add_ngram(sub)
    add_errors(sub)
