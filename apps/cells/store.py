"""What every session shares: the recordings folder and everything opened from it.

A ``Store`` lives on ``server_context.cells`` (set in ``app_hooks.on_server_loaded``), so
all sessions share its open recordings, analyses, feature arrays, on/off indexes for
matching, models and recently shown cells. Per-session state lives in ``session.py``.
"""
from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from probe.analysis import cache as analysis
from probe.analysis import match
from probe.analysis import summaries as summaries_mod
from probe.errors import ProbeError
from probe.lm.model import for_recording, load_model
from probe.recording import shards
from probe.recording.reader import Recording, open_recording
from probe.recording.record import record
from probe.text import features
from probe.text.corpus import stdlib

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FOLDER = REPO / "recordings"
DEFAULT_NAME = "stdlib-test.h5"
DEFAULT_CHARS = 100_000
COLUMN_CACHE_BYTES = 64 << 20  # recently shown cells, shared by all sessions
FALLBACK_UNITS = 64           # cells summarised from a whole-unit read while the summaries load
HELD_DATASETS = 4             # (layer, stream) datasets kept open, with their chunk caches
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")  # a file (or a folder of shards) name


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``bokeh serve apps/cells --args --recordings DIR``."""
    p = argparse.ArgumentParser(prog="cells")
    p.add_argument("--recordings", default=str(DEFAULT_FOLDER), help="folder of .h5 recordings")
    return p.parse_known_args(argv)[0]


def is_recording_file(path: Path) -> bool:
    """A listed recording: ``*.h5`` in the folder or a folder of shards (``probe.recording.shards``), not
    hidden, not a cache written beside one."""
    return ((path.is_file() and path.suffix == ".h5") or shards.is_folder(path)) and \
        not path.name.startswith(".") and ".analysis" not in path.name


class Store:
    """The recordings folder, with everything opened from it kept open and shared."""

    def __init__(self, folder: str | Path, message: str | None = None):
        self.folder = Path(folder)
        self.message = message  # a problem with the whole folder, shown instead of the views
        self._lock = threading.Lock()
        self._recordings: dict[str, Recording] = {}
        self._errors: dict[tuple[str, float], str] = {}
        self._analyses: dict[str, Future] = {}
        self._summaries: dict[str, Future] = {}
        self._progress: dict[str, tuple[int, int, float]] = {}  # name: (done, total, started)
        self._fallback: OrderedDict[tuple, dict] = OrderedDict()
        self._features: dict[tuple[str, str], np.ndarray] = {}
        self._models: dict[str, tuple] = {}
        self._columns: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._held: OrderedDict[tuple, object] = OrderedDict()  # open h5py datasets
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cells-analysis")
        self._frames: dict[str, object] = {}
        self._indexes: dict[tuple, Future] = {}
        self._index_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cells-index")

    @classmethod
    def from_argv(cls, argv: list[str]) -> "Store":
        folder = Path(parse_args(argv).recordings)
        store = cls(folder)
        if not folder.is_dir():
            store.message = f"The recordings folder {folder.name}/ does not exist."
        elif not store.names():
            store.message = (f"No recordings in {folder.name}/. Make one with: probe record --out "
                             f"{folder.name}/{DEFAULT_NAME} --limit {DEFAULT_CHARS}")
        return store

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if is_recording_file(p))

    def check_name(self, name: str) -> str:
        """A recording name from a URL: a plain file name that exists in the folder."""
        if not _PLAIN_NAME.fullmatch(name) or ".." in name:
            raise ProbeError(f"recording {name!r} is not a plain file name (like stdlib-test.h5) "
                             "in the recordings folder")
        if name not in self.names():
            raise ProbeError(f"no recording named {name!r} in the recordings folder")
        return name

    def default_name(self, avoid: str | None = None) -> str | None:
        """The recording a bare URL shows: stdlib-test.h5, else the first one that opens
        (other than ``avoid``)."""
        names = [n for n in self.names() if n != avoid]
        for name in sorted(names, key=lambda n: n != DEFAULT_NAME):
            try:
                self.recording(name)
                return name
            except ProbeError:
                continue
        return names[0] if names else None

    def recording(self, name: str) -> Recording:
        """The open recording (opened on first use and kept open), or a ProbeError."""
        name = self.check_name(name)
        with self._lock:
            if name in self._recordings:
                return self._recordings[name]
            path = self.folder / name
            key = (name, path.stat().st_mtime)
            if key in self._errors:
                raise ProbeError(self._errors[key])
            try:
                rec = open_recording(path)
                rec.text  # decode once, here
            except ProbeError as e:
                self._errors[key] = str(e)
                raise
            except Exception as e:  # an HDF5 file broken in a way the reader did not foresee
                self._errors[key] = f"{path}: cannot be read ({type(e).__name__}: {e})"
                raise ProbeError(self._errors[key]) from None
            self._recordings[name] = rec
            return rec

    def _dataset(self, name: str, layer: int, stream: str):
        """The (layer, stream) dataset, kept open with its HDF5 chunk cache (the next unit or
        window is then a memory read)."""
        key = (name, layer, stream)
        with self._lock:
            if key in self._held:
                self._held.move_to_end(key)
                return self._held[key]
        ds = self.recording(name).stream(layer, stream)
        with self._lock:
            self._held[key] = ds
            while len(self._held) > HELD_DATASETS:
                self._held.popitem(last=False)
        return ds

    def values(self, name: str, layer: int, stream: str, unit: int, start: int, stop: int) -> np.ndarray:
        """One cell over [start, stop) as float32 [stop - start]: only those rows are read."""
        self.recording(name).check(layer, stream, unit)
        return np.asarray(self._dataset(name, layer, stream)[start:stop, unit], dtype=np.float32)

    def column(self, name: str, layer: int, stream: str, unit: int) -> np.ndarray:
        """One cell over the whole recording, float32 [T], read-only; recent ones are kept.
        Not on the cell switch (``unit_summary``), which reads no whole unit once the
        recording's summaries are loaded."""
        key = (name, layer, stream, unit)
        with self._lock:
            if key in self._columns:
                self._columns.move_to_end(key)
                return self._columns[key]
        self.recording(name).check(layer, stream, unit)
        values = np.asarray(self._dataset(name, layer, stream)[:, unit], dtype=np.float32)  # [T]
        values.flags.writeable = False
        with self._lock:
            self._columns[key] = values
            while sum(v.nbytes for v in self._columns.values()) > COLUMN_CACHE_BYTES and len(self._columns) > 1:
                self._columns.popitem(last=False)
        return values

    def summaries(self, name: str) -> Future:
        """``analysis.summaries`` of a recording: done when its analysis is (the same pass
        and the same read of the cache make both)."""
        self.analysis(name)
        return self._summaries[name]

    def unit_summary(self, name: str, layer: int, stream: str, unit: int) -> dict:
        """One cell's summaries (``summaries.unit``: histogram, top/bottom, overview strip,
        samples). From the recording's summaries once they are loaded: no read of the
        recording. Until then (or if they failed) the same summaries computed from one
        whole-unit read (``summaries.brute_force``, equal by definition), recent ones kept."""
        rec = self.recording(name)
        rec.check(layer, stream, unit)
        future = self.summaries(name)
        if future.done() and future.exception() is None:
            summ = future.result()
            if (int(layer), stream) in summ:
                return summaries_mod.unit(summ, layer, stream, unit)
        key = (name, layer, stream, unit)
        with self._lock:
            if key in self._fallback:
                self._fallback.move_to_end(key)
                return self._fallback[key]
        arrays = summaries_mod.brute_force(self.column(name, layer, stream, unit)[:, None], stream)
        edges = summaries_mod.strip_edges(len(rec))
        out = {k: arrays[k][0] for k in summaries_mod.FIELDS}
        out.update(stream=stream, edges=summaries_mod.hist_edges(stream), strip_edges=edges, samples=edges[:-1])
        with self._lock:
            self._fallback[key] = out
            while len(self._fallback) > FALLBACK_UNITS:
                self._fallback.popitem(last=False)
        return out

    def analysis(self, name: str) -> Future:
        """``analysis.analysis`` of a recording, computed once in a background thread (or read
        from its cache), its summaries with it (``summaries``); ``progress`` follows the pass."""
        with self._lock:
            if name not in self._analyses:
                path = self.folder / name
                summ: Future = Future()
                self._summaries[name] = summ
                self._analyses[name] = self._executor.submit(self._analyse, name, path, summ)
            return self._analyses[name]

    def _analyse(self, name: str, path: Path, summ: Future) -> dict:
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            self._progress[name] = (done, total, started)

        try:
            with open_recording(path) as rec:  # this thread's own handle
                result = analysis.analysis(rec, progress=progress, with_summaries=True)
        except BaseException as e:
            summ.set_exception(e)
            raise
        finally:
            self._progress.pop(name, None)
        summ.set_result(result.pop("summaries"))
        return result

    def progress(self, name: str) -> tuple[float, float | None] | None:
        """While a recording's analysis pass runs: (fraction done, seconds left or None
        while too early to say); None when no pass runs (not started, cached or done)."""
        state = self._progress.get(name)
        if state is None:
            return None
        done, total, started = state
        fraction = done / total if total else 0.0
        elapsed = time.monotonic() - started
        left = elapsed * (1 - fraction) / fraction if fraction >= 0.02 and elapsed >= 1 else None
        return fraction, left

    def feature(self, name: str, feature: str) -> np.ndarray:
        """One per-character feature over the whole recording: [T]."""
        key = (name, feature)
        if key not in self._features:
            rec = self.recording(name)
            df = features.compute(rec.text, [feature], documents=rec.document_spans)
            self._features[key] = df[feature].to_numpy(dtype=np.float32)
        return self._features[key]

    def features(self, name: str):
        """Every feature over the whole recording, one DataFrame [T, features] (for ``match.explain``)."""
        if name not in self._frames:
            rec = self.recording(name)
            self._frames[name] = features.compute(rec.text, documents=rec.document_spans)
        return self._frames[name]

    def match_index(self, name: str, layer: int, stream: str, threshold: float) -> Future:
        """``match.index`` made ready in a background thread (read from beside the recording,
        or built once, a second per 200,000 characters); when the future is done,
        ``match.index`` on the open recording is a memory read. Its result is None."""
        key = (name, layer, stream, float(threshold))
        with self._lock:
            if key not in self._indexes:
                path = self.folder / name
                self._indexes[key] = self._index_executor.submit(_ready_index, path, layer, stream, threshold)
            return self._indexes[key]

    def model(self, name: str):
        """(model, note) to run typed text through, for this recording; note may be ''."""
        if name not in self._models:
            self._models[name] = for_recording(self.recording(name))
        return self._models[name]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._index_executor.shutdown(wait=False, cancel_futures=True)
        self._held.clear()
        self._columns.clear()
        self._fallback.clear()
        for rec in self._recordings.values():
            rec.close()
        self._recordings.clear()


