"""A model's parts as probe runs them: the input map, each recurrent layer's weights, the head.

Every tool reads a model through these, never through its modules' names: a shipped
``CharRNN`` (one stacked ``nn.LSTM`` / ``GRU`` / ``RNN`` as ``model.rnn``) and an imported
model (``probe.lm.adapt``: ``model.stack``, one module per group of layers, each its own
width, ``proj_size``, with or without biases, an embedding or one-hot input) give the same
``Layer`` objects, which ``probe.lm.recurrence`` runs.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import PackedSequence

# The streams each cell type computes, in the order its step computes them (as
# ``probe.recording.h5format.STREAMS``, which reading a recording uses without torch).
STREAMS: dict[str, tuple[str, ...]] = {"lstm": ("i", "f", "g", "o", "c", "h"), "gru": ("r", "z", "n", "h"),
                                       "rnn": ("h",)}

GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # blocks of W_ih / W_hh, PyTorch's order


@dataclass(frozen=True)
class Layer:
    """One recurrent layer's weights, as PyTorch names them (biases None without bias; W_hr
    only for an LSTM with ``proj_size``, whose h is W_hr (o · tanh(c)), narrower than c)."""

    cell: str                       # lstm, gru or rnn
    w_ih: torch.Tensor              # [gates x units, inputs]
    w_hh: torch.Tensor              # [gates x units, out]
    b_ih: torch.Tensor | None
    b_hh: torch.Tensor | None
    relu: bool = False              # an RNN with relu instead of tanh
    w_hr: torch.Tensor | None = None  # [out, units]: an LSTM's projection of h
    w_hh_t: torch.Tensor = field(init=False, repr=False)   # W_hh transposed, contiguous: a step's product
    b_x: torch.Tensor | None = field(init=False, repr=False)  # the biases added to W_ih x

    def __post_init__(self):
        # a contiguous transpose makes the small per-step product up to twice as fast
        object.__setattr__(self, "w_hh_t", self.w_hh.T.contiguous())
        bias = self.b_ih
        if self.b_hh is not None and self.cell != "gru":  # a GRU's r scales b_hn: it stays apart
            bias = self.b_hh if bias is None else bias + self.b_hh
        object.__setattr__(self, "b_x", bias)

    @property
    def units(self) -> int:
        """The width of the gates and of c (and of h without a projection)."""
        return self.w_hh.shape[0] // GATES[self.cell]

    @property
    def out(self) -> int:
        """The width of h: what the layer above, the head and the next step read."""
        return self.units if self.w_hr is None else self.w_hr.shape[0]

    @property
    def inputs(self) -> int:
        return self.w_ih.shape[1]

    def width(self, stream: str) -> int:
        return self.out if stream == "h" else self.units

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input's share of every step at once, x [L, B, in] → [L, B, gates x units]:
        W_ih x + b_ih, plus b_hh where it is added unscaled (LSTM, RNN; a GRU's r scales it)."""
        L, B, _ = x.shape
        x2 = x.reshape(L * B, -1)
        out = x2 @ self.w_ih.T if self.b_x is None else torch.addmm(self.b_x, x2, self.w_ih.T)
        return out.reshape(L, B, -1)

    def fused(self, x, h: torch.Tensor, c: torch.Tensor | None, batch_first: bool = False) -> tuple:
        """PyTorch's own loop over x [L, B, in] ([B, L, in] if ``batch_first``, or a
        ``PackedSequence``) from (h, c) [B, units]: (out, h, c) with out shaped as x."""
        params = [self.w_ih, self.w_hh] + ([self.b_ih, self.b_hh] if self.b_ih is not None else []) + \
            ([self.w_hr] if self.w_hr is not None else [])
        bias = self.b_ih is not None
        lstm = self.cell == "lstm"
        fn = torch.lstm if lstm else torch.gru if self.cell == "gru" else torch.rnn_relu if self.relu \
            else torch.rnn_tanh
        hx = (h[None], c[None]) if lstm else h[None]
        if isinstance(x, PackedSequence):
            if x.sorted_indices is not None:  # the state in the packed order, as nn.LSTM does
                hx = tuple(t.index_select(1, x.sorted_indices) for t in hx) if lstm else \
                    hx.index_select(1, x.sorted_indices)
            out = fn(x.data, x.batch_sizes, hx, params, bias, 1, 0.0, False, False)
            packed = PackedSequence(out[0], x.batch_sizes, x.sorted_indices, x.unsorted_indices)
            last = [t[0].index_select(0, x.unsorted_indices) if x.unsorted_indices is not None else t[0]
                    for t in out[1:]]
            return packed, last[0], last[1] if lstm else None
        with warnings.catch_warnings():  # "LSTM with projections is not supported with oneDNN": it falls back
            warnings.simplefilter("ignore", UserWarning)
            out = fn(x, hx, params, bias, 1, 0.0, False, False, batch_first)
        return out[0], out[1][0], out[2][0] if lstm else None


_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its weights' versions, layers)


def recurrent_modules(model) -> list[torch.nn.Module]:
    """The model's recurrent modules, bottom to top: ``model.rnn`` (one stacked module) or
    ``model.stack`` (one module per group of layers, each its own width)."""
    stack = getattr(model, "stack", None)
    return list(stack) if stack is not None else [model.rnn]


def cell_of(module: torch.nn.Module) -> str:
    return "lstm" if isinstance(module, torch.nn.LSTM) else "gru" if isinstance(module, torch.nn.GRU) else "rnn"


def layers(model) -> list[Layer]:
    """The model's recurrent layers, bottom to top (each layer of each recurrent module),
    kept per model until a weight changes (sampling asks once per character)."""
    modules = recurrent_modules(model)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    weights = [(m, [getattr(m, f"{n}_l{k}", None) for n in names]) for m in modules for k in range(m.num_layers)]
    version = tuple((id(t), t._version) for _, row in weights for t in row if t is not None)
    kept = _LAYERS.get(model)
    if kept is not None and kept[0] == version:
        return kept[1]
    out = [Layer(cell_of(m), *(None if t is None else t.detach() for t in row[:4]),
                 relu=getattr(m, "nonlinearity", "tanh") == "relu",
                 w_hr=None if row[4] is None else row[4].detach()) for m, row in weights]
    _LAYERS[model] = (version, out)
    return out


def widths(model) -> dict[tuple[int, str], int]:
    """{(layer, stream): width} of every stream the model computes (h narrower than c under
    an LSTM's ``proj_size``; layers of different widths)."""
    return {(k, s): w.width(s) for k, w in enumerate(layers(model)) for s in STREAMS[w.cell]}


def device_of(model) -> torch.device:
    """Where the model's weights are: every tensor probe makes for it goes there."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def embedded(model, ids: torch.Tensor) -> torch.Tensor:
    """What the first layer reads for ids [...]: the embedding's row, or a one-hot vector
    when the model has no embedding (``model.embed`` None), as constants [..., in]."""
    if model.embed is None:
        return torch.nn.functional.one_hot(ids.long().to(device_of(model)), len(model.vocab)).float()
    return model.embed.weight.detach()[ids.to(model.embed.weight.device)]


def logits(model, top: torch.Tensor) -> torch.Tensor:
    """The model's head on the top layer's h [..., units] → [..., vocab], its weights constants."""
    lin = model.head
    if isinstance(lin, torch.nn.Linear):
        return torch.nn.functional.linear(top, lin.weight.detach(), None if lin.bias is None else lin.bias.detach())
    return lin(top)
