"""A character-level language model of two separate ``nn.LSTM`` layers of different widths
(64 → 192 → 64), batch-first, dropout between them, and a decoder tied to the embedding
(so the top layer is as wide as the embedding): the shape of many Keras-style PyTorch
tutorials. ``forward(ids [B, T])`` returns logits ``[B, T, V]``, so ``probe import`` needs
no ``--forward``: it proves parity against the parts it found, run in order.

    python examples/byom/two_widths.py --steps 300                # train: runs/two_widths.weights.pt
    probe import examples/byom/two_widths.py:build --weights runs/two_widths.weights.pt \\
        --out runs/two_widths.pt
"""
from __future__ import annotations

import argparse
import math
import string
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = string.printable


class TwoWidths(nn.Module):
    def __init__(self, vocab_size: int = len(VOCAB), emb: int = 64, wide: int = 192, dropout: float = 0.2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb)
        self.lstm1 = nn.LSTM(emb, wide, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.lstm2 = nn.LSTM(wide, emb, batch_first=True)
        self.fc = nn.Linear(emb, vocab_size)
        self.fc.weight = self.embedding.weight  # tied: the output layer is the embedding

    def forward(self, x):
        """ids [B, T] → logits [B, T, V]."""
        x, _ = self.lstm1(self.embedding(x))
        x, _ = self.lstm2(self.dropout(x))
        return self.fc(x)


def build():
    """The factory for ``probe import``: (a fresh module, the vocabulary in index order)."""
    return TwoWidths(), list(VOCAB)


def training_ids(limit: int) -> torch.Tensor:
    """Python source (the standard library's train split, as probe splits it) as ids;
    characters outside the vocabulary are dropped."""
    from probe.text.corpus import stdlib
    index = {ch: i for i, ch in enumerate(VOCAB)}
    text = stdlib("train").limited(limit).text
    return torch.tensor([index[ch] for ch in text if ch in index])


def main() -> None:
    p = argparse.ArgumentParser(description="train the two-widths LSTM on Python source")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--out", default="runs/two_widths.weights.pt", help="the state_dict to write")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--length", type=int, default=128, help="characters per training sequence")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0, help="torch's seed (the same weights every run)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)  # small matrices, one step after another: more threads mostly wait
    data = training_ids(2_000_000)
    model = build()[0]
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    start = time.time()
    for step in range(1, a.steps + 1):
        at = torch.randint(len(data) - a.length - 1, (a.batch,))
        chunk = torch.stack([data[i:i + a.length + 1] for i in at.tolist()])  # [B, L + 1]
        logits = model(chunk[:, :-1])  # the whole sequence in one call
        loss = F.cross_entropy(logits.reshape(-1, len(VOCAB)), chunk[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 50 == 0 or step in (1, a.steps):
            print(f"step {step:4d}  loss {loss.item():.3f} nats  ({loss.item() / math.log(2):.2f} bits/char)  "
                  f"{time.time() - start:.0f} s", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
