"""Character (or token) n-gram language models: the baseline the LSTM is measured against
(Karpathy, Johnson & Fei-Fei 2015, Table 2 and Fig. 4).

    from probe.text import ngram
    ng = ngram.train(corpus.stdlib("train").documents, vocab, order=10, progress=True)
    ngram.save(ng, "runs/stdlib-10.ngram.npz")
    bits = ngram.bits(ng, documents)          # [order, T]: row n-1 is the order-n model's loss

**Smoothing: interpolated Kneser-Ney** (Chen & Goodman 1998), one discount per order,
D = n1 / (n1 + 2 n2) from the order's counts of counts. It is the standard strong
baseline for character models (what KJF's n-gram rows use), and its lower orders use
*continuation* counts — how many different characters precede a string, not how often it
occurs — so a string that only ever follows one context does not inflate the backoff.
For a model of order n and a context h of length k − 1 (the last k − 1 characters)::

    p_k(w | h) = (max(c(hw) − D_k, 0) + D_k · N1+(h•) · p_{k−1}(w | h')) / c(h•)    if c(h•) > 0
               = p_{k−1}(w | h')                                                   otherwise

with c the raw counts at k = n and the continuation counts N1+(•hw) below it, h' the
context without its first character, and p_0 = 1 / V (V: the vocabulary of the model the
n-grams are compared with, its unknown-character symbol included). Each document starts
with a start symbol, so the first characters of a file have their own contexts; an n-gram
never spans two documents, and an n-gram that begins with the start symbol (which nothing
precedes) keeps its raw count at every order.

**Memory**: n-grams are stored as 64-bit polynomial hashes (sorted, with their counts):
12–20 bytes per distinct n-gram and order; a collision between two of the ~10^7 distinct
strings of one order is improbable (~10^-5). Scoring is a binary search per order and
position, vectorised. ``bits`` follows the recorded ``loss`` convention: bits of
character t given the characters of its document before it, NaN at each document's first
character.

**Tokens.** For a word-level model (``probe.text.tokens``: ``words`` or ``vocab``) the
symbols are the model's tokens instead: ``train(…, tokens="words")`` reads every document
with the model's tokenizer over its vocabulary (``<unk>`` for a word outside it, ``<eos>``
at each line end), so the n-gram model and the recorded model score the same symbols, one
per recorded position, and "n-gram bits − model bits" compares like with like. Everything
above holds with "character" read as "token"; ``identifiers`` then counts each token's text
in the training documents (the rare-token oracle of ``probe.analysis.advantage``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probe.errors import ProbeError
from probe.text import corpus as corpora
from probe.text import tokens as toks

FORMAT = "probe-ngram"
VERSION = 1
MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: the hash's base (mod 2^64)
MAX_ORDER = 20
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a name, as Python and C spell them


@dataclass
class NGram:
    """A trained model: per order k = 1..order, the sorted hashes of its k-grams (``keys``)
    with raw and continuation counts, and of its contexts (``ctx_keys``) with their totals
    and the number of distinct characters that follow them; ``discounts`` [order + 1]."""

    vocab: str | tuple
    order: int
    discounts: np.ndarray
    keys: list = field(default_factory=list)
    raw: list = field(default_factory=list)
    cont: list = field(default_factory=list)
    ctx_keys: list = field(default_factory=list)
    ctx_raw: list = field(default_factory=list)
    ctx_cont: list = field(default_factory=list)
    ctx_types: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    identifiers: np.ndarray = field(default_factory=lambda: np.zeros(0, str))  # sorted, of the training text
    identifier_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tokens: str = "chars"  # what a symbol is: a character of ``vocab`` (a str), or a token of it (a tuple)

    @property
    def unit(self) -> str:
        """What a symbol is, for messages: character or token."""
        return "character" if self.tokens == "chars" else "token"

    def identifier_count(self, names) -> np.ndarray:
        """How often each name occurred as an identifier in the training text (0: never)."""
        names = np.asarray(list(names), dtype=str)
        if not len(self.identifiers) or not len(names):
            return np.zeros(len(names), np.int64)
        i = np.searchsorted(self.identifiers, names)
        i[i == len(self.identifiers)] = 0
        return np.where(self.identifiers[i] == names, self.identifier_counts[i], 0)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for group in (self.keys, self.raw, self.cont, self.ctx_keys, self.ctx_raw,
                                          self.ctx_cont, self.ctx_types) for a in group)


def check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= MAX_ORDER:
        raise ProbeError(f"order must be a whole number from 1 to {MAX_ORDER}, got {order!r}")
    return int(order)


def encode(text: str, vocab, tokens: str = "chars") -> np.ndarray:
    """A document's symbols: its characters' ids in ``vocab`` (``corpus.encode``), or its
    tokens' ids under the tokenizer ``tokens`` over ``vocab``."""
    if tokens == "chars":
        return corpora.encode(text, vocab)[0]
    return toks.Tokenizer(tokens, tuple(vocab)).encode(text)[0]


