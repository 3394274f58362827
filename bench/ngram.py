"""Benchmark: the n-gram baseline (probe/ngram.py) on the stdlib corpus.

    python bench/ngram.py [--order 10] [--chars 200000]

One run prints:

- training: seconds and characters/s of ``ngram.train`` at ``--order`` on the whole stdlib
  training split (11M characters), the bytes of counts kept, and the process's peak RSS;
- scoring: seconds and characters/s of ``ngram.bits`` (every order 1..N at once) on the
  first ``--chars`` characters of the test split, against ``probe record`` of the same
  characters with the shipped model, measured in the same run (goal: scoring takes less
  time than recording, ratio < 1).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from probe import load_model
from probe.recording.record import record
from probe.text import corpus, ngram


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--order", type=int, default=10, help="highest order (default 10)")
    p.add_argument("--chars", type=int, default=200_000, help="test characters scored and recorded")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args()
    model = load_model()
    train_docs = corpus.stdlib("train").documents
    t0 = time.perf_counter()
    ng = ngram.train(train_docs, model.vocab, a.order)
    train_s = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    test = corpus.stdlib("test").limited(a.chars)
    t0 = time.perf_counter()
    ngram.bits(ng, test.documents)
    score_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        record(model, test.documents, Path(tmp) / "r.h5", source=test.source, progress=False)
        record_s = time.perf_counter() - t0
    n_train, n_test = ng.info["characters"], sum(len(t) for _, t in test.documents)
    res = {"order": a.order, "train_chars": n_train, "train_s": round(train_s, 1),
           "train_chars_per_s": round(n_train / train_s), "counts_mb": round(ng.nbytes / 1e6),
           "peak_rss_mb": round(rss), "score_chars": n_test, "score_s": round(score_s, 2),
           "score_chars_per_s": round(n_test / score_s), "record_s": round(record_s, 2),
           "score_over_record": round(score_s / record_s, 3)}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
