"""HDF5's Fletcher-32 checksum, computed here because the recorder writes whole chunks itself."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from probe.compiled import (
    kernels as _kernels,  # None where not built: numpy does the same
)


def fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 checksum of a filtered chunk (H5_checksum_fletcher32, exactly):
    16-bit big-endian words, both sums folded mod 65535 with a positive sum never 0.
    The recorder writes its own chunks (``write_direct_chunk``), so it appends this itself;
    HDF5 checks it on every read."""
    if _kernels is not None:  # the same sums in C (probe/_kernels.c), ~5x faster
        return _kernels.fletcher32(data)
    return fletcher32_numpy(data)


def fletcher32_numpy(data: bytes) -> int:
    """``fletcher32`` in numpy: the reference (and the fallback without the C loops)."""
    n = len(data)
    words = np.frombuffer(data, dtype=">u2", count=n // 2)
    if len(words) <= 1 << 20:  # float64 sums of integers below 2**53 are exact
        w = words.astype(np.float64)
        s1 = int(w.sum())
        s2 = int(np.multiply(w, _weights(len(w)), out=w).sum())  # not a BLAS dot: no threads
    else:
        w = words.astype(np.int64)
        s1, s2 = int(w.sum()), int(np.dot(w, np.arange(len(w), 0, -1, dtype=np.int64)))
    if n % 2:
        s1 += data[-1] << 8
        s2 += s1

    def fold(s: int) -> int:
        return 0 if s == 0 else (s - 1) % 65535 + 1
    return (fold(s2) << 16) | fold(s1)


@lru_cache(maxsize=8)
def _weights(m: int) -> np.ndarray:
    """m, m-1, …, 1: word i is in m - i of the running sums that make the second sum."""
    return np.arange(m, 0, -1, dtype=np.float64)
