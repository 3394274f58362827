"""Read probe recordings lazily: text, documents, loss and [T, units] streams per layer.

    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        c = rec.stream(1, "c")          # lazy [T, units], h5py-backed
        quote = rec.unit(0, "c", 89)    # numpy [T]: the shipped model's quote cell
        df = rec.frame(0, "c", units=[89], start=0, stop=1000)             # wide: unit_89
        long = rec.frame(0, "c", units=[88, 89], stop=1000, tidy=True)    # tidy: unit, value
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd

from probe.errors import ProbeError
from probe.recording import h5format

CACHE_BYTES = 64 << 20  # chunk cache: one unit over T touches T/4096 chunks of 256 KB (float16)


READ_ERRORS = (OSError, RuntimeError, KeyError)  # what h5py raises for data it cannot read


def damaged(where: object, name: str, rows: tuple[int, int] | None = None,
            error: BaseException | None = None) -> ProbeError:
    """The one-line error for data that fails its checksum or cannot be decoded."""
    span = f" rows {rows[0]:,}–{rows[1]:,}" if rows else ""
    why = "checksum mismatch" if error is None or "checksum" in str(error).lower() or \
        "filter" in str(error).lower() else type(error).__name__
    return ProbeError(f"{where}: damaged data in {name}{span} ({why})")


class Dataset:
    """A recorded dataset, read lazily by slicing like an h5py one; a read that fails (a
    chunk whose checksum does not match, a broken filter) becomes a one-line ProbeError
    naming the file, the dataset and the damaged rows, never h5py's OSError. An int8
    stream reads as float32: each code looked up in its unit's ``codebook``."""

    def __init__(self, ds: h5py.Dataset, where: object):
        self.ds, self.where = ds, where
        self.shape, self.dtype, self.chunks = ds.shape, ds.dtype, ds.chunks
        self.codebook = None
        if ds.dtype == np.int8 and "codebook" in ds.attrs:
            self.codebook = np.asarray(ds.attrs["codebook"], np.float32)  # [units, 256]
            self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        try:
            values = self.ds[key]
        except READ_ERRORS as e:
            raise damaged(self.where, self.ds.name.lstrip("/"), self.first_bad_rows(), e) from None
        if self.codebook is None:
            return values
        cols = np.arange(self.shape[1])
        if isinstance(key, tuple) and len(key) == 2:
            cols = cols[key[1]]
        return h5format.decode(values, self.codebook[cols])

    def bad_rows(self) -> Iterator[tuple[int, int]]:
        """[start, stop) of every chunk row that cannot be read (``probe info --verify``)."""
        step = self.chunks[0] if self.chunks else max(1, len(self))
        for a in range(0, len(self), step):
            try:
                self.ds[a:a + step]
            except READ_ERRORS:
                yield a, min(a + step, len(self))

    def first_bad_rows(self) -> tuple[int, int] | None:
        return next(self.bad_rows(), None)


def _attr(name: str, kind: type, default, doc: str) -> property:
    """A read-only property holding one root attribute of the file, as ``kind``."""
    return property(lambda self: kind(self.file.attrs[name] if default is None
                                      else self.file.attrs.get(name, default)), doc=doc)


