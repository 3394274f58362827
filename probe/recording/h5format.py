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
from functools import lru_cache
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Zstd filter, and others, with this process's HDF5)
import numpy as np

from probe.compiled import (
    kernels as _kernels,  # None where not built: numpy does the same
)
from probe.errors import ProbeError
from probe.files import atomic

FORMAT = "probe-recording"
VERSION = 2             # 2: ``widths``, a width per (layer, stream); 1: every stream ``units`` wide
READS = (1, 2)          # the versions this probe reads
CHUNK_T = 4096          # chunk rows (time); measured in docs/recording-format.md
CHUNK_UNITS = 32        # chunk columns (units)
TEXT_CHUNK = 65536      # chunk length of ``text`` and ``loss``
COMPRESSIONS = ("zstd", "gzip", "none")  # the first is the default
ZSTD = 32015            # HDF5's registered id of the Zstandard filter (hdf5plugin.Zstd)
FILTER_NAMES = {ZSTD: "zstd (pip install hdf5plugin; then import hdf5plugin before reading with h5py)"}
DTYPES = ("float16", "float32", "int8")
# int8 streams: per unit, a code (-128..127) indexes a codebook of 256 values, the
# dataset's float32 attribute ``codebook`` [units, 256]; bins of equal count (``codebook``)
INT8_LEVELS = 256
INT8_OFFSET = 128  # code + 128 = the column of the codebook
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
ATTRIBUTES = ("format", "version", "model", "model_sha256", "model_path", "model_metrics", "source", "created",
              "streams", "layers", "layer_ids", "units", "widths", "length", "dtype", "compression", "mode",
              "unknown_chars", "checksums", "complete", "digest")  # every root attribute a recording has


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


def fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 checksum of a filtered chunk (H5_checksum_fletcher32, exactly):
    16-bit big-endian words, both sums folded mod 65535 with a positive sum never 0.
    The recorder writes its own chunks (``write_direct_chunk``), so it appends this itself;
    HDF5 checks it on every read."""
    if _kernels is not None:  # the same sums in C (probe/_kernels.c), ~5x faster
        return _kernels.fletcher32(data)
    return fletcher32_numpy(data)


def fletcher32_numpy(data: bytes) -> int:
    """``fletcher32`` in numpy: the reference (and the fallback without the C loops)."""
    n = len(data)
    words = np.frombuffer(data, dtype=">u2", count=n // 2)
    if len(words) <= 1 << 20:  # float64 sums of integers below 2**53 are exact
        w = words.astype(np.float64)
        s1 = int(w.sum())
        s2 = int(np.multiply(w, _weights(len(w)), out=w).sum())  # not a BLAS dot: no threads
    else:
        w = words.astype(np.int64)
        s1, s2 = int(w.sum()), int(np.dot(w, np.arange(len(w), 0, -1, dtype=np.int64)))
    if n % 2:
        s1 += data[-1] << 8
        s2 += s1

    def fold(s: int) -> int:
        return 0 if s == 0 else (s - 1) % 65535 + 1
    return (fold(s2) << 16) | fold(s1)


@lru_cache(maxsize=8)
def _weights(m: int) -> np.ndarray:
    """m, m-1, …, 1: word i is in m - i of the running sums that make the second sum."""
    return np.arange(m, 0, -1, dtype=np.float64)


def chunks(T: int, units: int) -> tuple[int, int] | None:
    """The chunk shape of a [T, units] stream (None for an empty one: HDF5 cannot chunk it)."""
    return (min(T, CHUNK_T), min(units, CHUNK_UNITS)) if T else None


# ---- writing ------------------------------------------------------------------------------

def write_header(f: h5py.File, *, model: dict, layers: int, length: int, streams: tuple[str, ...],
                 dtype: str, units: int | None = None, widths: dict | None = None, compression: str = "none",
                 batch: int = 1, burn_in: int = 0, source: dict | None = None,
                 model_sha256: str = "", model_path: str = "", model_metrics: dict | None = None,
                 unknown_chars: int = 0, checksums: bool = True, layer_ids: tuple[int, ...] | None = None,
                 ) -> None:
    """The root attributes of a recording (all but ``complete`` and ``digest``, written last
    by ``finish``). ``layers`` is the model's layer count; ``layer_ids`` the layers recorded
    (default all); ``widths`` {(layer, stream): width} of every recorded stream (default:
    each ``units`` wide); ``units`` is stored as the widest, for tools that know only it."""
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
    a["checksums"] = "fletcher32" if checksums else "none"


def create(path: str | os.PathLike) -> h5py.File:
    """A new, empty HDF5 file in the recording's formats (``LIBVER``)."""
    return h5py.File(path, "w", libver=LIBVER)


