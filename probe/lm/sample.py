"""Sample text from a model, character by character, with a temperature."""
from __future__ import annotations

import math

import torch

from probe.errors import ProbeError
from probe.lm.model import CharRNN
from probe.lm.stepwise import check_pins, layer_weights, lstm_step, pins
from probe.text import corpus as corpora


@torch.no_grad()
def sample(model: CharRNN, prime: str = "\n", length: int = 500, temperature: float = 1.0,
           seed: int | None = None, clamp=()) -> str:
    """Continue ``prime`` by ``length`` characters.

    Logits are divided by ``temperature`` before the softmax: 1.0 samples the model's own
    distribution, lower sharpens it, 0 picks the most likely character (greedy). Characters
    of the prime outside the model's vocabulary are read as the unknown symbol, as
    ``probe record`` reads them (``corpus.encode`` counts them). ``clamp``: edits
    (``intervene.Edit`` with a number) pinned at every step, prime included: steering.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProbeError(f"--length must be a whole number >= 0, got {length!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ProbeError(f"--temperature must be a finite number >= 0, got {temperature!r}")
    if not prime:
        raise ProbeError("--prime must not be empty")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    model.eval()
    ids = corpora.encode(prime, model.vocab)[0].tolist()
    step = _clamped(model, list(clamp)) if clamp else _free(model)
    for char in ids[:-1]:
        step(char)
    last = step(ids[-1])  # [V] logits of the first new character
    out = []
    for _ in range(length):
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last / temperature, dim=-1)
            probs[0] = 0.0  # never emit the unknown symbol
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(model.vocab[nxt])
        last = step(nxt)
    return "".join(out)


def _free(model: CharRNN):
    """step(char id) -> logits [V] of the next character, the model's own fused LSTM."""
    state = None

    def step(char: int) -> torch.Tensor:
        nonlocal state
        logits, state = model(torch.tensor([[char]]), state)
        return logits[0, -1]
    return step


def _clamped(model: CharRNN, clamp: list):
    """step(char id) -> logits [V], one character at a time with the clamped units pinned
    (``probe.lm.stepwise``'s cell with an edit hook)."""
    check_pins(model, clamp)
    for e in clamp:
        if isinstance(e.how, str):
            raise ProbeError(f"--clamp {e}: give a number to clamp to")
    weights = [layer_weights(model, k) for k in range(model.layers)]
    h = [torch.zeros(model.units) for _ in weights]
    c = [torch.zeros(model.units) for _ in weights]

    pin = pins(clamp)

    def step(char: int) -> torch.Tensor:
        x = model.embed.weight[char]
        for k, w in enumerate(weights):
            values = lstm_step(x, h[k], c[k], w, pin, 0, k)
            h[k], c[k] = values["h"], values["c"]
            x = h[k]
        return model.head(h[-1])
    return step