def _sequence(documents, vocab, tokens: str = "chars") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(symbols uint16 [L] (uint32 for vocabularies of 65,535 or more): a start symbol V
    before each document, then its symbols' ids; avail int64 [L]: symbols of its document
    before each position, the start symbol included; target bool [L]: a symbol, not a
    start symbol)."""
    V = len(vocab)
    kind = np.uint16 if V < np.iinfo(np.uint16).max else np.uint32
    parts, avail = [], []
    for _, text in documents:
        ids = encode(text, vocab, tokens)
        parts.append(np.concatenate([[V], ids]).astype(kind))
        avail.append(np.arange(len(ids) + 1))
    if not parts:
        return np.zeros(0, kind), np.zeros(0, np.int64), np.zeros(0, bool)
    seq = np.concatenate(parts)
    return seq, np.concatenate(avail), seq != V


def next_hash(prev: np.ndarray | None, seq: np.ndarray) -> np.ndarray:
    """H_k[t] = H_{k-1}[t-1] · MULT + (s_t + 1) (mod 2^64): the hash of the k symbols ending at t."""
    sym = seq.astype(np.uint64) + np.uint64(1)
    if prev is None:
        return sym
    out = np.empty_like(sym)
    out[0] = sym[0]
    with np.errstate(over="ignore"):
        out[1:] = prev[:-1] * MULT + sym[1:]
    return out


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == q] for each q (0 where absent); keys sorted, unique."""
    if len(keys) == 0:
        return np.zeros(len(query), values.dtype)
    i = np.searchsorted(keys, query)
    i[i == len(keys)] = 0
    return np.where(keys[i] == query, values[i], 0)


