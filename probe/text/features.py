"""Per-character features of a text: one number per character, aligned with it.

A feature maps a text of T characters to an array of T values, the "ground truth" to
hold a cell's activations against (a cell that is on inside strings, one that counts
brackets). Binary features are 0/1 (int8); the others are counts (int32).

The convention, the same for every feature: the value at character t describes the
state *after reading* character t (what a reader that has just read it can know).

- Strings: from the opening quote on the reader is inside; the literal's last
  character (the closing quote) takes it out again, so the opening quote is 1 and the
  closing quote 0. Prefix letters (``r b f u rb br fr rf``, any case) come before the
  opening quote: 0. A triple-quoted literal is inside from its first opening quote on,
  and only the last of its three closing quotes is 0: after reading the first or the
  second closing quote the reader cannot yet know that the string ended (in
  ``'''a''b'''`` it goes on). A literal without a closing quote (unterminated) is 1
  from its opening quote to the end of its span (the newline that ends an unterminated
  short string is 0). Which kind a literal is (short or long) is the kind it turns out
  to be: all three opening quotes of ``'''`` are ``in_long_string``, although after
  the first one a reader cannot tell yet.
- Comments: the ``#`` is 1 (after reading it the reader is in a comment), the newline
  that ends the comment 0.
- Brackets: the depth after the character is read, so an opener has the inner depth
  and a closer the outer one.
- Lines: ``column``, ``line_length``, ``chars_to_eol`` and ``indent`` are positions in
  the line the character belongs to (a newline belongs to the line it ends).

Built-in features, with a tiny example (one value per character of the text):

- ``in_string``: 1 inside a string literal, from its opening quote to its closing
  quote (exclusive). ``x=rb"a"`` -> 0 0 0 0 1 1 0
- ``in_short_string``: 1 inside a one-line ``'...'`` or ``"..."`` literal.
  ``'a'+'''b'''`` -> 1 1 0 0 0 0 0 0 0 0 0
- ``in_long_string``: 1 inside a triple-quoted literal (mostly docstrings).
  ``'a'+'''b'''`` -> 0 0 0 0 1 1 1 1 1 1 0
- ``in_comment``: 1 from a ``#`` outside strings to the end of its line, newline
  excluded. ``a # b\\n`` -> 0 0 1 1 1 0
- ``column``: characters since the last newline (a newline has its line's length).
  ``ab\\ncd`` -> 0 1 2 0 1
- ``line_length``: length of the current line without its newline, for every character
  of the line. ``ab\\n\\ncde`` -> 2 2 2 0 3 3 3
- ``chars_to_eol``: characters left before the end of the line (the newline is 0; the
  end of the text counts as a line end). ``ab\\ncd`` -> 2 1 0 2 1
- ``bracket_depth``: nesting depth of ``()[]{}`` outside strings and comments; each
  character has the depth *after* it is read, so an opener has the inner depth and a
  closer the outer one. Kinds are not matched; unmatched closers clamp at 0.
  ``f(a[1])`` -> 0 1 1 2 2 1 0 ; ``)(`` -> 0 1
- ``indent``: number of leading spaces and tabs of the current line (a tab counts 1),
  for every character of the line. `` a\\n\\tb`` -> 1 1 1 1 1
- ``preprocessor``: 1 on every character of a C preprocessor line (its first token
  ``#``), continuation lines included, its final newline excluded; always 0 in Python
  and plain text (a Python ``#`` line is a comment).
  ``#if A \\\\\\n B\\nx`` -> 1 1 1 1 1 1 1 1 1 1 0 0

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

C rules (``languages=["c"]``, or a document name ending in ``.c`` or ``.h``):

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

Choosing the rules per document: ``languages`` gives one of ``"c"``, ``"python"``,
``"plain"`` (None: the ``python=`` rule) per document; ``document_names`` chooses by
extension (``.c``, ``.h`` -> C; ``.py`` -> Python; anything else -> the ``python=`` rule:
plain text for ``python=False``, else Python). ``probe.analysis.detectors.default_features``
passes a recording's document names, so a recording of kernel sources gets C rules.

Only ``\\n`` ends a line (a ``\\r`` is an ordinary character). With ``documents``, every
document is lexed on its own: strings, comments, brackets and lines restart at its start.

User features: ``regex={"name": pattern}`` is 1 on every character inside a match of
the pattern (``re.MULTILINE``, over the whole text); ``custom={"name": fn}`` takes
``fn(text)``, which must return T values.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd

from probe.errors import ProbeError

FEATURES: tuple[str, ...] = (
    "in_string", "in_short_string", "in_long_string", "in_comment",
    "column", "line_length", "chars_to_eol", "bracket_depth", "indent", "preprocessor",
)
BINARY: set[str] = {"in_string", "in_short_string", "in_long_string", "in_comment", "preprocessor"}
_LEXICAL = BINARY | {"bracket_depth"}
LANGUAGES: tuple[str, ...] = ("c", "python", "plain")
EXTENSIONS: dict[str, str] = {".c": "c", ".h": "c", ".py": "python"}  # the rest: ``python=``

# ---- lexers: tokens found with one regex, masks filled with numpy ---------------------

# Python: the leftmost '#' or quote starts a token; group 1 comment, 2 long, 5 short
# string; groups 3, 4, 6, 7 are the closing quotes, set only when the literal is closed
# (an unterminated one ends at its line's end or the document's end instead). Loops are
# "unrolled" ([^q\\]*(?:\\.[^q\\]*)*) so the engine never backtracks.
_ESC = r"\\(?:\r\n|[\s\S]|\Z)"  # a backslash protects the next character (a newline too)
_PY_TOKEN = re.compile(
    r"(#[^\n]*)"
    r"|('''[^'\\]*(?:(?:" + _ESC + r"|'(?!''))[^'\\]*)*(?:(''')|\Z)"
    r'|"""[^"\\]*(?:(?:' + _ESC + r'|"(?!""))[^"\\]*)*(?:(""")|\Z))'
    r"|('[^'\\\n]*(?:" + _ESC + r"[^'\\\n]*)*(?:(')|(?=\n)|\Z)"
    r'|"[^"\\\n]*(?:' + _ESC + r'[^"\\\n]*)*(?:(")|(?=\n)|\Z))'
)
_CLOSERS = (3, 4, 6, 7)

