"""Data behind the dashboard: the recordings folder, shared once per server, and the view state.

A ``Store`` lives on ``server_context.cells`` (set in ``app_hooks.on_server_loaded``) so
every session shares its open recordings, analyses, feature arrays and models.
"""
from __future__ import annotations

import argparse
import re
import sys
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from probe import analysis, contexts, features
from probe.corpus import stdlib
from probe.errors import ProbeError
from probe.model import load_model
from probe.record import activations, record
from probe.recording import Recording, open_recording

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FOLDER = REPO / "recordings"
DEFAULT_NAME = "stdlib-test.h5"
DEFAULT_CHARS = 100_000
STREAMS = ("i", "f", "g", "o", "c", "h")
WINDOWS = (1000, 2000, 5000, 10000)
DEFAULT_WINDOW = 2000       # characters shown at first: fewer spans for the browser to draw
CONTEXT_WIDTH = 40         # characters either side of a card's context
COLUMN_CACHE_BYTES = 64 << 20  # recently shown cells, shared by all sessions
HELD_DATASETS = 4             # (layer, stream) datasets kept open, with their chunk caches
LIVE_LIMIT = 3000          # characters of typed text run through the model
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*\.h5")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``bokeh serve apps/cells --args --recordings DIR``."""
    p = argparse.ArgumentParser(prog="cells")
    p.add_argument("--recordings", default=str(DEFAULT_FOLDER), help="folder of .h5 recordings")
    return p.parse_known_args(argv)[0]


def is_recording_file(path: Path) -> bool:
    """A listed recording: ``*.h5`` in the folder, not hidden, not a cache written beside one."""
    return path.is_file() and not path.name.startswith(".") and ".analysis" not in path.name


class Store:
    """The recordings folder, with everything opened from it kept open and shared."""

    def __init__(self, folder: str | Path, message: str | None = None):
        self.folder = Path(folder)
        self.message = message  # a problem with the whole folder, shown instead of the views
        self._lock = threading.Lock()
        self._recordings: dict[str, Recording] = {}
        self._errors: dict[tuple[str, float], str] = {}
        self._analyses: dict[str, Future] = {}
        self._features: dict[tuple[str, str], np.ndarray] = {}
        self._models: dict[str, tuple] = {}
        self._columns: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._held: OrderedDict[tuple, object] = OrderedDict()  # open h5py datasets
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cells-analysis")

    @classmethod
    def from_argv(cls, argv: list[str]) -> "Store":
        folder = Path(parse_args(argv).recordings)
        store = cls(folder)
        if not folder.is_dir():
            store.message = f"The recordings folder {folder} does not exist."
        elif not store.names():
            store.message = (f"No recordings in {folder}. Make one with: probe record --out "
                             f"{folder / DEFAULT_NAME} --limit {DEFAULT_CHARS}")
        return store

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.glob("*.h5") if is_recording_file(p))

    def check_name(self, name: str) -> str:
        """A recording name from a URL: a plain file name that exists in the folder."""
        if not _PLAIN_NAME.fullmatch(name) or ".." in name:
            raise ProbeError(f"recording {name!r} is not a plain file name (like stdlib-test.h5) "
                             "in the recordings folder")
        if name not in self.names():
            raise ProbeError(f"no recording named {name!r} in {self.folder}")
        return name

    def default_name(self) -> str | None:
        """The recording a bare URL shows: stdlib-test.h5, else the first one that opens."""
        names = self.names()
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

    def column(self, name: str, layer: int, stream: str, unit: int) -> np.ndarray:
        """One cell over the whole recording, float32 [T], read-only; recent ones are kept."""
        key = (name, layer, stream, unit)
        with self._lock:
            if key in self._columns:
                self._columns.move_to_end(key)
                return self._columns[key]
        rec = self.recording(name)
        with self._lock:  # an open dataset keeps its HDF5 chunk cache: the next unit is a memory read
            self._held[(name, layer, stream)] = rec.stream(layer, stream)
            self._held.move_to_end((name, layer, stream))
            while len(self._held) > HELD_DATASETS:
                self._held.popitem(last=False)
        values = rec.unit(layer, stream, unit)  # [T]
        values.flags.writeable = False
        with self._lock:
            self._columns[key] = values
            while sum(v.nbytes for v in self._columns.values()) > COLUMN_CACHE_BYTES and len(self._columns) > 1:
                self._columns.popitem(last=False)
        return values

    def cached(self, name: str) -> "CachedRecording":
        return CachedRecording(self, name)

    def analysis(self, name: str) -> Future:
        """``analysis.analysis`` of a recording, computed once in a background thread."""
        with self._lock:
            if name not in self._analyses:
                path = self.folder / name
                self._analyses[name] = self._executor.submit(analysis.analysis, path)
            return self._analyses[name]

    def feature(self, name: str, feature: str) -> np.ndarray:
        """One per-character feature over the whole recording: [T]."""
        key = (name, feature)
        if key not in self._features:
            rec = self.recording(name)
            docs = rec.documents
            df = features.compute(rec.text, [feature], documents=list(
                zip(docs["start"].tolist(), docs["stop"].tolist())))
            self._features[key] = df[feature].to_numpy(dtype=np.float32)
        return self._features[key]

    def model(self, name: str):
        """(model, note) to run typed text through, for this recording; note may be ''."""
        if name not in self._models:
            self._models[name] = _model_for(self.recording(name))
        return self._models[name]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._held.clear()
        self._columns.clear()
        for rec in self._recordings.values():
            rec.close()
        self._recordings.clear()


