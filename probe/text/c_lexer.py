"""Literals, comments and preprocessor lines of C source: [start, stop) spans, then masks.

The rules ``features.compute`` applies to a C document (``languages=["c"]``, or a name
ending in ``.c`` or ``.h``), in the features' convention (the state *after reading* each
character; see ``probe.text.features``).

The rules:

- Line splices first, as in C (translation phase 2): a backslash and the newline after
  it join two lines wherever they are, in literals, comments, directives, even inside
  ``/*`` or ``*/``; blanks between the backslash and the newline are allowed, as gcc
  and clang allow them. The splice's two characters take the state of the character
  before them (they change nothing for a reader).
- ``"..."`` strings and ``'...'`` character literals are both ``in_short_string``
  (short quoted literals; prefixes such as ``L u U u8`` are outside like Python's). A
  backslash protects the next character, so ``'\\''`` is one literal; an unterminated
  literal ends at the end of its line (the newline outside), like Python's short
  strings; ``''`` is a literal (an empty, invalid one) closed by its second quote. C has
  no long strings: ``in_long_string`` is always 0.
- Comments: ``/* ... */`` may span lines; its ``/*`` is inside and the ``/`` of its
  ``*/`` outside (after reading it the reader is out, like after a closing quote);
  ``/*/`` does not close; an unterminated one runs to the end of the document.
  ``// ...`` runs to the end of its line, the newline outside (a backslash-newline
  continues it, being a splice). As with triple quotes, the first ``/`` is already
  inside although a reader cannot yet tell it opens a comment.
- Brackets count outside literals and comments, as in Python (preprocessor lines
  included: ``#define f(x) ((x) + 1)`` is balanced).
- ``preprocessor``: a ``#`` outside comments and literals opens a directive when only
  blanks (space, tab, form feed, vertical tab) and comments come before it on its line
  (``/* x */ #define A`` is one: a comment is a blank in C). The directive runs from the
  start of that line through every line spliced to it (and through the lines of a
  ``/* */`` comment inside it, as in C) to its final newline (0). Strings and comments
  inside a directive keep their own features.
- Not special: trigraphs (off in gcc's and clang's default GNU modes), C23 digit
  separators (``1'000``), ``#if 0`` blocks (lexed like code), ``#include <...>`` (the
  header name is not a string). Checked against clang's lexer on Linux kernel sources:
  see ``docs/c-lexer.md`` and ``bench/c_lexer.py``.
"""
from __future__ import annotations

import re

import numpy as np

from probe.text.spans import codepoints, mask

# C: group 1 a // comment, 2 a /* */ comment (3 its closing '/', set only when closed),
# 4 a '...' or "..." literal (5, 6 the closing quotes). It runs on the text after line
# splicing (C_SPLICE removed), so a newline always ends a line there; in a literal a
# backslash protects the next character but not a newline (an unterminated literal).
# Unrolled loops as for Python.
C_ESC = r"\\[^\n]?"
C_TOKEN = re.compile(
    r"(//[^\n]*)"
    r"|(/\*[^*]*(?:\*+[^*/][^*]*)*\**(?:(/)|\Z))"
    r"|('[^'\\\n]*(?:" + C_ESC + r"[^'\\\n]*)*(?:(')|(?=\n)|\Z)"
    r'|"[^"\\\n]*(?:' + C_ESC + r'[^"\\\n]*)*(?:(")|(?=\n)|\Z))'
)
# C's translation phase 2: a backslash and a newline are deleted, joining the lines. As
# gcc and clang do, blanks between the backslash and the newline are allowed (and a \r).
C_SPLICE = re.compile(r"\\[ \t\f\v]*\r?\n")
C_BLANK = np.zeros(128, dtype=bool)  # blanks that may come before a directive's '#'
C_BLANK[[ord(c) for c in " \t\f\v"]] = True