# Plain text: pairs of quotes on one line; unpaired quotes match nothing.
_PLAIN_TOKEN = re.compile(
    r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
    r"|(?<!\w)'[^'\\\n]*(?:(?:\\.|'(?=\w))[^'\\\n]*)*'(?!\w)"
)

# C: group 1 a // comment, 2 a /* */ comment (3 its closing '/', set only when closed),
# 4 a '...' or "..." literal (5, 6 the closing quotes). It runs on the text after line
# splicing (_C_SPLICE removed), so a newline always ends a line there; in a literal a
# backslash protects the next character but not a newline (an unterminated literal).
# Unrolled loops as for Python.
_C_ESC = r"\\[^\n]?"
_C_TOKEN = re.compile(
    r"(//[^\n]*)"
    r"|(/\*[^*]*(?:\*+[^*/][^*]*)*\**(?:(/)|\Z))"
    r"|('[^'\\\n]*(?:" + _C_ESC + r"[^'\\\n]*)*(?:(')|(?=\n)|\Z)"
    r'|"[^"\\\n]*(?:' + _C_ESC + r'[^"\\\n]*)*(?:(")|(?=\n)|\Z))'
)
# C's translation phase 2: a backslash and a newline are deleted, joining the lines. As
# gcc and clang do, blanks between the backslash and the newline are allowed (and a \r).
_C_SPLICE = re.compile(r"\\[ \t\f\v]*\r?\n")
_C_BLANK = np.zeros(128, dtype=bool)  # blanks that may come before a directive's '#'
_C_BLANK[[ord(c) for c in " \t\f\v"]] = True


def _spans_python(text: str) -> tuple[list, list, list, list]:
    """[start, stop) spans of short strings, long strings, comments and preprocessor
    lines (none) of Python text.

    A string's span runs from its first opening quote to its last closing quote,
    exclusive (the state after reading each character; see the module docstring).
    Prefix letters need no handling: the token starts at the quote, and the letters
    before it are outside anyway.
    """
    spans: tuple[list, list, list, list] = ([], [], [], [])  # short, long, comment, none
    for m in _PY_TOKEN.finditer(text):
        start, stop = m.span()
        kind = m.lastindex
        if kind == 1:
            spans[2].append((start, stop))
        else:
            closed = any(m.start(g) >= 0 for g in _CLOSERS)
            spans[0 if kind == 5 else 1].append((start, stop - closed))
    return spans


