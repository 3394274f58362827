"""Benchmark: ``probe gradients`` against the training loop doing the same number of
character-steps (forward + backward), in one run.

    python bench/gradients.py [--model lstm] [--positions 1000] [--span 200]

``gradients.flow`` runs positions x (span + 1) character-steps forward and back; a plain
TBPTT training step (batch 64 x 128 characters, Adam, clipping) is timed over the same
number of character-steps. Goal: the ratio <= 1.5 (positions batched, not one backward
pass each). Run with nothing else busy.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from probe import load_model
from probe.causal import gradients
from probe.lm.model import detach
from probe.lm.train import rows
from probe.text import corpus


def training_seconds(model, ids, char_steps: int, batch: int = 64, seq: int = 128) -> float:
    model = model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = rows(ids, batch)
    steps = max(1, -(-char_steps // (batch * seq)))
    state = None
    t0 = time.perf_counter()
    for step in range(steps):
        a = (step * seq) % (data.shape[1] - seq - 1)
        x, y = data[:, a:a + seq], data[:, a + 1:a + seq + 1]
        logits, state = model(x, state)
        state = detach(state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    model.eval()
    return (time.perf_counter() - t0) * char_steps / (steps * batch * seq)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lstm", help="a shipped model's name or a checkpoint")
    p.add_argument("--positions", type=int, default=1000)
    p.add_argument("--span", type=int, default=200)
    p.add_argument("--chars", type=int, default=50_000, help="test characters to sample positions from")
    a = p.parse_args()
    model = load_model(a.model)
    text = corpus.stdlib("test").text[:a.chars]
    ids = corpus.encode(text, model.vocab)[0]
    char_steps = a.positions * (a.span + 1)
    t0 = time.perf_counter()
    gradients.flow(model, text, span=a.span, positions=a.positions)
    t_flow = time.perf_counter() - t0
    t_train = training_seconds(load_model(a.model), ids, char_steps)
    print(f"{model.cell} {model.layers}x{model.units}: {a.positions} positions x {a.span + 1} steps = "
          f"{char_steps:,} character-steps, {torch.get_num_threads()} threads")
    print(f"probe gradients: {t_flow:.1f} s; training loop, same character-steps: {t_train:.1f} s; "
          f"ratio {t_flow / t_train:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
