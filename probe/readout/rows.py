"""Which positions a read-out learns from and is scored on, and reading them cheaply.

A read-out is scored on held-out text that looks like the rest: ``split_positions`` holds
out long contiguous pieces from all over the recording. Training rows are sampled in
blocks, because contiguous reads of a compressed recording are cheap and scattered single
rows are not: ``sample_from`` (aligned blocks of 256 positions, for probes and directions)
and ``gather`` (whole HDF5 chunk rows in random order, for a dictionary's stream of
training chunks). ``runs`` and ``read_rows`` read sorted rows run by run.
"""
from __future__ import annotations

import numpy as np

from probe.recording import derived, h5format


def split_positions(T: int, held_out: float = 0.2, segments: int = 50, min_segment: int = 2048,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held_out) over T positions for a probe.

    The text is cut into about ``segments`` equal contiguous pieces (each at least
    ``min_segment`` characters) and a random ``held_out`` fraction of them is held out, so
    the held-out part samples the whole recording (one contiguous tail would be a few files
    only: their style, not the model, would decide the score). Characters next to a
    boundary share context with the other side; with pieces thousands of characters long
    that touches well under 1 % of them.
    """
    n = int(np.clip(T // min_segment, 1, segments))
    if n < 2:  # too short to cut: fall back to a contiguous tail
        cut = int(round(T * (1 - held_out)))
        test = np.arange(T) >= cut
        return ~test, test
    edges = np.linspace(0, T, n + 1).round().astype(int)
    m = min(n - 1, max(1, int(round(n * held_out))))
    chosen = np.random.default_rng(seed).choice(n, m, replace=False)
    test = np.zeros(T, dtype=bool)
    for j in chosen:
        test[edges[j]:edges[j + 1]] = True
    return ~test, test


def sample_from(mask: np.ndarray, n: int, rng: np.random.Generator, block: int = 256) -> np.ndarray:
    """About ``n`` sorted positions where ``mask`` holds: all of them if few, else random
    aligned blocks of ``block`` (contiguous reads are cheap; scattered single rows are not)."""
    idx = np.flatnonzero(mask)
    if len(idx) <= n:
        return idx
    nb = len(mask) // block
    full = mask[:nb * block].reshape(nb, block).all(axis=1)  # blocks wholly inside the part
    blocks = np.flatnonzero(full)
    m = -(-n // block)
    if len(blocks) < m:
        return np.sort(rng.choice(idx, n, replace=False))
    starts = np.sort(rng.choice(blocks, m, replace=False)) * block
    return (starts[:, None] + np.arange(block)).reshape(-1)


def runs(rows: np.ndarray, most: int | None = None) -> list[tuple[int, int, int]]:
    """(start, stop, index of start in ``rows``) of the contiguous runs of sorted ``rows``,
    each at most ``most`` long (None: whole runs)."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    out = []
    for i, j in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
        step = most or j - i
        for a in range(i, j, step):
            b = min(a + step, j)
            out.append((int(rows[a]), int(rows[b - 1]) + 1, a))
    return out


def read_rows(ds, rows: np.ndarray) -> np.ndarray:
    """ds[rows] for sorted ``rows``, as float32, read run by run."""
    return np.concatenate([np.asarray(ds[a:b], dtype=np.float32) for a, b, _ in runs(rows)])


def chunk_blocks(mask: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, rows of the part) of every aligned block holding some of ``mask``."""
    starts = np.arange(0, len(mask), block)
    counts = np.add.reduceat(mask.astype(np.int64), starts) if len(mask) else np.zeros(0, np.int64)
    keep = counts > 0
    return starts[keep], counts[keep]


def gather(rec, inputs, mask: np.ndarray, n: int, rng: np.random.Generator,
           block: int = h5format.CHUNK_T) -> np.ndarray:
    """``n`` rows of the part ``mask`` (all of it if smaller), shuffled, as
    ``derived.read_inputs`` gives them: whole aligned blocks are read in random order (one
    HDF5 chunk row each, cheap) until there are enough rows, so the memory is about n + one
    block whatever the length."""
    starts, counts = chunk_blocks(mask, block)
    order = rng.permutation(len(starts))
    take = order[:int(np.searchsorted(np.cumsum(counts[order]), n) + 1)]
    parts = []
    for j in np.sort(take):
        a = int(starts[j])
        b = min(a + block, len(mask))
        x = derived.read_inputs(rec, inputs, a, b)
        parts.append(x[mask[a:b]])
    x = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return x[rng.permutation(len(x))[:n]]
