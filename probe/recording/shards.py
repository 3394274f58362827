"""Shards: one recording written as N files, read as one.

``probe record … --shard I/N --out DIR/NAME-I.h5`` records the I-th of N contiguous parts
of the text, whole documents each, balanced by characters; run the N commands anywhere,
in any order, and put the N files in one folder. ``probe.open_recording(DIR)`` opens the
folder as one logical recording: text, documents, loss and streams concatenated lazily
(a slice reads only the shards it touches), after checking that the files are one
complete set (docs/recording-format.md, "Shards").

    shards.split([5, 3, 8, 2], 2)                  # [(0, 2), (2, 4)]: document index ranges
    docs, source = shards.take(corpus.documents, corpus.source, 2, 4)   # what --shard 2/4 records
    with probe.open_recording("recordings/stdlib-test/") as rec:        # a folder of shards
        rec.stream(1, "c")[40_000:50_000]          # reads the one or two shards it spans

``split`` and ``take`` (``probe.recording.sharding``) are pure functions of the document
lengths, so any process (a cluster worker recording or scoring one shard) computes the same
parts.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from probe.errors import ProbeError
from probe.recording.base import Reader
from probe.recording.h5file import Recording
from probe.recording.sharding import KEY, parse_spec, split, take

__all__ = ["ShardedRecording", "ShardedDataset", "files", "is_folder", "sidecar", "stamp",
           "KEY", "parse_spec", "split", "take"]  # the cutting is sharding's, reachable here too

# ``source`` entries that say where the text was on the recording machine: informative,
# like ``model_path``, and allowed to differ between the shards of one set
LOCATIONS = ("path", "root")


# ---- finding the files and naming the caches -------------------------------------------

def files(folder: str | os.PathLike) -> list[Path]:
    """The shard files of a folder: its ``*.h5`` files (not hidden), sorted by name."""
    return sorted(p for p in Path(folder).glob("*.h5") if p.is_file() and not p.name.startswith("."))


def is_folder(path: str | os.PathLike) -> bool:
    """A folder holding at least one ``*.h5`` file: opened as a sharded recording."""
    p = Path(path)
    return p.is_dir() and bool(files(p))


def sidecar(path: str | os.PathLike, suffix: str) -> Path:
    """Where a cache of the recording at ``path`` lives: ``REC.h5`` + suffix beside a file,
    ``DIR/DIR`` + suffix inside a folder of shards (so the folder keeps its caches)."""
    p = Path(path)
    if p.is_dir():
        return p / (p.resolve().name + suffix)
    return p.with_name(p.name + suffix)


def stamp(path: str | os.PathLike) -> dict:
    """What a cache of the recording at ``path`` is keyed by, besides ``created``: a file's size
    and mtime_ns; for a folder of shards their total and latest, and each shard's name, size
    and mtime_ns, so replacing, adding or removing any shard invalidates the cache."""
    p = Path(path)
    if not p.is_dir():
        st = p.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stats = [(f.name, f.stat()) for f in files(p)]
    return {"size": sum(st.st_size for _, st in stats),
            "mtime_ns": max((st.st_mtime_ns for _, st in stats), default=0),
            "shards": [[name, st.st_size, st.st_mtime_ns] for name, st in stats]}


# ---- reading -----------------------------------------------------------------------------

class ShardedDataset:
    """Datasets of consecutive shards as one, read lazily like ``recording.Dataset``: rows
    by int, slice (step >= 1) or an array of indices, then any column key (``[a:b]``,
    ``[a:b, j]``, ``[a:b][:, cols]``); only the shards a read touches are read. ``shifts``
    (one per part) is added to the values read (document offsets into the whole text)."""

    def __init__(self, parts: list, where: object, shifts=None):
        self.parts, self.where, self.shifts = list(parts), where, shifts
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # first row of each part
        first = self.parts[0]
        self.shape = (int(self.offsets[-1]), *first.shape[1:])
        self.dtype, self.chunks = first.dtype, first.chunks

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, j: int, key: tuple):
        values = self.parts[j][key]
        return values if self.shifts is None else values + self.shifts[j]

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        T = len(self)
        if rows is Ellipsis:
            rows = slice(None)
        if isinstance(rows, (int, np.integer)):
            i = int(rows) + (T if rows < 0 else 0)
            if not 0 <= i < T:
                raise IndexError(f"row {int(rows)} is out of range for {T} rows")
            j = int(np.searchsorted(self.offsets, i, "right")) - 1
            return self._read(j, (i - int(self.offsets[j]), *rest))
        if isinstance(rows, slice):
            start, stop, step = rows.indices(T)
            if step < 1:
                raise ValueError(f"step must be >= 1, got {step}")
            pieces = []
            j = int(np.searchsorted(self.offsets, start, "right")) - 1
            while 0 <= j < len(self.parts) and self.offsets[j] < stop:
                o, e = int(self.offsets[j]), int(self.offsets[j + 1])
                a, b = max(start, o), min(stop, e)
                a = start + -(-(a - start) // step) * step  # the first row >= a on the step grid
                if a < b:
                    pieces.append(self._read(j, (slice(a - o, b - o, step), *rest)))
                j += 1
            return self._join(pieces, rest)
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).ravel()
        idx = np.where(idx < 0, idx + T, idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= T):
            raise IndexError(f"row index out of range for {T} rows")
        unique, inverse = np.unique(idx, return_inverse=True)  # h5py reads increasing indices
        part = np.searchsorted(self.offsets, unique, "right") - 1
        pieces = [self._read(int(j), (unique[part == j] - self.offsets[j], *rest)) for j in np.unique(part)]
        return self._join(pieces, rest)[inverse] if len(idx) else self._join([], rest)

    def _join(self, pieces: list, rest: tuple):
        if not pieces:  # nothing selected: an empty array of the right shape and dtype
            return self._read(0, (slice(0, 0), *rest))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def bad_rows(self) -> Iterator[tuple[int, int]]:
        """[start, stop) of every chunk row that cannot be read, in rows of the whole."""
        for o, part in zip(self.offsets.tolist(), self.parts):
            for a, b in part.bad_rows():
                yield a + o, b + o

    def first_bad_rows(self) -> tuple[int, int] | None:
        return next(self.bad_rows(), None)


def _first(name: str, doc: str) -> property:
    """A property of the set taken from its first shard (open checks they all agree)."""
    return property(lambda self: getattr(self.parts[0], name), doc=doc)


# what must agree across the shards of one set: (what, how to read it off a Recording)
_SAME = (("model (sha256 of the checkpoint)", lambda r: r.model_sha256),
         ("model config", lambda r: r.model_config),
         ("format version", lambda r: r.version),
         ("layers", lambda r: (r.layers, tuple(r.layer_ids))),
         ("units", lambda r: r.units),
         ("widths", lambda r: r.widths),
         ("streams", lambda r: " ".join(r.streams)),
         ("dtype", lambda r: r.dtype),
         ("compression", lambda r: r.compression),
         ("checksums", lambda r: r.checksums),
         ("mode (--batch, --burn-in)", lambda r: r.mode))


def _text_source(source: dict) -> dict:
    """The parts of ``source`` that name the text (kind, split, glob, limit, fingerprint…)."""
    return {k: v for k, v in source.items() if k != KEY and k not in LOCATIONS}


def _shard_info(rec: Recording, folder: Path) -> dict:
    info = rec.source.get(KEY)
    if info is None:
        raise ProbeError(f"{folder}: {rec.path.name} is not a shard (recorded without --shard); a folder "
                         "opened as one recording holds only the shards of one recording")
    try:
        d0, d1 = (int(x) for x in info["documents"])
        out = {"index": int(info["index"]), "count": int(info["count"]), "start": int(info["start"]),
               "length": int(info["length"]), "documents": (d0, d1),
               "total_documents": int(info["total_documents"])}
    except (KeyError, TypeError, ValueError):
        raise ProbeError(f"{folder}: {rec.path.name}: malformed shard description {info!r}") from None
    if d1 - d0 != len(rec.documents):
        raise ProbeError(f"{folder}: {rec.path.name} says it holds documents {d0}..{d1 - 1} but has "
                         f"{len(rec.documents)} documents")
    return out


def _check_set(folder: Path, parts: list[Recording]) -> tuple[list[Recording], list[dict]]:
    """The shards in order with their descriptions, or a one-line ProbeError naming the folder
    and the offending file: one model, one text, one format, each shard once, no gaps."""
    infos = [_shard_info(r, folder) for r in parts]
    first, a = parts[0], infos[0]
    for rec, info in zip(parts[1:], infos[1:]):
        for what, get in _SAME:
            if get(rec) != get(first):
                raise ProbeError(f"{folder}: {rec.path.name} and {first.path.name} differ in {what} "
                                 f"({_short(get(rec))} vs {_short(get(first))}): not shards of one recording")
        mine, theirs = _text_source(rec.source), _text_source(first.source)
        if mine != theirs:
            key = next(k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k))
            raise ProbeError(f"{folder}: {rec.path.name} and {first.path.name} were recorded from different "
                             f"text (source {key}: {_short(mine.get(key))} vs {_short(theirs.get(key))})")
        for key in ("count", "length", "total_documents"):
            if info[key] != a[key]:
                raise ProbeError(f"{folder}: {rec.path.name} is shard {info['index']}/{info['count']} of "
                                 f"{info['length']:,} characters but {first.path.name} is "
                                 f"{a['index']}/{a['count']} of {a['length']:,}: not one split")
    n = a["count"]
    seen: dict[int, Recording] = {}
    for rec, info in zip(parts, infos):
        if info["index"] in seen:
            raise ProbeError(f"{folder}: shard {info['index']}/{n} twice: {seen[info['index']].path.name} "
                             f"and {rec.path.name}")
        seen[info["index"]] = rec
    missing = [i for i in range(1, n + 1) if i not in seen]
    if missing:
        raise ProbeError(f"{folder}: missing shard{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(f'{i}/{n}' for i in missing)} (found {len(parts)} of {n})")
    order = sorted(range(len(parts)), key=lambda j: infos[j]["index"])
    parts, infos = [parts[j] for j in order], [infos[j] for j in order]
    end, doc, prev = 0, 0, None
    for rec, info in zip(parts, infos):
        if info["start"] != end or info["documents"][0] != doc:
            where = f"after {prev.path.name} (which ends at character {end:,}, document {doc})" if prev else \
                "at the start of the text"
            kind = "a gap" if info["start"] > end or info["documents"][0] > doc else "an overlap"
            raise ProbeError(f"{folder}: {kind} {where}: {rec.path.name} starts at character "
                             f"{info['start']:,}, document {info['documents'][0]}")
        end, doc, prev = end + len(rec.codepoints), info["documents"][1], rec  # characters, as the shards say
    if end != a["length"] or doc != a["total_documents"]:
        raise ProbeError(f"{folder}: the shards end at character {end:,} (document {doc}) but the text has "
                         f"{a['length']:,} characters ({a['total_documents']} documents): "
                         f"{prev.path.name} is incomplete")
    return parts, infos


def _short(value) -> str:
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


class ShardedRecording(Reader):
    """A folder of shards opened as one recording, with the interface of ``Recording``.

    ``parts`` are the shards' own ``Recording``s in text order (``files`` their paths);
    per-character data is concatenated on first use (``text``, ``loss``, ``documents``)
    or per read (``stream``, ``dataset``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ProbeError(f"{self.path}: no such folder of shards")
        paths = files(self.path)
        if not paths:
            raise ProbeError(f"{self.path}: no shards (*.h5 files) in this folder")
        parts: list[Recording] = []
        try:
            for p in paths:
                parts.append(Recording(p))
            self.parts, self.infos = _check_set(self.path, parts)
        except BaseException:
            for r in parts:
                r.close()
            raise
        self.files = [r.path for r in self.parts]
        self.offsets = np.cumsum([0] + [len(r) for r in self.parts])  # first position of each shard
        self.text_offsets = np.cumsum([0] + [len(r.codepoints) for r in self.parts])  # first character

    # ---- metadata: the first shard's (they all agree) or the whole set's ----------------
    layers = _first("layers", "model layers")
    units = _first("units", "units of the widest stream")
    widths = _first("widths", "{(layer, stream): units} of every recorded stream")
    version = _first("version", "format version")
    dtype = _first("dtype", "stored precision of the streams")
    compression = _first("compression", "filter of the streams: zstd, gzip or none")
    model_path = _first("model_path", "where the first shard's checkpoint was (informative)")
    model_sha256 = _first("model_sha256", "sha256 of the recorded checkpoint ('' if unknown)")
    checksums = _first("checksums", "fletcher32 (every chunk checked on read) or none")
    streams = _first("streams", "the recorded streams")
    layer_ids = _first("layer_ids", "the recorded layers")
    model_config = _first("model_config", "the checkpoint's config")
    model_metrics = _first("model_metrics", "the checkpoint's training metrics")
    mode = _first("mode", '{"batch": B, "burn_in": N}')
    chunks = _first("chunks", "chunk shape of the streams (of the first shard)")
    tokenizer = _first("tokenizer", "what a position is: {kind, vocab}")

    @property
    def created(self) -> str:
        """When the last shard was recorded (ISO 8601, UTC)."""
        return max(r.created for r in self.parts)

    @property
    def unknown_chars(self) -> int:
        return sum(r.unknown_chars for r in self.parts)

    @cached_property
    def source(self) -> dict:
        """Where the text came from, as an unsharded recording of it says (no ``shard``)."""
        return {k: v for k, v in self.parts[0].source.items() if k != KEY}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    # ---- per-character data --------------------------------------------------------------
    def dataset(self, name: str) -> ShardedDataset:
        """Any dataset (``text``, ``loss``, ``layers/0/c``, ``documents/start``…) of every shard,
        as one; document offsets are shifted to the whole text."""
        shifts = self.offsets[:-1] if name in ("documents/start", "documents/stop") else None
        return ShardedDataset([r.dataset(name) for r in self.parts], self.path, shifts)

    @cached_property
    def codepoints(self) -> np.ndarray:
        return self.dataset("text")[:]

    @cached_property
    def loss(self) -> np.ndarray:
        return self.dataset("loss")[:]

    @cached_property
    def spans(self) -> np.ndarray:
        return np.concatenate([r.spans + o for r, o in zip(self.parts, self.text_offsets.tolist())])

    @cached_property
    def ids(self) -> np.ndarray:
        return np.concatenate([r.ids for r in self.parts])

    @cached_property
    def documents(self) -> pd.DataFrame:
        frames = [r.documents.assign(start=r.documents["start"] + o, stop=r.documents["stop"] + o,
                                     text_start=r.documents["text_start"] + c, text_stop=r.documents["text_stop"] + c)
                  for r, o, c in zip(self.parts, self.offsets.tolist(), self.text_offsets.tolist())]
        return pd.concat(frames, ignore_index=True)

    def stream(self, layer: int, stream: str) -> ShardedDataset:
        """Lazy [T, width] array over every shard: a slice reads only the shards it spans."""
        self.check(layer, stream)
        return ShardedDataset([r.stream(layer, stream) for r in self.parts], self.path)

    @cached_property
    def derived(self) -> dict[tuple[int, str], dict]:
        """The derived streams every shard has, made by the same file (``probe encode`` on a
        folder encodes each shard)."""
        first = self.parts[0].derived
        return {key: info for key, info in first.items()
                if all(r.derived.get(key, {}).get("spec_sha256") == info.get("spec_sha256") for r in self.parts)}

    def close(self) -> None:
        for r in self.parts:
            r.close()

    def __repr__(self) -> str:
        units = f"{self.units} units" if self.uniform else f"up to {self.units} units"
        return (f"ShardedRecording({str(self.path)!r}, {len(self.parts)} shards, {len(self)} {self.unit_name}s, "
                f"{self.layers} layers × {units}, streams {' '.join(self.streams)})")
