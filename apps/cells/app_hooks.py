"""Server hooks: read the arguments, make the default recording if the folder has none, and
open the store every session shares.

    bokeh serve apps/cells --args --recordings DIR     (default: recordings/ beside apps/)
"""
import sys
from pathlib import Path

import torch

from probe.errors import ProbeError
from probe.lm.model import load_model
from probe.recording.record import record
from probe.text.corpus import stdlib

from .store import DEFAULT_CHARS, DEFAULT_NAME, Store, is_recording_file, parse_args

ARGV = sys.argv[1:]  # Bokeh sets sys.argv to the --args while this module runs, not later


def on_server_loaded(server_context):
    # one thread: recording and live text run one character per step, where extra threads
    # only add synchronisation (and stall badly when other programs share the cores)
    torch.set_num_threads(1)
    folder = Path(parse_args(ARGV).recordings)
    server_context.cells = Store.for_folder(folder, ensure_default(folder))


def on_server_unloaded(server_context):
    store = getattr(server_context, "cells", None)
    if store is not None:
        store.close()


def ensure_default(folder: Path) -> str | None:
    """Record the shipped model over the first ``DEFAULT_CHARS`` characters of the stdlib
    test split into ``folder/DEFAULT_NAME`` if the folder has no recordings (about 30 s).

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
