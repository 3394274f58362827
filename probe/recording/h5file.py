"""``Recording``: one probe recording file (HDF5), opened, checked and read lazily.

Its metadata are properties (``layers``, ``units``, ``widths``, ``streams``, ``model_config``…), its
per-character data cached arrays (``codepoints``, ``loss``, ``documents``), its streams
lazy ``Dataset`` views; ``writable`` opens it for writing while a derived stream is added.
``probe.recording.reader.open_recording`` opens a file or a folder of shards.
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
from probe.recording.base import READ_ERRORS, Dataset, Reader, damaged, file_attr
from probe.text import tokens

CACHE_BYTES = 64 << 20  # chunk cache: one unit over T touches T/4096 chunks of 256 KB (float16)


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
    layers = file_attr("layers", int, None, "model layers")
    units = file_attr("units", int, None, "units of the widest stream (of every stream in a version-1 file)")
    version = file_attr("version", int, None, "format version")
    dtype = file_attr("dtype", str, "float16", "stored precision of the streams")
    compression = file_attr("compression", str, "gzip", "filter of the streams: zstd, gzip or none")
    created = file_attr("created", str, "", "when it was recorded (ISO 8601, UTC)")
    model_path = file_attr("model_path", str, "", "where the recorded checkpoint was (it may have moved)")
    model_sha256 = file_attr("model_sha256", str, "", "sha256 of the recorded checkpoint ('' if unknown)")
    unknown_chars = file_attr("unknown_chars", int, 0, "characters outside the model's vocabulary")
    checksums = file_attr("checksums", str, "none", "fletcher32 (every chunk checked on read) or none")

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(str(self.file.attrs["streams"]).split())

    @cached_property
    def widths(self) -> dict[tuple[int, str], int]:
        """{(layer, stream): units} of every recorded stream (``width`` also knows the derived)."""
        return h5format.read_widths(self.file.attrs, self.path)

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
        return h5format.length(self.file)

    @cached_property
    def tokenizer(self) -> dict:
        """{"kind": chars | words | vocab, "vocab": [...]}: what a position is (``probe.text.tokens``);
        characters of the model's vocabulary in files from before version 3."""
        if "tokens" in self.file.attrs:
            return json.loads(self.file.attrs["tokens"])
        return {"kind": "chars", "vocab": list(self.model_config.get("vocab", ""))}

    # ---- per-character data --------------------------------------------------------------
    def dataset(self, name: str) -> Dataset:
        """Any dataset of the file (``text``, ``loss``, ``layers/0/c``…), reads checked."""
        try:
            return Dataset(self.file[name], self.path)
        except READ_ERRORS:
            raise ProbeError(f"{self.path}: damaged metadata (cannot open {name})") from None

    @cached_property
    def codepoints(self) -> np.ndarray:
        return self.dataset("text")[:]  # int32 [characters]

    @cached_property
    def spans(self) -> np.ndarray:
        """[start, stop) of each position in ``text``, int64 [T, 2] (one character each before
        version 3)."""
        if "spans" in self.file:
            return self.dataset("spans")[:].astype(np.int64)
        return tokens.identity(len(self))

    @cached_property
    def ids(self) -> np.ndarray:
        """Each position's input id, int32 [T] (the code point before version 3)."""
        return self.dataset("ids")[:] if "ids" in self.file else self.codepoints

    @cached_property
    def loss(self) -> np.ndarray:
        return self.dataset("loss")[:]  # float32 [T], bits; NaN at document starts

    @cached_property
    def documents(self) -> pd.DataFrame:
        try:
            names = self.file["documents/name"].asstr()[:]
        except READ_ERRORS + (UnicodeDecodeError,):
            raise damaged(self.path, "documents/name") from None
        start, stop = self.dataset("documents/start")[:], self.dataset("documents/stop")[:]
        chars = "documents/text_start" in self.file  # before version 3 positions were characters
        return pd.DataFrame({"name": names, "start": start, "stop": stop,
                             "text_start": self.dataset("documents/text_start")[:] if chars else start,
                             "text_stop": self.dataset("documents/text_stop")[:] if chars else stop})

    # ---- streams ---------------------------------------------------------------------------
    def stream(self, layer: int, stream: str) -> Dataset:
        """Lazy [T, width] array: slicing reads only what is asked for."""
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
        units = f"{self.units} units" if self.uniform else f"up to {self.units} units"
        return (f"Recording({str(self.path)!r}, {len(self)} {self.unit_name}s, {self.layers} layers × {units}, "
                f"streams {' '.join(self.streams)})")
