"""What the LSTM knows beyond n-grams (Karpathy, Johnson & Fei-Fei 2015, Table 2 and
Fig. 4): the recorded model's loss beside n-gram models' on the same characters, and
where it wins — a closing bracket far from its opener, a closing quote, a comment.

    from probe import advantage, ngram
    ng = ngram.load("stdlib-10.ngram.npz")          # or advantage.default_ngram(rec)
    res = advantage.compare(rec, ng)
    res["bpc"]                                       # {"lstm": 1.37, "ngram": {"1": 4.9, …}}
    res["advantage"]                                 # [T] bits: n-gram loss − LSTM loss

``advantage`` is per character: positive where the LSTM predicts the character better
than the highest-order n-gram model. ``by_distance`` bins closing brackets by how far
back their opener is; ``by_feature`` averages it over closing quotes, comments and the
indentation at line starts.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import corpus as corpora
from . import features as features_mod
from . import ngram
from .errors import ProbeError

DISTANCE_BINS = ((1, 5), (6, 20), (21, 100), (101, None))  # characters back to the opener
OPENERS = {")": "(", "]": "[", "}": "{"}


def cache_dir() -> Path:
    """Where default n-gram models are kept: $PROBE_CACHE, else ~/.cache/probe."""
    return Path(os.environ.get("PROBE_CACHE") or Path.home() / ".cache" / "probe")


def default_ngram(rec, order: int = 10, progress: bool = False) -> ngram.NGram:
    """The order-``order`` n-gram model of the corpus the recording's model was trained on,
    with its vocabulary: built once (minutes on the 10M-character stdlib split), then read
    from ``cache_dir()``."""
    cfg = rec.model_config
    src = cfg.get("corpus") or {}
    kind, split, fp = src.get("kind"), src.get("split", "train"), src.get("fingerprint", "")
    if kind not in ("stdlib", "linux"):
        raise ProbeError(f"{rec.path}: its model was trained on {kind or 'an unnamed'} text, not a built-in "
                         "corpus: give an n-gram model (probe ngram train --text … --out NG; --ngram NG)")
    path = cache_dir() / f"{kind}-{split}-{fp[:16]}-{order}.ngram.npz"
    if path.exists():
        ng = ngram.load(path)
        if ng.vocab == cfg.get("vocab"):
            return ng
    docs = corpora.load(kind, split).documents
    ng = ngram.train(docs, cfg["vocab"], order, progress=progress,
                     info={"corpus": kind, "split": split, "fingerprint": fp})
    path.parent.mkdir(parents=True, exist_ok=True)
    ngram.save(ng, path)
    return ng


def check_vocab(rec, ng: ngram.NGram, force: bool = False) -> str:
    """'' if the n-gram model reads characters as the recording's model does; else a note
    (with ``force``) or a one-line error."""
    vocab = rec.model_config.get("vocab", "")
    if ng.vocab == vocab:
        return ""
    note = (f"the n-gram model's vocabulary ({len(ng.vocab)} characters) is not the recording's "
            f"model's ({len(vocab)})")
    if not force:
        raise ProbeError(f"{rec.path}: {note}; train one with the same model (probe ngram train --model …) "
                         "or pass --force")
    return note


def closing_distances(text: str, skip: np.ndarray, documents) -> np.ndarray:
    """For every position: the distance back to the opener if it is a closing bracket that
    closes one (in the same document, neither inside a string or comment: ``skip``), else 0."""
    out = np.zeros(len(text), np.int64)
    for a, b in documents:
        stack: list[tuple[str, int]] = []
        for t in range(a, b):
            ch = text[t]
            if skip[t]:
                continue
            if ch in "([{":
                stack.append((ch, t))
            elif ch in OPENERS:
                if stack and stack[-1][0] == OPENERS[ch]:
                    out[t] = t - stack.pop()[1]
                else:
                    stack.clear()  # unbalanced: start over
    return out


def compare(rec, ng: ngram.NGram, force: bool = False) -> dict:
    """The recording's loss beside every order of ``ng`` on the same characters (those where
    both are defined): {"bpc": {"lstm", "ngram": {order: bpc}}, "advantage": float32 [T]
    (order-N loss − LSTM loss; NaN where either is undefined), "by_distance": rows per
    DISTANCE_BINS, "by_feature": rows, "note"}."""
    note = check_vocab(rec, ng, force)
    docs = [(str(n), rec.text[a:b]) for n, a, b in rec.documents.itertuples(index=False)]
    nbits = ngram.bits(ng, docs)                          # [order, T]
    lstm = np.asarray(rec.loss, np.float64)               # [T]
    ok = np.isfinite(lstm) & np.isfinite(nbits).all(axis=0)
    if not ok.any():
        raise ProbeError(f"{rec.path}: no characters with a loss to compare (recorded without loss?)")
    adv = np.where(ok, nbits[-1] - lstm, np.nan).astype(np.float32)
    spans = rec.document_spans
    feats = features_mod.compute(rec.text, ["in_string", "in_comment", "column", "indent"], documents=spans)
    in_str, in_com = feats["in_string"].to_numpy() != 0, feats["in_comment"].to_numpy() != 0
    dist = closing_distances(rec.text, in_str | in_com, spans)
    rows = []
    for lo, hi in DISTANCE_BINS:
        m = ok & (dist >= lo) & (dist <= (hi if hi is not None else np.inf))
        rows.append({"distance": f"{lo}–{hi}" if hi is not None else f"> {lo - 1}", "count": int(m.sum()),
                     "advantage": float(adv[m].mean()) if m.any() else float("nan")})
    codes = rec.codepoints
    quote = (codes == ord('"')) | (codes == ord("'"))
    closing_quote = quote & ~in_str & np.r_[False, in_str[:-1]]
    line_start = (feats["column"].to_numpy() < feats["indent"].to_numpy()) & (codes == ord(" "))
    by_feature = []
    for name, m in (("closing brackets", dist > 0), ("closing quotes", closing_quote), ("inside comments", in_com),
                    ("indentation at line starts", line_start), ("everything", np.ones(len(adv), bool))):
        m = m & ok
        by_feature.append({"where": name, "count": int(m.sum()),
                           "advantage": float(adv[m].mean()) if m.any() else float("nan")})
    return {"bpc": {"lstm": float(lstm[ok].mean()),
                    "ngram": {str(k + 1): float(nbits[k][ok].mean()) for k in range(ng.order)}},
            "characters": int(ok.sum()), "advantage": adv, "by_distance": rows, "by_feature": by_feature,
            "note": note}


def report(res: dict, title: str = "") -> str:
    """The tables ``probe errors`` prints."""
    lines = [title] if title else []
    lines.append(f"bits per character on the same {res['characters']:,} characters:")
    lines.append(f"  {'LSTM (recorded)':<18} {res['bpc']['lstm']:.3f}")
    for k, v in res["bpc"]["ngram"].items():
        lines.append(f"  {'n-gram, order ' + k:<18} {v:.3f}")
    lines.append("\nadvantage of the LSTM (n-gram bits − LSTM bits, highest order) at closing brackets, "
                 "by distance to the opener:")
    for r in res["by_distance"]:
        lines.append(f"  {r['distance']:>8} characters  {r['advantage']:+.3f} bits  ({r['count']:,})")
    lines.append("\nand by kind of character:")
    for r in res["by_feature"]:
        lines.append(f"  {r['where']:<28} {r['advantage']:+.3f} bits  ({r['count']:,})")
    if res.get("note"):
        lines.append(f"\nnote: {res['note']}")
    return "\n".join(lines)
