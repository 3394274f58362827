"""The prose of a Python source file: its docstrings and comments, without its code.

A word-level model needs prose, and every Python install carries a lot of it offline: the
standard library's docstrings (read with ``ast``) and comments (read with ``tokenize``).
``prose(source)`` keeps them in source order, one paragraph per line, so the words
tokenizer's ``<eos>`` marks a paragraph's end rather than where a line happened to wrap:

- a docstring (module, class, function) is cleaned (``inspect.cleandoc``) and cut into
  paragraphs at blank lines; a doctest paragraph (one starting ``>>>``) is code and left out;
- a run of whole-line comments on consecutive lines is one paragraph; a comment after code
  on its line is a paragraph of its own; the ``#`` marks go, and so do comments without a
  letter (rulers like ``# ----``), directives to tools (``# type:``, ``# noqa``…), the
  ``#!`` line and coding cookies.

A file that does not parse (or tokenize) gives what the other reader found.
"""
from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize

DEFINES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
LETTER = re.compile(r"[^\W\d_]")
COOKIE = re.compile(r"^[ \t\f]*#.*?coding[:=]")
DIRECTIVE = re.compile(r"^(type|pragma|fmt|pylint|mypy|isort)\s*:|^noqa\b", re.I)  # for tools, not readers


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its whitespace collapsed to single spaces."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        words = block.split()
        if words and words[0] != ">>>":
            out.append(" ".join(words))
    return out


def docstrings(source: str) -> list[tuple[int, str]]:
    """(line, paragraph) of every module, class and function docstring; [] if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: NUL bytes
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, DEFINES) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                out += [(first.lineno, p) for p in paragraphs(inspect.cleandoc(first.value.value))]
    return out


def comments(source: str) -> list[tuple[int, str]]:
    """(line, paragraph) of the comments: consecutive whole-line comments joined into one."""
    found: list[tuple[int, bool, str]] = []  # (line, whole line?, text without the # marks)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            line = tok.start[0]
            if (line == 1 and tok.string.startswith("#!")) or (line <= 2 and COOKIE.match(tok.line)):
                continue
            found.append((line, not tok.line[: tok.start[1]].strip(), tok.string.lstrip("#").strip()))
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # keep what was read before the error
    out: list[tuple[int, str]] = []
    last, joinable = -2, False
    for line, whole, text in found:
        if not LETTER.search(text) or DIRECTIVE.match(text):  # these end a paragraph too
            last, joinable = -2, False
            continue
        if whole and joinable and line == last + 1:
            out[-1] = (out[-1][0], out[-1][1] + " " + " ".join(text.split()))
        else:
            out.append((line, " ".join(text.split())))
        last, joinable = line, whole
    return out


def prose(source: str) -> str:
    """The docstrings and comments of ``source`` in source order, one paragraph per line
    (each line ends with a newline); "" when it has none."""
    found = sorted(docstrings(source) + comments(source), key=lambda x: x[0])
    return "".join(p + "\n" for _, p in found)