def _spans_plain(text: str) -> tuple[list, list, list, list]:
    """[start, stop) spans of the quoted parts of plain text (all short; no comments, no
    preprocessor lines).

    Every match is a closed pair of quotes: the closing quote is left out.
    """
    return [(a, b - 1) for a, b in (m.span() for m in _PLAIN_TOKEN.finditer(text))], [], [], []


def _spans_c(text: str) -> tuple[list, list, list, list]:
    """[start, stop) spans of short literals, long strings (none), comments and
    preprocessor lines of C text.

    As in C, line splices (backslash-newline) are removed first and the joined text is
    lexed (``_spans_c_joined``); its spans are then carried back to the text. A splice
    takes the state of the character before it (it changes nothing for the reader), so
    a span [a, b) of the joined text covers the text from its character a to its
    character b, the splices between them included; but a directive starts at its
    line's start, before any splices there (like the blanks before its ``#``).
    """
    splices = [m.span() for m in _C_SPLICE.finditer(text)] if "\\" in text else []
    if not splices:
        return _spans_c_joined(text)
    bounds = [0, *(x for span in splices for x in span), len(text)]
    joined = "".join(text[a:b] for a, b in zip(bounds[::2], bounds[1::2]))
    se = np.asarray(splices, dtype=np.int64)
    removed = np.cumsum(se[:, 1] - se[:, 0])  # characters removed up to each splice's end
    at = se[:, 0] - np.r_[0, removed[:-1]]  # the joined character each splice comes before
    shift = np.r_[0, removed]
    out = []
    for kind, spans in enumerate(_spans_c_joined(joined)):
        if spans:
            j = np.asarray(spans, dtype=np.int64)
            side = "left" if kind == 3 else "right"  # a directive takes the splices before it
            starts = j[:, 0] + shift[np.searchsorted(at, j[:, 0], side=side)]
            stops = j[:, 1] + shift[np.searchsorted(at, j[:, 1], side="right")]
            spans = list(zip(starts.tolist(), stops.tolist()))
        out.append(spans)
    return tuple(out)  # type: ignore[return-value]


def _spans_c_joined(text: str) -> tuple[list, list, list, list]:
    """``_spans_c`` of a text without line splices.

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
    for m in _C_TOKEN.finditer(text):
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
        codes = _codepoints(text)
        comments = _mask(whole, n)
        inside = _mask(short, n) | comments
        hashes = np.flatnonzero((codes == 35) & ~inside)
        # the last character before each '#' that is neither a blank nor in a comment
        # (a literal there is a token: it is not skipped)
        seen = np.flatnonzero(~(_C_BLANK[np.minimum(codes, 127)] | comments))
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


def _mask(spans: list[tuple[int, int]], length: int) -> np.ndarray:
    """Boolean [length] array, True inside any of the non-overlapping [start, stop) spans."""
    edges = np.zeros(length + 1, dtype=np.int8)
    if spans:
        se = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        se = se[se[:, 1] > se[:, 0]]
        edges[se[:, 0]] += 1  # starts are distinct, and so are stops: no lost updates
        edges[se[:, 1]] -= 1
    return np.cumsum(edges[:-1], dtype=np.int8) > 0


def lex_python(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (in_short_string, in_long_string, in_comment) of Python source.

    >>> short, long, comment = lex_python("s = 'a#' # c")
    >>> short.astype(int).tolist()
    [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    >>> comment.astype(int).tolist()
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    """
    return tuple(_mask(s, len(text)) for s in _spans_python(text)[:3])  # type: ignore[return-value]


