"""Spans of a text and the masks they make: the lexers' common ground.

A lexer finds [start, stop) spans (of strings, comments…); ``mask`` turns non-overlapping
spans into one boolean per character. ``codepoints`` is the text as integers, for numpy.
"""
from __future__ import annotations

import numpy as np


def codepoints(text: str) -> np.ndarray:
    """The text's code points, uint32 [T]."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def mask(spans: list[tuple[int, int]], length: int) -> np.ndarray:
    """Boolean [length] array, True inside any of the non-overlapping [start, stop) spans."""
    edges = np.zeros(length + 1, dtype=np.int8)
    if spans:
        se = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        se = se[se[:, 1] > se[:, 0]]
        edges[se[:, 0]] += 1  # starts are distinct, and so are stops: no lost updates
        edges[se[:, 1]] -= 1
    return np.cumsum(edges[:-1], dtype=np.int8) > 0
