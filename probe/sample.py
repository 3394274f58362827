"""Sample text from a model, character by character, with a temperature."""
from __future__ import annotations

import math

import torch

from . import corpus as corpora
from .errors import ProbeError
from .model import CharLSTM


@torch.no_grad()
def sample(model: CharLSTM, prime: str = "\n", length: int = 500, temperature: float = 1.0,
           seed: int | None = None) -> str:
    """Continue ``prime`` by ``length`` characters.

    Logits are divided by ``temperature`` before the softmax: 1.0 samples the model's own
    distribution, lower sharpens it, 0 picks the most likely character (greedy). Characters
    of the prime outside the model's vocabulary are read as the unknown symbol, as
    ``probe record`` reads them (``corpus.encode`` counts them).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProbeError(f"--length must be a whole number >= 0, got {length!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ProbeError(f"--temperature must be a finite number >= 0, got {temperature!r}")
    if not prime:
        raise ProbeError("--prime must not be empty")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    model.eval()
    ids = torch.from_numpy(corpora.encode(prime, model.vocab)[0])[None]  # [1, len(prime)]
    logits, state = model(ids)
    out = []
    for _ in range(length):
        last = logits[0, -1]
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last / temperature, dim=-1)
            probs[0] = 0.0  # never emit the unknown symbol
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(model.vocab[nxt])
        logits, state = model(torch.tensor([[nxt]]), state)
    return "".join(out)
