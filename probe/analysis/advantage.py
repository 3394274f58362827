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

DISTANCE_BINS = ((1, 5), (6, 20), (21, 100), (101, None))  # characters back to the opener
# The error breakdown (KJF Fig. 5, for code): each character the model gets wrong (p < 1/2,
# more than WRONG bits) goes to the first of these that explains it.
CATEGORIES = ("n-gram", "dynamic memory", "rare identifier", "identifier start", "punctuation",
              "whitespace", "the rest")
WRONG = 1.0       # bits: p(true character) < 1/2
MEMORY = 1000     # characters back the dynamic-memory oracle looks (same document)
RARE = 5          # an identifier seen at most this often in the training text is rare
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
    if kind not in ("stdlib", "linux"):
        raise ProbeError(f"{rec.path}: its model was not trained on a built-in corpus (stdlib, linux): give an "
                         "n-gram model of its training text (probe ngram train --text … --out NG; --ngram NG)")
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
    identifier start: the first character of a name; punctuation and whitespace by kind."""
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
    out = np.full(T, -1, np.int8)
    left = wrong.copy()
    for j, oracle in enumerate(oracles):
        hit = left & oracle
        out[hit] = j
        left &= ~hit
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
    category = breakdown(rec, ng, nbits, lstm, ok)
    wrong = int((category >= 0).sum())
    errors = {name: (int((category == j).sum()) / wrong if wrong else float("nan"))
              for j, name in enumerate(CATEGORIES)}
    return {"bpc": {"lstm": float(lstm[ok].mean()),
                    "ngram": {str(k + 1): float(nbits[k][ok].mean()) for k in range(ng.order)}},
            "characters": int(ok.sum()), "advantage": adv, "by_distance": rows, "by_feature": by_feature,
            "wrong": wrong, "errors": errors, "category": category, "ngram_bits": nbits[-1], "note": note}


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
    info = {"kind": "ngram", "spec_name": ng_name, "order": int(order), "categories": list(CATEGORIES),
            "wrong_bits": WRONG}
    derived.write_stream(rec, layer, "ngram", list(STORED), lambda rec, a, b: columns[a:b], info,
                         replace=force, progress=progress, desc="storing")
    return layer, "ngram"


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
    lines.append(f"\nthe {res['wrong']:,} characters the model gets wrong (p < 1/2), by the first oracle "
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
                   x_axis_label="characters back to the opener",
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
                    title=f"the {res['wrong']:,} characters it gets wrong, by oracle",
                    x_axis_label="% of its errors")
    right.hbar(y=cats, right=share, height=0.7, color="#e08214")
    for p in (left, right):
        p.xgrid.grid_line_color = None
    return row(left, right)