def write_text(f: h5py.File, codepoints: np.ndarray, names: list[str], starts, stops,
               checksums: bool = True) -> h5py.Dataset:
    """``text``, ``documents/*`` and an empty ``loss`` (returned, to be filled); chunked with
    Fletcher-32 checksums (the names, variable-length strings, are covered by ``digest``)."""
    T = len(codepoints)
    opts = dict(chunks=(min(T, TEXT_CHUNK),), compression="gzip", fletcher32=checksums) if T else {}
    f.create_dataset("text", data=codepoints, **opts)
    loss = f.create_dataset("loss", (T,), np.float32, **opts)
    f.create_dataset("documents/name", data=list(names), dtype=h5py.string_dtype())
    for key, values in (("start", starts), ("stop", stops)):
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


def codebook(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, from a float16 sample [n, units] of its values: ``lut`` [units, 65536] (int8),
    the code of every float16 bit pattern, and ``values`` [units, 256] (float32), what the
    reader returns for a code: the mean of the sample values in its bin (an empty bin: its
    lower edge). The 255 cuts between bins are the union of 127 cuts into equal counts and
    128 into equal widths, so no bin holds more than 1/128 of a unit's values (their order,
    what AUC reads, is kept where they crowd) nor spans more than 1/129 of its range (what
    correlations read, in the tails)."""
    sample = np.asarray(sample, np.float16)
    s = np.sort(sample.astype(np.float64), axis=0)
    n, U = s.shape
    half = INT8_LEVELS // 2
    by_count = s[(np.arange(1, half) * n) // half].T  # [U, 127]
    lo, hi = s[0], s[-1]
    by_width = lo[:, None] + (hi - lo)[:, None] * (np.arange(1, half + 1) / (half + 1))  # [U, 128]
    edges = np.sort(np.concatenate([by_count, by_width], axis=1), axis=1)  # [U, 255]
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)  # all bit patterns
    every = np.where(np.isnan(every), 0.0, every)  # NaN is never recorded; code it as 0 would be
    order = np.argsort(every, kind="stable")
    lut = np.empty((U, 1 << 16), np.int8)
    for u in range(U):  # sorted queries: fast
        lut[u, order] = np.searchsorted(edges[u], every[order], side="right") - INT8_OFFSET
    idx = encode(sample, lut).astype(np.int64) + INT8_OFFSET + np.arange(U) * INT8_LEVELS
    vals = sample.astype(np.float64).ravel()
    sums = np.bincount(idx.ravel(), weights=vals, minlength=U * INT8_LEVELS).reshape(U, INT8_LEVELS)
    counts = np.bincount(idx.ravel(), minlength=U * INT8_LEVELS).reshape(U, INT8_LEVELS)
    lower = np.concatenate([lo[:, None], edges], axis=1)  # [U, 256]
    values = np.where(counts > 0, sums / np.maximum(counts, 1), lower)
    return lut, values.astype(np.float32)


def encode(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """int8 codes [n, units] of float16 values: each looked up in its unit's row of ``lut``
    (values beyond the sample's range fall in the outer bins)."""
    idx = np.ascontiguousarray(values, dtype=np.float16).view(np.uint16).astype(np.int32)
    idx += np.arange(lut.shape[0], dtype=np.int32) << 16  # row u of the flat table
    return np.take(lut.reshape(-1), idx)


def decode(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float32 values of int8 codes; ``values`` is the codebook of the codes' units,
    [units, 256] for codes [n, units], or [256] for one unit's codes [n]."""
    idx = codes.astype(np.int64) + INT8_OFFSET
    if values.ndim == 1:
        return values[idx]
    return values[np.arange(values.shape[0]), idx] if idx.ndim == 1 else \
        np.take_along_axis(values.T, idx, axis=0)


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
          source: dict | None = None, dtype: str = "float32") -> Path:
    """A whole small recording in one call: ``values[(layer, stream)]`` = [T, width], each
    stream as wide as its values.

    For tests and tools that make recordings without a model. ``documents`` is a list of
    (name, start, stop) (default: one document); ``loss`` defaults to zeros.
    """
    out = Path(out)
    T = len(text)
    layers = 1 + max(k for k, _ in values)
    streams = streams or tuple(dict.fromkeys(s for _, s in values))
    widths = {(k, s): int(np.shape(values[(k, s)])[1]) for k in range(layers) for s in streams}
    units = max(widths.values())
    documents = documents or [("text", 0, T)]
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int32)
    with atomic(out) as tmp, create(tmp) as f:
        write_header(f, model=model or {"layers": layers, "units": units}, layers=layers, widths=widths,
                     length=T, streams=streams, dtype=dtype, source=source or {"kind": "synthetic"})
        dloss = write_text(f, cps, [n for n, _, _ in documents], [s for _, s, _ in documents],
                           [e for _, _, e in documents])
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
    names = list(TABLES) + [path(k, s) for k in ids for s in streams]
    for name in names:
        if name not in f:
            raise ProbeError(f"{where}: recording is missing dataset {name!r}")
    T = len(f["text"])
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
                if ds.shape[1:] == (len(info.get("unit_names", ())),) and ds.shape[0] == len(f["text"]):
                    out[(int(k), name)] = info
    return out


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
