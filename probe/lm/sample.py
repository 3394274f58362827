"""Sample text from a model, one position (a character, or a word model's token) at a time,
with a temperature."""
from __future__ import annotations

import math

import torch

from probe.errors import ProbeError
from probe.lm import recurrence
from probe.lm.model import CharRNN
from probe.text import corpus as corpora
from probe.text import tokens as toks


@torch.no_grad()
def sample(model: CharRNN, prime: str = "\n", length: int = 500, temperature: float = 1.0,
           seed: int | None = None, clamp=()) -> str:
    """Continue ``prime`` by ``length`` positions: characters, or a word model's tokens,
    returned as the text that follows ``prime`` (words joined by its tokenizer: a space
    between words, ``<eos>`` a line end, a space before the first word unless ``prime``
    ends in whitespace).

    Logits are divided by ``temperature`` before the softmax: 1.0 samples the model's own
    distribution, lower sharpens it, 0 picks the most likely one (greedy); the unknown
    token is never sampled (greedy decoding may still pick it). The prime is read as
    ``probe record`` reads text, through the model's tokenizer: what is outside the
    vocabulary becomes the unknown symbol. ``clamp``: edits
    (``intervene.Edit`` with a number) pinned at every step, prime included: steering.
    Free or clamped, the model runs through ``probe.lm.recurrence`` (``stepper``).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProbeError(f"--length must be a whole number >= 0, got {length!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ProbeError(f"--temperature must be a finite number >= 0, got {temperature!r}")
    if not prime:
        raise ProbeError("--prime must not be empty")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    model.eval()
    tok = toks.of(model)
    ids = tok.encode(prime)[0].tolist()
    if not ids:
        raise ProbeError(f"--prime {prime!r} holds no {tok.unit} the model reads")
    unk = 0 if model.vocab[0] == corpora.UNK else tok.index.get(toks.UNK)
    step = stepper(model, list(clamp))
    for char in ids[:-1]:
        step(char)
    last = step(ids[-1])  # [V] logits of the first new character
    out = []
    for _ in range(length):
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last / temperature, dim=-1)
            if unk is not None:
                probs[unk] = 0.0  # never emit the unknown symbol (an imported vocabulary may have none)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(nxt)
        last = step(nxt)
    text = tok.join(out)
    glued = not text or text[0] == "\n" or prime[-1].isspace()
    return text if tok.kind != "words" or glued else " " + text


def stepper(model: CharRNN, clamp: list = ()):
    """step(id) -> logits [V] of the next position, one position at a time through
    ``probe.lm.recurrence``, with the clamped cells (if any) pinned."""
    for e in clamp:
        if isinstance(e.how, str):
            raise ProbeError(f"--clamp {e}: give a number to clamp to")
    cells = [(e.layer, e.stream, e.unit) for e in clamp]
    recurrence.check_cells(model, cells)
    hooks = recurrence.pinning(cells, [e.how for e in clamp])
    state, position = None, 0

    def step(char: int) -> torch.Tensor:
        nonlocal state, position
        logits, state = recurrence.run(model, torch.tensor([[char]]), hooks, state=state, start=position)
        position += 1
        return logits[0, -1]
    return step
