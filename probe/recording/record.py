"""Record every layer's gates and states, per character, into an HDF5 recording.

``torch.nn.LSTM`` returns only the top layer's h per step. To record everything exactly,
each layer is run as its own one-layer module with the model's weights (giving that
layer's h at every step), then the gates are recomputed for all steps at once from x_t
and h_{t-1} with the same weights, and an LSTM's c is rebuilt with the recurrence
c_t = f_t * c_{t-1} + i_t * g_t. Streams, in PyTorch's gate order: LSTM i f g o c h;
GRU r z n h; vanilla RNN h (``h5format.STREAMS``).

The text is processed in blocks of ``BLOCK`` characters with the state carried, so
memory does not grow with the text; the file is written under a temporary name and
renamed when complete.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import zstandard
from tqdm.auto import tqdm

from probe.compiled import kernels as _kernels  # None where not built: numpy does the same
from probe.errors import ProbeError
from probe.files import atomic, check_target, interrupts
from probe.lm.model import LOG2E, CharRNN
from probe.recording import h5format
from probe.text import corpus as corpora

BLOCK = 8192          # characters per processing block (a multiple of h5format.CHUNK_T)
PIECE = 2048          # characters per piece in batched mode (B pieces run as one batch)
COMPRESSION_LEVEL = 1  # zstd and gzip level: the fastest (docs/recording-format.md, "Compression")


def layer_modules(model: CharRNN) -> list[nn.Module]:
    """One single-layer module of the model's cell type per layer, sharing its weights."""
    out = []
    for k in range(model.layers):
        w_ih = getattr(model.rnn, f"weight_ih_l{k}")
        one = type(model.rnn)(w_ih.shape[1], model.units, 1, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(one, f"{name}_l0", getattr(model.rnn, f"{name}_l{k}"))
        out.append(one.eval())
    return out


@torch.no_grad()
def forward(model: CharRNN, ids: torch.Tensor, state: list | None = None,
            modules: list[nn.Module] | None = None) -> tuple[list, torch.Tensor, list]:
    """The model's own forward pass over ids [B, L] from ``state`` (per layer (h0, c0), each
    [B, units]; c0 None but for an LSTM; None = zeros), one layer module at a time.

    Returns per layer what its gates are recomputed from, (x, h, h0, c0) (input [B, L, in],
    output [B, L, units], initial state); ``logp`` [B, L, V] (log-probabilities of the next
    character after each position); and the final state per layer.
    """
    modules = modules or layer_modules(model)
    B = ids.shape[0]
    lstm = model.cell == "lstm"
    x = model.embed(ids)  # [B, L, E]
    inputs, new_state = [], []
    for k, module in enumerate(modules):
        h0, c0 = state[k] if state else (x.new_zeros(B, model.units), x.new_zeros(B, model.units) if lstm else None)
        if lstm:
            h, (hT, cT) = module(x, (h0[None].contiguous(), c0[None].contiguous()))
            new_state.append((hT[0], cT[0]))
        else:
            h, hT = module(x, h0[None].contiguous())
            new_state.append((hT[0], None))
        inputs.append((x, h, h0, c0))
        x = h
    return inputs, torch.log_softmax(model.head(x), dim=-1), new_state


@torch.no_grad()
def gates(model: CharRNN, modules: list[nn.Module], inputs: list, dtype: torch.dtype = torch.float32,
          keep: set | None = None) -> dict:
    """Every stream {(layer, s): [B, L, units]} of ``forward``'s ``inputs``, computed in
    float32 for all steps at once from x_t and h_{t-1} with the layer's weights, as PyTorch
    computes them, and stored as ``dtype``. LSTM: i, f, g, o = act(W_i x + b_i + W_h h + b_h),
    c_t = f_t * c_{t-1} + i_t * g_t; GRU: r, z = sigmoid(W_i x + b_i + W_h h + b_h),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); RNN: h itself. ``keep`` (a set of
    (layer, stream)) limits the work and the result to those streams."""
    streams = {}
    for k, (module, (x, h, h0, c0)) in enumerate(zip(modules, inputs)):
        B, L, H = h.shape
        wanted = {s for kk, s in keep if kk == k} if keep is not None else set(h5format.STREAMS[model.cell])
        if not wanted - {"h"}:  # h is the layer's output: no gate to recompute
            streams.update({(k, "h"): h.to(dtype)} if wanted else {})
            continue
        # 2-D matrix products ([B*L, in] x [in, nH]): twice as fast as batched 3-D ones here
        x2 = x.reshape(B * L, -1)
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1).reshape(B * L, H)
        w_ih, w_hh, b_ih, b_hh = (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
        if model.cell == "gru":
            gi = torch.addmm(b_ih, x2, w_ih.T)  # [B*L, 3H] in PyTorch's order r z n
            gh = torch.addmm(b_hh, h_prev, w_hh.T)
            r = torch.sigmoid(gi[:, :H] + gh[:, :H])
            z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            streams.update({(k, s): v.reshape(B, L, H).to(dtype)
                            for s, v in zip(h5format.STREAMS["gru"], (r, z, n)) if s in wanted})
            streams[(k, "h")] = h.to(dtype)
            continue
        pre = torch.addmm(b_ih + b_hh, x2, w_ih.T).addmm_(h_prev, w_hh.T)  # [B*L, 4H]: i f g o
        i, f, o = (torch.sigmoid(pre[:, j * H:(j + 1) * H]).reshape(B, L, H) for j in (0, 1, 3))
        g = torch.tanh(pre[:, 2 * H:3 * H]).reshape(B, L, H)
        streams.update({(k, s): v.to(dtype) for s, v in zip("ifgo", (i, f, g, o)) if s in wanted})
        del pre
        # c_t = f_t * c_{t-1} + i_t * g_t, time-major so each step is one contiguous row
        f_t = f.transpose(0, 1).contiguous().numpy()  # [L, B, H]
        c_t = (i * g).transpose(0, 1).contiguous().numpy()  # i * g, then c in place
        recurrence(f_t.reshape(L, -1), c_t.reshape(L, -1), np.ascontiguousarray(c0.numpy()).reshape(-1))
        streams[(k, "c")] = torch.from_numpy(c_t).transpose(0, 1).to(dtype)
        streams[(k, "h")] = h.to(dtype)
    return {key: v for key, v in streams.items() if key[1] in h5format.STREAMS[model.cell]
            and (keep is None or key in keep)}


def run(model: CharRNN, ids: torch.Tensor, state: list | None = None,
        modules: list[nn.Module] | None = None, dtype: torch.dtype = torch.float32,
        ) -> tuple[dict, torch.Tensor, list]:
    """``forward`` then ``gates``: (streams {(layer, s): [B, L, units]}, logp [B, L, V],
    final state per layer)."""
    modules = modules or layer_modules(model)
    inputs, logp, state = forward(model, ids, state, modules)
    return gates(model, modules, inputs, dtype), logp, state


def activations(model: CharRNN, text: str) -> tuple[dict, np.ndarray]:
    """In memory, for short texts (the dashboard's live box): {(layer, s): [T, units]}, loss [T]."""
    ids, _ = corpora.encode(text, model.vocab)
    if len(ids) == 0:
        raise ProbeError("empty text")
    streams, logp, _ = run(model.eval(), torch.from_numpy(ids)[None])
    loss = np.full(len(ids), np.nan, dtype=np.float32)
    nxt = torch.from_numpy(ids[1:])
    loss[1:] = (-logp[0, :-1].gather(1, nxt[:, None])[:, 0] * LOG2E).numpy()
    return {key: v[0].numpy() for key, v in streams.items()}, loss


def _pieces(documents: list[tuple[int, int]], piece: int, burn_in: int) -> list[tuple[int, int, int]]:
    """(warm_start, start, stop) of pieces of at most ``piece`` characters, never straddling
    a document; each is warmed up on up to ``burn_in`` preceding characters of its document
    (at least 1, so its first character has a prediction)."""
    out = []
    for d0, d1 in documents:
        for s in range(d0, d1, piece):
            warm = s if s == d0 else max(d0, s - max(burn_in, 1))
            out.append((warm, s, min(s + piece, d1)))
    return out


def _one_late(items, pool: ThreadPoolExecutor):
    """Yield each (start, parts, loss) with ``parts`` (a list of futures of streams dicts)
    resolved and joined, one item late: the worker computes a block's gates while this
    thread runs the next block's forward pass (torch ops release the GIL)."""
    def resolve(item):
        start, parts, loss = item
        joined: dict = {}  # parts are time segments (same keys) or layers (other keys)
        for p in parts:
            for k, v in p.result().items():
                joined.setdefault(k, []).append(v)
        return start, {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in joined.items()}, loss
    pending = None
    for item in items:
        if pending is not None:
            yield resolve(pending)
        pending = item
    if pending is not None:
        yield resolve(pending)


def _blocks_sequential(model, ids, documents, modules, dtype, pool, keep=None):
    """Yield (start, streams {key: [n, units]}, loss [n]) blocks of BLOCK characters in order."""
    starts = np.array([d0 for d0, _ in documents])  # documents are contiguous and sorted
    doc_starts = set(starts.tolist())

    def blocks():
        state, last_logp = None, None
        for b0 in range(0, len(ids), BLOCK):
            b1 = min(b0 + BLOCK, len(ids))
            inside = starts[np.searchsorted(starts, b0, "right"):np.searchsorted(starts, b1, "left")]
            cuts = [b0, *inside.tolist(), b1]
            parts, losses = [], []
            for s0, s1 in zip(cuts[:-1], cuts[1:]):
                if s0 in doc_starts:
                    state, last_logp = None, None
                x = torch.from_numpy(ids[s0:s1])
                inputs, logp, state = forward(model, x[None], state, modules)
                parts.append(pool.submit(lambda inputs=inputs: {k: v[0] for k, v in
                                                                 gates(model, modules, inputs, dtype, keep).items()}))
                loss = torch.empty(s1 - s0)
                loss[1:] = -logp[0, :-1].gather(1, x[1:, None])[:, 0]
                loss[0] = -last_logp[x[0]] if last_logp is not None else float("nan")
                last_logp = logp[0, -1]
                losses.append(loss)
            yield b0, parts, torch.cat(losses) * LOG2E
    return _one_late(blocks(), pool)


@torch.no_grad()
def _warm_up(model: CharRNN, modules: list[nn.Module], seqs: list[np.ndarray]) -> tuple[list, torch.Tensor]:
    """Run each sequence (non-empty, of different lengths) from a zero state: the state each
    one ends in, per layer ((h, c) each [n, units]; c None but for an LSTM), and the
    log-probabilities of the character after each one's last ([n, V]). Packed, so a short
    sequence's state is taken at its own end, not after padding."""
    lengths = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
    for j, s in enumerate(seqs):
        x[j, :len(s)] = torch.from_numpy(s)
    packed = nn.utils.rnn.pack_padded_sequence(model.embed(x), lengths, batch_first=True, enforce_sorted=False)
    state = []
    for module in modules:
        packed, last = module(packed)
        state.append((last[0][0], last[1][0]) if model.cell == "lstm" else (last[0], None))
    return state, torch.log_softmax(model.head(state[-1][0]), dim=-1)


def _blocks_batched(model, ids, documents, modules, batch, burn_in, dtype, pool, keep=None):
    """Like _blocks_sequential, but B pieces of the text run side by side as one batch. Each
    piece first reads up to ``burn_in`` characters before it (its warm-up, a separate packed
    run: no gates are computed there), then its own characters from that state."""
    pieces = _pieces(documents, PIECE, burn_in)
    lstm = model.cell == "lstm"
    wanted = keep if keep is not None else {(k, s) for k in range(model.layers) for s in h5format.STREAMS[model.cell]}

    def blocks():
        for g0 in range(0, len(pieces), batch):
            group = pieces[g0:g0 + batch]
            n, H = len(group), model.units
            state = [(torch.zeros(n, H), torch.zeros(n, H) if lstm else None) for _ in modules]
            before = torch.full((n, model.head.out_features), float("nan"))  # logp before each piece
            warm = [j for j, (w, s0, _) in enumerate(group) if s0 > w]  # not at a document start
            if warm:
                ws, wlogp = _warm_up(model, modules, [ids[group[j][0]:group[j][1]] for j in warm])
                for k, (h, c) in enumerate(ws):
                    state[k][0][warm] = h
                    if lstm:
                        state[k][1][warm] = c
                before[warm] = wlogp
            L = max(s1 - s0 for _, s0, s1 in group)
            x = torch.zeros(n, L, dtype=torch.long)  # right-padded: padding comes after, harmless
            for j, (_, s0, s1) in enumerate(group):
                x[j, :s1 - s0] = torch.from_numpy(ids[s0:s1])
            inputs, logp, _ = forward(model, x, state, modules)

            def own(keys, inputs=inputs, group=group):
                streams = gates(model, modules, inputs, dtype, keys)
                return {key: torch.cat([v[j, :s1 - s0] for j, (_, s0, s1) in enumerate(group)])
                        for key, v in streams.items()}
            losses = []
            for j, (_, s0, s1) in enumerate(group):
                m = s1 - s0
                loss = torch.empty(m)
                loss[0] = -before[j, x[j, 0]]  # NaN at a document start
                loss[1:] = -logp[j, :m - 1].gather(1, x[j, 1:m, None])[:, 0]
                losses.append(loss)
            # the batched forward pass leaves this thread time to spare: it computes layer 0's
            # gates itself while the worker computes the other layers'
            here = Future()
            later = pool.submit(own, {key for key in wanted if key[0] != 0})
            here.set_result(own({key for key in wanted if key[0] == 0}))
            yield group[0][1], [here, later], torch.cat(losses) * LOG2E
    return _one_late(blocks(), pool)


def recurrence_numpy(f: np.ndarray, c: np.ndarray, c0: np.ndarray) -> None:
    """c[t] = f[t] * c[t - 1] + c[t] in place over rows t (c[-1] = c0), float32 [L, N]:
    the reference for the C loop (``_kernels.recurrence``), and the fallback without it."""
    prev = c0
    for t in range(len(c)):
        row = c[t]
        row += f[t] * prev
        prev = row


recurrence = _kernels.recurrence if _kernels is not None else recurrence_numpy


def _shuffle(raw: np.ndarray) -> bytes:
    """HDF5's byte shuffle of a chunk: every value's first bytes, then every second byte…
    (for 2-byte values, the low bytes then the high bytes)."""
    if raw.itemsize == 2:
        u = raw.view(np.uint16).reshape(-1)
        out = np.empty(2 * u.size, np.uint8)
        np.copyto(out[:u.size], u, casting="unsafe")  # low bytes (little-endian)
        np.right_shift(u, 8, out=out[u.size:], casting="unsafe")
        return out.tobytes()
    return raw.view(np.uint8).reshape(-1, raw.itemsize).T.tobytes()


_local = threading.local()  # one Zstandard compressor per worker thread (they are not shared)


def _encode_chunk(a: np.ndarray, shape: tuple[int, int], codec: str, level: int, checksum: bool) -> bytes:
    """One HDF5 chunk as the filters would store it (padded to ``shape``): byte shuffle, then
    Zstandard (a frame with its content size, as the HDF5 filter reads it) or deflate at
    ``level``, or the raw bytes for "none"; then the Fletcher-32 checksum."""
    if a.shape != shape:
        a = np.pad(a, ((0, shape[0] - a.shape[0]), (0, shape[1] - a.shape[1])))
    raw = np.ascontiguousarray(a)
    if codec == "none":
        body = raw.tobytes()
    else:
        shuffled = _shuffle(raw)
        if codec == "gzip":
            body = zlib.compress(shuffled, level)
        else:
            z = getattr(_local, "zstd", None)
            if z is None or _local.level != level:
                z = _local.zstd = zstandard.ZstdCompressor(level=level)
                _local.level = level
            body = z.compress(shuffled)
    return body + h5format.fletcher32(body).to_bytes(4, "little") if checksum else body


class ChunkWriter:
    """Append rows to [T, units] datasets in time order; whole chunks are compressed in
    worker threads (zstd and zlib release the GIL) and stored with ``write_direct_chunk``."""

    def __init__(self, dsets: dict, dtype: str, codec: str = "zstd", level: int = COMPRESSION_LEVEL,
                 workers: int = 2, checksum: bool = True):
        self.dsets, self.dtype, self.codec, self.level = dsets, np.dtype(dtype), codec, level
        self.checksum = checksum
        first = next(iter(dsets.values()))
        self.rows, self.cols = first.chunks
        self.units = first.shape[1]
        self.pending: dict = {k: [] for k in dsets}
        self.n_pending = 0
        self.row0 = 0  # first row of the pending buffer
        self.pool = ThreadPoolExecutor(workers)
        self.inflight: list = []

    def append(self, vals: dict) -> None:
        n = None
        for k, v in vals.items():
            self.pending[k].append(v)
            n = len(v)
        self.n_pending += n
        while self.n_pending >= self.rows:
            self._flush(self.rows)

    def _flush(self, n: int) -> None:
        for k in self.dsets:
            block = np.concatenate(self.pending[k]) if len(self.pending[k]) > 1 else self.pending[k][0]
            head, rest = block[:n], block[n:]
            self.pending[k] = [rest] if len(rest) else []
            head = head.astype(self.dtype, copy=False)
            for c0 in range(0, self.units, self.cols):
                fut = self.pool.submit(_encode_chunk, head[:, c0:c0 + self.cols],
                                       (self.rows, self.cols), self.codec, self.level, self.checksum)
                self.inflight.append((k, (self.row0, c0), fut))
        self.n_pending -= n
        self.row0 += n
        self._drain(limit=8 * len(self.dsets))

    def _drain(self, limit: int = 0) -> None:
        while len(self.inflight) > limit:
            k, offset, fut = self.inflight.pop(0)
            self.dsets[k].id.write_direct_chunk(offset, fut.result())

    def close(self) -> None:
        """Write what is pending (the last chunk row is padded) and wait for the workers."""
        if self.n_pending:
            self._flush(self.n_pending)
        self._drain()
        self.pool.shutdown()

    def abort(self) -> None:
        """Give up without waiting (the file is being discarded)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _selection(model: CharRNN, keep, layers) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The streams (in the cell's order) and layers to record, checked: one-line errors."""
    kind = h5format.STREAMS[model.cell]
    keep = list(kind) if keep is None else [keep] if isinstance(keep, str) else list(keep)
    bad = [s for s in keep if s not in kind]
    if bad or not keep:
        raise ProbeError(f"--keep: a {model.cell.upper()} records streams {','.join(kind)}; "
                         f"got {','.join(map(str, keep)) or 'none'}")
    layers = list(range(model.layers)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
    if not layers or any(not isinstance(k, (int, np.integer)) or not 0 <= k < model.layers for k in layers):
        raise ProbeError(f"--layers: the model has layers 0..{model.layers - 1}; "
                         f"got {','.join(map(str, layers)) or 'none'}")
    return tuple(s for s in kind if s in keep), tuple(sorted(set(int(k) for k in layers)))


class Int8Spill:
    """For ``dtype="int8"``: streams are first spilled as float16 to scratch files beside the
    output, then each unit is coded against its own codebook of 256 values (bins of equal
    count, from a sample of every row-stride of the whole text), which can only be made once
    every value has been seen."""

    SAMPLE = 65536  # rows sampled per stream for the codebooks

    def __init__(self, folder: Path, keys: list, T: int, units: int):
        self.dir = Path(tempfile.mkdtemp(prefix=".probe-int8-", dir=folder))
        self.maps = {key: np.lib.format.open_memmap(self.dir / f"{key[0]}-{key[1]}.npy", "w+", np.float16, (T, units))
                     for key in keys}
        self.row = 0

    def append(self, vals: dict) -> None:
        n = 0
        for key, v in vals.items():
            n = len(v)
            self.maps[key][self.row:self.row + n] = v
        self.row += n

    def write(self, writer: "ChunkWriter", dsets: dict, progress: bool, stop) -> None:
        """Code every stream into ``writer`` (one block of rows at a time), and store each
        dataset's codebook."""
        T = self.row
        stride = max(1, T // self.SAMPLE)
        luts = {}
        for key, m in self.maps.items():
            luts[key], dsets[key].attrs["codebook"] = h5format.codebook(m[::stride])
        with tqdm(total=T, unit="char", unit_scale=True, disable=not progress, desc="coding int8") as bar:
            for a in range(0, T, BLOCK):
                if stop.is_set():
                    raise KeyboardInterrupt
                writer.append({key: h5format.encode(m[a:a + BLOCK], luts[key]) for key, m in self.maps.items()})
                bar.update(min(BLOCK, T - a))

    def close(self) -> None:
        self.maps.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def record(model: CharRNN, documents: list[tuple[str, str]], out: str | os.PathLike,
           source: dict | None = None, dtype: str = "float16", batch: int = 1,
           burn_in: int = 256, force: bool = False, progress: bool = True,
           compression: str = "zstd", checksums: bool = True,
           keep: list[str] | None = None, layers: list[int] | None = None) -> Path:
    """Record ``documents`` [(name, text)] through ``model`` into the HDF5 file ``out``.

    ``batch`` > 1 runs that many pieces of the text side by side, each warmed up on
    ``burn_in`` characters before it (see docs/recording-format.md). ``compression`` is
    "zstd" (byte shuffle + Zstandard level 1: ~10x faster than gzip and slightly smaller;
    h5py reads it after ``import hdf5plugin``), "gzip" (shuffle + deflate level 1, readable by
    every HDF5 tool as is) or "none". ``checksums`` (default) stores a Fletcher-32 checksum
    with every chunk, so damage is refused when read. ``keep`` (streams) and ``layers``
    record a subset; ``dtype`` "int8" stores each unit as codes into its own codebook of 256
    values (bins of equal count: order kept at 1/256 of the unit's values; the reader returns
    float32).
    """
    if dtype not in h5format.DTYPES:
        raise ProbeError(f"--dtype must be one of {', '.join(h5format.DTYPES)}, got {dtype!r}")
    if compression not in h5format.COMPRESSIONS:
        raise ProbeError(f"--compression must be one of {', '.join(h5format.COMPRESSIONS)}, got {compression!r}")
    if batch < 1:
        raise ProbeError(f"--batch must be >= 1, got {batch}")
    streams, layer_ids = _selection(model, keep, layers)
    out = check_target(out, force)
    documents = [(n, t) for n, t in documents if t]
    text = "".join(t for _, t in documents)
    if not text:
        raise ProbeError("empty text: nothing to record")
    ids, n_unknown = corpora.encode(text, model.vocab)
    T, H = len(ids), model.units
    offsets = np.cumsum([0] + [len(t) for _, t in documents])
    spans = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    model = model.eval()
    modules = layer_modules(model)
    keys = [(k, s) for k in layer_ids for s in streams]

    with interrupts() as stop, atomic(out) as tmp, h5format.create(tmp) as f:
        h5format.write_header(
            f, model=dict(model.config), layers=model.layers, units=H, length=T, streams=streams,
            dtype=dtype, compression=compression, batch=batch, burn_in=burn_in, source=source,
            model_sha256=getattr(model, "sha256", ""), model_path=getattr(model, "path", ""),
            model_metrics=getattr(model, "metrics", {}), unknown_chars=n_unknown, checksums=checksums,
            layer_ids=layer_ids)
        dloss = h5format.write_text(f, corpora.codepoints(text), [n for n, _ in documents],
                                    offsets[:-1], offsets[1:], checksums)
        dsets = {(k, s): h5format.create_stream(f, k, s, T, H, dtype, compression, COMPRESSION_LEVEL, checksums)
                 for k, s in keys}
        writer = ChunkWriter(dsets, dtype, compression, checksum=checksums)
        spill = Int8Spill(Path(tmp).parent, keys, T, H) if dtype == "int8" else None
        tdtype = torch.float16 if dtype == "int8" else getattr(torch, dtype)
        pool = ThreadPoolExecutor(1)  # the gates of one block while the next runs forward
        blocks = (_blocks_sequential(model, ids, spans, modules, tdtype, pool, set(keys)) if batch == 1
                  else _blocks_batched(model, ids, spans, modules, batch, burn_in, tdtype, pool, set(keys)))
        bar = tqdm(total=T, unit="char", unit_scale=True, disable=not progress, desc="recording")
        try:
            for start, vals, loss in blocks:
                if stop.is_set():
                    raise KeyboardInterrupt
                n = len(loss)
                (spill or writer).append({key: v.numpy() for key, v in vals.items()})
                dloss[start:start + n] = loss.numpy()
                bar.update(n)
            bar.close()
            if spill is not None:
                spill.write(writer, dsets, progress, stop)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            if spill is not None:
                spill.close()
        if stop.is_set():
            raise KeyboardInterrupt
        h5format.finish(f)
    return out
