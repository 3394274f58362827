"""The recurrence, written once: every layer of an LSTM, GRU or RNN over a batch, with a
named hook point for every stream.

Like TransformerLens's ``HookPoint`` at our scale: one forward pass, and an intervention is
a plain function hooked onto a named point. A point is (layer, stream), written ``"L:S"``
(``"0:c"``); the streams are named as ``probe.recording`` stores them, in PyTorch's gate
order::

    LSTM  i f g o c h     z = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh;  i f o = σ(z_·), g = tanh(z_g)
                          c_t = f · c_{t-1} + i · g;  h_t = o · tanh(c_t)
    GRU   r z n h         r, z = σ(W_i· x + b_i· + W_h· h + b_h·);  n = tanh(W_in x + b_in + r · (W_hn h + b_hn))
                          h_t = (1 − z) · n + z · h_{t-1}
    RNN   h               h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)   (or relu)

A hook ``fn(layer, stream, position, value)`` is called at every position with the value
[rows, units] of its point just computed (the state after reading ``position``). It returns
a replacement, or None to keep the value; everything computed after it reads what it
returned (an edited c feeds h = o · tanh(c) and the next step, an edited h the layer above,
the head and the next step). It may edit ``value`` in place (a fresh tensor of this step)
and return it. Hooks on one point run in the order given, each seeing the last one's
result. Five lines pin unit 89 of layer 0's c from position 100::

    def pin(layer, stream, position, c):
        if position >= 100:
            c[:, 89] = 0
        return c
    logits, state = run(model, text, hooks={"0:c": pin})

The layers below the lowest hooked one cannot see an edit: they run fused (``torch.lstm``
/ ``gru`` / ``rnn_tanh``, PyTorch's own loop). The hooked layers, and those between, run
one step at a time in Python, the equations above written once per cell type
(``lstm_step``, ``gru_step``, ``rnn_step``). The layers above the highest hooked one run
fused again. Text is read in blocks of ``BLOCK`` positions, so memory does not grow with
its length. ``rows`` copies of one text run side by side: from the first stepped layer on,
row j can carry its own edit (a hook indexes ``value[j]``), which is how a sweep over a
layer's units costs far less than a forward pass per unit.

Weights are constants here: with ``grad=True`` gradients reach the states, the hooks'
values and the inputs, never the parameters (training uses the model's own forward).
``probe.lm.stepwise`` is the independent reference, one character and one row at a time;
the tests hold this module equal to it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from probe.errors import ProbeError
from probe.lm.model import LOG2E
from probe.lm.parts import STREAMS, Layer, embedded, layers, logits, widths  # noqa: F401 (the API)

BLOCK = 256  # positions per block: memory is BLOCK x rows x units per layer
FUSED_MIN = 8  # fewer positions than this are stepped even without a hook: PyTorch's fused loop
# costs ~0.1 ms a call to set up, a Python step ~0.03 ms (one character at a time: sampling)
PINNABLE: dict[str, tuple[str, ...]] = {"lstm": ("c", "h"), "gru": ("h",), "rnn": ("h",)}  # a state to pin

Hook = Callable[[int, str, int, torch.Tensor], "torch.Tensor | None"]  # (layer, stream, position, value)
Point = tuple[int, str]
State = list  # per layer (h [rows, units], c [rows, units] or None)


def lstm_step(zx: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w: Layer, at) -> tuple:
    """One LSTM step for every row: zx [rows, 4 units] (the input's share, biases included)."""
    zi, zf, zg, zo = torch.addmm(zx, h, w.w_hh_t).chunk(4, 1)  # PyTorch's order i f g o
    i = at("i", torch.sigmoid(zi))
    f = at("f", torch.sigmoid(zf))
    g = at("g", torch.tanh(zg))
    o = at("o", torch.sigmoid(zo))
    c = at("c", torch.addcmul(f * c, i, g))
    m = o * torch.tanh(c)
    h = at("h", m if w.w_hr is None else m @ w.w_hr.T)  # with proj_size: h = W_hr (o · tanh(c))
    return h, c


def gru_step(gi: torch.Tensor, h: torch.Tensor, c: None, w: Layer, at) -> tuple:
    """One GRU step for every row: gi [rows, 3 units] = W_ih x + b_ih."""
    xr, xz, xn = gi.chunk(3, 1)
    hr, hz, hn = (h @ w.w_hh_t if w.b_hh is None else torch.addmm(w.b_hh, h, w.w_hh_t)).chunk(3, 1)  # r z n
    r = at("r", torch.sigmoid(xr + hr))
    z = at("z", torch.sigmoid(xz + hz))
    n = at("n", torch.tanh(xn + r * hn))
    h = at("h", n + z * (h - n))  # (1 − z) · n + z · h
    return h, None


def rnn_step(zx: torch.Tensor, h: torch.Tensor, c: None, w: Layer, at) -> tuple:
    """One RNN step for every row: zx [rows, units] (the input's share, biases included)."""
    z = torch.addmm(zx, h, w.w_hh_t)
    return at("h", torch.relu(z) if w.relu else torch.tanh(z)), None


STEP = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step}


