"""Cutting one text into N shards: which documents the I-th of N records.

``probe record … --shard I/N`` records the I-th of N contiguous parts of the text, whole
documents each, balanced by characters (``split``, ``take``); ``probe.recording.shards``
reads the N files back as one recording. Pure functions of the document lengths, so any
process (a cluster worker recording or scoring one shard) computes the same parts.
"""
from __future__ import annotations

import re

import numpy as np

from probe.errors import ProbeError

KEY = "shard"  # the entry of a shard's ``source`` attribute that says which part it is
SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")



def parse_spec(spec: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): the I-th (1-based) of N shards; a one-line ProbeError otherwise."""
    m = SPEC.fullmatch(str(spec))
    if not m:
        raise ProbeError(f"--shard must be I/N with whole numbers (like 2/4: the second of four parts), "
                         f"got {spec!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise ProbeError(f"--shard {spec}: the number of shards N must be at least 1")
    if not 1 <= index <= count:
        raise ProbeError(f"--shard {spec}: there is no shard {index} of {count} (shards are numbered "
                         f"1/{count} to {count}/{count})")
    return index, count


def split(lengths: list[int], n: int) -> list[tuple[int, int]]:
    """Document index ranges [d0, d1) of ``n`` contiguous parts of documents with these
    ``lengths`` (characters), balanced by characters: boundary j is the document boundary
    nearest to j/n of the text, kept strictly increasing so every part holds at least one
    document. Together the parts cover every document once, in order."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ProbeError(f"the number of shards must be a whole number >= 1, got {n!r}")
    lengths = [int(x) for x in lengths]
    if any(x < 0 for x in lengths):
        raise ProbeError("document lengths must be >= 0")
    D = len(lengths)
    if D < n:
        raise ProbeError(f"cannot split {D} document{'s' if D != 1 else ''} into {n} shards: each shard "
                         f"holds whole documents (use at most {D} shards)")
    cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # cum[k]: characters before document k
    total = int(cum[-1])
    bounds = [0]
    for j in range(1, n):
        target = total * j / n
        k = int(np.searchsorted(cum, target))  # cum[k - 1] < target <= cum[k]
        if k > 0 and target - cum[k - 1] <= cum[k] - target:
            k -= 1  # the nearer boundary (the earlier one on a tie)
        lo, hi = bounds[-1] + 1, D - (n - j)   # room for one document in this and every later part
        bounds.append(min(max(k, lo), hi))
    bounds.append(D)
    return list(zip(bounds[:-1], bounds[1:]))


def take(documents: list[tuple[str, str]], source: dict, index: int, count: int
         ) -> tuple[list[tuple[str, str]], dict]:
    """What ``probe record --shard index/count`` records: the documents of that part (empty
    documents dropped first, as ``record`` drops them) and ``source`` with a ``shard`` entry
    saying where the part sits in the whole text."""
    documents = [(n, t) for n, t in documents if t]
    lengths = [len(t) for _, t in documents]
    d0, d1 = split(lengths, count)[index - 1]
    info = {"index": index, "count": count, "start": sum(lengths[:d0]), "length": sum(lengths),
            "documents": [d0, d1], "total_documents": len(documents)}
    return documents[d0:d1], {**source, KEY: info}
