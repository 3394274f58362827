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

Choosing the rules per document: ``languages`` gives one of ``"c"``, ``"python"``,
``"plain"`` (None: the ``python=`` rule) per document; ``document_names`` chooses by
extension (``.c``, ``.h`` -> C; ``.py`` -> Python; anything else -> the ``python=`` rule:
plain text for ``python=False``, else Python). ``probe.analysis.detectors.default_features``
passes a recording's document names, so a recording of kernel sources gets C rules.

Only ``\\n`` ends a line (a ``\\r`` is an ordinary character). With ``documents``, every
document is lexed on its own: strings, comments, brackets and lines restart at its start.

User features: ``regex={"name": pattern}`` is 1 on every character inside a match of
the pattern (``re.MULTILINE``, over the whole text); ``custom={"name": fn}`` takes
``fn(text)``, which must return T values (``user_features``).

The lexing rules are beside this module: ``python_lexer`` (Python, and plain text with
``python=False``) and ``c_lexer``; ``builtin`` computes the built-ins over many documents.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd

from probe.errors import ProbeError
from probe.text import tokens
from probe.text.builtin import lexical_features, line_features
from probe.text.c_lexer import lex_c
from probe.text.python_lexer import lex_plain, lex_python
from probe.text.spans import codepoints
from probe.text.user_features import custom_feature, parse_feature_args, regex_feature

__all__ = ["compute", "is_binary", "language_of", "FEATURES", "BINARY", "LANGUAGES", "EXTENSIONS",
           "in_string", "in_short_string", "in_long_string", "in_comment", "column", "line_length",
           "chars_to_eol", "bracket_depth", "indent", "preprocessor",
           "lex_python", "lex_plain", "lex_c", "parse_feature_args", "regex_feature"]  # the last: reachable here

FEATURES: tuple[str, ...] = (
    "in_string", "in_short_string", "in_long_string", "in_comment",
    "column", "line_length", "chars_to_eol", "bracket_depth", "indent", "preprocessor",
)
BINARY: set[str] = {"in_string", "in_short_string", "in_long_string", "in_comment", "preprocessor"}
_LEXICAL = BINARY | {"bracket_depth"}
LANGUAGES: tuple[str, ...] = ("c", "python", "plain")
EXTENSIONS: dict[str, str] = {".c": "c", ".h": "c", ".py": "python"}  # the rest: ``python=``

# ---- what a feature is ---------------------------------------------------------------

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
            custom: dict[str, Callable[[str], np.ndarray]] | None = None,
            spans: np.ndarray | None = None) -> pd.DataFrame:
    """A DataFrame with one row per character (index 0..T-1) and one column per feature.

    With ``spans`` ([start, stop) of each token in ``text``, ``probe.text.tokens``) one row
    per token instead: every feature is read at the token's last character (the state after
    reading the token), and a regex feature marks every token its matches overlap.

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
    codes = codepoints(text)
    values: dict[str, np.ndarray] = {}
    if any(name in _LEXICAL for name in names):
        values.update(lexical_features(text, bounds, codes, [langs[i] for i in kept]))
    if any(name in FEATURES and name not in _LEXICAL for name in names):
        values.update(line_features(codes, np.array([s for s, _ in bounds], dtype=np.int64)))
    for name in names:
        if name in regex:
            values[name] = regex_feature(text, regex[name], name)
        elif name in custom:
            values[name] = custom_feature(text, name, custom[name])
    if spans is not None:
        spans = np.asarray(spans, np.int64).reshape(-1, 2)
        values = {name: (tokens.overlapping(values[name], spans).astype(np.int8) if name in regex
                         else tokens.at_tokens(values[name], spans)) for name in names}
        n = len(spans)
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
