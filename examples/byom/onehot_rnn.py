"""A vanilla RNN that reads one-hot vectors (no embedding): two ``nn.RNN`` layers (tanh),
seq-first, the way the classic char-RNN tutorials feed characters in. Its ``forward`` takes
the one-hot tensor ``[T, B, V]`` and returns logits ``[T, B, V]``, so ``scores`` turns ids
into one-hots and puts the batch first; the factory returns the module alone and the
vocabulary comes in a JSON file that training writes beside the weights.

    python examples/byom/onehot_rnn.py --steps 300     # runs/onehot_rnn.weights.pt, runs/onehot_rnn.vocab.json
    probe import examples/byom/onehot_rnn.py:build --weights runs/onehot_rnn.weights.pt \\
        --vocab runs/onehot_rnn.vocab.json --forward examples/byom/onehot_rnn.py:scores --out runs/onehot_rnn.pt
"""
from __future__ import annotations

import argparse
import json
import math
import string
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = string.printable


class OneHotRNN(nn.Module):
    def __init__(self, n_chars: int = len(VOCAB), hidden: int = 128, layers: int = 2):
        super().__init__()
        self.n_chars = n_chars
        self.rnn = nn.RNN(n_chars, hidden, num_layers=layers, nonlinearity="tanh")  # seq-first
        self.out = nn.Linear(hidden, n_chars)

    def forward(self, onehot, hidden=None):
        """onehot [T, B, V] → logits [T, B, V], the last hidden state."""
        output, hidden = self.rnn(onehot, hidden)
        return self.out(output), hidden


def build():
    """The factory for ``probe import``: the module alone (the vocabulary comes with --vocab)."""
    return OneHotRNN()


def scores(module: OneHotRNN, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, T] → logits [B, T, V]: one-hot, time first, and back."""
    logits, _ = module(F.one_hot(ids.T, module.n_chars).float())
    return logits.transpose(0, 1)


def training_ids(limit: int) -> torch.Tensor:
    """Python source (the standard library's train split, as probe splits it) as ids;
    characters outside the vocabulary are dropped."""
    from probe.text.corpus import stdlib
    index = {ch: i for i, ch in enumerate(VOCAB)}
    text = stdlib("train").limited(limit).text
    return torch.tensor([index[ch] for ch in text if ch in index])


def main() -> None:
    p = argparse.ArgumentParser(description="train the one-hot RNN on Python source")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--out", default="runs/onehot_rnn.weights.pt", help="the state_dict to write (the "
                   "vocabulary goes beside it, .vocab.json)")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--length", type=int, default=128, help="characters per training sequence")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0, help="torch's seed (the same weights every run)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)  # small matrices, one step after another: more threads mostly wait
    data = training_ids(2_000_000)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    start = time.time()
    for step in range(1, a.steps + 1):
        at = torch.randint(len(data) - a.length - 1, (a.batch,))
        chunk = torch.stack([data[i:i + a.length + 1] for i in at.tolist()], 1)  # [L + 1, B]: time first
        logits, _ = model(F.one_hot(chunk[:-1], len(VOCAB)).float())
        loss = F.cross_entropy(logits.reshape(-1, len(VOCAB)), chunk[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step in (1, a.steps):
            print(f"step {step:4d}  loss {loss.item():.3f} nats  ({loss.item() / math.log(2):.2f} bits/char)  "
                  f"{time.time() - start:.0f} s", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    vocab = out.with_name(out.name.removesuffix(".pt").removesuffix(".weights") + ".vocab.json")
    vocab.write_text(json.dumps(list(VOCAB)))
    print(f"wrote {out} and {vocab}")


if __name__ == "__main__":
    main()