class Reader:
    """What a recording offers that is computed from its other parts, shared by ``Recording``
    and ``shards.ShardedRecording`` (each provides ``streams``, ``derived``, ``units``,
    ``layer_ids``, ``codepoints``, ``documents``, ``loss``, ``stream`` and ``close``)."""

    def streams_of(self, layer: int) -> tuple[str, ...]:
        """Every stream of a layer: the recorded ones (``streams``), then its derived ones."""
        return self.streams + tuple(s for k, s in self.derived if k == layer)

    @property
    def pairs(self) -> list[tuple[int, str]]:
        """Every (layer, stream) of the recording, derived streams included, in order."""
        return [(k, s) for k in self.layer_ids for s in self.streams_of(k)]

    def units_of(self, layer: int, stream: str) -> int:
        """Units of one stream: ``units`` for a recorded stream, a derived one's own count."""
        info = self.derived.get((int(layer), stream))
        return self.units if info is None else len(info["unit_names"])

    def unit_names(self, layer: int, stream: str) -> list[str] | None:
        """What each unit of a derived stream is (a feature's name, f17…); None for the
        recorded streams, whose units are just numbered."""
        info = self.derived.get((int(layer), stream))
        return None if info is None else list(info["unit_names"])

    @cached_property
    def text(self) -> str:
        return self.codepoints.astype("<u4").tobytes().decode("utf-32-le")

    @cached_property
    def document_spans(self) -> list[tuple[int, int]]:
        """[start, stop) of each document, as plain ints (what ``features.compute`` takes)."""
        d = self.documents
        return list(zip(d["start"].astype(int).tolist(), d["stop"].astype(int).tolist()))

    def document_of(self, positions) -> np.ndarray:
        """Index into ``documents`` of each position."""
        return np.searchsorted(self.documents["start"].to_numpy(), positions, side="right") - 1

    def check(self, layer: int, stream: str, unit: int | None = None) -> None:
        """Raise a one-line error for an out-of-range layer, unknown stream or unit."""
        if not isinstance(layer, (int, np.integer)) or layer not in self.layer_ids:
            which = (f"layers are 0..{self.layers - 1}" if len(self.layer_ids) == self.layers else
                     f"recorded layers are {' '.join(map(str, self.layer_ids))} of 0..{self.layers - 1}")
            raise ProbeError(f"{self.path}: no layer {layer!r} ({which})")
        streams = self.streams_of(layer)
        if stream not in streams:
            raise ProbeError(f"{self.path}: no stream {stream!r} (streams are {' '.join(streams)})")
        U = self.units_of(layer, stream)
        if unit is not None and (not isinstance(unit, (int, np.integer)) or not 0 <= unit < U):
            which = f"units of {stream}" if (int(layer), stream) in self.derived else "units"
            raise ProbeError(f"{self.path}: no unit {unit!r} ({which} are 0..{U - 1})")

    def unit(self, layer: int, stream: str, unit: int, start: int | None = None,
             stop: int | None = None) -> np.ndarray:
        """One unit's values over [start, stop) as float32 [n]."""
        self.check(layer, stream, unit)
        return self.stream(layer, stream)[start:stop, unit].astype(np.float32)

    def window(self, layer: int, stream: str, start: int, stop: int) -> np.ndarray:
        """All units over [start, stop) as float32 [n, units]."""
        self.check(layer, stream)
        return self.stream(layer, stream)[start:stop].astype(np.float32)

    def frame(self, layer: int, stream: str, units=None, start: int | None = None,
              stop: int | None = None, tidy: bool = False) -> pd.DataFrame:
        """Positions [start, stop) as a pandas frame: position, char, document, line and
        column (0-based, within its document), loss; then the values of ``units`` (default
        all). Wide by default: one row per position, one column ``unit_U`` per unit.
        ``tidy=True`` gives the long form instead (one row per position and unit, columns
        ``unit`` and ``value``; unit by unit, in the order given), what plotting libraries
        group and facet by."""
        self.check(layer, stream)
        T = len(self)
        start, stop, _ = slice(start, stop).indices(T)
        units = list(range(self.units_of(layer, stream))) if units is None else [int(u) for u in np.atleast_1d(units)]
        for u in units:
            self.check(layer, stream, u)
        cps = self.codepoints
        newline = np.concatenate([[0], np.cumsum(cps == 10)[:-1]])  # newlines before each position
        pos = np.arange(start, stop)
        doc = self.document_of(pos)
        doc_start = self.documents["start"].to_numpy()[doc]
        line = newline[pos] - newline[doc_start]
        last_nl = np.maximum.accumulate(np.where(cps == 10, np.arange(T), -1))
        prev_nl = np.concatenate([[-1], last_nl[:-1]])[pos]
        column = pos - np.maximum(prev_nl + 1, doc_start)
        vals = self.stream(layer, stream)[start:stop][:, units].astype(np.float32)
        df = pd.DataFrame({"position": pos, "char": list(self.text[start:stop]), "document": doc,
                           "line": line, "column": column, "loss": self.loss[start:stop]})
        if tidy:
            long = df.iloc[np.tile(np.arange(len(df)), len(units))].reset_index(drop=True)
            long["unit"] = np.repeat(np.asarray(units, dtype=np.int64), len(df))
            long["value"] = vals.T.reshape(-1)
            return long
        return pd.concat([df, pd.DataFrame(vals, columns=[f"unit_{u}" for u in units])], axis=1)

    def refresh(self) -> None:
        """Read the derived streams again (after one was added through ``writable``)."""
        self.__dict__.pop("derived", None)
        for part in getattr(self, "parts", ()):
            part.refresh()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Recording(Reader):
    """An open recording. Use as a context manager, or call ``close()``."""

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise ProbeError(f"{p}: no such recording")
        try:
            self.file = h5py.File(p, mode, rdcc_nbytes=CACHE_BYTES)
        except OSError:
            raise ProbeError(f"{p}: not a readable HDF5 file (truncated or not HDF5)") from None
        try:
            h5format.validate(self.file, p)
        except ProbeError:
            self.file.close()
            raise
        except Exception as e:  # metadata HDF5 could not decode: damage
            self.file.close()
            raise ProbeError(f"{p}: damaged metadata ({type(e).__name__})") from None

    # ---- metadata: everything the analysis and the app need, so none reads attributes ----
    layers = _attr("layers", int, None, "model layers")
    units = _attr("units", int, None, "units per layer")
    version = _attr("version", int, None, "format version")
    dtype = _attr("dtype", str, "float16", "stored precision of the streams")
    compression = _attr("compression", str, "gzip", "filter of the streams: zstd, gzip or none")
    created = _attr("created", str, "", "when it was recorded (ISO 8601, UTC)")
    model_path = _attr("model_path", str, "", "where the recorded checkpoint was (it may have moved)")
    model_sha256 = _attr("model_sha256", str, "", "sha256 of the recorded checkpoint ('' if unknown)")
    unknown_chars = _attr("unknown_chars", int, 0, "characters outside the model's vocabulary")
    checksums = _attr("checksums", str, "none", "fletcher32 (every chunk checked on read) or none")

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(str(self.file.attrs["streams"]).split())

    @cached_property
    def derived(self) -> dict[tuple[int, str], dict]:
        """The derived streams (``probe encode``: probe directions, dictionary features) by
        (layer, name): what made each (``probe.recording.derived``'s ``info``). Empty if none."""
        return h5format.derived_streams(self.file, self.layer_ids, self.streams)

    @property
    def layer_ids(self) -> tuple[int, ...]:
        """The recorded layers: all of the model's (``layers``) unless recorded with --layers."""
        return h5format.layer_ids(self.file.attrs)

    @cached_property
    def model_config(self) -> dict:
        """layers, units, embedding, dropout, vocab, corpus: the checkpoint's config."""
        return json.loads(self.file.attrs.get("model", "{}"))

    @cached_property
    def model_metrics(self) -> dict:
        return json.loads(self.file.attrs.get("model_metrics", "{}"))

    @cached_property
    def source(self) -> dict:
        """Where the text came from: kind, split, path, limit, fingerprint."""
        return json.loads(self.file.attrs.get("source", "{}"))

    @cached_property
    def mode(self) -> dict:
        """``{"batch": B, "burn_in": N}``: B = 1 is sequential (see ``probe record --batch``)."""
        return h5format.read_mode(self.file.attrs)

    @property
    def chunks(self) -> tuple[int, int] | None:
        return self.file[h5format.path(self.layer_ids[0], self.streams[0])].chunks

    def __len__(self) -> int:
        return len(self.file["text"])

    # ---- per-character data --------------------------------------------------------------
    def dataset(self, name: str) -> Dataset:
        """Any dataset of the file (``text``, ``loss``, ``layers/0/c``…), reads checked."""
        try:
            return Dataset(self.file[name], self.path)
        except READ_ERRORS:
            raise ProbeError(f"{self.path}: damaged metadata (cannot open {name})") from None

    @cached_property
    def codepoints(self) -> np.ndarray:
        return self.dataset("text")[:]  # int32 [T]

    @cached_property
    def loss(self) -> np.ndarray:
        return self.dataset("loss")[:]  # float32 [T], bits; NaN at document starts

    @cached_property
    def documents(self) -> pd.DataFrame:
        try:
            names = self.file["documents/name"].asstr()[:]
        except READ_ERRORS + (UnicodeDecodeError,):
            raise damaged(self.path, "documents/name") from None
        return pd.DataFrame({"name": names, "start": self.dataset("documents/start")[:],
                             "stop": self.dataset("documents/stop")[:]})

    # ---- streams ---------------------------------------------------------------------------
    def stream(self, layer: int, stream: str) -> Dataset:
        """Lazy [T, units] array: slicing reads only what is asked for."""
        self.check(layer, stream)
        return self.dataset(h5format.path(layer, stream))

    @contextmanager
    def writable(self) -> Iterator[h5py.File]:
        """The file open for writing during the block (a derived stream being added), then
        open as before, with the new stream visible. Arrays already read stay valid; lazy
        ``stream``/``dataset`` views taken before the block are closed with the old handle."""
        mode = self.file.mode
        self.file.close()
        try:
            try:
                self.file = h5py.File(self.path, "r+", rdcc_nbytes=CACHE_BYTES)
            except OSError:
                raise ProbeError(f"{self.path}: cannot be opened for writing (read-only, or open in "
                                 "another program)") from None
            try:
                yield self.file
            finally:
                self.file.close()
        finally:
            self.file = h5py.File(self.path, mode, rdcc_nbytes=CACHE_BYTES)
            self.refresh()

    # ---- context manager -------------------------------------------------------------------
    def close(self) -> None:
        self.file.close()

    def __repr__(self) -> str:
        return (f"Recording({str(self.path)!r}, {len(self)} chars, {self.layers} layers × "
                f"{self.units} units, streams {' '.join(self.streams)})")


