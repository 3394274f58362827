"""What every session shares: the recordings folder and everything opened from it.

A ``Store`` lives on ``server_context.cells`` (set in ``app_hooks.on_server_loaded``), so
all sessions share its open recordings, analyses, feature arrays, models, recently shown
cells and the results of tabs' background work (``background``). Per-session state lives
in ``session.py``.
"""
from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from probe.analysis import cache as analysis
from probe.analysis import summaries as summaries_mod
from probe.errors import ProbeError
from probe.lm.model import for_recording
from probe.recording import shards
from probe.recording.reader import Recording, open_recording

from .lru import LRU

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FOLDER = REPO / "recordings"
DEFAULT_NAME = "stdlib-test.h5"
DEFAULT_CHARS = 100_000       # characters of the stdlib test split in the default recording
# what the store keeps, at most (each an LRU: the least recently used go first)
RECORDINGS = 16               # open recordings
ERRORS = 64                   # why a file did not open (until it changes)
ANALYSES = 8                  # recordings' analyses and summaries
FEATURE_BYTES = 64 << 20      # per-character features, shared by all sessions
FRAMES = 2                    # recordings' every-feature frames
MODELS = 4                    # models for live text, intervene and saliency
COLUMN_CACHE_BYTES = 64 << 20  # recently shown cells, shared by all sessions
FALLBACK_UNITS = 64           # cells summarised from a whole-unit read while the summaries load
HELD_DATASETS = 4             # (layer, stream) datasets kept open, with their chunk caches
JOBS = 64                     # results of tabs' background work (``Store.background``)
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
    """The recordings folder, with everything opened from it kept open and shared.

    Every cache is an ``LRU`` (bounded: the least recently used go first), and every piece
    of shared state is read and written under ``_lock``; slow work (opening aside) runs
    outside it, so one session's reading never blocks another's.
    """

    def __init__(self, folder: str | Path, message: str | None = None):
        self.folder = Path(folder)
        self.message = message  # a problem with the whole folder, shown instead of the views
        self._lock = threading.Lock()
        # evicted recordings are not closed: a session may still show one (h5py closes the
        # file when its last reference goes)
        self._recordings: LRU[str, Recording] = LRU(RECORDINGS)
        self._errors: LRU[tuple[str, float], str] = LRU(ERRORS)  # (name, mtime): why it did not open
        self._analyses: LRU[str, tuple[Future, Future]] = LRU(ANALYSES)  # name: (analysis, summaries)
        self._progress: dict[str, tuple[int, int, float]] = {}  # passes running: (done, total, started)
        self._features: LRU[tuple[str, str], np.ndarray] = LRU(FEATURE_BYTES, weigh=_nbytes)
        self._frames: LRU[str, object] = LRU(FRAMES)  # name: every feature, one DataFrame
        self._models: LRU[str, tuple] = LRU(MODELS)
        self._columns: LRU[tuple, np.ndarray] = LRU(COLUMN_CACHE_BYTES, weigh=_nbytes)
        self._fallback: LRU[tuple, dict] = LRU(FALLBACK_UNITS)
        self._held: LRU[tuple, object] = LRU(HELD_DATASETS)  # open h5py datasets
        self._jobs: LRU[tuple, Future] = LRU(JOBS)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cells-analysis")
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cells-background")

    @classmethod
    def for_folder(cls, folder: str | Path, message: str | None = None) -> "Store":
        """The store of ``folder``, with ``message`` (or what is wrong with the folder) for the page."""
        folder = Path(folder)
        store = cls(folder, message)
        if message is not None:
            pass
        elif not folder.is_dir():
            store.message = f"The recordings folder {folder.name}/ does not exist."
        elif not store.names():
            store.message = (f"No recordings in {folder.name}/. Make one with: probe record --out "
                             f"{folder.name}/{DEFAULT_NAME} --limit {DEFAULT_CHARS}")
        return store

    def _kept(self, cache: LRU, key, make: Callable[[], object]):
        """``cache``'s value for ``key``, made by ``make()`` outside the lock if missing (two
        sessions asking at once may both make it; the first kept wins)."""
        with self._lock:
            if key in cache:
                return cache.get(key)
        value = make()
        with self._lock:
            if key not in cache:
                cache.put(key, value)
            return cache.get(key, value)

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
        with self._lock:  # opened under the lock: a file is opened once
            if name in self._recordings:
                return self._recordings.get(name)
            path = self.folder / name
            key = (name, path.stat().st_mtime)
            if key in self._errors:
                raise ProbeError(self._errors.get(key))
            try:
                rec = open_recording(path)
                rec.text  # decode once, here
            except ProbeError as e:
                self._errors.put(key, str(e))
                raise
            except Exception as e:  # an HDF5 file broken in a way the reader did not foresee
                self._errors.put(key, f"{path}: cannot be read ({type(e).__name__}: {e})")
                raise ProbeError(self._errors.get(key)) from None
            return self._recordings.put(name, rec)

    def _dataset(self, name: str, layer: int, stream: str):
        """The (layer, stream) dataset, kept open with its HDF5 chunk cache (the next unit or
        window is then a memory read)."""
        return self._kept(self._held, (name, layer, stream), lambda: self.recording(name).stream(layer, stream))

    def values(self, name: str, layer: int, stream: str, unit: int, start: int, stop: int) -> np.ndarray:
        """One cell over [start, stop) as float32 [stop - start]: only those rows are read."""
        self.recording(name).check(layer, stream, unit)
        return np.asarray(self._dataset(name, layer, stream)[start:stop, unit], dtype=np.float32)

    def column(self, name: str, layer: int, stream: str, unit: int) -> np.ndarray:
        """One cell over the whole recording, float32 [T], read-only; recent ones are kept.
        Not on the cell switch (``unit_summary``), which reads no whole unit once the
        recording's summaries are loaded."""
        def read() -> np.ndarray:
            self.recording(name).check(layer, stream, unit)
            values = np.asarray(self._dataset(name, layer, stream)[:, unit], dtype=np.float32)  # [T]
            values.flags.writeable = False
            return values
        return self._kept(self._columns, (name, layer, stream, unit), read)

    def summaries(self, name: str) -> Future:
        """``analysis.summaries`` of a recording: done when its analysis is (the same pass
        and the same read of the cache make both)."""
        return self._passes(name)[1]

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

        def brute_force() -> dict:
            arrays = summaries_mod.brute_force(self.column(name, layer, stream, unit)[:, None], stream)
            edges = summaries_mod.strip_edges(len(rec))
            out = {k: arrays[k][0] for k in summaries_mod.FIELDS}
            out.update(stream=stream, edges=summaries_mod.hist_edges(stream), strip_edges=edges,
                       samples=edges[:-1])
            return out
        return self._kept(self._fallback, (name, layer, stream, unit), brute_force)

    def analysis(self, name: str) -> Future:
        """``analysis.analysis`` of a recording, computed once in a background thread (or read
        from its cache), its summaries with it (``summaries``); ``progress`` follows the pass."""
        return self._passes(name)[0]

    def _passes(self, name: str) -> tuple[Future, Future]:
        """(analysis, summaries) of a recording: one pass, started on first use."""
        with self._lock:
            if name not in self._analyses:
                path = self.folder / name
                summ: Future = Future()
                self._analyses.put(name, (self._executor.submit(self._analyse, name, path, summ), summ))
            return self._analyses.get(name)

    def _analyse(self, name: str, path: Path, summ: Future) -> dict:
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            with self._lock:
                self._progress[name] = (done, total, started)

        try:
            with open_recording(path) as rec:  # this thread's own handle
                result = analysis.analysis(rec, progress=progress, with_summaries=True)
        except BaseException as e:
            summ.set_exception(e)
            raise
        finally:
            with self._lock:
                self._progress.pop(name, None)
        summ.set_result(result.pop("summaries"))
        return result

    def progress(self, name: str) -> tuple[float, float | None] | None:
        """While a recording's analysis pass runs: (fraction done, seconds left or None
        while too early to say); None when no pass runs (not started, cached or done)."""
        with self._lock:
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
        def compute() -> np.ndarray:
            rec = self.recording(name)
            df = rec.features([feature])
            return df[feature].to_numpy(dtype=np.float32)
        return self._kept(self._features, (name, feature), compute)

    def feature_if_kept(self, name: str, feature: str) -> np.ndarray | None:
        """``feature(name, feature)`` if it is already computed, else None (no work)."""
        with self._lock:
            key = (name, feature)
            return self._features.get(key) if key in self._features else None

    def features(self, name: str):
        """Every feature over the whole recording, one DataFrame [T, features]."""
        def compute():
            rec = self.recording(name)
            return rec.features()
        return self._kept(self._frames, name, compute)

    def background(self, key: tuple, work: Callable[..., object], *args) -> Future:
        """``work(*args)`` run once in the background thread every session shares, for
        ``key``: later calls with the same key get the same future (while it is kept: the
        last ``JOBS`` keys). For work a tab starts and other sessions may want too."""
        with self._lock:
            if key not in self._jobs:
                self._jobs.put(key, self._background.submit(work, *args))
            return self._jobs.get(key)

    def model(self, name: str):
        """(model, note) to run typed text through, for this recording; note may be ''."""
        return self._kept(self._models, name, lambda: for_recording(self.recording(name)))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._background.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for cache in (self._held, self._columns, self._fallback, self._features, self._frames,
                          self._models, self._jobs):
                cache.clear()
            recordings = self._recordings.values()
            self._recordings.clear()
        for rec in recordings:
            rec.close()


def _nbytes(array: np.ndarray) -> int:
    return int(array.nbytes)


def store_for(doc) -> Store:
    """The server's shared Store (see app_hooks), or a private one outside a server."""
    ctx = doc.session_context
    store = getattr(ctx.server_context, "cells", None) if ctx is not None else None
    return store if store is not None else Store.for_folder(parse_args(sys.argv[1:]).recordings)
