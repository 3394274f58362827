"""Benchmark: directional ablation and the dictionary's splice, each against one plain
forward pass over the same characters, in one run.

    python bench/edits.py [--model lstm] [--chars 5000] [--directions 17]

- directional ablation (``probe.readout.ablation.losses``): ``--directions`` random unit
  directions, each removed from layer 0's c and layer 1's h at every step, as rows of one
  batch (how ``probe directions ablate`` runs a feature's direction and its controls);
- dictionary splice (``probe.readout.loss_recovered.spliced_bits``): one stream replaced by a
  stand-in reconstruction (0.9 x itself) at every step, three rows (clean, spliced, zeroed),
  for layer 0's c and layer 1's h.

Each prints seconds and its time ÷ the plain forward pass's (the model's own fused LSTM and
head over the same text), the best of ``--repeat``. Goal: no slower than before the edits
ran through ``probe.lm.recurrence`` (run this script in both trees). Run with nothing else busy.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from probe import load_model
from probe.readout.ablation import losses
from probe.readout.loss_recovered import spliced_bits
from probe.text import corpus


def best(repeat: int, fn, *args) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def forward(model, ids) -> None:
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids)[None])
        torch.log_softmax(logits, -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lstm", help="a shipped model's name or a checkpoint")
    p.add_argument("--chars", type=int, default=5000, help="characters of the stdlib test split")
    p.add_argument("--directions", type=int, default=17, help="rows of the directional ablation")
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args()
    model = load_model(a.model)
    text = corpus.stdlib("test").text[:a.chars]
    ids = corpus.encode(text, model.vocab)[0]
    H = model.units
    fwd = best(3, forward, model, ids)
    print(f"{a.model} {model.layers}x{H}, {len(ids):,} characters, {torch.get_num_threads()} torch threads; "
          f"plain forward {fwd * 1000:.0f} ms")
    rng = np.random.default_rng(0)
    stream = "c" if model.cell == "lstm" else "h"

    def unit() -> torch.Tensor:
        v = rng.standard_normal(H).astype(np.float32)
        return torch.from_numpy(v / np.linalg.norm(v))
    rows = [{(0, stream): (unit(), 0.0), (model.layers - 1, "h"): (unit(), 0.0)} for _ in range(a.directions)]
    t = best(a.repeat, losses, model, text, rows)
    print(f"directional ablation, {a.directions} directions in 0:{stream} and {model.layers - 1}:h: "
          f"{t:.2f} s, {t / fwd:.1f}x the forward pass")
    for layer, s in ((0, stream), (model.layers - 1, "h")):
        t = best(a.repeat, spliced_bits, model, ids, layer, s, lambda v: 0.9 * v)
        print(f"dictionary splice of {layer}:{s}: {t:.2f} s, {t / fwd:.1f}x the forward pass")


if __name__ == "__main__":
    main()
