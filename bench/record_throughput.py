"""Recording throughput against the bare forward pass of the same model, in one run.

    python bench/record_throughput.py [--model M] [--chars 200000] [--batch 16]

Prints chars/s of (a) the model's plain forward pass over the text in the same blocks,
(b) `probe record` sequential, (c) batched mode; the ratios (b)/(a) (goal >= 0.8) and
(c)/(b); the cost of the per-chunk checksums ((f), (g): the same without them); bytes on
disk per character; peak RSS of `probe record` subprocesses on N and
2N characters (bounded memory: it should not double); and read times for one unit over
all T and one 5,000-character window of all units.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probe import corpus, load_model, open_recording
from probe.record import BLOCK, PIECE, record


def bare_forward(model, ids: torch.Tensor) -> float:
    """Seconds for the model's own forward pass + log-softmax over ids, BLOCK at a time."""
    t0 = time.perf_counter()
    state = None
    with torch.no_grad():
        for a in range(0, len(ids), BLOCK):
            logits, state = model(ids[None, a:a + BLOCK], state)
            torch.log_softmax(logits, -1)
    return time.perf_counter() - t0


def child_peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of one `probe record` run in a fresh process (VmHWM: ru_maxrss would include
    the forking parent's peak)."""
    code = ("import re, sys; from probe.cli import main; main(sys.argv[1:]); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--chars", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=16, help="pieces side by side in batched mode")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    text = corpus.stdlib("test").text[: a.chars]
    ids = torch.from_numpy(corpus.encode(text, model.vocab)[0])
    print(f"model {model.layers}x{model.units}, {len(text):,} chars of stdlib test, {a.threads} thread(s)")
    with tempfile.TemporaryDirectory(dir="recordings") as tmp:
        tmp = Path(tmp)
        bare_forward(model, ids[:BLOCK])  # warm up
        t_a = bare_forward(model, ids)
        t0 = time.perf_counter()
        record(model, [("bench", text)], tmp / "seq.h5", progress=False)
        t_b = time.perf_counter() - t0
        t0 = time.perf_counter()
        record(model, [("bench", text)], tmp / "bat.h5", batch=a.batch, progress=False)
        t_c = time.perf_counter() - t0
        t0 = time.perf_counter()
        record(model, [("bench", text)], tmp / "seq-raw.h5", compression="none", progress=False)
        t_d = time.perf_counter() - t0
        t0 = time.perf_counter()
        record(model, [("bench", text)], tmp / "bat-raw.h5", compression="none", batch=a.batch,
               progress=False)
        t_e = time.perf_counter() - t0
        t0 = time.perf_counter()
        record(model, [("bench", text)], tmp / "seq-nock.h5", checksums=False, progress=False)
        t_f = time.perf_counter() - t0
        t0 = time.perf_counter()
        record(model, [("bench", text)], tmp / "raw-nock.h5", compression="none", checksums=False,
               progress=False)
        t_g = time.perf_counter() - t0
        n = len(text)
        print(f"(a) bare forward                          {n / t_a:10,.0f} chars/s")
        print(f"(b) record sequential {n / t_b:10,.0f} chars/s   (b)/(a) = {t_a / t_b:.2f}  (goal >= 0.8)")
        print(f"(c) record --batch {a.batch:<2d}                     {n / t_c:10,.0f} chars/s   (c)/(b) = {t_b / t_c:.2f}")
        print(f"(d) record --compression none            {n / t_d:10,.0f} chars/s   (d)/(a) = {t_a / t_d:.2f}")
        print(f"(e) record --compression none --batch {a.batch:<2d}{n / t_e:10,.0f} chars/s   (e)/(a) = {t_a / t_e:.2f}")
        print(f"(f) record, no checksums                 {n / t_f:10,.0f} chars/s   (b)/(f) = {t_f / t_b:.2f}"
              "  (the checksums' cost, gzip)")
        print(f"(g) record --compression none, no checksums {n / t_g:7,.0f} chars/s   (d)/(g) = {t_g / t_d:.2f}"
              "  (the checksums' cost, no compression)")
        for name in ("seq.h5", "seq-raw.h5"):
            size = (tmp / name).stat().st_size
            print(f"on disk, {name}: {size / n:,.0f} bytes/char ({size / 1e6:.0f} MB, float16)")
        with open_recording(tmp / "seq.h5") as seq, open_recording(tmp / "bat.h5") as bat:
            print(f"batched vs sequential (--batch {a.batch}, --burn-in 256), mean |diff| / "
                  "99.9th percentile |diff|, and the mean |diff| in the first 64 characters of pieces:")
            piece_start = (np.arange(n) % PIECE) < 64
            for k in range(seq.layers):
                for s in ("c", "h", "f"):
                    d = np.abs(seq.stream(k, s)[:].astype(np.float32) - bat.stream(k, s)[:].astype(np.float32))
                    print(f"  layer {k} {s}: {d.mean():.5f} / {np.quantile(d, 0.999):.4f}; "
                          f"near piece starts {d[piece_start].mean():.5f}")
            dl = np.abs(seq.loss - bat.loss)
            print(f"  loss (bits): mean |diff| {np.nanmean(dl):.5f}; mean bits/char {np.nanmean(seq.loss):.4f} "
                  f"sequential vs {np.nanmean(bat.loss):.4f} batched")
        with open_recording(tmp / "seq.h5") as rec:
            t0 = time.perf_counter()
            rec.unit(rec.layers - 1, "c", 7)
            t_col = time.perf_counter() - t0
            t0 = time.perf_counter()
            rec.window(rec.layers - 1, "c", n // 2, n // 2 + 5000)
            t_win = time.perf_counter() - t0
        print(f"read one unit over all T: {t_col * 1e3:.0f} ms; one 5k window of all units: {t_win * 1e3:.0f} ms")
        src = tmp / "src.txt"
        for mult in (1, 2):
            src.write_text(corpus.stdlib("test").text[: a.chars * mult // 2])
            rss = child_peak_rss_mb(["record", "--text", str(src), "--out", str(tmp / f"rss{mult}.h5"),
                                     "--quiet"] + (["--model", a.model] if a.model else []))
            print(f"peak RSS of probe record on {a.chars * mult // 2:,} chars: {rss:,.0f} MB")
    print(f"this process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
