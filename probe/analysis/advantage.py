"""What the LSTM knows beyond n-grams (Karpathy, Johnson & Fei-Fei 2015, Table 2 and
Fig. 4): the recorded model's loss beside n-gram models' on the same characters, and
where it wins — a closing bracket far from its opener, a closing quote, a comment.

    from probe.analysis import advantage
    from probe.text import ngram
    ng = ngram.load("stdlib-10.ngram.npz")          # or advantage.default_ngram(rec)
    res = advantage.compare(rec, ng)
    res["bpc"]                                       # {"lstm": 1.37, "ngram": {"1": 4.9, …}}
    res["advantage"]                                 # [T] bits: n-gram loss − LSTM loss

``advantage`` is per character: positive where the LSTM predicts the character better
than the highest-order n-gram model. ``by_distance`` bins closing brackets by how far
back their opener is; ``by_feature`` averages it over closing quotes, comments and the
indentation at line starts.

**Word-level recordings.** The n-gram model must then be one over the same tokens
(``ngram.train(…, tokens=…)`` with the model's vocabulary: ``probe ngram train --model``
does it), so both score the same symbols, one per position. The places are found on the
characters, as for a character model, and given to the tokens that hold them: a token
closes a bracket if it holds a closing bracket whose opener lies in an earlier token (its
distance in tokens back to that token; a bracket closed within its own token, ``f()``,
is not counted), holds a closing quote, holds indentation at a line start (none, for
whitespace-split words: the count says so), or ends inside a comment. The error
breakdown's identifier oracles are character ideas (the first character of a name is
not a position of a word model), so a token model's categories are ``TOKEN_CATEGORIES``:
the n-gram oracle and dynamic memory (the model's order of tokens) as before, then an
unknown token (``<unk>``: its word is outside the vocabulary), a rare token (its text
seen at most RARE times in the n-gram model's training text), a token of punctuation
only, of whitespace only (``<eos>``), and the rest.
"""
from __future__ import annotations

import os
import string
from pathlib import Path

import numpy as np

from probe.errors import ProbeError
from probe.text import corpus as corpora
from probe.text import features as features_mod
from probe.text import ngram
from probe.text import tokens as toks

DISTANCE_BINS = ((1, 5), (6, 20), (21, 100), (101, None))  # characters back to the opener
# The error breakdown (KJF Fig. 5, for code): each character the model gets wrong (p < 1/2,
# more than WRONG bits) goes to the first of these that explains it.
CATEGORIES = ("n-gram", "dynamic memory", "rare identifier", "identifier start", "punctuation",
              "whitespace", "the rest")
