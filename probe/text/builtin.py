"""The built-in features of a text of many documents, computed all at once with numpy.

Lexical features (strings, comments, brackets, preprocessor lines) come from each
document's lexer (``LEXERS``: ``c_lexer``, ``python_lexer``), brackets counted outside
strings and comments and clamped at 0; line features (``column``, ``line_length``,
``chars_to_eol``, ``indent``) from the newlines, a line also starting at every document
start. ``features.compute`` is the entry point; the conventions are in its module.
"""
from __future__ import annotations

import numpy as np

from probe.text.c_lexer import spans_c
from probe.text.python_lexer import spans_plain, spans_python
from probe.text.spans import mask

BRACKET_STEP = np.zeros(128, dtype=np.int8)  # code points >= 127 all map to entry 127: 0
BRACKET_STEP[[ord(c) for c in "([{"]] = 1
BRACKET_STEP[[ord(c) for c in ")]}"]] = -1


def clamped_depth(steps: np.ndarray) -> np.ndarray:
    """Running sum of +1/-1 steps that never goes below 0 (d[i] = max(0, d[i-1] + s[i])).

    With c the plain cumulative sum, the clamped sum is c - min(0, min(c[:i+1])): every
    time c reaches a new minimum below 0 an unmatched closer was dropped.
    """
    c = np.cumsum(steps, dtype=np.int64)
    return c - np.minimum(np.minimum.accumulate(c), 0) if c.size else c


def line_features(codes: np.ndarray, doc_starts: np.ndarray) -> dict[str, np.ndarray]:
    """column, line_length, chars_to_eol and indent; a line also starts at every document start."""
    n = codes.size
    newline = codes == 10
    is_start = np.zeros(n + 1, dtype=bool)
    is_start[np.flatnonzero(newline) + 1] = True
    is_start[doc_starts] = True
    is_start[0] = True
    starts = np.flatnonzero(is_start[:n])
    nexts = np.append(starts[1:], n)  # where the following line starts
    last = nexts - 1  # the line's last character: its newline, if it has one
    ends = np.where(newline[last], last, nexts)  # end of its content (exclusive)
    blank = (codes == 32) | (codes == 9)
    nonblank = np.append(np.flatnonzero(~blank), n)  # n: sentinel for a blank last line
    first = np.minimum(nonblank[np.searchsorted(nonblank, starts)], ends)
    sizes = nexts - starts

    def per_line(v: np.ndarray) -> np.ndarray:
        return np.repeat(v.astype(np.int32), sizes)

    col = np.arange(n, dtype=np.int32) - per_line(starts)
    length = per_line(ends - starts)
    return {"column": col, "line_length": length, "chars_to_eol": length - col,
            "indent": per_line(first - starts)}


LEXERS = {"c": spans_c, "python": spans_python, "plain": spans_plain}


def lexical_features(text: str, bounds: list[tuple[int, int]], codes: np.ndarray,
                      languages: list[str]) -> dict[str, np.ndarray]:
    """String, comment, bracket and preprocessor features, lexing every document
    separately with the rules of its language."""
    spans: tuple[list, list, list, list] = ([], [], [], [])
    for (start, stop), language in zip(bounds, languages):
        for acc, doc_spans in zip(spans, LEXERS[language](text[start:stop])):
            acc.extend((a + start, b + start) for a, b in doc_spans)
    n = len(text)
    short, long, comment, pre = (mask(s, n) for s in spans)
    in_str = short | long
    steps = BRACKET_STEP[np.minimum(codes, 127)]
    steps[in_str | comment] = 0
    depth = np.empty(n, dtype=np.int32)
    for start, stop in bounds:
        depth[start:stop] = clamped_depth(steps[start:stop])
    return {
        "in_string": in_str.astype(np.int8),
        "in_short_string": short.astype(np.int8),
        "in_long_string": long.astype(np.int8),
        "in_comment": comment.astype(np.int8),
        "bracket_depth": depth,
        "preprocessor": pre.astype(np.int8),
    }
