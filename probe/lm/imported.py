"""A model brought from elsewhere, as probe holds it: an input map (an embedding, or one-hot
vectors), recurrent layers each with its own shape, and a linear head over the vocabulary.

``probe.lm.adapt`` builds one from a user's module and proves it computes the same; this
module only knows the shape, so a checkpoint of it is data (its config says every size)::

    {"kind": "imported", "vocab": "..." (characters; a list of tokens with "tokens": "words" or
     "vocab", the tokenizer probe.text.tokens reads text with), "cell": "lstm", "layers": 2, "units": 512,
     "embedding": 64 (0: one-hot), "tied": false, "head_bias": true,
     "stack": [{"inputs": 64, "units": 512, "proj": 0, "bias": true, "nonlinearity": "tanh",
                "layers": 1}, ...], "parity": {...}, "source": {...}}

``stack`` lists the user's recurrent modules bottom to top; a module may hold several
layers of one width (``layers``). ``probe.lm.parts`` reads every layer's weights from it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from probe.errors import ProbeError
from probe.text import tokens as toks

KIND = "imported"
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentLM(nn.Module):
    """Input map → recurrent modules (each its own width) → Linear over the vocabulary."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        kind = config.get("tokens", "chars")
        self.vocab = config["vocab"] if kind == "chars" else tuple(config["vocab"])  # as CharRNN holds it
        self.tokenizer = toks.Tokenizer(kind, tuple(self.vocab))
        self.cell = config["cell"]
        V = len(self.vocab)
        size = int(config["embedding"])
        self.embed = nn.Embedding(V, size) if size else None  # None: one-hot input
        mods = []
        for m in config["stack"]:
            kw = {"bias": bool(m["bias"]), "batch_first": True}
            if self.cell == "lstm" and m.get("proj", 0):
                kw["proj_size"] = int(m["proj"])
            if self.cell == "rnn":
                kw["nonlinearity"] = m.get("nonlinearity", "tanh")
            mods.append(CELLS[self.cell](int(m["inputs"]), int(m["units"]), int(m.get("layers", 1)), **kw))
        self.stack = nn.ModuleList(mods)
        top = config["stack"][-1]
        self.head = nn.Linear(int(top.get("proj") or top["units"]), V, bias=bool(config.get("head_bias", True)))
        if config.get("tied"):
            self.head.weight = self.embed.weight

    @property
    def layers(self) -> int:
        return sum(m.num_layers for m in self.stack)

    @property
    def units(self) -> int:
        """The widest layer's units (``probe.lm.parts.widths`` gives every stream's)."""
        return max(m.hidden_size for m in self.stack)

    def forward(self, ids: torch.Tensor, state=None):
        """ids [B, T] → logits [B, T, V], state (per module, as the module returns it)."""
        x = self.embed(ids) if self.embed is not None else nn.functional.one_hot(ids, len(self.vocab)).float()
        out_state = []
        for j, m in enumerate(self.stack):
            x, s = m(x, None if state is None else state[j])
            out_state.append(s)
        return self.head(x), out_state


def build(config: dict) -> RecurrentLM:
    """The model a config describes, or a one-line error saying what is missing."""
    try:
        if config["cell"] not in CELLS:
            raise ProbeError(f"unknown cell type {config['cell']!r}: choose {', '.join(CELLS)}")
        if not config["stack"]:
            raise ProbeError("an imported model's config lists no recurrent module")
        return RecurrentLM(config)
    except (KeyError, TypeError, ValueError) as e:
        raise ProbeError(f"imported model config is unusable ({type(e).__name__}: {e})") from None
