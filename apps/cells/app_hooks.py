"""Server hooks: find (or make) the recordings once, shared by every session.

    bokeh serve apps/cells --args --recordings DIR     (default: recordings/ beside apps/)
"""
import sys
from pathlib import Path

import torch

from .store import Store, ensure_default, parse_args

ARGV = sys.argv[1:]  # Bokeh sets sys.argv to the --args while this module runs, not later


def on_server_loaded(server_context):
    # one thread: recording and live text run one character per step, where extra threads
    # only add synchronisation (and stall badly when other programs share the cores)
    torch.set_num_threads(1)
    args = parse_args(ARGV)
    message = ensure_default(Path(args.recordings))
    store = Store.from_argv(ARGV)
    store.message = store.message if message is None else message
    server_context.cells = store


def on_server_unloaded(server_context):
    store = getattr(server_context, "cells", None)
    if store is not None:
        store.close()