def point(spec) -> Point:
    """(layer, stream) from (0, "c") or "0:c"."""
    if isinstance(spec, str):
        layer, sep, stream = spec.partition(":")
        if not sep or not layer.strip().isdigit():
            raise ProbeError(f"hook point {spec!r} is not LAYER:STREAM (e.g. 0:c)")
        return int(layer), stream.strip()
    layer, stream = spec
    return int(layer), str(stream)


def hook_table(hooks) -> dict[Point, list[Hook]]:
    """{point: [hook, …]} from a mapping {point: hook or [hooks]} or pairs [(point, hook), …]."""
    if hooks is None:
        return {}
    pairs = hooks.items() if isinstance(hooks, Mapping) else hooks
    table: dict[Point, list[Hook]] = {}
    for spec, fns in pairs:
        for fn in (fns if isinstance(fns, (list, tuple)) else [fns]):
            if not callable(fn):
                raise ProbeError(f"the hook on {spec} is not a function")
            table.setdefault(point(spec), []).append(fn)
    return table


def layer_of(stack: list[Layer], layer: int) -> Layer:
    """``stack[layer]``, or one line saying the model has no such layer."""
    if not 0 <= layer < len(stack):
        raise ProbeError(f"no layer {layer} in the model (layers are 0..{len(stack) - 1})")
    return stack[layer]


def check_points(stack: list[Layer], table: Mapping[Point, list]) -> None:
    """One line for the first hook point the model does not have."""
    for layer, stream in table:
        cell = layer_of(stack, layer).cell
        if stream not in STREAMS[cell]:
            raise ProbeError(f"no stream {stream!r} in layer {layer}: {cell} layers have "
                             f"{' '.join(STREAMS[cell])}")


def _namer(here: dict[str, list[Hook]], layer: int, position: int):
    """at(stream, value): the value after the hooks on (layer, stream) at this position."""
    def at(stream: str, value: torch.Tensor) -> torch.Tensor:
        for fn in here.get(stream, ()):
            new = fn(layer, stream, position, value)
            if new is not None:
                value = new
        return value
    return at


def _inputs(model, ids) -> torch.Tensor:
    """Time-major inputs [T, B, in]: a text, ids [T] or [B, T] (embedded), or embeddings [B, T, in]."""
    if isinstance(ids, str):
        from probe.text import tokens
        ids = tokens.encode(model, ids)[0]
    ids = torch.as_tensor(ids)
    if ids.is_floating_point():
        if ids.dim() != 3:
            raise ProbeError(f"inputs must be embeddings [batch, positions, size], got {tuple(ids.shape)}")
        return ids.transpose(0, 1)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ProbeError(f"ids must be [positions] or [batch, positions] and not empty, got {tuple(ids.shape)}")
    ids = ids.long()
    vocab = len(model.vocab)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ProbeError(f"ids must be the model's token ids 0..{vocab - 1}, got {int(ids.min())}..{int(ids.max())}")
    return embedded(model, ids.T)