def _ready_index(path: Path, layer: int, stream: str, threshold: float) -> None:
    """Load or build the on/off index on a recording opened for this thread: ``match`` keeps
    it in memory (and beside the recording) for the session's own ``match.index``."""
    with open_recording(path) as rec:
        match.index(rec, layer, stream, threshold)


def ensure_default(folder: Path) -> str | None:
    """Record the shipped model over the stdlib test split if the folder has no recordings.

    Returns a message for the page when that is not possible, else None.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"Cannot create the recordings folder {folder}: {e.strerror}."
    if any(is_recording_file(p) for p in folder.iterdir()):
        return None
    try:
        model = load_model()
    except ProbeError as e:
        return (f"No recordings in {folder}, and no model to make one: {e}. Train a model "
                "(probe train --out probe/models/stdlib.pt) or record one "
                f"(probe record --model M.pt --out {folder / DEFAULT_NAME}).")
    corpus = stdlib("test").limited(DEFAULT_CHARS)
    out = folder / DEFAULT_NAME
    print(f"cells: no recordings in {folder}; recording {DEFAULT_CHARS:,} characters of the "
          f"stdlib test split into {out}", flush=True)
    try:
        record(model, corpus.documents, out, source=corpus.source, progress=True)
    except ProbeError as e:
        return f"Could not make the default recording: {e}"
    return None


def store_for(doc) -> Store:
    """The server's shared Store (see app_hooks), or a private one outside a server."""
    ctx = doc.session_context
    store = getattr(ctx.server_context, "cells", None) if ctx is not None else None
    return store if store is not None else Store.from_argv(sys.argv[1:])
