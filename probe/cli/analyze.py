"""``probe analyze``: rank the cells that track each per-position feature (cached beside the
recording), optionally with each ranked cell's ablation effect."""
from __future__ import annotations

import argparse
import sys

from probe.analysis import cache as analysis
from probe.analysis import detectors
from probe.cli.common import cluster_flags, command
from probe.recording.reader import open_recording
from probe.text.features import parse_feature_args


def add_parser(sub) -> None:
    an = command(sub, "analyze", "rank the cells that track each per-position feature", run, [
        "probe analyze recordings/stdlib-test.h5 --top 3",
        "probe analyze rec.h5 --feature 'digit=[0-9]' --feature 'self=self\\.' --json",
        "probe analyze rec.h5 --causal        # ablate the top cells too",
        "probe analyze recordings/stdlib-train --workers 4   # a folder of shards, 4 processes"],
        note="results are cached in REC.h5.analysis.npz (FOLDER/FOLDER.analysis.npz); --refresh recomputes")
    an.add_argument("recording", help="a .h5 recording, or a folder of shards")
    an.add_argument("--top", type=int, default=5, help="cells per feature (default 5)")
    an.add_argument("--json", action="store_true", help="machine-readable output")
    an.add_argument("--refresh", action="store_true", help="recompute even if cached")
    an.add_argument("--causal", action="store_true", help="also ablate the ranked cells of binary features "
                    "(with the recording's model) and show the effect beside each score")
    an.add_argument("--causal-chars", type=int, default=20_000, metavar="N",
                    help="characters of text the ablation reads (default 20000, from the recording's start; "
                         "a word-level model reads them as tokens)")
    an.add_argument("--feature", action="append", default=[], metavar="NAME=REGEX",
                    help="extra binary feature: 1 inside matches of REGEX (repeatable; on a word-level "
                    "recording, 1 on every token a match overlaps)")
    cluster_flags(an, "score the shards (and streams) side by side; the same scores, bit for bit, "
                  "and the same cache (docs/scale.md)")


def run(a: argparse.Namespace) -> int:
    regex = parse_feature_args(a.feature)
    detectors.check_top(a.top)  # before the slow part
    client = None
    if a.workers is not None or a.scheduler is not None:
        from probe.analysis import cluster  # Dask: only when asked for
        if a.workers is not None:
            cluster.check_workers(a.workers)
        client = lambda: cluster.client(a.workers, a.scheduler)  # noqa: E731 (started on a cache miss)
    progress = sys.stderr.isatty()
    with open_recording(a.recording) as rec:
        res = analysis.analysis(rec, refresh=a.refresh, progress=progress, regex=regex, client=client)
        top = detectors.best(res["scores"], a.top)
        unit = rec.unit_name
        if a.causal:
            effect = analysis.causal(rec, top, chars=a.causal_chars, progress=progress)
            top = top.merge(effect[["feature", "rank", "delta_bits", "random_median", "ratio"]],
                            on=["feature", "rank"], how="left")
    sat = detectors.saturation_summary(res["saturation"])
    if a.json:
        print(analysis.report_json(top, sat, recording=str(a.recording), positions=unit + "s"))
    else:
        print(analysis.report_text(top, sat, title=f"{a.recording}: top {a.top} cells per feature",
                                     unit=unit))
    return 0
