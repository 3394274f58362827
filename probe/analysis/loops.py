"""The per-value inner loops of a scan, over float16 bit patterns: compiled, or numpy.

A scan reads every value of a stream once; the two loops that touch each value — float16
to float32 (with the per-unit sum of squares about a shift) and histogram counts — run
in C (``probe/_kernels.c``, ``probe.compiled``) when it was built, else in numpy (the
reference the tests compare them with). ``kernels`` is the compiled module or None: set it
to None to take the numpy path.
"""
from __future__ import annotations

import numpy as np

from probe.compiled import kernels  # None where not built: numpy does the same
from probe.recording import h5format

AUC_BINS = 2048           # histogram bins per unit for AUC (ties within a bin count half)
HIST_UNITS = 32           # units histogrammed together (counts of a block fit in cache)
COMPILED = kernels is not None  # the C loops were built

# the float32 value of every float16 bit pattern
FLOAT16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty`` whose data starts on a 64-byte boundary. The float32 products of Σx·f
    (MKL through torch) may round differently for differently aligned inputs, and where a
    plain allocation lands depends on the heap's history: aligned inputs make the sums the
    same in every process (this one, or a cluster worker)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def bin_table(stream: str, bins: int = AUC_BINS) -> np.ndarray:
    """Histogram bin of every float16 bit pattern (a monotonic map of the value).

    Gates use their [0, 1] range, g and h [-1, 1]; unbounded streams (c) are squashed by
    x / (1 + |x|) first: like tanh it is monotonic (AUC only depends on order), but it
    does not round every |c| > 9 to 1.0 in float32, which would tie all large values.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        v = FLOAT16.astype(np.float64)  # (NaN patterns cast with a warning; they land in bin 0)
        if h5format.RANGE.get(stream) is not None:
            lo, hi = h5format.RANGE[stream]
        else:
            v = np.where(np.isinf(v), np.sign(v), v / (1 + np.abs(v)))
            lo, hi = -1.0, 1.0
        b = np.floor((v - lo) / (hi - lo) * bins)
    return np.nan_to_num(np.clip(b, 0, bins - 1), nan=0.0).astype(np.intp)


def count_bins_numpy(codes: np.ndarray, pattern: np.ndarray, lut: np.ndarray, hist: np.ndarray,
                     bins: int = AUC_BINS) -> None:
    """hist[u, pattern[t] * bins + lut[codes[t, u]]] += 1 for every row t and unit u.

    codes: float16 bit patterns [n, U]; pattern: int32 [n]; lut: int32 [65536] bin per
    bit pattern; hist: int64 [U, patterns * bins], updated in place. The reference
    for the compiled ``probe._kernels.histogram`` (same counts, about 4x slower).
    """
    U, width = hist.shape
    row_off = (pattern.astype(np.int32) * bins)[:, None]
    for u0 in range(0, U, HIST_UNITS):  # a block of units: its counts stay in cache
        u1 = min(u0 + HIST_UNITS, U)
        idx = lut[codes[:, u0:u1]] + row_off
        idx += np.arange(u1 - u0, dtype=np.int32) * width
        hist[u0:u1] += np.bincount(idx.ravel(), minlength=(u1 - u0) * width).reshape(u1 - u0, width)


def count_bins(codes: np.ndarray, pattern: np.ndarray, lut: np.ndarray, hist: np.ndarray,
               bins: int = AUC_BINS) -> None:
    """``count_bins_numpy``, by the compiled loop when it was built (pip builds it if it can)."""
    if kernels is None:
        count_bins_numpy(codes, pattern, lut, hist, bins)
    else:
        kernels.histogram(codes, pattern, lut, hist, bins)


def shifted(raw: np.ndarray, shift: np.ndarray, sumsq: np.ndarray, values: np.ndarray | None = None
            ) -> np.ndarray:
    """float32 ``raw - shift`` [n, U]; adds each unit's Σ(raw - shift)² to ``sumsq`` (float64);
    with ``values`` (float32 [n, U]) also writes the raw values there as float32, in the same
    pass (the per-unit summaries'). float16 chunks go through the compiled loop when built."""
    raw = np.ascontiguousarray(raw)
    x = aligned_empty(raw.shape, np.float32)
    if kernels is not None and raw.dtype == np.float16:
        if values is None:
            kernels.shifted(raw.view(np.uint16), FLOAT16, shift, x, sumsq)
        else:
            kernels.shifted(raw.view(np.uint16), FLOAT16, shift, x, sumsq, values)
        return x
    if values is not None:
        values[:] = raw
    import torch  # only when scoring float32 data or without the C loops
    torch.sub(torch.from_numpy(raw).float(), torch.from_numpy(shift),
              out=torch.from_numpy(x))  # torch converts float16 faster
    for r0 in range(0, len(x), 4096):  # float32 partial sums of 4096 rows, then float64
        xs = x[r0:r0 + 4096]
        sumsq += np.einsum("ij,ij->j", xs, xs)
    return x


def as_float32(raw: np.ndarray) -> np.ndarray:
    """float32 values [n, U] of a chunk (float16 through the compiled loop when built)."""
    if kernels is not None and raw.dtype == np.float16:
        raw = np.ascontiguousarray(raw)
        U = raw.shape[1]
        x = np.empty(raw.shape, np.float32)
        kernels.shifted(raw.view(np.uint16), FLOAT16, np.zeros(U, np.float32), x, np.zeros(U))
        return x
    return raw.astype(np.float32, copy=False)
