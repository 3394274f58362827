"""Benchmark: scoring every cell against every feature vs just reading the recording.

Make a recording of 1M characters or more first (the shipped model, stdlib test split):

    probe record --corpus stdlib --split test --limit 1000000 --out recordings/stdlib-1m.h5
    python bench/analyze.py recordings/stdlib-1m.h5

One run prints:

- read: seconds to read every stream once in row chunks, as float32 (the floor any
  analysis pays). It is timed before and after scoring, and the faster is used, so that
  both sides see the same (warm) OS page cache;
- features: seconds and characters/s of ``probe.text.features.compute`` on the whole text;
- score: seconds of ``probe.analysis.detectors.scores`` (one streaming pass over every stream:
  Pearson r for all features, AUC histograms for the binary ones);
- ratio score / read (goal <= 2) and the peak resident memory of the process;
- for reference, the read without conversion to float32 (pure I/O of the stored
  float16) and score / that, and whether the compiled loops (probe/_kernels.c) are used.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from probe import open_recording
from probe.analysis import detectors
from probe.text import features


def read_all(rec, chunk: int, as_float32: bool = True) -> float:
    """Seconds to read every stream once, ``chunk`` rows at a time, as float32 (or as stored)."""
    t0 = time.perf_counter()
    T = len(rec)
    for k in rec.layer_ids:
        for s in rec.streams:
            ds = rec.stream(k, s)
            for a in range(0, T, chunk):
                x = ds[a:a + chunk]
                if as_float32:
                    x.astype(np.float32)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("recording", help="a probe recording (.h5), ideally >= 1M characters")
    p.add_argument("--chunk", type=int, default=detectors.CHUNK, help="rows per read (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--scan-threads", type=int, default=1, help="streams scored side by side, one thread each (default 1)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    with open_recording(a.recording) as rec:
        T = len(rec)
        cells = rec.layers * len(rec.streams) * rec.units
        read1 = read_all(rec, a.chunk)
        t0 = time.perf_counter()
        text, docs = rec.text, rec.document_spans
        t1 = time.perf_counter()
        feats = features.compute(text, documents=docs)
        t_feat = time.perf_counter() - t1
        t_text = t1 - t0
        t0 = time.perf_counter()
        sc = detectors.scores(rec, feats, chunk=a.chunk, progress=sys.stderr.isatty(), threads=a.scan_threads)
        t_score = time.perf_counter() - t0
        read2 = read_all(rec, a.chunk)
        raw = read_all(rec, a.chunk, as_float32=False)
    read = min(read1, read2)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    out = {
        "recording": a.recording, "characters": T, "cells": cells, "features": len(feats.columns),
        "binary_features": int(sum(features.is_binary(n, feats[n]) for n in feats.columns)),
        "scores_rows": len(sc), "scan_threads": a.scan_threads, "read_s": round(read, 3), "read_s_runs": [round(read1, 3), round(read2, 3)],
        "read_stored_s": round(raw, 3), "ratio_score_over_read_stored": round(t_score / max(raw, 1e-9), 2),
        "compiled_loops": detectors.COMPILED, "text_decode_s": round(t_text, 3), "features_s": round(t_feat, 3),
        "features_chars_per_s": round(T / max(t_feat, 1e-9)), "score_s": round(t_score, 3),
        "ratio_score_over_read": round(t_score / max(read, 1e-9), 2), "peak_rss_mb": round(peak_mb, 1),
        "ns_per_value_read": round(read / max(T * cells, 1) * 1e9, 2),
        "ns_per_value_score": round(t_score / max(T * cells, 1) * 1e9, 2),
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{a.recording}: {T:,} characters, {cells:,} cells, {out['features']} features "
              f"({out['binary_features']} binary)")
        print(f"read every stream once : {read:8.2f} s  (runs: {read1:.2f} s, {read2:.2f} s; "
              f"{out['ns_per_value_read']} ns/value)")
        print(f"features               : {t_feat:8.2f} s  ({out['features_chars_per_s']:,} chars/s; "
              f"text decode {t_text:.2f} s)")
        print(f"score all cells        : {t_score:8.2f} s  ({out['ns_per_value_score']} ns/value)")
        print(f"ratio score / read     : {out['ratio_score_over_read']:8.2f}    (goal <= 2)")
        print(f"read as stored (no conversion): {raw:.2f} s; score / that: "
              f"{out['ratio_score_over_read_stored']:.2f}; compiled loops: {out['compiled_loops']}")
        print(f"peak RSS               : {peak_mb:8.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
