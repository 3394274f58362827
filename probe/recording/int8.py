"""int8 streams: per unit, a code (-128..127) indexes a codebook of 256 values (the
dataset's float32 attribute ``codebook`` [units, 256]), bins cut so that order and range
are both kept (``codebook``)."""
from __future__ import annotations

import numpy as np

INT8_LEVELS = 256
INT8_OFFSET = 128  # code + 128 = the column of the codebook


def codebook(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, from a float16 sample [n, units] of its values: ``lut`` [units, 65536] (int8),
    the code of every float16 bit pattern, and ``values`` [units, 256] (float32), what the
    reader returns for a code: the mean of the sample values in its bin (an empty bin: its
    lower edge). The 255 cuts between bins are the union of 127 cuts into equal counts and
    128 into equal widths, so no bin holds more than 1/128 of a unit's values (their order,
    what AUC reads, is kept where they crowd) nor spans more than 1/129 of its range (what
    correlations read, in the tails)."""
    sample = np.asarray(sample, np.float16)
    s = np.sort(sample.astype(np.float64), axis=0)
    n, U = s.shape
    half = INT8_LEVELS // 2
    by_count = s[(np.arange(1, half) * n) // half].T  # [U, 127]
    lo, hi = s[0], s[-1]
    by_width = lo[:, None] + (hi - lo)[:, None] * (np.arange(1, half + 1) / (half + 1))  # [U, 128]
    edges = np.sort(np.concatenate([by_count, by_width], axis=1), axis=1)  # [U, 255]
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)  # all bit patterns
    every = np.where(np.isnan(every), 0.0, every)  # NaN is never recorded; code it as 0 would be
    order = np.argsort(every, kind="stable")
    lut = np.empty((U, 1 << 16), np.int8)
    for u in range(U):  # sorted queries: fast
        lut[u, order] = np.searchsorted(edges[u], every[order], side="right") - INT8_OFFSET
    idx = encode(sample, lut).astype(np.int64) + INT8_OFFSET + np.arange(U) * INT8_LEVELS
    vals = sample.astype(np.float64).ravel()
    sums = np.bincount(idx.ravel(), weights=vals, minlength=U * INT8_LEVELS).reshape(U, INT8_LEVELS)
    counts = np.bincount(idx.ravel(), minlength=U * INT8_LEVELS).reshape(U, INT8_LEVELS)
    lower = np.concatenate([lo[:, None], edges], axis=1)  # [U, 256]
    values = np.where(counts > 0, sums / np.maximum(counts, 1), lower)
    return lut, values.astype(np.float32)


def encode(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """int8 codes [n, units] of float16 values: each looked up in its unit's row of ``lut``
    (values beyond the sample's range fall in the outer bins)."""
    idx = np.ascontiguousarray(values, dtype=np.float16).view(np.uint16).astype(np.int32)
    idx += np.arange(lut.shape[0], dtype=np.int32) << 16  # row u of the flat table
    return np.take(lut.reshape(-1), idx)


def decode(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float32 values of int8 codes; ``values`` is the codebook of the codes' units,
    [units, 256] for codes [n, units], or [256] for one unit's codes [n]."""
    idx = codes.astype(np.int64) + INT8_OFFSET
    if values.ndim == 1:
        return values[idx]
    return values[np.arange(values.shape[0]), idx] if idx.ndim == 1 else \
        np.take_along_axis(values.T, idx, axis=0)
