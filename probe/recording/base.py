"""What every open recording offers, a file or a folder of shards: ``Reader`` and ``Dataset``.

``Reader`` holds what is computed from a recording's other parts (the text, documents,
one unit, a window, a pandas frame, the checks that make errors one line), shared by
``h5file.Recording`` (one file) and ``shards.ShardedRecording`` (a folder read as one). A
position is a character, or a token with its ``spans`` in the text (format version 3).
``Dataset`` reads a stored array lazily, turning damage (a failed checksum) into one line.
"""
from __future__ import annotations

from functools import cached_property
from typing import Iterator

import h5py
import numpy as np
import pandas as pd

from probe.errors import ProbeError
from probe.recording import h5format
from probe.text import features as features_mod

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


def file_attr(name: str, kind: type, default, doc: str) -> property:
    """A read-only property holding one root attribute of the file, as ``kind``."""
    return property(lambda self: kind(self.file.attrs[name] if default is None
                                      else self.file.attrs.get(name, default)), doc=doc)


class Reader:
    """What a recording offers that is computed from its other parts, shared by ``Recording``
    and ``shards.ShardedRecording`` (each provides ``streams``, ``derived``, ``units``, ``widths``,
    ``layer_ids``, ``codepoints``, ``spans``, ``ids``, ``tokenizer``, ``documents``, ``loss``,
    ``stream`` and ``close``)."""

    def streams_of(self, layer: int) -> tuple[str, ...]:
        """Every stream of a layer: the recorded ones (``streams``), then its derived ones."""
        return self.streams + tuple(s for k, s in self.derived if k == layer)

    @property
    def pairs(self) -> list[tuple[int, str]]:
        """Every (layer, stream) of the recording, derived streams included, in order."""
        return [(k, s) for k in self.layer_ids for s in self.streams_of(k)]

    def width(self, layer: int, stream: str) -> int:
        """Units of one (layer, stream): a recorded stream's own width (``widths``; layers and
        streams can differ, h narrower than c under an LSTM's projection), a derived one's count."""
        info = self.derived.get((int(layer), stream))
        if info is not None:
            return len(info["unit_names"])
        self.check(layer, stream)
        return self.widths[(int(layer), stream)]

    units_of = width  # its old name

    @property
    def uniform(self) -> bool:
        """Every recorded stream is ``units`` wide (all of a version-1 file's are)."""
        return all(w == self.units for w in self.widths.values())

    def unit_names(self, layer: int, stream: str) -> list[str] | None:
        """What each unit of a derived stream is (a feature's name, f17…); None for the
        recorded streams, whose units are just numbered."""
        info = self.derived.get((int(layer), stream))
        return None if info is None else list(info["unit_names"])

    @cached_property
    def text(self) -> str:
        """The whole text read, every character (``spans`` says where each position is in it)."""
        return self.codepoints.astype("<u4").tobytes().decode("utf-32-le")

    @property
    def char_level(self) -> bool:
        """Every position one character (the model reads characters): ``text`` is indexed by
        position. Else positions are tokens, each ``text[start:stop]`` of its span."""
        return self.tokenizer["kind"] == "chars"

    @property
    def unit_name(self) -> str:
        """What a position is, for messages and labels: character or token."""
        return "character" if self.char_level else "token"

    @cached_property
    def tokens(self):
        """Each position's text: ``text`` itself for a character-level recording (a string,
        indexed and sliced by position), else a list of strings, one per token."""
        if self.char_level:
            return self.text
        text = self.text
        return [text[a:b] for a, b in self.spans.tolist()]

    @cached_property
    def document_spans(self) -> list[tuple[int, int]]:
        """[start, stop) positions of each document, as plain ints."""
        d = self.documents
        return list(zip(d["start"].astype(int).tolist(), d["stop"].astype(int).tolist()))

    @cached_property
    def text_documents(self) -> list[tuple[int, int]]:
        """[start, stop) characters of each document in ``text`` (``document_spans`` for a
        character-level recording): what the per-character features are lexed over."""
        d = self.documents
        return list(zip(d["text_start"].astype(int).tolist(), d["text_stop"].astype(int).tolist()))

    def text_of(self, start: int, stop: int) -> str:
        """The text of positions [start, stop): for tokens, from the first one's first character
        to the last one's last, what lies between them kept."""
        if self.char_level:
            return self.text[start:stop]
        if stop <= start:
            return ""
        return self.text[int(self.spans[start, 0]):int(self.spans[stop - 1, 1])]

    def document_texts(self, limit: int | None = None) -> list[tuple[str, str]]:
        """[(name, text)] of the documents, cut at their character offsets (positions may be
        tokens): what a model reads again. ``limit``: at most that many characters in all."""
        out, left, text = [], limit, self.text
        for name, (a, b) in zip(self.documents["name"].tolist(), self.text_documents):
            if left is not None:
                if left <= 0:
                    break
                b = min(b, a + left)
                left -= b - a
            out.append((str(name), text[a:b]))
        return out

    def features(self, names=None, **kw) -> pd.DataFrame:
        """``probe.text.features.compute`` for this recording: one row per position. The text
        is lexed per document by the rules its name picks, each feature read at a token's
        last character (a regex marks every token its matches overlap)."""
        kw.setdefault("document_names", list(self.documents["name"]))
        return features_mod.compute(self.text, names, documents=self.text_documents,
                                    spans=None if self.char_level else self.spans, **kw)

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
        if unit is None:
            return
        U = self.width(layer, stream)
        if not isinstance(unit, (int, np.integer)) or not 0 <= unit < U:
            which = f"units of {stream}" if (int(layer), stream) in self.derived or not self.uniform else "units"
            raise ProbeError(f"{self.path}: no unit {unit!r} ({which} are 0..{U - 1})")

    def unit(self, layer: int, stream: str, unit: int, start: int | None = None,
             stop: int | None = None) -> np.ndarray:
        """One unit's values over [start, stop) as float32 [n]."""
        self.check(layer, stream, unit)
        return self.stream(layer, stream)[start:stop, unit].astype(np.float32)

    def window(self, layer: int, stream: str, start: int, stop: int) -> np.ndarray:
        """All units over [start, stop) as float32 [n, width]."""
        self.check(layer, stream)
        return self.stream(layer, stream)[start:stop].astype(np.float32)

    def frame(self, layer: int, stream: str, units=None, start: int | None = None,
              stop: int | None = None, tidy: bool = False) -> pd.DataFrame:
        """Positions [start, stop) as a pandas frame: position, char (``token`` when positions
        are tokens), document, line and column (0-based, within its document; a token's are its
        last character's), loss; then the values of ``units`` (default
        all). Wide by default: one row per position, one column ``unit_U`` per unit.
        ``tidy=True`` gives the long form instead (one row per position and unit, columns
        ``unit`` and ``value``; unit by unit, in the order given), what plotting libraries
        group and facet by."""
        self.check(layer, stream)
        T = len(self)
        start, stop, _ = slice(start, stop).indices(T)
        units = list(range(self.width(layer, stream))) if units is None else [int(u) for u in np.atleast_1d(units)]
        for u in units:
            self.check(layer, stream, u)
        cps = self.codepoints
        N = len(cps)
        newline = np.concatenate([[0], np.cumsum(cps == 10)[:-1]])  # newlines before each character
        pos = np.arange(start, stop)
        at = self.spans[start:stop, 1] - 1  # a token's line and column are its last character's
        doc = self.document_of(pos)
        doc_start = self.documents["text_start"].to_numpy()[doc]
        line = newline[at] - newline[np.minimum(doc_start, max(N - 1, 0))]
        last_nl = np.maximum.accumulate(np.where(cps == 10, np.arange(N), -1))
        prev_nl = np.concatenate([[-1], last_nl[:-1]])[at]
        column = at - np.maximum(prev_nl + 1, doc_start)
        vals = self.stream(layer, stream)[start:stop][:, units].astype(np.float32)
        df = pd.DataFrame({"position": pos, "char" if self.char_level else "token": list(self.tokens[start:stop]),
                           "document": doc, "line": line, "column": column, "loss": self.loss[start:stop]})
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
