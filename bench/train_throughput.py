"""Training throughput of probe's training step against a bare PyTorch loop, in one run.

    python bench/train_throughput.py [--units 256] [--steps 30]

Both loops train the same model (same init) on the same [batch, seq] windows of stdlib
text: probe's `train()` (TBPTT with state carried, clipping, Adam, schedule, progress
bookkeeping) and a bare loop of embedding → nn.LSTM → linear with the same optimizer.
Prints chars/s of each and the ratio probe / bare (goal >= 0.95).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from probe.lm.model import CharRNN
from probe.lm.train import TrainConfig, rows, train
from probe.text import corpus


def bare_loop(vocab: str, ids, units: int, batch: int, seq: int, steps: int, cell: str = "lstm") -> float:
    torch.manual_seed(0)
    model = CharRNN(vocab, 2, units, 64, 0.1, cell)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = rows(ids, batch)
    state = None
    t0 = time.perf_counter()
    for step in range(steps):
        x = data[:, step * seq:(step + 1) * seq]
        y = data[:, step * seq + 1:(step + 1) * seq + 1]
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return steps * batch * seq / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell-type", dest="cell", default="lstm", choices=["lstm", "gru", "rnn"], help="the recurrent type")
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    text = corpus.stdlib("train").text[: a.batch * (a.seq * a.steps + 1) * 2]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "train.txt"
        src.write_text(text)
        vocab = corpus.build_vocab(text[: int(len(text) * 0.95)])
        ids = corpus.encode(text[: int(len(text) * 0.95)], vocab)[0]
        rates = {"bare": [], "probe": []}
        for _ in range(2):  # interleave to share the machine's noise fairly
            rates["bare"].append(bare_loop(vocab, ids, a.units, a.batch, a.seq, a.steps, a.cell))
            cfg = TrainConfig(text=str(src), cell=a.cell, units=a.units, batch=a.batch, seq=a.seq, steps=a.steps,
                              eval_every=10 ** 9, warmup=5)
            m = train(Path(tmp) / "m.pt", cfg, progress=False, force=True)
            rates["probe"].append(m["chars"] / m["train_seconds"])
    bare, probe = max(rates["bare"]), max(rates["probe"])
    print(f"2x{a.units} {a.cell}, batch {a.batch} x seq {a.seq}, {a.steps} steps, {a.threads} thread(s)")
    print(f"bare PyTorch loop: {bare:,.0f} chars/s")
    print(f"probe train:       {probe:,.0f} chars/s")
    print(f"ratio probe/bare:  {probe / bare:.2f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