def _group(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, sum of values, count of entries) of ``keys`` (any order)."""
    u, inv, n = np.unique(keys, return_inverse=True, return_counts=True)
    return u, np.bincount(inv, weights=values, minlength=len(u)).astype(np.int64), n.astype(np.int64)


def _discount(counts: np.ndarray) -> float:
    """n1 / (n1 + 2 n2); 0.5 when no n-gram occurs once (the estimate would be 0, and an
    unseen character would get no probability at all)."""
    n1, n2 = int(np.count_nonzero(counts == 1)), int(np.count_nonzero(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 > 0 else 0.5


def train(documents, vocab, order: int = 10, *, discount: float | None = None,
          progress: bool = False, info: dict | None = None, tokens: str = "chars") -> NGram:
    """An interpolated Kneser-Ney model of orders 1..``order`` over ``documents`` [(name, text)],
    characters mapped to ``vocab`` ids as the LSTM sees them (``corpus.encode``); with
    ``tokens`` ("words" or "vocab") the tokens a word-level model reads, ``vocab`` its tokens.
    ``discount`` fixes every order's D (0: no discount, the maximum-likelihood estimate at
    the top order; an order-1 model is then the unigram frequencies); default per order
    n1 / (n1 + 2 n2)."""
    order = check_order(order)
    if not vocab:
        raise ProbeError("ngram: empty vocabulary")
    if discount is not None and not 0 <= discount < 1:
        raise ProbeError(f"ngram: discount must lie in [0, 1), got {discount}")
    from tqdm.auto import tqdm
    if tokens != "chars":
        vocab = toks.Tokenizer(tokens, tuple(str(t) for t in vocab)).vocab  # checked: <unk>, <eos>
    seq, avail, target = _sequence(documents, vocab, tokens)
    ng = NGram(vocab=vocab, order=order, discounts=np.zeros(order + 1), info=dict(info or {}), tokens=tokens)
    if not target.any():
        raise ProbeError(f"ngram: no {ng.unit}s to train on")
    ng.info.update({f"{ng.unit}s": int(target.sum()), "documents": len(documents)})
    from collections import Counter
    if tokens == "chars":
        names = Counter(m.group() for _, text in documents for m in IDENTIFIER.finditer(text))
    else:  # every token's own text, as the tokenizer cuts it (the rare-token oracle)
        tok = toks.Tokenizer(tokens, tuple(vocab))
        names = Counter(text[a:b] for _, text in documents for a, b in tok.encode(text)[1].tolist())
    if names:  # for the error analysis's rare-identifier oracle (``probe.analysis.advantage``)
        ng.identifiers = np.array(sorted(names), dtype=str)
        ng.identifier_counts = np.array([names[n] for n in ng.identifiers], np.int64)
    H_prev, H = None, next_hash(None, seq)  # H_{k-1}, H_k
    for k in tqdm(range(1, order + 1), desc="counting n-grams", disable=not progress):
        H_next = next_hash(H, seq)                                   # H_{k+1}
        at = np.flatnonzero(target & (avail >= k - 1))                # where a k-gram ends
        keys, first, raw = np.unique(H[at], return_index=True, return_counts=True)
        first = at[first]
        initial = avail[first] == k - 1                               # begins with the start symbol
        # continuation counts: distinct (k+1)-grams a·hw per k-gram hw (their suffix)
        at1 = np.flatnonzero(target & (avail >= k))
        _, first1 = np.unique(H_next[at1], return_index=True)     # one position per (k+1)-gram
        suffixes, extensions, _ = _group(H[at1[first1]], np.ones(len(first1)))
        cont = np.where(initial, raw, _lookup(suffixes, extensions, keys))
        # contexts: the k-1 symbols before each k-gram's last
        ctx = H_prev[first - 1] if k > 1 else np.zeros(len(keys), np.uint64)
        ckeys, craw, ctypes = _group(ctx, raw)
        _, ccont, _ = _group(ctx, cont)
        ng.keys.append(keys)
        ng.raw.append(raw.astype(np.uint32))
        ng.cont.append(cont.astype(np.uint32))
        ng.ctx_keys.append(ckeys)
        ng.ctx_raw.append(craw.astype(np.uint32))
        ng.ctx_cont.append(ccont.astype(np.uint32))
        ng.ctx_types.append(ctypes.astype(np.uint32))
        ng.discounts[k] = _discount(raw) if discount is None else float(discount)
        H_prev, H = H, H_next
    return ng


def _level(ng: NGram, k: int, top: bool, g: np.ndarray, c: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """p_k of the grams g (hashes) in contexts c, from p_{k-1} (``lower``)."""
    j = k - 1
    D = ng.discounts[k]
    num = _lookup(ng.keys[j], ng.raw[j] if top else ng.cont[j], g).astype(np.float64)
    den = _lookup(ng.ctx_keys[j], ng.ctx_raw[j] if top else ng.ctx_cont[j], c).astype(np.float64)
    types = _lookup(ng.ctx_keys[j], ng.ctx_types[j], c).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = (np.maximum(num - D, 0) + D * types * lower) / den
    return np.where(den > 0, p, lower)


def probabilities(ng: NGram, documents, order: int | None = None) -> np.ndarray:
    """p(char_t | its document before t) of every character (token, for a token model)
    under the models of orders 1..``order`` (default the model's): float64 [order, T], T the
    documents' characters (tokens)."""
    return _probabilities(ng, _sequence(documents, ng.vocab, ng.tokens), order)


def _probabilities(ng: NGram, sequence: tuple, order: int | None) -> np.ndarray:
    order = ng.order if order is None else check_order(order)
    if order > ng.order:
        raise ProbeError(f"ngram: the model has orders 1..{ng.order}, not {order}")
    seq, avail, target = sequence
    V = len(ng.vocab)
    out = np.empty((order, int(target.sum())))
    where = np.flatnonzero(target)
    lower = np.full(len(where), 1.0 / V)  # p_cont of the orders done
    H_prev, H = None, next_hash(None, seq)
    for k in range(1, order + 1):
        use = avail[where] >= k - 1
        t = where[use]
        ctx = H_prev[t - 1] if k > 1 else np.zeros(len(t), np.uint64)
        top = lower.copy()
        top[use] = _level(ng, k, True, H[t], ctx, lower[use])
        out[k - 1] = top
        if k < order:
            lower[use] = _level(ng, k, False, H[t], ctx, lower[use])
            H_prev, H = H, next_hash(H, seq)
    return out


def bits(ng: NGram, documents, order: int | None = None) -> np.ndarray:
    """−log2 p of every character, as ``probabilities``: float32 [order, T], NaN at each
    document's first character (the recorded ``loss`` convention)."""
    sequence = _sequence(documents, ng.vocab, ng.tokens)
    out = (-np.log2(_probabilities(ng, sequence, order))).astype(np.float32)
    _, avail, target = sequence
    out[:, avail[target] == 1] = np.nan  # each document's first symbol: only the start symbol before it
    return out


# ---- files --------------------------------------------------------------------------------

def save(ng: NGram, path: str | os.PathLike) -> Path:
    """One ``.npz`` (plain arrays, no pickle), written atomically."""
    import json

    from probe.files import atomic
    tokens = {} if ng.tokens == "chars" else {"tokens": ng.tokens}  # character models: as before
    arrays = {"vocab": np.array(ng.vocab if ng.tokens == "chars" else list(ng.vocab), dtype=str),
              "discounts": ng.discounts, "identifiers": ng.identifiers,
              "identifier_counts": ng.identifier_counts,
              "meta": np.array(json.dumps({"format": FORMAT, "version": VERSION, "order": ng.order,
                                           "info": ng.info, **tokens}))}
    for k in range(ng.order):
        for name in ("keys", "raw", "cont", "ctx_keys", "ctx_raw", "ctx_cont", "ctx_types"):
            arrays[f"{name}/{k + 1}"] = getattr(ng, name)[k]
    path = Path(path)
    with atomic(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def load(path: str | os.PathLike) -> NGram:
    """A model saved by ``save``; one-line errors for anything else."""
    import json
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such n-gram model")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError
            tokens = str(meta.get("tokens", "chars"))
            vocab = str(z["vocab"]) if tokens == "chars" else tuple(str(t) for t in z["vocab"].tolist())
            ng = NGram(vocab=vocab, order=int(meta["order"]), discounts=z["discounts"],
                       info=meta.get("info", {}), tokens=tokens)
            if "identifiers" in z:  # (files from before the error analysis have none)
                ng.identifiers, ng.identifier_counts = z["identifiers"], z["identifier_counts"]
            for name in ("keys", "raw", "cont", "ctx_keys", "ctx_raw", "ctx_cont", "ctx_types"):
                setattr(ng, name, [z[f"{name}/{k}"] for k in range(1, ng.order + 1)])
    except ProbeError:
        raise
    except Exception:  # noqa: BLE001 - not ours, or damaged: one line
        raise ProbeError(f"{path}: not a probe n-gram model (probe ngram train writes them)") from None
    return ng


def summary(path: str | os.PathLike) -> dict:
    """What ``probe info NG.npz`` prints."""
    ng = load(path)
    return {"path": str(path), "format": f"{FORMAT} v{VERSION}", "order": ng.order,
            "smoothing": "interpolated Kneser-Ney", **({} if ng.tokens == "chars" else {"tokenizer": ng.tokens}),
            "vocab_size": len(ng.vocab),
            "discounts": " ".join(f"{d:.3f}" for d in ng.discounts[1:]),
            "n_grams": " ".join(f"{len(k):,}" for k in ng.keys), "identifiers": len(ng.identifiers),
            "counts_mb": round(ng.nbytes / 1e6, 1), **{k: v for k, v in ng.info.items() if k != "root"}}

