"""A character-level LSTM written the way the PyTorch char-rnn ports write one: seq-first
modules named ``encoder`` / ``rnn`` / ``decoder``, and a ``forward`` that reads ONE time step
(``input [B]``, ``hidden``) and returns ``(logits [B, V], hidden)``; training and scoring
loop over time themselves.

    python examples/byom/char_lstm.py --steps 300                 # train: runs/char_lstm.weights.pt
    probe import examples/byom/char_lstm.py:build --weights runs/char_lstm.weights.pt \\
        --forward examples/byom/char_lstm.py:scores --out runs/char_lstm.pt

``build()`` is the factory ``probe import`` calls: a fresh module and its vocabulary
(``string.printable``, 100 characters); the trained weights come with ``--weights``.
``scores(module, ids)`` is this model's own way of scoring a text, one step at a time:
``probe import`` proves its copy of the model gives the same log-probabilities.
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

VOCAB = string.printable  # index = position in this string


class CharLSTM(nn.Module):
    def __init__(self, n_chars: int = len(VOCAB), embedding: int = 64, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.hidden_size, self.n_layers = hidden, layers
        self.encoder = nn.Embedding(n_chars, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers)  # seq-first: [T, B, ...]
        self.decoder = nn.Linear(hidden, n_chars)

    def forward(self, input, hidden):
        """One time step: input [B] (character ids) → logits [B, V], the next hidden."""
        output, hidden = self.rnn(self.encoder(input).unsqueeze(0), hidden)
        return self.decoder(output.squeeze(0)), hidden

    def init_hidden(self, batch_size: int):
        z = torch.zeros(self.n_layers, batch_size, self.hidden_size)
        return z, z.clone()


def build():
    """The factory for ``probe import``: (a fresh module, the vocabulary in index order)."""
    return CharLSTM(), list(VOCAB)


def scores(module: CharLSTM, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, T] → logits [B, T, V], by the model's own loop over time."""
    hidden, out = module.init_hidden(ids.shape[0]), []
    for t in range(ids.shape[1]):
        logits, hidden = module(ids[:, t], hidden)
        out.append(logits)
    return torch.stack(out, 1)


def training_ids(limit: int) -> torch.Tensor:
    """Python source (the standard library's train split, as probe splits it) as ids;
    characters outside the vocabulary are dropped."""
    from probe.text.corpus import stdlib
    index = {ch: i for i, ch in enumerate(VOCAB)}
    text = stdlib("train").limited(limit).text
    return torch.tensor([index[ch] for ch in text if ch in index])


def main() -> None:
    p = argparse.ArgumentParser(description="train the char-rnn-style LSTM on Python source")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--out", default="runs/char_lstm.weights.pt", help="the state_dict to write")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--length", type=int, default=64,
                   help="characters per step, back-propagated through (the state goes on to the next)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0, help="torch's seed (the same weights every run)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)  # small matrices, one step after another: more threads mostly wait
    data = training_ids(2_000_000)
    model = build()[0]
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    tracks = data[: len(data) // a.batch * a.batch].view(a.batch, -1)  # [B, N]: B stretches of the text
    hidden, at, start = model.init_hidden(a.batch), 0, time.time()
    for step in range(1, a.steps + 1):
        if at + a.length + 1 > tracks.shape[1]:  # the end of the text: start over
            hidden, at = model.init_hidden(a.batch), 0
        chunk = tracks[:, at:at + a.length + 1]  # [B, L + 1]: each row goes on where it stopped
        at += a.length
        hidden, loss = tuple(h.detach() for h in hidden), 0.0  # carried over, not back-propagated into
        for t in range(a.length):  # one forward(input, hidden) per time step
            logits, hidden = model(chunk[:, t], hidden)
            loss = loss + F.cross_entropy(logits, chunk[:, t + 1])
        loss = loss / a.length
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