def open_recording(path: str | os.PathLike) -> Recording:
    """Open and validate a probe recording: an ``.h5`` file, or a folder of shards opened as
    one (``probe.recording.shards.ShardedRecording``, with the same interface)."""
    if Path(path).is_dir():
        from probe.recording.shards import ShardedRecording
        return ShardedRecording(path)
    return Recording(path)


def summary(rec: Reader) -> dict:
    """What ``probe info REC.h5`` prints about an open recording (a file or a folder of shards)."""
    cfg = {k: v for k, v in rec.model_config.items() if k != "vocab"}
    loss = rec.loss
    files = getattr(rec, "files", None)  # the shards of a folder
    size = sum(f.stat().st_size for f in files or [rec.path])
    return {
        "path": str(rec.path), "format": f"{h5format.FORMAT} v{rec.version}", "created": rec.created,
        "model": {"path": rec.model_path, "sha256": rec.model_sha256,
                  **cfg, "vocab_size": len(rec.model_config.get("vocab", ""))},
        "source": rec.source, "mode": rec.mode,
        "documents": len(rec.documents), "length": len(rec), "layers": rec.layers,
        **({"layer_ids": " ".join(map(str, rec.layer_ids))} if len(rec.layer_ids) != rec.layers else {}),
        "streams": " ".join(rec.streams), "units": rec.units,
        **({"derived": {f"{k}/{s}": f"{info['kind']}, {len(info['unit_names'])} units, from "
                        f"{info.get('spec_name', '?')}" for (k, s), info in rec.derived.items()}}
           if rec.derived else {}),
        "dtype": rec.dtype,
        "compression": rec.compression, "chunks": str(rec.chunks),
        "checksums": (f"{rec.checksums} on every chunk (probe info --verify reads them all)"
                      if rec.checksums != "none" else "none (damage cannot be detected)"),
        "size_on_disk": f"{size / 1e6:.1f} MB ({size / max(1, len(rec)):.0f} bytes/char)",
        "mean_bits_per_char": round(float(np.nanmean(loss)), 4) if np.isfinite(loss).any() else None,
        "unknown_chars": rec.unknown_chars,
        **({"shards": f"{len(files)} files, {files[0].name} … {files[-1].name}"} if files else {}),
    }


def verify(rec: Reader, progress: bool = False) -> list[str] | None:
    """Read every chunk of every dataset: the damaged ranges (``"layers/1/c rows 0–4,096"``),
    [] if none, or None if the recording has no checksums to check (made before them)."""
    from tqdm.auto import tqdm
    if rec.checksums != "fletcher32":
        return None
    names = [n for n in h5format.TABLES if n != "documents/name"] + [
        h5format.path(k, s) for k in rec.layer_ids for s in rec.streams]
    bad = []
    parts = [(p, f"{p.path.name}: ") for p in rec.parts] if hasattr(rec, "parts") else [(rec, "")]
    for name in tqdm(names, desc="verifying", unit="dataset", disable=not progress):
        for part, shard in parts:  # a folder's damage is named by shard, in its own rows
            bad += [f"{shard}{name} rows {a:,}–{b:,}" for a, b in part.dataset(name).bad_rows()]
    return bad