def spans_c(text: str) -> tuple[list, list, list, list]:
    """[start, stop) spans of short literals, long strings (none), comments and
    preprocessor lines of C text.

    As in C, line splices (backslash-newline) are removed first and the joined text is
    lexed (``spans_c_joined``); its spans are then carried back to the text. A splice
    takes the state of the character before it (it changes nothing for the reader), so
    a span [a, b) of the joined text covers the text from its character a to its
    character b, the splices between them included; but a directive starts at its
    line's start, before any splices there (like the blanks before its ``#``).
    """
    splices = [m.span() for m in C_SPLICE.finditer(text)] if "\\" in text else []
    if not splices:
        return spans_c_joined(text)
    bounds = [0, *(x for span in splices for x in span), len(text)]
    joined = "".join(text[a:b] for a, b in zip(bounds[::2], bounds[1::2]))
    se = np.asarray(splices, dtype=np.int64)
    removed = np.cumsum(se[:, 1] - se[:, 0])  # characters removed up to each splice's end
    at = se[:, 0] - np.r_[0, removed[:-1]]  # the joined character each splice comes before
    shift = np.r_[0, removed]
    out = []
    for kind, spans in enumerate(spans_c_joined(joined)):
        if spans:
            j = np.asarray(spans, dtype=np.int64)
            side = "left" if kind == 3 else "right"  # a directive takes the splices before it
            starts = j[:, 0] + shift[np.searchsorted(at, j[:, 0], side=side)]
            stops = j[:, 1] + shift[np.searchsorted(at, j[:, 1], side="right")]
            spans = list(zip(starts.tolist(), stops.tolist()))
        out.append(spans)
    return tuple(out)  # type: ignore[return-value]


def spans_c_joined(text: str) -> tuple[list, list, list, list]:
    """``spans_c`` of a text without line splices.

    A literal's closing quote and a block comment's closing ``/`` are left out, like a
    line comment's newline (the state after reading each character). A ``#`` outside
    comments and literals opens a directive when nothing but blanks and comments comes
    before it on its line (comments are blanks in C: ``/* x */ #define A`` is one; a
    comment that holds a newline joins its lines). The directive runs from the start of
    that line to the first newline after its ``#`` that is not inside a comment or a
    literal (so a ``/* */`` comment may carry it over several lines); that newline is out.
    """
    short: list = []
    comment: list = []
    whole: list = []  # the comments, a block comment's closing '/' included
    for m in C_TOKEN.finditer(text):
        start, stop = m.span()
        kind = m.lastindex
        if kind == 1:
            comment.append((start, stop))
            whole.append((start, stop))
        elif kind == 2:
            comment.append((start, stop - (m.start(3) >= 0)))
            whole.append((start, stop))
        else:
            short.append((start, stop - (m.start(5) >= 0 or m.start(6) >= 0)))
    directives: list = []
    if "#" in text:
        n = len(text)
        codes = codepoints(text)
        comments = mask(whole, n)
        inside = mask(short, n) | comments
        hashes = np.flatnonzero((codes == 35) & ~inside)
        # the last character before each '#' that is neither a blank nor in a comment
        # (a literal there is a token: it is not skipped)
        seen = np.flatnonzero(~(C_BLANK[np.minimum(codes, 127)] | comments))
        k = np.searchsorted(seen, hashes) - 1
        before = np.where(k >= 0, seen[np.maximum(k, 0)], -1)
        first = (before < 0) | (codes[np.maximum(before, 0)] == 10)
        first &= np.append(codes, 0)[hashes + 1] != 35  # "##" is another token
        starts = before[first] + 1
        if starts.size:
            newline = np.flatnonzero((codes == 10) & ~inside)
            ends = np.append(newline, n)
            stops = ends[np.searchsorted(ends, hashes[first])]
            directives = list(zip(starts.tolist(), stops.tolist()))
    return short, [], comment, directives


def lex_c(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (in_short_string, in_long_string, in_comment, preprocessor) of C
    source; ``in_long_string`` is all False (C has no long strings).

    >>> short, long, comment, pre = lex_c("#define A '/' /* x */\\nA")
    >>> short.astype(int).tolist()[10:]
    [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    >>> comment.astype(int).tolist()[10:]
    [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    >>> pre.astype(int).tolist()
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    """
    return tuple(mask(s, len(text)) for s in spans_c(text))  # type: ignore[return-value]
