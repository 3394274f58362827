"""Sample text from a model, character by character, with a temperature."""
from __future__ import annotations

import torch

from .errors import ProbeError
from .model import CharLSTM


@torch.no_grad()
def sample(model: CharLSTM, prime: str = "\n", length: int = 500, temperature: float = 1.0,
           seed: int | None = None) -> str:
    """Continue ``prime`` by ``length`` characters.

    Logits are divided by ``temperature`` before the softmax: 1.0 samples the model's own
    distribution, lower sharpens it, 0 picks the most likely character (greedy).
    """
    if temperature < 0:
        raise ProbeError(f"temperature must be >= 0, got {temperature}")
    if not prime:
        raise ProbeError("prime text must not be empty")
    index = {ch: i for i, ch in enumerate(model.vocab)}
    unknown = sorted({ch for ch in prime if ch not in index})
    if unknown:
        raise ProbeError(f"prime text has characters outside the model's vocabulary: "
                         f"{', '.join(repr(c) for c in unknown[:10])}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    model.eval()
    ids = torch.tensor([[index[ch] for ch in prime]])
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