WRONG = 1.0       # bits: p(true character) < 1/2
MEMORY = 1000     # characters back the dynamic-memory oracle looks (same document)
RARE = 5          # an identifier seen at most this often in the training text is rare
TOKEN_CATEGORIES = ("n-gram", "dynamic memory", "unknown token", "rare token", "punctuation",
                    "whitespace", "the rest")  # a word-level model's (see the module's docstring)
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
    if not src:  # recordings keep the model's shape, not its corpus: ask its checkpoint
        from probe.lm.model import for_recording
        try:
            src = getattr(for_recording(rec)[0], "corpus", None) or {}
        except ProbeError:
            src = {}
    kind, split, fp = src.get("kind"), src.get("split", "train"), src.get("fingerprint", "")
    if kind not in corpora.BUILTIN:
        raise ProbeError(f"{rec.path}: its model was not trained on a built-in corpus ({', '.join(corpora.BUILTIN)}): "
                         "give an "
                         "n-gram model of its training text (probe ngram train --text … --out NG; --ngram NG)")
    tokens, vocab = symbols(rec)
    path = cache_dir() / f"{kind}-{split}-{fp[:16]}-{order}{'' if tokens == 'chars' else '-' + tokens}.ngram.npz"
    if path.exists():
        ng = ngram.load(path)
        if ng.vocab == vocab and ng.tokens == tokens:
            return ng
    docs = corpora.load(kind, split).documents
    ng = ngram.train(docs, vocab, order, progress=progress,
                     info={"corpus": kind, "split": split, "fingerprint": fp}, tokens=tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    ngram.save(ng, path)
    return ng


def symbols(rec) -> tuple[str, str | tuple]:
    """(tokenizer kind, vocabulary) of what the recording's model reads: "chars" and its
    vocabulary string, or a token kind and its tokens."""
    if rec.char_level:
        return "chars", rec.model_config.get("vocab", "")
    return rec.tokenizer["kind"], tuple(rec.tokenizer["vocab"])


def check_vocab(rec, ng: ngram.NGram, force: bool = False) -> str:
    """'' if the n-gram model reads characters (tokens) as the recording's model does; else a
    note (with ``force``) or a one-line error. A model of other symbols (characters against
    tokens, words against longest-match pieces) is refused even with ``force``."""
    tokens, vocab = symbols(rec)
    if ng.tokens != tokens:
        raise ProbeError(f"{rec.path}: the n-gram model reads {ng.tokens} but the recording's model reads "
                         f"{tokens}: train one with the same model (probe ngram train --model …)")
    if ng.vocab == vocab:
        return ""
    note = (f"the n-gram model's vocabulary ({len(ng.vocab)} {ng.unit}s) is not the recording's "
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


def repeated(codepoints: np.ndarray, documents, n: int, within: int) -> np.ndarray:
    """bool [T]: the n characters ending at t (all in t's document) occurred, ending earlier
    in the same document, at most ``within`` characters before t."""
    T = len(codepoints)
    start = np.zeros(T, np.int64)
    for a, b in documents:
        start[a:b] = a
    pos = np.arange(T)
    H = None
    for _ in range(n):
        H = ngram.next_hash(H, codepoints.astype(np.int64))
    full = pos - start >= n - 1
    at = pos[full]
    order = np.lexsort((at, H[at]))  # by hash, then position: the previous equal is the latest earlier
    hs, ps = H[at][order], at[order]
    prev = np.full(len(at), -1, np.int64)
    same = hs[1:] == hs[:-1]
    prev[order[1:][same]] = ps[:-1][same]
    out = np.zeros(T, bool)
    out[at] = (prev >= 0) & (prev >= start[at]) & (at - prev <= within)
    return out


def breakdown(rec, ng: ngram.NGram, nbits: np.ndarray, lstm: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """int8 [T]: for each character the recorded model got wrong (``WRONG`` bits or more),
    the index into CATEGORIES of the first oracle that explains it; -1 elsewhere. n-gram:
    the highest-order n-gram model gives it p ≥ 1/2; dynamic memory: its n-gram (the
    model's order) occurred in the last MEMORY characters of the document; rare identifier:
    it lies in a name seen at most RARE times in the n-gram model's training text;
    identifier start: the first character of a name; punctuation and whitespace by kind.
    A word-level recording's tokens go to TOKEN_CATEGORIES instead (``token_oracles``)."""
    if not rec.char_level:
        return first_oracle(ok & (lstm >= WRONG), token_oracles(rec, ng, nbits))
    text, T = rec.text, len(rec)
    cps = rec.codepoints
    wrong = ok & (lstm >= WRONG)
    rare, first = np.zeros(T, bool), np.zeros(T, bool)
    spans = [(m.start(), m.end(), m.group()) for m in ngram.IDENTIFIER.finditer(text)]
    if spans:
        counts = ng.identifier_count([name for _, _, name in spans])
        for (a, b, _), c in zip(spans, counts):
            first[a] = True
            if c <= RARE:
                rare[a:b] = True
    punct = np.isin(cps, [ord(c) for c in string.punctuation])
    space = np.isin(cps, [ord(c) for c in string.whitespace])
    oracles = [nbits[-1] < WRONG, repeated(cps, rec.document_spans, ng.order, MEMORY), rare, first, punct,
               space, np.ones(T, bool)]
    return first_oracle(wrong, oracles)


def first_oracle(wrong: np.ndarray, oracles: list[np.ndarray]) -> np.ndarray:
    """int8 [T]: the index of the first oracle true at each wrong position, -1 elsewhere."""
    out = np.full(len(wrong), -1, np.int8)
    left = wrong.copy()
    for j, oracle in enumerate(oracles):
        hit = left & oracle
        out[hit] = j
        left &= ~hit
    return out


def token_oracles(rec, ng: ngram.NGram, nbits: np.ndarray) -> list[np.ndarray]:
    """The oracles of TOKEN_CATEGORIES, bool [T] each, in order."""
    words = list(rec.tokens)
    T = len(words)
    vocab = list(rec.tokenizer["vocab"])
    unknown = rec.ids == vocab.index(toks.UNK) if toks.UNK in vocab else np.zeros(T, bool)
    rare = ng.identifier_count(words) <= RARE
    punct = np.array([bool(w) and all(c in string.punctuation for c in w) for w in words], bool)
    space = np.array([w.isspace() for w in words], bool)
    return [nbits[-1] < WRONG, repeated(rec.ids, rec.document_spans, ng.order, MEMORY), unknown, rare, punct,
            space, np.ones(T, bool)]


def categories(rec) -> tuple[str, ...]:
    """The error categories of a recording: CATEGORIES, or TOKEN_CATEGORIES for tokens."""
    return CATEGORIES if rec.char_level else TOKEN_CATEGORIES


def places(rec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(distance back to the opener of the bracket each position closes, 0 if none; {where:
    bool [T]}: closing quotes, inside comments, indentation at line starts), found on the
    characters and given to the tokens that hold them (see the module's docstring)."""
    text, spans = rec.text, rec.text_documents
    feats = features_mod.compute(text, ["in_string", "in_comment", "column", "indent"], documents=spans)
    in_str, in_com = feats["in_string"].to_numpy() != 0, feats["in_comment"].to_numpy() != 0
    dist = closing_distances(text, in_str | in_com, spans)
    codes = rec.codepoints
    quote = (codes == ord('"')) | (codes == ord("'"))
    closing_quote = quote & ~in_str & np.r_[False, in_str[:-1]]
    line_start = (feats["column"].to_numpy() < feats["indent"].to_numpy()) & (codes == ord(" "))
    masks = {"closing quotes": closing_quote, "inside comments": in_com, "indentation at line starts": line_start}
    if rec.char_level:
        return dist, masks
    at = rec.spans
    masks = {"closing quotes": toks.overlapping(closing_quote, at), "inside comments": toks.at_tokens(in_com, at),
             "indentation at line starts": toks.overlapping(line_start, at)}
    return token_distances(dist, at), masks


def token_distances(dist: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Per token: how many tokens back lies the opener of the farthest bracket it closes
    (``dist`` per character, ``closing_distances``); 0 if it closes none, or only brackets
    opened within itself."""
    out = np.zeros(len(spans), np.int64)
    close = np.flatnonzero(dist > 0)
    if not len(close):
        return out
    stops = spans[:, 1]
    tc = np.searchsorted(stops, close, side="right")           # the token holding each closer
    to = np.searchsorted(stops, close - dist[close], side="right")  # … and its opener
    np.maximum.at(out, tc, tc - to)
    return out


def compare(rec, ng: ngram.NGram, force: bool = False) -> dict:
    """The recording's loss beside every order of ``ng`` on the same characters (or tokens:
    those where both are defined): {"bpc": {"lstm", "ngram": {order: bits per position}},
    "unit", "characters" (or "tokens": how many), "advantage": float32 [T] (order-N loss −
    LSTM loss; NaN where either is undefined), "by_distance": rows per DISTANCE_BINS,
    "by_feature": rows, "categories", "note"}."""
    note = check_vocab(rec, ng, force)
    nbits = ngram.bits(ng, rec.document_texts())          # [order, T]
    if nbits.shape[1] != len(rec):
        raise ProbeError(f"{rec.path}: the n-gram model reads the text as {nbits.shape[1]:,} {ng.unit}s, the "
                         f"recording has {len(rec):,}: train one with the same model (probe ngram train --model …)")
    lstm = np.asarray(rec.loss, np.float64)               # [T]
    ok = np.isfinite(lstm) & np.isfinite(nbits).all(axis=0)
    unit = rec.unit_name
    if not ok.any():
        raise ProbeError(f"{rec.path}: no {unit}s with a loss to compare (recorded without loss?)")
    adv = np.where(ok, nbits[-1] - lstm, np.nan).astype(np.float32)
    dist, masks = places(rec)
    rows = []
    for lo, hi in DISTANCE_BINS:
        m = ok & (dist >= lo) & (dist <= (hi if hi is not None else np.inf))
        rows.append({"distance": f"{lo}–{hi}" if hi is not None else f"> {lo - 1}", "count": int(m.sum()),
                     "advantage": float(adv[m].mean()) if m.any() else float("nan")})
    by_feature = []
    for name, m in (("closing brackets", dist > 0), *masks.items(), ("everything", np.ones(len(adv), bool))):
        m = m & ok
        by_feature.append({"where": name, "count": int(m.sum()),
                           "advantage": float(adv[m].mean()) if m.any() else float("nan")})
    category = breakdown(rec, ng, nbits, lstm, ok)
    wrong = int((category >= 0).sum())
    errors = {name: (int((category == j).sum()) / wrong if wrong else float("nan"))
              for j, name in enumerate(categories(rec))}
    return {"bpc": {"lstm": float(lstm[ok].mean()),
                    "ngram": {str(k + 1): float(nbits[k][ok].mean()) for k in range(ng.order)}},
            "unit": unit, f"{unit}s": int(ok.sum()), "advantage": adv, "by_distance": rows,
            "by_feature": by_feature, "wrong": wrong, "errors": errors, "category": category,
            "categories": list(categories(rec)), "ngram_bits": nbits[-1], "note": note}


STORED = ("advantage", "ngram_bits", "category")  # the units of the derived stream ``store`` writes


def store(rec, res: dict, ng_name: str, order: int, force: bool = False, progress: bool = False) -> tuple[int, str]:
    """Add ``compare``'s per-character results to the open recording ``rec`` as a derived
    stream ``ngram`` of the top recorded layer, units STORED: the advantage (bits), the
    n-gram model's bits, and the error category (an index into CATEGORIES; -1: not an
    error). The dashboard's "beyond n-grams" tab colours the text by them; ``probe
    analyze`` ranks them against every feature like any stream."""
    from probe.recording import derived
    if getattr(rec, "parts", None):
        raise ProbeError(f"{rec.path}: --store writes into one .h5 recording, not a folder of shards (yet)")
    layer = rec.layer_ids[-1]
    columns = np.stack([res["advantage"], res["ngram_bits"], res["category"]], axis=1).astype(np.float32)
    info = {"kind": "ngram", "spec_name": ng_name, "order": int(order),
            "categories": list(res.get("categories", CATEGORIES)),
            "wrong_bits": WRONG}
    derived.write_stream(rec, layer, "ngram", list(STORED), lambda rec, a, b: columns[a:b], info,
                         replace=force, progress=progress, desc="storing")
    return layer, "ngram"


def report(res: dict, title: str = "") -> str:
    """The tables ``probe errors`` prints."""
    lines = [title] if title else []
    unit = res.get("unit", "character")
    tokens = unit != "character"  # and perplexity, what word-level models report
    lines.append(f"bits per {unit} on the same {res[unit + 's']:,} {unit}s" + (" (and perplexity)" if tokens else "")
                 + ":")
    lines.append(f"  {'LSTM (recorded)':<18} {res['bpc']['lstm']:.3f}" + (f"  {2 ** res['bpc']['lstm']:9.1f}"
                                                                          if tokens else ""))
    for k, v in res["bpc"]["ngram"].items():
        lines.append(f"  {'n-gram, order ' + k:<18} {v:.3f}" + (f"  {2 ** v:9.1f}" if tokens else ""))
    lines.append("\nadvantage of the LSTM (n-gram bits − LSTM bits, highest order) at closing brackets, "
                 "by distance to the opener:")
    for r in res["by_distance"]:
        lines.append(f"  {r['distance']:>8} {unit}s  {r['advantage']:+.3f} bits  ({r['count']:,})")
    lines.append(f"\nand by kind of {unit}:")
    for r in res["by_feature"]:
        lines.append(f"  {r['where']:<28} {r['advantage']:+.3f} bits  ({r['count']:,})")
    lines.append(f"\nthe {res['wrong']:,} {unit}s the model gets wrong (p < 1/2), by the first oracle "
                 "that explains them:")
    for name, frac in res["errors"].items():
        lines.append(f"  {name:<20} {frac:6.1%}")
    if res.get("note"):
        lines.append(f"\nnote: {res['note']}")
    return "\n".join(lines)


def figure(res: dict, title: str = ""):
    """Two bar charts (a Bokeh row): the LSTM's advantage at closing brackets by distance to
    the opener (KJF Fig. 4), and the share of its errors each oracle explains (Fig. 5)."""
    from bokeh.layouts import row
    from bokeh.models import ColumnDataSource, LabelSet
    from bokeh.plotting import figure as bfigure
    dist = [r["distance"] for r in res["by_distance"]]
    adv = [r["advantage"] for r in res["by_distance"]]
    left = bfigure(x_range=dist, width=420, height=320, toolbar_location=None,
                   title=title or "advantage at closing brackets",
                   x_axis_label=f"{res.get('unit', 'character')}s back to the opener",
                   y_axis_label="n-gram bits − LSTM bits (mean)")
    src = ColumnDataSource(dict(x=dist, top=adv, label=[f"{v:+.2f}\n({r['count']:,})" for v, r in
                                                        zip(adv, res["by_distance"])]))
    finite = [v for v in adv if np.isfinite(v)] or [0.0]
    left.y_range.start, left.y_range.end = min(0.0, min(finite)) * 1.4 - 0.05, max(0.0, max(finite)) * 1.25 + 0.05
    left.vbar(x="x", top="top", width=0.7, source=src, color="#4a7fb5")
    left.add_layout(LabelSet(x="x", y="top", text="label", source=src, text_font_size="10px",
                             text_align="center", y_offset=4))
    cats = list(res["errors"])
    share = [100 * res["errors"][c] for c in cats]
    right = bfigure(y_range=cats[::-1], width=420, height=320, toolbar_location=None,
                    title=f"the {res['wrong']:,} {res.get('unit', 'character')}s it gets wrong, by oracle",
                    x_axis_label="% of its errors")
    right.hbar(y=cats, right=share, height=0.7, color="#e08214")
    for p in (left, right):
        p.xgrid.grid_line_color = None
    return row(left, right)
