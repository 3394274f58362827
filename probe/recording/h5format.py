"""The recording format in one place: names, the streams of each model kind, the header
writer and the validator. ``docs/recording-format.md`` describes the same thing in words.

The recorder (``probe.recording.record``) writes through these functions, the reader
(``probe.recording.reader``) validates with them, and the tests build their synthetic
recordings with ``write``. Nothing here imports torch, so reading a recording never does.

    from probe.recording import h5format
    h5format.write("tiny.h5", "ab\\n", {(0, "h"): values}, streams=("h",))   # [T, width] each
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Zstd filter, and others, with this process's HDF5)
import numpy as np

from probe.errors import ProbeError
from probe.files import atomic
from probe.recording.int8 import INT8_LEVELS, INT8_OFFSET, codebook, decode, encode  # noqa: F401
from probe.recording.fletcher import fletcher32, fletcher32_numpy  # noqa: F401
from probe.text.tokens import identity

FORMAT = "probe-recording"
VERSION = 3             # 3: positions are tokens (``spans``, ``ids``, ``tokens``); 2: ``widths``, a
#                         width per (layer, stream); 1: every stream ``units`` wide, a position a character
READS = (1, 2, 3)       # the versions this probe reads
CHUNK_T = 4096          # chunk rows (time); measured in docs/recording-format.md
CHUNK_UNITS = 32        # chunk columns (units)
TEXT_CHUNK = 65536      # chunk length of ``text`` and ``loss``
COMPRESSIONS = ("zstd", "gzip", "none")  # the first is the default
ZSTD = 32015            # HDF5's registered id of the Zstandard filter (hdf5plugin.Zstd)
FILTER_NAMES = {ZSTD: "zstd (pip install hdf5plugin; then import hdf5plugin before reading with h5py)"}
DTYPES = ("float16", "float32", "int8")
# int8 streams: per unit, a code (-128..127) indexes a codebook of 256 values, the
# dataset's float32 attribute ``codebook`` [units, 256] (``probe.recording.int8``)
# HDF5 1.10's formats: object headers, B-trees and the superblock carry checksums, so
# damaged metadata is refused on open; readable by any HDF5 from 1.10 (2016) on
LIBVER = ("v110", "v110")

# The streams a model kind records, in the order its cell computes them.
# Named as PyTorch and the lectures name them.
STREAMS: dict[str, tuple[str, ...]] = {"lstm": ("i", "f", "g", "o", "c", "h"),
                                       "gru": ("r", "z", "n", "h"),
                                       "rnn": ("h",)}
# What each stream is (the dashboard's labels) and its range (None: unbounded).
DESCRIPTION = {"i": "input gate", "f": "forget gate", "g": "candidate", "o": "output gate",
               "c": "cell state", "h": "hidden state", "r": "reset gate", "z": "update gate",
               "n": "candidate"}
RANGE: dict[str, tuple[float, float] | None] = {
    "i": (0.0, 1.0), "f": (0.0, 1.0), "g": (-1.0, 1.0), "o": (0.0, 1.0), "c": None, "h": (-1.0, 1.0),
    "r": (0.0, 1.0), "z": (0.0, 1.0), "n": (-1.0, 1.0)}
TABLES = ("text", "loss", "documents/name", "documents/start", "documents/stop")
# version 3: each position's [start, stop) in the text and its input id; each document's
# characters (its positions are documents/start and stop)
TOKEN_TABLES = ("spans", "ids", "documents/text_start", "documents/text_stop")
ATTRIBUTES = ("format", "version", "model", "model_sha256", "model_path", "model_metrics", "source", "created",
              "streams", "layers", "layer_ids", "units", "widths", "length", "tokens", "dtype", "compression",
              "mode", "unknown_chars", "checksums", "complete", "digest")  # every root attribute a recording has


def kind_of(config: dict) -> str:
    """The model kind a model config describes (``cell`` in it; LSTM when absent)."""
    kind = config.get("cell", "lstm")
    if kind not in STREAMS:
        raise ProbeError(f"unknown model kind {kind!r} (probe records {', '.join(STREAMS)})")
    return kind


def streams_of(config: dict) -> tuple[str, ...]:
    """The streams recorded for a model with this config."""
    return STREAMS[kind_of(config)]


def is_bounded(stream: str) -> bool:
    """Values in a fixed range (gates, candidates, h); False for ``c`` and derived streams."""
    return RANGE.get(stream) is not None


def is_unit_range(stream: str) -> bool:
    """Values in [0, 1] (the sigmoid gates): coloured white→purple, scored for saturation."""
    return RANGE.get(stream) == (0.0, 1.0)


def path(layer: int, stream: str) -> str:
    """Where a (layer, stream) lives in the file."""
    return f"layers/{layer}/{stream}"


def chunks(T: int, units: int) -> tuple[int, int] | None:
    """The chunk shape of a [T, units] stream (None for an empty one: HDF5 cannot chunk it)."""
    return (min(T, CHUNK_T), min(units, CHUNK_UNITS)) if T else None


# ---- writing ------------------------------------------------------------------------------

def write_header(f: h5py.File, *, model: dict, layers: int, length: int, streams: tuple[str, ...],
                 dtype: str, units: int | None = None, widths: dict | None = None, compression: str = "none",
                 batch: int = 1, burn_in: int = 0, source: dict | None = None,
                 model_sha256: str = "", model_path: str = "", model_metrics: dict | None = None,
                 unknown_chars: int = 0, checksums: bool = True, layer_ids: tuple[int, ...] | None = None,
                 tokens: dict | None = None) -> None:
    """The root attributes of a recording (all but ``complete`` and ``digest``, written last
    by ``finish``). ``layers`` is the model's layer count; ``layer_ids`` the layers recorded
    (default all); ``widths`` {(layer, stream): width} of every recorded stream (default:
    each ``units`` wide); ``units`` is stored as the widest, for tools that know only it;
    ``tokens`` the tokenizer ({"kind", "vocab"}; default: characters of the model's vocab);
    ``length`` the number of positions."""
    ids = tuple(range(layers) if layer_ids is None else layer_ids)
    widths = {(k, s): int(units if widths is None else widths[(k, s)]) for k in ids for s in streams}
    a = f.attrs
    a["format"], a["version"] = FORMAT, VERSION
    a["model"] = json.dumps(model)
    a["model_sha256"], a["model_path"] = model_sha256, model_path
    a["model_metrics"] = json.dumps({k: v for k, v in (model_metrics or {}).items() if k != "history"},
                                    default=str)
    a["source"] = json.dumps(source or {})
    a["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    a["streams"] = " ".join(streams)
    a["layers"], a["units"], a["length"] = layers, max(widths.values()), length
    a["widths"] = json.dumps({f"{k}:{s}": int(w) for (k, s), w in widths.items()})
    a["layer_ids"] = " ".join(str(k) for k in ids)
    a["dtype"], a["compression"] = dtype, compression
    a["mode"] = json.dumps({"batch": batch, "burn_in": burn_in if batch > 1 else 0})
    a["unknown_chars"] = unknown_chars
    a["tokens"] = json.dumps(tokens or {"kind": "chars", "vocab": list(model.get("vocab", ""))})
    a["checksums"] = "fletcher32" if checksums else "none"


def create(path: str | os.PathLike) -> h5py.File:
    """A new, empty HDF5 file in the recording's formats (``LIBVER``)."""
    return h5py.File(path, "w", libver=LIBVER)


def write_text(f: h5py.File, codepoints: np.ndarray, names: list[str], starts, stops,
               checksums: bool = True, spans: np.ndarray | None = None, ids: np.ndarray | None = None,
               text_starts=None, text_stops=None) -> h5py.Dataset:
    """``text`` (code points of every character), ``spans`` ([start, stop) of each position in
    it; default one character each), ``ids`` (each position's input id; default its code
    point), ``documents/*`` (start, stop: positions; text_start, text_stop: characters) and an
    empty ``loss`` (returned, to be filled); chunked with Fletcher-32 checksums (the names,
    variable-length strings, are covered by ``digest``)."""
    N = len(codepoints)
    spans = identity(N) if spans is None else spans
    T = len(spans)
    ids = codepoints if ids is None else ids

    def opts(n: int, shape: tuple = ()) -> dict:
        return dict(chunks=(min(n, TEXT_CHUNK),) + shape, compression="gzip", fletcher32=checksums) if n else {}
    f.create_dataset("text", data=np.asarray(codepoints, np.int32), **opts(N))
    f.create_dataset("spans", data=np.asarray(spans, np.int64).reshape(T, 2), **opts(T, (2,)))
    f.create_dataset("ids", data=np.asarray(ids, np.int32), **opts(T))
    loss = f.create_dataset("loss", (T,), np.float32, **opts(T))
    f.create_dataset("documents/name", data=list(names), dtype=h5py.string_dtype())
    spans = np.asarray(spans, np.int64).reshape(T, 2)
    if text_starts is None:  # one character per position: the same offsets
        text_starts, text_stops = starts, stops
    for key, values in (("start", starts), ("stop", stops), ("text_start", text_starts), ("text_stop", text_stops)):
        values = np.asarray(values, dtype=np.int64)
        f.create_dataset(f"documents/{key}", data=values, chunks=(max(1, len(values)),),
                         fletcher32=checksums)
    return loss


def create_stream(f: h5py.File, layer: int, stream: str, T: int, units: int, dtype: str,
                  compression: str, level: int = 1, checksums: bool = True) -> h5py.Dataset:
    """An empty [T, units] stream dataset, chunked (CHUNK_T, CHUNK_UNITS); byte shuffle +
    Zstandard or gzip at ``level``, or raw; then a Fletcher-32 checksum per chunk."""
    codec = {"zstd": dict(compression=ZSTD, compression_opts=(level,)),
             "gzip": dict(compression="gzip", compression_opts=level)}.get(compression) if T else None
    return f.create_dataset(path(layer, stream), (T, units), dtype, chunks=chunks(T, units),
                            shuffle=codec is not None, **(codec or {}), fletcher32=checksums and T > 0)


def digest(f: h5py.File) -> str:
    """sha256 of every root attribute but ``digest`` and of the document names: HDF5 keeps
    neither under a checksum of its own (large attribute sets live in a heap without one;
    variable-length strings in the global heap)."""
    def plain(v):  # as h5py returns it: numpy scalars, str (or bytes from other writers)
        v = v.item() if isinstance(v, np.generic) else v
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
    attrs = {k: plain(f.attrs[k]) for k in sorted(f.attrs) if k != "digest"}
    names = [n for n in f["documents/name"].asstr()[:]]
    blob = json.dumps({"attrs": attrs, "names": names}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()


def finish(f: h5py.File) -> None:
    """Mark the file complete and seal its metadata with ``digest``: the last things written."""
    f.attrs["complete"] = True
    f.attrs["digest"] = digest(f)


def write(out: str | os.PathLike, text: str, values: dict, *, documents=None, loss=None,
          streams: tuple[str, ...] | None = None, model: dict | None = None,
          source: dict | None = None, dtype: str = "float32", spans=None, ids=None,
          tokens: dict | None = None, text_documents=None) -> Path:
    """A whole small recording in one call: ``values[(layer, stream)]`` = [T, width], each
    stream as wide as its values.

    For tests and tools that make recordings without a model. ``documents`` is a list of
    (name, start, stop) positions (default: one document); ``loss`` defaults to zeros.
    Positions are characters unless ``spans`` [T, 2] says where each is in ``text``
    (then ``ids``, ``tokens`` {"kind", "vocab"} and ``text_documents`` [(start, stop)] of
    characters, default the documents' spans, describe them).
    """
    out = Path(out)
    T = len(text) if spans is None else len(spans)
    layers = 1 + max(k for k, _ in values)
    streams = streams or tuple(dict.fromkeys(s for _, s in values))
    widths = {(k, s): int(np.shape(values[(k, s)])[1]) for k in range(layers) for s in streams}
    units = max(widths.values())
    documents = documents or [("text", 0, T)]
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int32)
    with atomic(out) as tmp, create(tmp) as f:
        write_header(f, model=model or {"layers": layers, "units": units}, layers=layers, widths=widths,
                     length=T, streams=streams, dtype=dtype, source=source or {"kind": "synthetic"},
                     tokens=tokens)
        spans = None if spans is None else np.asarray(spans, np.int64).reshape(-1, 2)
        if text_documents is None and spans is not None:
            text_documents = [(int(spans[a, 0]) if a < T else len(text), int(spans[b - 1, 1]) if b else 0)
                              for _, a, b in documents]
        dloss = write_text(f, cps, [n for n, _, _ in documents], [s for _, s, _ in documents],
                           [e for _, _, e in documents], spans=spans, ids=ids,
                           text_starts=None if text_documents is None else [a for a, _ in text_documents],
                           text_stops=None if text_documents is None else [b for _, b in text_documents])
        dloss[:] = np.zeros(T, np.float32) if loss is None else loss
        for k in range(layers):
            for s in streams:
                ds = create_stream(f, k, s, T, widths[(k, s)], dtype, "none")
                ds[:] = np.asarray(values[(k, s)], dtype=dtype)
        finish(f)
    return out


# ---- reading ------------------------------------------------------------------------------

def validate(f: h5py.File, where: object) -> None:
    """Raise a one-line ProbeError naming ``where`` unless ``f`` is a complete recording
    this probe reads: format, version, completeness, every dataset and its shape."""
    a = f.attrs
    fmt = a.get("format")
    if fmt != FORMAT:
        raise ProbeError(f"{where}: not a probe recording (attribute format={fmt!r}, expected {FORMAT!r})")
    v = int(a.get("version", -1))
    if v not in READS:
        raise ProbeError(f"{where}: probe recording version {v} is not supported (this probe reads 1 to {VERSION})")
    if not a.get("complete", False):
        raise ProbeError(f"{where}: recording is incomplete (it was interrupted while being written)")
    if "digest" in a and a["digest"] != digest(f):  # files from before the digest have none
        raise ProbeError(f"{where}: damaged metadata (the attributes or document names do not match "
                         "their digest)")
    for key in ("layers", "units", "streams") + (("widths",) if v >= 2 else ()):
        if key not in a:
            raise ProbeError(f"{where}: recording lacks the attribute {key!r}")
    layers, streams = int(a["layers"]), str(a["streams"]).split()
    ids = layer_ids(a)
    if not ids or any(not 0 <= k < layers for k in ids):
        raise ProbeError(f"{where}: attribute layer_ids={a.get('layer_ids')!r} does not fit {layers} layers")
    widths = read_widths(a, where)
    names = list(TABLES) + list(TOKEN_TABLES if v >= 3 else ()) + [path(k, s) for k in ids for s in streams]
    for name in names:
        if name not in f:
            raise ProbeError(f"{where}: recording is missing dataset {name!r}")
    T = length(f)
    if v >= 3:
        if "tokens" not in a:
            raise ProbeError(f"{where}: recording lacks the attribute 'tokens'")
        for name, shape in (("spans", (T, 2)), ("ids", (T,))):
            if f[name].shape != shape:
                raise ProbeError(f"{where}: dataset {name} has shape {f[name].shape}, expected {shape}")
    elif len(f["text"]) != T:
        raise ProbeError(f"{where}: dataset text has {len(f['text'])} characters but loss {T} positions")
    for k in ids:
        for s in streams:
            ds = f[path(k, s)]
            if ds.shape != (T, widths[(k, s)]):
                raise ProbeError(f"{where}: dataset {path(k, s)} has shape {ds.shape}, expected {(T, widths[k, s])}")
            check_filters(ds, where)


def check_filters(ds: h5py.Dataset, where: object) -> None:
    """Refuse, in one line, a dataset compressed with an HDF5 filter this process lacks
    (h5py would fail on the first read, deep inside HDF5)."""
    dcpl = ds.id.get_create_plist()
    for j in range(dcpl.get_nfilters()):
        fid = dcpl.get_filter(j)[0]
        if not h5py.h5z.filter_avail(fid):
            name = FILTER_NAMES.get(fid, f"filter {fid}")
            raise ProbeError(f"{where}: {ds.name} is compressed with an HDF5 filter that is not "
                             f"available here: {name}")


def derived_streams(f: h5py.File, layers, streams) -> dict[tuple[int, str], dict]:
    """{(layer, name): info} of the derived streams in a file: datasets in a layer's group
    beside the recorded ``streams``, with a ``derived`` attribute (JSON: kind, spec_name,
    spec_sha256, inputs, unit_names, …; see ``probe.recording.derived``). Names starting with a dot
    are writes in progress and are not streams."""
    out = {}
    for k in layers:
        group = f.get(f"layers/{k}")
        if group is None:
            continue
        for name in sorted(group):
            if name in streams or name.startswith("."):
                continue
            ds = group[name]
            if isinstance(ds, h5py.Dataset) and "derived" in ds.attrs:
                info = json.loads(ds.attrs["derived"])
                if ds.shape[1:] == (len(info.get("unit_names", ())),) and ds.shape[0] == length(f):
                    out[(int(k), name)] = info
    return out


def length(f: h5py.File) -> int:
    """Positions of a recording (characters before version 3, tokens from it on)."""
    return len(f["loss"])


def layer_ids(attrs) -> tuple[int, ...]:
    """The recorded layers (all of them in files from before ``--layers``)."""
    if "layer_ids" not in attrs:
        return tuple(range(int(attrs["layers"])))
    try:
        return tuple(int(k) for k in str(attrs["layer_ids"]).split())
    except ValueError:
        return ()


def read_widths(attrs, where: object = "recording") -> dict[tuple[int, str], int]:
    """{(layer, stream): width} of every recorded stream: the ``widths`` attribute (version 2,
    JSON {"0:c": 512, …}), else ``units`` each (version 1). A one-line error naming ``where``
    unless every recorded stream has a width >= 1."""
    keys = [f"{k}:{s}" for k in layer_ids(attrs) for s in str(attrs["streams"]).split()]
    try:
        found = json.loads(attrs["widths"]) if "widths" in attrs else dict.fromkeys(keys, int(attrs["units"]))
        out = {(int(key.split(":")[0]), key.split(":")[1]): int(found[key]) for key in keys}
    except (ValueError, TypeError, KeyError):
        out = {}
    if len(out) != len(keys) or min(out.values(), default=1) < 1:
        raise ProbeError(f"{where}: attribute widths does not give each of {' '.join(keys)} a width >= 1")
    return out


def read_mode(attrs) -> dict:
    """``{"batch": B, "burn_in": N}``; files written before the rename say ``streams`` for B."""
    mode = json.loads(attrs.get("mode", "{}"))
    if "streams" in mode and "batch" not in mode:
        mode["batch"] = mode.pop("streams")
    mode.setdefault("batch", 1)
    mode.setdefault("burn_in", 0)
    return mode