class CachedRecording:
    """A Recording whose ``unit()`` reads come from the store's column cache, so the
    context helpers of ``probe.contexts`` do not read the same cell again."""

    def __init__(self, store: Store, name: str):
        self._store, self._name, self._rec = store, name, store.recording(name)

    def unit(self, layer, stream, unit, start=None, stop=None) -> np.ndarray:
        self._rec.check(layer, stream, unit)
        return self._store.column(self._name, int(layer), stream, int(unit))[start:stop]

    def __len__(self) -> int:
        return len(self._rec)

    def __getattr__(self, attr):
        return getattr(self._rec, attr)


def _model_for(rec: Recording):
    """The recording's own model if its file is still there, else the shipped one if it fits."""
    cfg = rec.model_config
    own = str(rec.file.attrs.get("model_path", ""))
    candidates = ([own] if own and Path(own).is_file() else []) + [None]
    for path in candidates:
        try:
            model = load_model(path)
        except ProbeError:
            continue
        if (model.vocab, model.layers, model.units) != (cfg.get("vocab"), cfg.get("layers"),
                                                         cfg.get("units")):
            continue
        note = ""
        if path is None and own:
            note = f"the recording's model {own} is missing; using the shipped model, which has the same shape."
        elif model.sha256 != str(rec.file.attrs.get("model_sha256", model.sha256)):
            note = f"{own} changed since the recording was made."
        return model, note
    raise ProbeError(f"{rec.path}: no model to run typed text: its checkpoint {own or '(unknown)'} is "
                     "missing and the shipped model has a different vocabulary or shape")


