"""Record every layer's gates and states, per position (a character or a token), into an HDF5 recording.

    record(model, documents, "recordings/mine.h5", source={...})   # -> the file's path

The text is processed in blocks of ``BLOCK`` characters with the state carried, so
memory does not grow with the text; the file is written under a temporary name and
renamed when complete. The pieces, one idea each: ``layers`` (every layer's streams at
every step, exactly), ``blocks`` (feeding the text in blocks, one after another or side by
side) and ``chunks`` (compressing and storing whole chunks in worker threads).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.files import atomic, check_target, interrupts
from probe.lm import parts
from probe.lm.model import CharRNN
from probe.recording import blocks as feed
from probe.recording import h5format
from probe.recording.blocks import PIECE
from probe.recording.chunks import (
    COMPRESSION_LEVEL,
    ChunkWriter,
    Int8Spill,
    encode_chunk,
    shuffle,
)
from probe.recording.layers import (
    activations,
    forward,
    recurrence,
    recurrence_numpy,
    run,
    stream_values,
)
from probe.text import corpus as corpora
from probe.text import tokens as toks

__all__ = ["record", "selection", "BLOCK", "PIECE", "COMPRESSION_LEVEL", "ChunkWriter", "Int8Spill",
           "encode_chunk", "shuffle", "activations", "forward", "recurrence", "recurrence_numpy",
           "run", "stream_values"]

BLOCK = 8192          # characters per processing block (a multiple of h5format.CHUNK_T)
_shuffle = shuffle    # its old name, which a test reaches


def selection(model: CharRNN, keep, layers) -> tuple[tuple[str, ...], tuple[int, ...]]:
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


def tokenize(tokenizer: toks.Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids [T], spans [T, 2] in the joined text, unknown tokens) of documents read one after
    another, each tokenized on its own (no token crosses a document's end)."""
    if tokenizer.kind == "chars":  # one pass, no copies per document
        return tokenizer.encode("".join(texts))
    ids, spans, unknown, at = [], [], 0, 0
    for t in texts:
        i, s, u = tokenizer.encode(t)
        ids.append(i)
        spans.append(s + at)
        unknown += u
        at += len(t)
    return np.concatenate(ids), np.concatenate(spans).reshape(-1, 2), unknown


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
    streams, layer_ids = selection(model, keep, layers)
    out = check_target(out, force)
    documents = [(n, t) for n, t in documents if t]
    text = "".join(t for _, t in documents)
    if not text:
        raise ProbeError("empty text: nothing to record")
    tokenizer = toks.of(model)
    ids, token_spans, n_unknown = tokenize(tokenizer, [t for _, t in documents])
    T = len(ids)
    if not T:
        raise ProbeError(f"the text holds no {tokenizer.unit} the model reads: nothing to record")
    chars = np.cumsum([0] + [len(t) for _, t in documents])
    offsets = np.searchsorted(token_spans[:, 0], chars[:-1]).tolist() + [T]  # each document's first position
    spans = list(zip(offsets[:-1], offsets[1:]))
    model = model.eval()
    modules = parts.layers(model)
    keys = [(k, s) for k in layer_ids for s in streams]
    widths = {key: w for key, w in parts.widths(model).items() if key in keys}  # h narrower under proj_size
    by_width = {w: [key for key in keys if widths[key] == w] for w in sorted(set(widths.values()))}

    with interrupts() as stop, atomic(out) as tmp, h5format.create(tmp) as f:
        h5format.write_header(
            f, model=dict(model.config), layers=model.layers, widths=widths, length=T, streams=streams,
            dtype=dtype, compression=compression, batch=batch, burn_in=burn_in, source=source,
            model_sha256=getattr(model, "sha256", ""), model_path=getattr(model, "path", ""),
            model_metrics=getattr(model, "metrics", {}), unknown_chars=n_unknown, checksums=checksums,
            layer_ids=layer_ids, tokens=tokenizer.config())
        dloss = h5format.write_text(f, corpora.codepoints(text), [n for n, _ in documents],
                                    offsets[:-1], offsets[1:], checksums, spans=token_spans, ids=ids,
                                    text_starts=chars[:-1], text_stops=chars[1:])
        dsets = {(k, s): h5format.create_stream(f, k, s, T, widths[k, s], dtype, compression, COMPRESSION_LEVEL,
                                                checksums) for k, s in keys}
        # a writer (and an int8 spill) per width: each takes datasets of one width
        writers = [ChunkWriter({key: dsets[key] for key in group}, dtype, compression, checksum=checksums)
                   for group in by_width.values()]
        spills = ([Int8Spill(Path(tmp).parent, group, T, w) for w, group in by_width.items()]
                  if dtype == "int8" else [])
        tdtype = torch.float16 if dtype == "int8" else getattr(torch, dtype)
        pool = ThreadPoolExecutor(1)  # the gates of one block while the next runs forward
        blocks = (feed.sequential(model, ids, spans, modules, tdtype, pool, BLOCK, set(keys)) if batch == 1
                  else feed.batched(model, ids, spans, modules, batch, burn_in, tdtype, pool, set(keys)))
        bar = tqdm(total=T, unit="char" if tokenizer.kind == "chars" else "token", unit_scale=True, disable=not progress, desc="recording")
        try:
            for start, vals, loss in blocks:
                if stop.is_set():
                    raise KeyboardInterrupt
                n = len(loss)
                for j, group in enumerate(by_width.values()):
                    (spills[j] if spills else writers[j]).append({key: vals[key].numpy() for key in group})
                dloss[start:start + n] = loss.numpy()
                bar.update(n)
            bar.close()
            for spill, writer in zip(spills, writers):
                spill.write(writer, dsets, progress, stop, BLOCK)
            for writer in writers:
                writer.close()
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            for spill in spills:
                spill.close()
        if stop.is_set():
            raise KeyboardInterrupt
        h5format.finish(f)
    return out
