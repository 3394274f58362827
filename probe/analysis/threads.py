"""Threads and torch: how many a pass may use, and one torch thread while a scan runs.

A multi-threaded matrix product splits its sums differently with the thread count, so its
last bits would depend on the machine's cores. ``one_torch_thread`` pins torch to one
thread for as long as any scan (or fit) runs in this process, and restores the count after
the last: every scan, here or on a cluster worker, is then the same operations in the same
order. Scans still run side by side, one per Python thread (``threads=``).
"""
from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager

import numpy as np

from probe.errors import ProbeError

_lock = threading.Lock()
_users = [0, 1]  # scans running, torch's thread count before the first of them


@contextmanager
def one_torch_thread():
    """torch runs on one thread while any scan runs (restored after the last). Set in every
    thread that scans: OpenMP and MKL keep a thread count per calling thread."""
    import torch
    with _lock:
        if _users[0] == 0:
            _users[1] = torch.get_num_threads()
        torch.set_num_threads(1)
        _users[0] += 1
    try:
        yield
    finally:
        with _lock:
            _users[0] -= 1
            if _users[0] == 0:
                torch.set_num_threads(_users[1])


def check_threads(threads: int, workers: int | None = None, stacklevel: int = 3) -> int:
    """``threads`` checked (a whole number >= 1); ``workers``, its deprecated old name, wins
    if given, with a warning attributed to the caller of the public function."""
    if workers is not None:
        warnings.warn("detectors: workers= is deprecated, use threads= (Dask worker processes are "
                      "probe.analysis.cluster's)", DeprecationWarning, stacklevel=stacklevel)
        threads, name = workers, "workers"
    else:
        name = "threads"
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ProbeError(f"{name} must be at least 1, got {threads}")
    return int(threads)