def blocks(model, ids, hooks=None, *, state: State | None = None, rows: int | None = None, start: int = 0,
           block: int = BLOCK) -> Iterator[tuple[int, int, torch.Tensor, State]]:
    """(a, b, top [b − a, rows, units], state) for each block of positions [a, b): the top
    layer's h after reading each position, and the state after b. ``run`` and ``bits`` are
    this loop; use it for a text too long to keep every position's logits."""
    stack, table = layers(model), hook_table(hooks)
    check_points(stack, table)
    x = _inputs(model, ids)  # [T, B, in]
    if torch.is_grad_enabled() and not x.requires_grad:
        x = x.detach().requires_grad_()  # the graph's root: every value a hook sees is in it
    T, B = x.shape[0], x.shape[1]
    rows = B if rows is None else int(rows)
    if rows < 1 or (B > 1 and rows != B):
        raise ProbeError(f"rows must be the batch of ids ({B}), or any number for one text; got {rows}")
    lo = min((k for k, _ in table), default=len(stack))
    hi = max((k for k, _ in table), default=-1)
    if state is not None:
        if len(state) != len(stack):
            raise ProbeError(f"the state has {len(state)} layers; the model has {len(stack)}")
        # one row of state below the lowest hook is shared by every row (they cannot differ
        # there); from it on, each row has its own
        state = [(h, c) if k < lo or h.shape[0] == rows else
                 (h.expand(rows, -1).contiguous(), None if c is None else c.expand(rows, -1).contiguous())
                 for k, (h, c) in enumerate(state)]
        if any(h.shape[0] != x.shape[1] for h, _ in state[:lo]):
            x = x.expand(-1, rows, -1)  # rows of their own below the hooks too
    here = [{s: fns for (k, s), fns in table.items() if k == layer} for layer in range(len(stack))]
    if state is None:
        dev = x.device
        state = [(torch.zeros(x.shape[1] if k < lo else rows, w.out, device=dev),
                  torch.zeros(x.shape[1] if k < lo else rows, w.units, device=dev) if w.cell == "lstm" else None)
                 for k, w in enumerate(stack)]
    state = list(state)
    for a in range(0, T, block):
        b = min(a + block, T)
        inp = x[a:b]
        for k, w in enumerate(stack):
            h, c = state[k]
            if lo <= k <= hi or b - a < FUSED_MIN:  # one step at a time, the hooks called on every value
                pre = w.project(inp)  # [L, B or 1, gates x units]
                step, outs = STEP[w.cell], []
                # unbind, not pre[t]: under autograd each pre[t] would add a gradient of pre's full size
                for t, zx in enumerate(pre.unbind(0)):
                    h, c = step(zx, h, c, w, _namer(here[k], k, start + a + t))
                    outs.append(h)
                inp = torch.stack(outs)
            else:
                if inp.shape[1] < h.shape[0]:  # above the rows' edits: one copy per row
                    inp = inp.expand(-1, h.shape[0], -1).contiguous()
                inp, h, c = w.fused(inp, h, c)
            state[k] = (h, c)
        if inp.shape[1] < rows:
            inp = inp.expand(-1, rows, -1)
        yield a, b, inp, state


