"""Recording throughput against the bare forward pass of the same model, in one run.

    python bench/record_throughput.py [--model M] [--chars 200000] [--batch 16]

Prints chars/s of (a) the model's plain forward pass over the text in the same blocks,
then of `probe record` with each codec (zstd, the default; gzip; none), in batched mode and
without checksums, each as a ratio to (a) (goal: zstd >= 0.8) with its bytes on disk per
character; peak RSS of `probe record` subprocesses on N and
2N characters (bounded memory: it should not double); and read times for one unit over
all T and one 5,000-character window of all units.

    python bench/record_throughput.py --words [--vocab-size 10000]

Instead compares a word-level model with the character model: each one's `probe record`
(zstd, sequential) against its own bare forward pass over the same text, tokens/s and the
ratio (goal: the word model's ratio the same as the character model's). The word model has
the shipped model's shape (layers, units, embedding) and a vocabulary of the text's most
frequent words; its weights are untrained, which costs the same.
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

from probe import load_model, open_recording
from probe.lm.model import CharRNN
from probe.recording.record import BLOCK, PIECE, record
from probe.text import corpus, tokens


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


def ratio(model, text: str, out: Path) -> tuple[int, float, float]:
    """(positions, bare forward s, probe record s) of ``model`` over ``text``."""
    ids = torch.from_numpy(tokens.encode(model, text)[0])
    bare_forward(model, ids[:BLOCK])  # warm up
    t_a = min(bare_forward(model, ids) for _ in range(2))
    t0 = time.perf_counter()
    record(model, [("bench", text)], out, progress=False)
    return len(ids), t_a, time.perf_counter() - t0


def words(a) -> None:
    chars = load_model(a.model)
    text = corpus.stdlib("test").text[: a.chars]
    cfg = chars.config
    torch.manual_seed(0)
    word = CharRNN(tokens.word_vocab([text], a.vocab_size), cfg["layers"], cfg["units"], cfg["embedding"],
                   0.0, chars.cell, tokens="words").eval()
    print(f"{len(text):,} chars of stdlib test, {a.threads} thread(s); both {cfg['layers']}x{cfg['units']} "
          f"{chars.cell}; word vocabulary {len(word.vocab):,}")
    print(f"{'model':10s} {'positions':>10s} {'bare /s':>10s} {'record /s':>10s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory(dir="recordings") as tmp:
        found = {}
        for name, model in (("chars", chars), ("words", word)):
            n, t_a, t_r = ratio(model, text, Path(tmp) / f"{name}.h5")
            found[name] = t_a / t_r
            print(f"{name:10s} {n:10,} {n / t_a:10,.0f} {n / t_r:10,.0f} {t_a / t_r:6.2f}")
    print(f"word / char ratio: {found['words'] / found['chars']:.2f} (goal: about 1)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--chars", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=16, help="pieces side by side in batched mode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--words", action="store_true", help="compare a word-level model's ratio with the char model's")
    p.add_argument("--vocab-size", type=int, default=10_000)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    Path("recordings").mkdir(exist_ok=True)
    if a.words:
        return words(a)
    model = load_model(a.model)
    text = corpus.stdlib("test").text[: a.chars]
    ids = torch.from_numpy(corpus.encode(text, model.vocab)[0])
    print(f"model {model.layers}x{model.units}, {len(text):,} chars of stdlib test, {a.threads} thread(s)")
    with tempfile.TemporaryDirectory(dir="recordings") as tmp:
        tmp = Path(tmp)
        bare_forward(model, ids[:BLOCK])  # warm up
        t_a = bare_forward(model, ids)
        n = len(text)
        print(f"(a) bare forward: {n / t_a:,.0f} chars/s")
        print(f"{'probe record':44s} {'chars/s':>9s} {'/ (a)':>6s} {'bytes/char':>11s}")
        runs = [("seq.h5", "zstd (the default)", {}),
                ("gzip.h5", "--compression gzip", dict(compression="gzip")),
                ("seq-raw.h5", "--compression none", dict(compression="none")),
                ("bat.h5", f"--batch {a.batch}", dict(batch=a.batch)),
                ("bat-raw.h5", f"--batch {a.batch} --compression none", dict(batch=a.batch, compression="none")),
                ("nock.h5", "zstd, no checksums", dict(checksums=False)),
                ("raw-nock.h5", "--compression none, no checksums", dict(compression="none", checksums=False))]
        took = {}
        for name, label, kw in runs:
            t0 = time.perf_counter()
            record(model, [("bench", text)], tmp / name, progress=False, **kw)
            took[name] = time.perf_counter() - t0
            size = (tmp / name).stat().st_size
            print(f"{label:44s} {n / took[name]:9,.0f} {t_a / took[name]:6.2f} {size / n:11,.0f}")
        print(f"goal: zstd / (a) >= 0.8.  batched / sequential: {took['seq.h5'] / took['bat.h5']:.2f} (zstd), "
              f"{took['seq-raw.h5'] / took['bat-raw.h5']:.2f} (none); checksums' cost (with / without): "
              f"{took['nock.h5'] / took['seq.h5']:.2f} (zstd), {took['raw-nock.h5'] / took['seq-raw.h5']:.2f} (none)")
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
