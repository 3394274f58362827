"""Tokens: what a position is, with its span in the text (issue 28's first step).

A character model reads one character per position; a word-level model one word. Either
way a tokenizer maps a text to ids and to each token's [start, stop) span in the text, so
everything per position can be drawn on the text and every per-character feature read at
the token's last character (the state after reading the token)::

    tok = words(["the", "cat", "<unk>", "<eos>"])
    ids, spans, unknown = tok.encode("the cat sat\\n")
    # ids [0, 1, 2, 3]; spans [[0, 3], [4, 7], [8, 11], [11, 12]]; unknown 1 ("sat")

Three kinds:

- ``chars``: every character a token (the vocabulary a string of characters; probe's own
  vocabularies hold the unknown symbol at index 0);
- ``words``: split on whitespace, ``<eos>`` at each line end (its span the newline), the
  convention of PyTorch's word-language-model example; a word outside the vocabulary is
  ``<unk>``;
- ``vocab``: the longest vocabulary token at each position (greedy longest match); a
  character no token starts with is ``<unk>``, one character long.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from probe.errors import ProbeError
from probe.text import corpus as corpora

UNK, EOS = "<unk>", "<eos>"
KINDS = ("chars", "words", "vocab")
WORD = re.compile(r"[^\s]+|\n")


@dataclass(frozen=True)
class Tokenizer:
    kind: str
    vocab: tuple[str, ...]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ProbeError(f"unknown tokenizer {self.kind!r}: choose {', '.join(KINDS)}")
        if self.kind == "chars" and any(len(t) != 1 for t in self.vocab):
            bad = next(t for t in self.vocab if len(t) != 1)
            raise ProbeError(f"a chars vocabulary must be single characters in index order; got {bad!r} (a word "
                             "or subword vocabulary: tokens='words' or 'vocab', probe import --tokens)")
        seen: dict[str, int] = {}
        for i, t in enumerate(self.vocab):
            if t in seen:
                raise ProbeError(f"the vocabulary lists {t!r} twice (ids {seen[t]} and {i})")
            seen[t] = i
        if self.kind == "words" and EOS not in seen:
            raise ProbeError(f"a words vocabulary needs {EOS}, read at every line end (PyTorch's word LM corpus "
                             "adds it to each line)")
        if self.kind != "chars" and UNK not in seen:
            raise ProbeError(f"a {self.kind} vocabulary needs {UNK}, read for every word it does not hold, and the "
                             f"model has no row named so: rename the token such words should read as (a rare one) "
                             f"to {UNK} in the vocabulary")

    @cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab)}

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids int64 [N], spans int64 [N, 2] of [start, stop) in ``text``, unknown tokens)."""
        if self.kind == "chars":  # numpy, no Python loop; unknown characters are id 0
            ids, unknown = corpora.encode(text, "".join(self.vocab))
            return ids, identity(len(text)), unknown
        index = self.index
        if self.kind == "words":
            found = [(m.start(), m.end(), EOS if m.group() == "\n" else m.group()) for m in WORD.finditer(text)]
            spans = np.array([(a, b) for a, b, _ in found], dtype=np.int64).reshape(-1, 2)
            unk = index[UNK]
            ids = [index.get(w, -1) for _, _, w in found]
        else:
            spans, ids = self._longest(text, index)
            unk = index[UNK]
        ids = np.array(ids, dtype=np.int64)
        unknown = int((ids < 0).sum())
        ids[ids < 0] = unk
        return ids, spans, unknown

    def _longest(self, text: str, index: dict) -> tuple[np.ndarray, list]:
        longest = max(len(t) for t in self.vocab)
        spans, ids, i = [], [], 0
        while i < len(text):
            for n in range(min(longest, len(text) - i), 0, -1):
                j = index.get(text[i:i + n])
                if j is not None and self.vocab[j] != UNK:
                    break
            else:
                n, j = 1, -1
            spans.append((i, i + n))
            ids.append(j)
            i += n
        return np.array(spans, dtype=np.int64).reshape(-1, 2), ids

    def decode(self, ids) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def join(self, ids) -> str:
        """Tokens as text: words with a space between them and ``<eos>`` as a line end;
        characters and longest-match pieces as they are."""
        if self.kind != "words":
            return "".join(self.decode(ids))
        out = []
        for t in self.decode(ids):
            out.append("\n" if t == EOS else t if not out or out[-1] == "\n" else " " + t)
        return "".join(out)

    @property
    def unit(self) -> str:
        """What a position is, for messages and labels: character or token."""
        return "character" if self.kind == "chars" else "token"

    def config(self) -> dict:
        """What a checkpoint and a recording keep: plain values."""
        return {"kind": self.kind, "vocab": list(self.vocab)}


def from_config(config: dict) -> Tokenizer:
    try:
        return Tokenizer(str(config["kind"]), tuple(str(t) for t in config["vocab"]))
    except (KeyError, TypeError) as e:
        raise ProbeError(f"a tokenizer config needs kind and vocab ({e})") from None


def identity(n: int) -> np.ndarray:
    """The spans of ``n`` characters read one per position: [[0, 1], [1, 2], …]."""
    return np.stack([np.arange(n), np.arange(1, n + 1)], 1).astype(np.int64)


def of(model) -> Tokenizer:
    """A model's tokenizer: its config's ``tokens`` kind (``chars`` when absent, every
    model from before word-level ones) over its ``vocab``."""
    tok = getattr(model, "tokenizer", None)
    if isinstance(tok, Tokenizer):
        return tok
    config = getattr(model, "config", None) or {}
    kind = config.get("tokens", "chars") if isinstance(config, dict) else "chars"
    return Tokenizer(kind, tuple(model.vocab))


def encode(model, text: str) -> tuple[np.ndarray, int]:
    """``text`` as a model's input ids (int64 [N]) and the count of unknown tokens."""
    ids, _, unknown = of(model).encode(text)
    return ids, unknown


def chars(vocab: str) -> Tokenizer:
    return Tokenizer("chars", tuple(vocab))


def words(vocab) -> Tokenizer:
    return Tokenizer("words", tuple(vocab))


def longest_match(vocab) -> Tokenizer:
    return Tokenizer("vocab", tuple(vocab))


def word_vocab(texts, size: int) -> tuple[str, ...]:
    """The ``size`` most frequent words of ``texts`` (ties: first seen), then <unk> and <eos>."""
    if size < 1:
        raise ProbeError(f"a vocabulary of {size} words holds nothing")
    counts: Counter = Counter()
    for text in texts:
        counts.update(m.group() for m in WORD.finditer(text) if m.group() != "\n")
    return tuple(w for w, _ in counts.most_common(size)) + (UNK, EOS)


def at_tokens(values: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """A per-character feature read per token: its value at the token's last character,
    the state after reading the token."""
    return np.asarray(values)[spans[:, 1] - 1]


def overlapping(mask: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """A per-character mask (a regex's matches) per token: true where any of its characters is."""
    c = np.concatenate([[0], np.cumsum(np.asarray(mask, dtype=np.int64))])
    return (c[spans[:, 1]] - c[spans[:, 0]]) > 0
