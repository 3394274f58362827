"""Writing files safely: the overwrite check, a temporary name renamed into place when
complete, and Ctrl-C / SIGTERM turned into a clean stop.

    check_target(out, force)              # one-line errors before any slow work
    with atomic(out) as tmp:              # write tmp; renamed to out only on success
        ...
    with interrupts() as stop:            # stop.is_set() after Ctrl-C or SIGTERM
        ...

Every command that writes (train, record, render, export-lstmvis, the analysis cache)
goes through these, so none leaves a half-written file at the target path and none
replaces what a user has without ``--force``.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from probe.errors import ProbeError


def temporary(out: Path) -> Path:
    """The hidden name a file is written under before it is complete: ``.NAME.tmp-PID``."""
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def existing_folder(out: Path) -> Path:
    """The nearest folder above ``out`` that exists (``atomic`` creates the ones below it)."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def check_target(out: str | os.PathLike, force: bool = False, folder: bool = False) -> Path:
    """Refuse a target that cannot or must not be written, with a one-line error. Missing
    folders above it are fine: ``atomic`` creates them when the file is written.

    ``folder``: the target is a folder (replaced only when ``force`` or empty)."""
    out = Path(out)
    base = existing_folder(out)
    if not base.is_dir():
        raise ProbeError(f"{out}: cannot create a folder inside {base}: it is a file")
    if not os.access(base, os.W_OK):
        raise ProbeError(f"{base}: output folder is not writable")
    if folder:
        if out.exists() and not out.is_dir():
            raise ProbeError(f"{out}: is a file, not a folder")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ProbeError(f"{out}: folder exists and is not empty; pass --force to overwrite")
    else:
        if out.is_dir():
            raise ProbeError(f"{out}: is a folder; give a file name")
        if out.exists() and not force:
            raise ProbeError(f"{out}: already exists; pass --force to overwrite")
    return out


@contextmanager
def atomic(out: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; rename it to ``out`` if the block succeeds.
    Missing folders above ``out`` are created first.

    The temporary is removed whatever happens, so only ``kill -9`` can leave one (hidden,
    never at ``out``). With ``folder`` the temporary is an empty folder and an existing
    ``out`` folder is replaced."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(out)
    if folder:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        yield tmp
        if folder and out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextmanager
def interrupts(raising: bool = False) -> Iterator[threading.Event]:
    """Catch Ctrl-C and SIGTERM (even in a background job started with SIGINT ignored).

    By default they only set the yielded event, which the caller checks between steps:
    an exception raised at an arbitrary point inside h5py could be swallowed. With
    ``raising`` they raise KeyboardInterrupt at once (for loops that save state on it).
    The old handlers come back on exit; outside the main thread nothing changes."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    handler = signal.default_int_handler if raising else (lambda *_: stop.set())
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