def lex_plain(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (in_short_string, in_long_string, in_comment) of plain text.

    >>> lex_plain("don't 'go'")[0].astype(int).tolist()
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    """
    return tuple(_mask(s, len(text)) for s in _spans_plain(text)[:3])  # type: ignore[return-value]


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
    return tuple(_mask(s, len(text)) for s in _spans_c(text))  # type: ignore[return-value]


# ---- numpy helpers ------------------------------------------------------------------

def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


_BRACKET_STEP = np.zeros(128, dtype=np.int8)  # code points >= 127 all map to entry 127: 0
_BRACKET_STEP[[ord(c) for c in "([{"]] = 1
_BRACKET_STEP[[ord(c) for c in ")]}"]] = -1


def _clamped_depth(steps: np.ndarray) -> np.ndarray:
    """Running sum of +1/-1 steps that never goes below 0 (d[i] = max(0, d[i-1] + s[i])).

    With c the plain cumulative sum, the clamped sum is c - min(0, min(c[:i+1])): every
    time c reaches a new minimum below 0 an unmatched closer was dropped.
    """
    c = np.cumsum(steps, dtype=np.int64)
    return c - np.minimum(np.minimum.accumulate(c), 0) if c.size else c


def _line_features(codes: np.ndarray, doc_starts: np.ndarray) -> dict[str, np.ndarray]:
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


_SPLIT = {"c": _spans_c, "python": _spans_python, "plain": _spans_plain}


def _lexical_features(text: str, bounds: list[tuple[int, int]], codes: np.ndarray,
                      languages: list[str]) -> dict[str, np.ndarray]:
    """String, comment, bracket and preprocessor features, lexing every document
    separately with the rules of its language."""
    spans: tuple[list, list, list, list] = ([], [], [], [])
    for (start, stop), language in zip(bounds, languages):
        for acc, doc_spans in zip(spans, _SPLIT[language](text[start:stop])):
            acc.extend((a + start, b + start) for a, b in doc_spans)
    n = len(text)
    short, long, comment, pre = (_mask(s, n) for s in spans)
    in_str = short | long
    steps = _BRACKET_STEP[np.minimum(codes, 127)]
    steps[in_str | comment] = 0
    depth = np.empty(n, dtype=np.int32)
    for start, stop in bounds:
        depth[start:stop] = _clamped_depth(steps[start:stop])
    return {
        "in_string": in_str.astype(np.int8),
        "in_short_string": short.astype(np.int8),
        "in_long_string": long.astype(np.int8),
        "in_comment": comment.astype(np.int8),
        "bracket_depth": depth,
        "preprocessor": pre.astype(np.int8),
    }


# ---- user features ------------------------------------------------------------------

def parse_feature_args(specs: list[str]) -> dict[str, str]:
    """Turn CLI strings ``NAME=REGEX`` into ``{name: regex}`` (the regex may contain '=').

    >>> parse_feature_args(["digit=[0-9]", "assign=\\\\s=\\\\s"])
    {'digit': '[0-9]', 'assign': '\\\\s=\\\\s'}
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, eq, pattern = spec.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ProbeError(f"feature {spec!r}: expected NAME=REGEX, e.g. digit=[0-9]")
        if name in out:
            raise ProbeError(f"feature {name!r} given twice")
        out[name] = pattern
    return out


def regex_feature(text: str, pattern: str, name: str = "regex") -> np.ndarray:
    """1 (int8) on every character inside a match of ``pattern`` (re.MULTILINE).

    >>> regex_feature("a1b22", r"[0-9]+").tolist()
    [0, 1, 0, 1, 1]
    """
    if not pattern:
        raise ProbeError(f"feature regex {name!r}: empty pattern")
    try:
        rx = re.compile(pattern, re.MULTILINE)
    except re.error as err:
        raise ProbeError(f"feature regex {name!r}: does not compile: {err}") from None
    return _mask([m.span() for m in rx.finditer(text)], len(text)).astype(np.int8)


def _custom_feature(text: str, name: str, fn: Callable[[str], np.ndarray]) -> np.ndarray:
    values = fn(text)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != len(text):
        got = f"{arr.shape[0]} values" if arr.ndim == 1 else f"an array of shape {arr.shape}"
        raise ProbeError(f"feature {name!r}: returned {got} for a text of {len(text)} characters")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ProbeError(f"feature {name!r}: values must be numbers, got dtype {arr.dtype}")
    return arr


def is_binary(name: str, values: np.ndarray | None = None) -> bool:
    """Whether a feature is 0/1: built-ins by table, others by their values.

    >>> is_binary("in_comment"), is_binary("column"), is_binary("mine", np.array([0, 1, 1]))
    (True, False, True)
    """
    if name in FEATURES:
        return name in BINARY
    if values is None:
        raise ProbeError(f"feature {name!r} is not built in: pass its values to tell if it is binary")
    arr = np.asarray(values)
    return bool(arr.size) and bool(np.isin(arr, (0, 1)).all())


# ---- the entry point ----------------------------------------------------------------

def language_of(name: str, python: bool | None = None) -> str:
    """The lexing rules for a document called ``name``: by its extension (``.c`` and
    ``.h`` C, ``.py`` Python, any case), else as ``python=`` says (``False`` plain text,
    otherwise Python).

    >>> language_of("drivers/net/tun.c"), language_of("x.PY"), language_of("README"), language_of("a.txt", False)
    ('c', 'python', 'python', 'plain')
    """
    ext = str(name)[str(name).rfind("."):].lower() if "." in str(name) else ""
    return EXTENSIONS.get(ext, "plain" if python is False else "python")


def _check_languages(languages, document_names, count: int, python: bool | None) -> list[str]:
    """One language per document (``count`` of them, empty ones included)."""
    default = "plain" if python is False else "python"
    if languages is not None and document_names is not None:
        raise ProbeError("give languages or document_names, not both")
    given, what = (languages, "languages") if languages is not None else (document_names, "document_names")
    if given is None:
        return [default] * count
    given = list(given)
    if len(given) != count:
        raise ProbeError(f"{what}: {len(given)} given for {count} document{'s' * (count != 1)}")
    if languages is None:
        return [language_of(name, python) for name in given]
    out = []
    for lang in given:
        if lang is None:
            out.append(default)
        elif lang in LANGUAGES:
            out.append(lang)
        else:
            raise ProbeError(f"languages: unknown language {lang!r}: choose {', '.join(LANGUAGES)}")
    return out


def _check_documents(documents, n: int) -> list[tuple[int, int]]:
    """[start, stop) bounds of every document, empty ones included."""
    if documents is None:
        return [(0, n)]
    bounds, expect = [], 0
    for doc in documents:
        try:
            start, stop = (int(v) for v in doc)
        except (TypeError, ValueError):
            raise ProbeError(f"documents: expected (start, stop) pairs, got {doc!r}") from None
        if start != expect or stop < start:
            raise ProbeError(f"documents must cover the text in order without gaps: "
                             f"got ({start}, {stop}) where a document starting at {expect} was expected")
        bounds.append((start, stop))
        expect = stop
    if expect != n:
        raise ProbeError(f"documents cover {expect} characters but the text has {n}")
    return bounds


def compute(text: str, names: list[str] | None = None, *,
            documents: list[tuple[int, int]] | None = None, python: bool | None = None,
            languages: list[str | None] | None = None, document_names: list[str] | None = None,
            regex: dict[str, str] | None = None,
            custom: dict[str, Callable[[str], np.ndarray]] | None = None) -> pd.DataFrame:
    """A DataFrame with one row per character (index 0..T-1) and one column per feature.

    ``names`` picks and orders the columns (default: the built-ins, then the ``regex``
    features, then the ``custom`` ones). ``documents`` are [start, stop) offsets covering
    the text, each lexed separately. ``python=False`` uses the plain-text rules.
    ``languages`` (``"c"``, ``"python"``, ``"plain"`` or None for the ``python=`` rule) or
    ``document_names`` (rules by extension, see ``language_of``) pick the rules per
    document: one entry per document (or one for the whole text without ``documents``).

    >>> df = compute("f(x)  # (\\n", ["bracket_depth", "in_comment"])
    >>> df["bracket_depth"].tolist()
    [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    >>> compute("a1", regex={"digit": "[0-9]"}, custom={"one": lambda t: [1] * len(t)}).columns[-2:].tolist()
    ['digit', 'one']
    """
    if not text:
        raise ProbeError("empty text: no characters to compute features on")
    regex, custom = dict(regex or {}), dict(custom or {})
    for name in list(regex) + list(custom):
        if name in FEATURES:
            raise ProbeError(f"feature {name!r}: the name of a built-in feature; choose another")
    both = set(regex) & set(custom)
    if both:
        raise ProbeError(f"feature {sorted(both)[0]!r}: given both as a regex and as a function")
    available = list(FEATURES) + list(regex) + list(custom)
    if names is None:
        names = available
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ProbeError(f"unknown feature {unknown[0]!r}: available are {', '.join(available)}")
    for name, pattern in regex.items():  # report a bad pattern even if not requested
        if not pattern:
            raise ProbeError(f"feature regex {name!r}: empty pattern")
        try:
            re.compile(pattern, re.MULTILINE)
        except re.error as err:
            raise ProbeError(f"feature regex {name!r}: does not compile: {err}") from None

    n = len(text)
    every = _check_documents(documents, n)
    langs = _check_languages(languages, document_names, len(every), python)
    kept = [i for i, (start, stop) in enumerate(every) if stop > start]
    bounds = [every[i] for i in kept]
    codes = _codepoints(text)
    values: dict[str, np.ndarray] = {}
    if any(name in _LEXICAL for name in names):
        values.update(_lexical_features(text, bounds, codes, [langs[i] for i in kept]))
    if any(name in FEATURES and name not in _LEXICAL for name in names):
        values.update(_line_features(codes, np.array([s for s, _ in bounds], dtype=np.int64)))
    for name in names:
        if name in regex:
            values[name] = regex_feature(text, regex[name], name)
        elif name in custom:
            values[name] = _custom_feature(text, name, custom[name])
    return pd.DataFrame({name: values[name] for name in names}, index=pd.RangeIndex(n))


# ---- one function per built-in feature (one document; "" gives an empty array) -------

def _one(name: str, text: str, python: bool | None = None) -> np.ndarray:
    if not text:
        return np.zeros(0, dtype=np.int8 if name in BINARY else np.int32)
    return compute(text, [name], python=python)[name].to_numpy()


def in_string(text: str, python: bool | None = None) -> np.ndarray:
    """1 from the opening quote of a string literal to its closing quote (exclusive).

    Prefix letters are 0, the opening quote 1, the closing quote 0: the state after
    reading each character (see the module docstring).

    >>> in_string('x=rb"a"').tolist()
    [0, 0, 0, 0, 1, 1, 0]
    """
    return _one("in_string", text, python)


def in_short_string(text: str, python: bool | None = None) -> np.ndarray:
    """1 inside a one-line quoted literal.

    >>> in_short_string("'a'+'''b'''").tolist()
    [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    """
    return _one("in_short_string", text, python)


def in_long_string(text: str, python: bool | None = None) -> np.ndarray:
    """1 inside a triple-quoted literal, from its first opening quote to its last closing
    quote (exclusive): the first two closing quotes are still 1, since after reading
    them the string may yet go on.

    >>> in_long_string("'a'+'''b'''").tolist()
    [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    >>> in_long_string("'''ab'''").tolist()
    [1, 1, 1, 1, 1, 1, 1, 0]
    """
    return _one("in_long_string", text, python)


def in_comment(text: str, python: bool | None = None) -> np.ndarray:
    """1 from a ``#`` outside strings (included) to the end of the line (newline excluded).

    >>> in_comment("a # b\\n").tolist()
    [0, 0, 1, 1, 1, 0]
    """
    return _one("in_comment", text, python)


def column(text: str) -> np.ndarray:
    """Characters since the last newline.

    >>> column("ab\\ncd").tolist()
    [0, 1, 2, 0, 1]
    """
    return _one("column", text)


def line_length(text: str) -> np.ndarray:
    """Length of the current line, newline excluded.

    >>> line_length("ab\\n\\ncde").tolist()
    [2, 2, 2, 0, 3, 3, 3]
    """
    return _one("line_length", text)


def chars_to_eol(text: str) -> np.ndarray:
    """Characters left before the end of the line (the newline itself is 0).

    >>> chars_to_eol("ab\\ncd").tolist()
    [2, 1, 0, 2, 1]
    """
    return _one("chars_to_eol", text)


def bracket_depth(text: str, python: bool | None = None) -> np.ndarray:
    """Depth of ()[]{} after each character, outside strings and comments, clamped at 0.

    >>> bracket_depth("f(a[1])").tolist()
    [0, 1, 1, 2, 2, 1, 0]
    >>> bracket_depth(")('(')").tolist()
    [0, 1, 1, 1, 1, 0]
    """
    return _one("bracket_depth", text, python)


def indent(text: str) -> np.ndarray:
    """Leading spaces and tabs of the current line (a tab counts 1).

    >>> indent(" a\\n\\tb").tolist()
    [1, 1, 1, 1, 1]
    """
    return _one("indent", text)


def preprocessor(text: str) -> np.ndarray:
    """1 on every character of a C preprocessor line, continuation lines included, its
    final newline excluded (C rules; 0 everywhere in Python and plain text).

    >>> preprocessor("#if A\\nx").tolist()
    [1, 1, 1, 1, 1, 0, 0]
    """
    if not text:
        return np.zeros(0, dtype=np.int8)
    return compute(text, ["preprocessor"], languages=["c"])["preprocessor"].to_numpy()