def run(model, ids, hooks=None, *, state: State | None = None, rows: int | None = None, start: int = 0,
        grad: bool = False, head: bool = True, block: int = BLOCK) -> tuple[torch.Tensor, State]:
    """Read ``ids`` (a text, ids [T] or [B, T], or embeddings [B, T, in]) with ``hooks`` on.

    Returns (logits [rows, T, vocab] of the position after each one (a character, or a word
    model's token), or with ``head=False`` the top layer's h [rows, T, units]; the state after the last position, per
    layer (h, c or None), to pass back as ``state`` to go on). ``hooks``: {point: hook or
    [hooks]} or [(point, hook)], a point (layer, stream) or "L:S". ``rows``: copies of one
    text run side by side for per-row edits. ``start``: the position of ids[0], as hooks see
    it (to go on from a state). ``grad``: keep the graph (saliency, gradient flow): every
    value a hook sees is in it, so a hook can ``retain_grad`` it."""
    with torch.set_grad_enabled(grad):
        parts, last = [], state
        for _, _, top, last in blocks(model, ids, hooks, state=state, rows=rows, start=start, block=block):
            parts.append(logits(model, top) if head else top)
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.transpose(0, 1), last


def bits(model, ids, hooks=None, *, rows: int | None = None, done: Callable[[int], None] | None = None,
         block: int = BLOCK) -> np.ndarray:
    """Bits per position float32 [rows, T] of a text (or its ids [T]) read from a zero
    state with ``hooks`` on (loss[t] is the cost of position t, a character or a token:
    −log2 p; NaN at 0), block by block, never holding more than a block's logits. ``done(n)`` after each block of n."""
    if isinstance(ids, str):
        from probe.text import tokens
        ids = tokens.encode(model, ids)[0]
    ids = torch.as_tensor(np.asarray(ids)).long()
    T = ids.shape[-1]
    out = None
    with torch.no_grad():
        for a, b, top, _ in blocks(model, ids, hooks, rows=rows, block=block):
            if out is None:
                out = np.full((top.shape[1], T), np.nan, dtype=np.float32)
            n = min(b, T - 1) - a  # positions of this block with a next one
            if n > 0:
                logp = torch.log_softmax(logits(model, top[:n]), dim=-1)  # [n, rows, V]
                nxt = ids.reshape(-1, T)[:, a + 1:a + 1 + n].T.to(logp.device)  # [n, 1 or rows]
                got = logp.gather(2, nxt[:, :, None].expand(-1, logp.shape[1], 1))[..., 0]
                out[:, a + 1:a + 1 + n] = (-got * LOG2E).T.cpu().numpy()
            if done is not None:
                done(b - a)
    return out


def check_cells(model, cells: Iterable) -> None:
    """One line for the first cell (layer, stream, unit) that is not a state of the model one
    can pin: h of every layer, and c of an LSTM's."""
    stack = layers(model)
    for layer, stream, unit in cells:
        cell = layer_of(stack, layer).cell
        if stream not in PINNABLE[cell]:
            raise ProbeError(f"{layer}:{stream}:{unit}: a cell to pin is a state of its layer "
                             f"({' or '.join(PINNABLE[cell])} in {cell.upper()} layers), not {stream!r}")
        if not 0 <= unit < stack[layer].units:
            raise ProbeError(f"no unit {unit} in layer {layer} (units are 0..{stack[layer].units - 1})")


def pinning(cells: Iterable, values: Iterable) -> dict[Point, Hook]:
    """Hooks that set each cell (layer, stream, unit) to its number at every position, in
    every row: {point: hook} for ``run`` (each hook leaves other points alone, so it works
    as a ``stepwise`` edit too)."""
    table: dict[Point, list] = {}
    for (layer, stream, unit), v in zip(cells, values):
        table.setdefault((int(layer), str(stream)), []).append((int(unit), float(v)))

    def hook_for(key: Point, pairs: list) -> Hook:
        units, numbers = torch.tensor([u for u, _ in pairs]), torch.tensor([v for _, v in pairs])

        def pin(layer: int, stream: str, position: int, value: torch.Tensor):
            if (layer, stream) == key:
                value[..., units.to(value.device)] = numbers.to(value.device)
                return value
        return pin
    return {key: hook_for(key, pairs) for key, pairs in table.items()}
