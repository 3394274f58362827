"""Benchmark: clamped sampling (``probe sample --clamp``) against free sampling, in one run.

    python bench/sample.py [--model lstm] [--length 2000] [--repeat 3]

Both run ``probe.lm.recurrence`` one character at a time, free sampling without a hook,
clamped sampling with a pinning hook; both generate ``--length`` characters from the same
prime, the best of ``--repeat`` runs each. Goal: clamped ÷ free <= 1.2 (a clamp costs about
what one more small step does). For scale, the model's own ``forward`` one character at a
time (what free sampling ran before the recurrence was one module) is timed too. Run with
nothing else busy.
"""
from __future__ import annotations

import argparse
import time

import torch

from probe import load_model
from probe.causal.intervene import Edit
from probe.lm.sample import sample
from probe.text import corpus


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def best(repeat: int, **kw) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sample(**kw)
        times.append(time.perf_counter() - t0)
    return min(times)


def own_forward(model, prime: str, length: int, temperature: float, seed: int) -> None:
    """Sampling as it was: the model's own fused forward (``nn.LSTM``) per character."""
    gen = torch.Generator().manual_seed(seed)
    state, char = None, torch.tensor([corpus.encode(prime, model.vocab)[0].tolist()])
    with torch.no_grad():
        for _ in range(length):
            logits, state = model(char, state)
            probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
            char = torch.multinomial(probs, 1, generator=gen)[None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lstm", help="a shipped model's name or a checkpoint")
    p.add_argument("--length", type=int, default=2000, help="characters to generate")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    model = load_model(a.model)
    kw = dict(model=model, prime="def main():\n", length=a.length, temperature=0.7, seed=0)
    sample(**{**kw, "length": 50})  # warm up
    free = best(a.repeat, **kw)
    print(f"{a.model} {model.layers}x{model.units}: free sampling {a.length / free:,.0f} chars/s")
    own = min(_timed(own_forward, model, kw["prime"], a.length, 0.7, 0) for _ in range(a.repeat))
    print(f"the model's own forward per character: {a.length / own:,.0f} chars/s (free sampling is "
          f"{own / free:.1f}x as fast)")
    stream = "c" if model.cell == "lstm" else "h"
    for layer in range(model.layers):
        clamped = best(a.repeat, **kw, clamp=[Edit(layer, stream, 1, 0.5)])
        print(f"clamped {layer}:{stream}:1=0.5: {a.length / clamped:,.0f} chars/s, "
              f"ratio {clamped / free:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
