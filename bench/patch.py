"""Benchmark: a patching sweep over every unit of a layer on 200 pairs (``probe patch --layer L``),
and one plain forward pass over the same characters, in one run.

    python bench/patch.py [--model lstm] [--feature in_short_string] [--pairs 200] [--layers 0 1]

For each layer: the seconds of ``patch.effects`` over all its units (with 16 random
controls drawn from the sweep) on ``--pairs`` pairs made from the stdlib test split, and
the unit-characters per second it patched against the forward pass's characters per second
(the model's own fused LSTM and head over the pairs' base texts, joined). Goal: <= 120 s per layer
on 200 pairs. Run with nothing else busy.
"""
from __future__ import annotations

import argparse
import time

import torch

from probe import load_model
from probe.causal import pairs, patch
from probe.text import corpus


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lstm", help="a shipped model's name or a checkpoint")
    p.add_argument("--feature", default="in_short_string")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--chars", type=int, default=300_000, help="characters of the stdlib test split to draw from")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1])
    a = p.parse_args()
    model = load_model(a.model)
    docs = corpus.stdlib("test").limited(a.chars).documents
    made, report = pairs.pairs(a.feature, docs, a.pairs, 0)
    chars = sum(pr.position for pr in made)
    joined = torch.from_numpy(corpus.encode("".join(pr.base[:pr.position] for pr in made), model.vocab)[0])[None]
    with torch.no_grad():
        model(joined[:, :256])  # warm up
        t0 = time.perf_counter()
        torch.log_softmax(model(joined)[0], -1)
        fwd = chars / (time.perf_counter() - t0)
    stream = "c" if model.cell == "lstm" else "h"
    print(f"{a.model} {model.layers}x{model.units}: {len(made)} {a.feature} pairs ({report['offered']} offered), "
          f"{chars:,} base characters, {torch.get_num_threads()} torch threads; forward {fwd:,.0f} chars/s")
    for layer in a.layers:
        t0 = time.perf_counter()
        patch.effects(model, made, layer=layer, stream=stream, random=16)
        dt = time.perf_counter() - t0
        rate = model.units * chars / dt
        print(f"sweep {layer}:{stream} ({model.units} units): {dt:.1f} s (goal <= 120 s), {rate:,.0f} unit-chars/s, "
              f"{rate / fwd:.2f} x the forward pass's chars/s")


if __name__ == "__main__":
    main()
