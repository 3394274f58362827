"""Strings and comments of Python source and of plain text: [start, stop) spans, then masks.

Python and plain text are the two rules of ``features.compute``'s ``python=`` flag; the
spans follow the features' convention (the state *after reading* each character: an
opening quote is inside, the closing quote outside; see ``probe.text.features``).

Lexing modes (``python=``):

- ``True`` or ``None`` (the default, "auto": Python rules): single, double and
  triple quotes; backslash escapes (a backslash always protects the next character, in
  raw strings too, as in Python; backslash-newline continues a short string); prefixes
  r b f u rb br fr rf in any case, outside like anything before the opening quote (so
  the lexer need not recognise them); ``#`` comments outside strings.
  Never fails on arbitrary text: an unterminated short string ends at the end of its
  line, an unterminated triple-quoted string runs to the end of the document. f-strings
  are ordinary strings (no nested same-kind quotes as in Python 3.12).
- ``False`` (plain text, prose or other languages): a ``"`` pairs with the next
  unescaped ``"`` on the same line; a ``'`` opens only when not preceded by a letter,
  digit or underscore (so ``don't`` opens nothing) and closes at the next ``'`` on the
  line that is not followed by one (so ``'it's'`` is one string). A quote without a
  partner on its line is just a character. As in Python mode the opening quote is
  inside and the closing one outside. All such strings are short; there are no
  comments (``in_comment`` is all 0: use a regex feature, e.g.
  ``{"c_comment": r"/\\*[\\s\\S]*?\\*/|//.*"}``). Brackets count outside strings.
"""
from __future__ import annotations

import re

import numpy as np

from probe.text.spans import mask

# Python: the leftmost '#' or quote starts a token; group 1 comment, 2 long, 5 short
# string; groups 3, 4, 6, 7 are the closing quotes, set only when the literal is closed
# (an unterminated one ends at its line's end or the document's end instead). Loops are
# "unrolled" ([^q\\]*(?:\\.[^q\\]*)*) so the engine never backtracks.
ESC = r"\\(?:\r\n|[\s\S]|\Z)"  # a backslash protects the next character (a newline too)
PY_TOKEN = re.compile(
    r"(#[^\n]*)"
    r"|('''[^'\\]*(?:(?:" + ESC + r"|'(?!''))[^'\\]*)*(?:(''')|\Z)"
    r'|"""[^"\\]*(?:(?:' + ESC + r'|"(?!""))[^"\\]*)*(?:(""")|\Z))'
    r"|('[^'\\\n]*(?:" + ESC + r"[^'\\\n]*)*(?:(')|(?=\n)|\Z)"
    r'|"[^"\\\n]*(?:' + ESC + r'[^"\\\n]*)*(?:(")|(?=\n)|\Z))'
)
CLOSERS = (3, 4, 6, 7)

# Plain text: pairs of quotes on one line; unpaired quotes match nothing.
PLAIN_TOKEN = re.compile(
    r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
    r"|(?<!\w)'[^'\\\n]*(?:(?:\\.|'(?=\w))[^'\\\n]*)*'(?!\w)"
)


def spans_python(text: str) -> tuple[list, list, list, list]:
    """[start, stop) spans of short strings, long strings, comments and preprocessor
    lines (none) of Python text.

    A string's span runs from its first opening quote to its last closing quote,
    exclusive (the state after reading each character; see the module docstring).
    Prefix letters need no handling: the token starts at the quote, and the letters
    before it are outside anyway.
    """
    spans: tuple[list, list, list, list] = ([], [], [], [])  # short, long, comment, none
    for m in PY_TOKEN.finditer(text):
        start, stop = m.span()
        kind = m.lastindex
        if kind == 1:
            spans[2].append((start, stop))
        else:
            closed = any(m.start(g) >= 0 for g in CLOSERS)
            spans[0 if kind == 5 else 1].append((start, stop - closed))
    return spans


def spans_plain(text: str) -> tuple[list, list, list, list]:
    """[start, stop) spans of the quoted parts of plain text (all short; no comments, no
    preprocessor lines).

    Every match is a closed pair of quotes: the closing quote is left out.
    """
    return [(a, b - 1) for a, b in (m.span() for m in PLAIN_TOKEN.finditer(text))], [], [], []


def lex_python(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (in_short_string, in_long_string, in_comment) of Python source.

    >>> short, long, comment = lex_python("s = 'a#' # c")
    >>> short.astype(int).tolist()
    [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    >>> comment.astype(int).tolist()
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    """
    return tuple(mask(s, len(text)) for s in spans_python(text)[:3])  # type: ignore[return-value]


def lex_plain(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (in_short_string, in_long_string, in_comment) of plain text.

    >>> lex_plain("don't 'go'")[0].astype(int).tolist()
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    """
    return tuple(mask(s, len(text)) for s in spans_plain(text)[:3])  # type: ignore[return-value]
