"""Counterfactual pairs: a base text and a minimally different source text, aligned position
by position, and the character whose probability should differ between them.

    made, report = pairs("in_short_string", documents, n=200, seed=0)
    made[0]   # Pair(base="... x = 'abc'", source="... x = _abc'", position=.., target="'")

The model reads each text's characters before ``position`` and predicts the one at
``position``; ``target`` is the character whose log-probability is measured there. The two
texts have the same length up to ``position`` (patching copies states position by
position), so every edit replaces characters, never inserts:

- ``in_short_string``: the opening quote of a one-line string replaced by a space; the
  target is its closing quote (the model should no longer expect it);
- ``in_comment``: the ``#`` of a comment replaced by a space; the target is the comment's
  character 6 after the ``#`` (or its last), which reads as prose in one text and as code
  in the other;
- ``bracket_depth``: the opener of a bracket closed on the same line replaced by a space;
  the target is its closer (one level less deep: nothing left to close);
- ``indent`` and ``column``: four spaces added at the start of an indented line, and the
  line before it four characters shorter so the positions stay aligned; the target is the
  line's first character after its indentation (where the source still reads a space).

Each text starts at a line start at least ``CONTEXT`` characters before the edit (or at its
document's start) and ends with the target. Users give their own pairs as JSON lines
(``load``): ``{"base": "...", "source": "...", "position": p, "target": "'"}``.

For a word model positions are tokens: ``position`` stays a character offset, mapped to the
token whose span contains it, and ``target`` is that model's token (``token_targets`` makes
the built-in pairs' targets the base's token there; see ``load`` and ``probe.causal.patch``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from probe.errors import ProbeError
from probe.text import features as features_mod
from probe.text import tokens
from probe.text.python_lexer import spans_python

CONTEXT = 120     # characters of context before an edit, at least (back to a line start)
SHIFT = 4         # spaces added to a line's indentation
COMMENT_AT = 6    # the in_comment target: this many characters after the '#'
FEATURES = ("in_short_string", "in_comment", "bracket_depth", "indent", "column")


@dataclass(frozen=True)
class Pair:
    base: str
    source: str
    position: int
    target: str
    where: str = ""  # document and offset of the edit, for the report

    def check(self, n: int | None = None, tokenizer: tokens.Tokenizer | None = None) -> None:
        """One line naming the pair (``n``: its line in a file) if it cannot be patched; for a
        token model (``tokenizer`` not chars) the target is a token of its vocabulary."""
        name = f"pair {n}" if n is not None else "a pair"
        if not isinstance(self.position, int) or not 0 < self.position < min(len(self.base), len(self.source)):
            raise ProbeError(f"{name}: position {self.position} is outside the texts (1..{min(len(self.base), len(self.source)) - 1})")
        if tokenizer is not None and tokenizer.kind != "chars":
            if self.target not in tokenizer.index:
                raise ProbeError(f"{name}: target {self.target!r} is not a token of the model's vocabulary")
        elif len(self.target) != 1:
            raise ProbeError(f"{name}: target must be one character, got {self.target!r}")
        if self.base[:self.position] == self.source[:self.position]:
            raise ProbeError(f"{name}: base and source are the same before position {self.position}: nothing to patch")


def _start(text: str, at: int, lo: int) -> int:
    """A line start at least CONTEXT characters before ``at`` (not before ``lo``)."""
    cut = max(lo, at - CONTEXT)
    nl = text.rfind("\n", lo, cut)
    return lo if nl < 0 else nl + 1


def _make(text: str, lo: int, edits: dict[int, str], position: int, where: str) -> Pair:
    """The pair of text[a:position + 1] and the same with ``edits`` {index: new characters}."""
    a = _start(text, min(edits), lo)
    base = text[a:position + 1]
    src = list(base)
    for i, ch in edits.items():
        src[i - a] = ch
    return Pair(base, "".join(src), position - a, text[position], where)


def _strings(text: str, lo: int, hi: int, name: str) -> list[Pair]:
    out = []
    for start, stop in spans_python(text[lo:hi])[0]:
        o, c = lo + start, lo + stop
        if c < hi and text[c] == text[o] and c - o >= 2 and "\n" not in text[o:c]:
            out.append(_make(text, lo, {o: " "}, c, f"{name}:{o - lo}"))
    return out


def _comments(text: str, lo: int, hi: int, name: str) -> list[Pair]:
    out = []
    for start, stop in spans_python(text[lo:hi])[2]:
        h, end = lo + start, lo + stop
        if end - h >= 3:
            out.append(_make(text, lo, {h: " "}, min(h + COMMENT_AT, end - 1), f"{name}:{h - lo}"))
    return out


def _brackets(text: str, lo: int, hi: int, name: str) -> list[Pair]:
    doc = text[lo:hi]
    code = ~features_mod.compute(doc, ["in_string", "in_comment"])[["in_string", "in_comment"]].to_numpy().any(1)
    out, stack = [], []
    for i, ch in enumerate(doc):
        if ch == "\n":
            stack = []
        elif not code[i]:
            continue
        elif ch in "([{":
            stack.append(i)
        elif ch in ")]}" and stack:
            o = stack.pop()
            if "([{".index(doc[o]) == ")]}".index(ch) and i - o >= 3:
                out.append(_make(text, lo, {lo + o: " "}, lo + i, f"{name}:{o}"))
    return out


def _indents(text: str, lo: int, hi: int, name: str) -> list[Pair]:
    out, doc = [], text[lo:hi]
    lines = doc.split("\n")
    at = 0
    for prev, line in zip(lines, lines[1:]):
        at += len(prev) + 1  # the start of ``line``
        body = line.lstrip(" ")
        lead = len(line) - len(body)
        if lead >= SHIFT and body and len(prev.rstrip()) > SHIFT:
            s = lo + at  # the line's first character
            edits = {s - 1 - SHIFT + j: c for j, c in enumerate("\n" + " " * SHIFT)}  # the line before ends early
            out.append(_make(text, lo, edits, s + lead, f"{name}:{at}"))
    return out


MAKERS = {"in_short_string": _strings, "in_comment": _comments, "bracket_depth": _brackets,
          "indent": _indents, "column": _indents}


def token_targets(made: list[Pair], tokenizer: tokens.Tokenizer) -> list[Pair]:
    """The pairs with their target made a token model's: the base's token at character
    ``position`` (the token whose span contains it, as ``probe.causal.patch`` reads it; its
    vocabulary entry, ``<unk>`` for a word outside it). Character tokenizers: as they are."""
    if tokenizer.kind == "chars":
        return list(made)
    out = []
    for p in made:
        ids, spans, _ = tokenizer.encode(p.base)
        at = int(np.searchsorted(spans[:, 1], p.position, side="right"))
        out.append(replace(p, target=tokenizer.vocab[int(ids[at])]) if at < len(ids) else p)
    return out


def pairs(feature: str, documents: list[tuple[str, str]], n: int = 200, seed: int = 0,
          tokenizer: tokens.Tokenizer | None = None) -> tuple[list[Pair], dict]:
    """Up to ``n`` minimal pairs for a built-in feature from ``documents`` [(name, text)],
    drawn at random (``seed``) from every one the text offers; and a report: how many it
    offered, how many were made. With a token model's ``tokenizer`` each target is the token
    there (``token_targets``); the edits still replace characters, so a pair whose texts
    tokenize differently before the target is dropped when patched (``patch.sweep``)."""
    if feature not in MAKERS:
        raise ProbeError(f"no pairs are made for {feature!r}: choose {', '.join(FEATURES)}, or give your own "
                         "(--pairs FILE.jsonl)")
    found = []
    for name, text in documents:
        found += MAKERS[feature](text, 0, len(text), name)
    if not found:
        raise ProbeError(f"the text offers no {feature} pairs (none of what the pairs need: see probe.causal.pairs)")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(found), min(n, len(found)), replace=False).tolist())
    made = [found[j] for j in pick]
    if tokenizer is not None:
        made = token_targets(made, tokenizer)
    return made, {"feature": feature, "offered": len(found), "made": len(pick)}


def load(path: str | Path, tokenizer: tokens.Tokenizer | None = None) -> list[Pair]:
    """Pairs from a JSON-lines file, each checked: one line naming the file and line if not.

    ``position`` is a character offset in the texts: for a character model the model reads
    the characters before it and predicts ``target``, one character; for a token model
    (``tokenizer``: a word model's) it reads the tokens before the token whose span contains
    that character and predicts ``target``, a token of its vocabulary (``"<eos>"`` for a line
    end); a pair whose base and source tokenize to different numbers of tokens before it is
    dropped and counted when patched."""
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"{p}: no such file")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            pair = Pair(str(d["base"]), str(d["source"]), d["position"], str(d["target"]))
        except json.JSONDecodeError as e:
            raise ProbeError(f"{p}:{n}: not JSON ({e.msg})") from None
        except (KeyError, TypeError) as e:
            raise ProbeError(f"{p}:{n}: a pair needs base, source, position and target ({e})") from None
        try:
            pair.check(n, tokenizer)
        except ProbeError as e:
            raise ProbeError(f"{p}:{n}: {str(e).split(': ', 1)[1]}") from None
        out.append(pair)
    if not out:
        raise ProbeError(f"{p}: no pairs")
    return out
