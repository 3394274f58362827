"""Benchmark: probe's hypothesis search against LSTMVis's own, on the same recording.

    probe record --corpus stdlib --split train --limit 1000000 --compression none --out REC.h5
    probe export-lstmvis REC.h5 EXPORT --streams c
    git clone https://github.com/HendrikStrobelt/LSTMVis LSTMVIS      # not part of probe
    python bench/match.py REC.h5 --lstmvis-export EXPORT --lstmvis-code LSTMVIS

For selections of 3, 10 and 30 cells of layer 1 ``c`` (threshold 0.3), each the units on
over a real span of the text, times ``match.search`` (warm: index built, recording open)
against LSTMVis's ``LSTMDataHandler.query_similar_activations`` in its fast and precise
modes (warm: its full matrix cached in memory, the query run once before), in the same
run; prints the ratios, the overlap of the two top-50 sets (probe run with LSTMVis's
cached threshold rule for that comparison), the index's build time and size. Goal: >= 20x faster than LSTMVis's precise mode, over the whole recording.
Without --lstmvis-code, only probe's own times are printed. Run with nothing else busy.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from probe import open_recording
from probe.analysis import match


def spans_with(rec, layer: int, n: int, threshold: float, rng) -> tuple[int, int, list[int]]:
    """A real span of 2-6 characters whose on-units (on throughout, off just before) number
    at least n; the n selected are the first n of them."""
    T = len(rec)
    for _ in range(20000):
        a = int(rng.integers(1, T - 10))
        b = a + int(rng.integers(2, 7))
        try:
            units = match.select(rec, layer, "c", a, b, threshold, off_before=False)
        except Exception:  # noqa: BLE001 - no unit on there: try another span
            continue
        if len(units) >= n:
            return a, b, units[:n]
    raise SystemExit(f"no span with {n} units on found")


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recording")
    p.add_argument("--lstmvis-export", help="the recording exported with probe export-lstmvis --streams c")
    p.add_argument("--lstmvis-code", help="a checkout of github.com/HendrikStrobelt/LSTMVis")
    p.add_argument("--layer", type=int, default=1)
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--sizes", type=int, nargs="+", default=[3, 10, 30])
    a = p.parse_args()
    rng = np.random.default_rng(0)
    with open_recording(a.recording) as rec:
        T = len(rec)
        for side in Path(a.recording).parent.glob(Path(a.recording).name + ".match-*"):
            side.unlink()  # time the build from scratch
        t0 = time.perf_counter()
        bits = match.index(rec, a.layer, "c", a.threshold)
        build = time.perf_counter() - t0
        print(f"{Path(a.recording).name}: {T:,} characters; index of layer {a.layer} c >= {a.threshold}: "
              f"built in {build:.1f} s, {bits.nbytes / 1e6:.0f} MB ({bits.shape[1] * 64} bits per character)")
        handler = None
        if a.lstmvis_code and a.lstmvis_export:
            sys.path.insert(0, a.lstmvis_code)
            from lstmdata.data_handler import LSTMDataHandler  # LSTMVis's own code, not part of probe
            config = yaml.safe_load((Path(a.lstmvis_export) / "lstm.yml").read_text())
            handler = LSTMDataHandler(directory=a.lstmvis_export, config=config)
            source = f"states::layer{a.layer + 1}_c"
            t0 = time.perf_counter()
            handler.get_cached_matrix("tanh", source, full_matrix=True)  # its in-memory cache, filled
            print(f"LSTMVis: matrix cache filled in {time.perf_counter() - t0:.1f} s. With it filled, "
                  f"LSTMVis compares clip(c) >= {a.threshold} (c >= {a.threshold}), so the top-50 sets are "
                  f"compared with probe at tanh(c) >= tanh({a.threshold}), the same rule")
            same_rule = float(np.tanh(a.threshold))
            match.index(rec, a.layer, "c", same_rule)
        for n in a.sizes:
            start, stop, units = spans_with(rec, a.layer, n, a.threshold, rng)
            ours, hits = timed(lambda: match.search(rec, a.layer, "c", units, a.threshold, 50, "lstmvis"))
            line = f"{n:>2} cells (span {start}:{stop} {rec.text[start:stop]!r}): probe {ours * 1e3:7.1f} ms"
            if handler is not None:
                for mode in ("fast", "precise"):
                    query = lambda: handler.query_similar_activations(  # noqa: E731
                        units, source, activation_threshold=a.threshold, query_mode=mode)
                    query()  # warm
                    theirs, (res, _) = timed(query)
                    top = {(r["pos"], r["factors"][2]) for r in res}
                    every = match.search(rec, a.layer, "c", units, same_rule, 10 ** 9, "lstmvis")
                    rank = {(s, ln): (i, on, un) for i, (s, ln, on, un) in enumerate(
                        zip(every.start, every.length, every.n_on, every.n_union))}
                    mine = set(list(rank)[:50])
                    agree = all(rank.get((r["pos"], r["factors"][2]), (0, -1, -1))[1:] ==
                                (r["factors"][6], r["factors"][5]) for r in res)
                    worst = max(rank[(r["pos"], r["factors"][2])][0] for r in res) if agree else -1
                    line += (f"\n    LSTMVis {mode:<7} {theirs * 1e3:6.0f} ms = {theirs / ours:5.1f}x probe; "
                             f"top-50 overlap {len(top & mine)}/{len(top)}; its 50 scored alike by probe: "
                             f"{'yes' if agree else 'NO'}, ranked within probe's top {worst + 1:,} of "
                             f"{len(every):,} candidates")
            print(line)


if __name__ == "__main__":
    main()