def ensure_default(folder: Path) -> str | None:
    """Record the shipped model over the stdlib test split if the folder has no recordings.

    Returns a message for the page when that is not possible, else None.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"Cannot create the recordings folder {folder}: {e.strerror}."
    if any(is_recording_file(p) for p in folder.glob("*.h5")):
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


# ---- view state ----------------------------------------------------------------------------
@dataclass
class Selection:
    """What the page shows; the same names as the URL query and the probe CLI."""

    recording: str | None = None
    layer: int = 0
    stream: str = "c"
    unit: int = 0
    start: int = 0
    window: int = DEFAULT_WINDOW
    feature: str = "in_string"

    def query(self) -> str:
        return urlencode({k: v for k, v in asdict(self).items() if v is not None})


def _arg(arguments: dict, key: str) -> str | None:
    vals = arguments.get(key)
    if not vals:
        return None
    v = vals[0]
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)


def _int(arguments: dict, key: str, problems: list[str]) -> int | None:
    v = _arg(arguments, key)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        problems.append(f"{key}={v!r} in the URL is not a whole number; ignored")
        return None


def from_query(arguments: dict, store: Store) -> tuple[Selection, list[str]]:
    """The selection a URL asks for, and a message for each part of it that was refused.

    Only the recording name is checked here; layer and unit are checked once it is open.
    """
    problems: list[str] = []
    sel = Selection()
    names = store.names()
    name = _arg(arguments, "recording")
    if name is not None:
        try:
            sel.recording = store.check_name(name)
        except ProbeError as e:
            problems.append(str(e))
    if sel.recording is None and names:
        sel.recording = store.default_name()
        if name is not None:
            problems[-1] += f"; showing {sel.recording} instead"
    stream = _arg(arguments, "stream")
    if stream is not None:
        if stream in STREAMS:
            sel.stream = stream
        else:
            problems.append(f"stream={stream!r} in the URL is not one of {' '.join(STREAMS)}; showing c")
    for key in ("layer", "unit", "start", "window"):
        v = _int(arguments, key, problems)
        if v is not None:
            setattr(sel, key, v)
    if sel.window not in WINDOWS:
        problems.append(f"window={sel.window} in the URL is not one of {WINDOWS}; showing {DEFAULT_WINDOW}")
        sel.window = DEFAULT_WINDOW
    feature = _arg(arguments, "feature")
    if feature is not None:
        sel.feature = feature  # checked against the feature list by the page
    return sel, problems


def fit(sel: Selection, rec: Recording) -> list[str]:
    """Clamp the selection into the open recording; a message for each change."""
    problems = []
    if not 0 <= sel.layer < rec.layers:
        problems.append(f"no layer {sel.layer} in {rec.path.name} (layers are 0..{rec.layers - 1}); "
                        "showing layer 0")
        sel.layer = 0
    if not 0 <= sel.unit < rec.units:
        problems.append(f"no unit {sel.unit} in {rec.path.name} (units are 0..{rec.units - 1}); "
                        "showing unit 0")
        sel.unit = 0
    if sel.stream not in rec.streams:
        sel.stream = rec.streams[0]
    sel.start = clamp_start(sel.start, sel.window, len(rec))
    return problems


def clamp_start(start: int, window: int, length: int) -> int:
    return int(max(0, min(start, max(0, length - window))))


def overview_bins(values: np.ndarray, bins: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, stop, mean) of ``bins`` equal slices of values [T]."""
    T = len(values)
    edges = np.unique(np.linspace(0, T, min(bins, T) + 1).astype(np.int64))
    sums = np.add.reduceat(np.nan_to_num(values.astype(np.float64)), edges[:-1])
    return edges[:-1], edges[1:], (sums / np.diff(edges)).astype(np.float32)


def store_for(doc) -> Store:
    """The server's shared Store (see app_hooks), or a private one outside a server."""
    ctx = doc.session_context
    store = getattr(ctx.server_context, "cells", None) if ctx is not None else None
    return store if store is not None else Store.from_argv(sys.argv[1:])


def card_contexts(store: Store, sel: Selection) -> tuple:
    """(top/bottom contexts, quantile samples, note) of the selected cell for its card."""
    try:
        rec = store.cached(sel.recording)
        top = contexts.top_contexts(rec, sel.layer, sel.stream, sel.unit, k=10, width=CONTEXT_WIDTH)
        quantiles = contexts.quantile_samples(rec, sel.layer, sel.stream, sel.unit, bins=5,
                                              per_bin=2, width=CONTEXT_WIDTH)
    except Exception as e:  # noqa: BLE001 - a failing card is shown on the page, not raised
        return None, None, f"contexts unavailable: {type(e).__name__}: {e}"
    return top, quantiles, ""


def run_live(model, text: str) -> dict:
    """Activations of typed text: {"text", "streams" {(layer, s): [n, units]}, "note"}."""
    notes = []
    if len(text) > LIVE_LIMIT:
        notes.append(f"only the first {LIVE_LIMIT:,} of {len(text):,} characters were run.")
        text = text[:LIVE_LIMIT]
    if not text:
        raise ProbeError("type some text first")
    unknown = sorted(set(text) - set(model.vocab))
    if unknown:
        notes.append(f"{len(unknown)} character(s) outside the model's vocabulary were read as "
                     f"unknown: {' '.join(repr(c) for c in unknown[:10])}")
    streams, _ = activations(model, text)
    return {"text": text, "streams": streams, "note": " ".join(notes)}
