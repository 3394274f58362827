"""Benchmark: sweeping every unit of a layer (``probe ablate --layer L``) against one plain
forward pass over the same characters, in one run.

    python bench/ablate.py [--model M] [--chars 10000] [--layers 0 1] [--random 32]

For each layer: the sweep's unit-characters per second (units x characters / seconds,
``intervene.effects`` with ``--random`` controls drawn from the sweep) divided by the
plain forward pass's characters per second (the model's own fused LSTM and head over the
same text). Goal >= 1.5: batching the edits must beat a forward pass per unit. Prints the
peak RSS too. Run with nothing else busy.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from probe import load_model
from probe.causal import intervene
from probe.text import corpus


def forward_seconds(model, text: str) -> float:
    ids = torch.from_numpy(corpus.encode(text, model.vocab)[0])[None]
    with torch.no_grad():
        model(ids[:, :256])  # warm up
        t0 = time.perf_counter()
        logits, _ = model(ids)
        torch.log_softmax(logits, -1)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--chars", type=int, default=10_000, help="characters of the stdlib test split")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1], help="layers to sweep")
    p.add_argument("--random", type=int, default=32, help="random control units per layer")
    a = p.parse_args()
    model = load_model(a.model)
    docs = corpus.stdlib("test").limited(a.chars).documents
    text = "".join(t for _, t in docs)
    print(f"model {model.layers}x{model.units}, {len(text):,} characters ({len(docs)} documents), "
          f"{torch.get_num_threads()} torch threads")
    t_fwd = min(sum(forward_seconds(model, t) for _, t in docs) for _ in range(3))
    fwd = len(text) / t_fwd
    print(f"plain forward: {fwd:,.0f} chars/s")
    for layer in a.layers:
        t0 = time.perf_counter()
        intervene.effects(model, docs, layer=layer, random=a.random)
        dt = time.perf_counter() - t0
        rate = model.units * len(text) / dt
        print(f"sweep layer {layer} ({model.units} units, --random {a.random}): {dt:.1f} s, "
              f"{rate:,.0f} unit-chars/s, ratio {rate / fwd:.2f} (goal >= 1.5)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
