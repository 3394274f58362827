"""Test what a cell does: pin a unit while the model reads, and measure what it costs.

A correlation can be a bystander; an ablation asks whether the model *uses* the cell
(Lakretz et al. 2019). An ``Edit`` pins one unit of one layer at every step — its hidden
output ``h`` (what the layer above, the head and the next step read) or its cell state
``c`` (then h = o · tanh(c) follows) — to zero, to its mean over the text, or to a value::

    from probe.causal import intervene
    bits = intervene.losses(model, text, [intervene.Edit(0, 89)])   # [2, T]: unedited, edited
    df = intervene.effects(model, documents, cells=[(0, 89)])       # per (layer, unit, feature)

It works alike for LSTM, GRU and RNN models: the cells to pin are the states, h in every
layer and c in an LSTM's. ``losses`` runs many edits as rows of one pass of
``probe.lm.recurrence`` (each edit a hook on its row): the layers below the edited one run
once, fused (they cannot see the edit), the edited layer one step at a time with one row
per edit, the layers above fused again, so a sweep of a whole layer costs far less than a
forward pass per unit. It equals ``probe.lm.stepwise`` with the edit applied (tested). ``effects`` turns losses into the
causal column of a finding: how much the cost of predicting the next character rises
where a feature holds, elsewhere, and against random units of the same layer.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probe.errors import ProbeError, deprecated
from probe.lm import recurrence
from probe.lm.model import CharRNN
from probe.lm.recurrence import Hook
from probe.recording import record as recorder
from probe.recording.layers import activations
from probe.text import features as features_mod
from probe.text import tokens as toks

BATCH = 128       # edits per batched pass


@dataclass(frozen=True)
class Edit:
    """Pin one cell — unit ``unit`` of stream ``stream`` ("h", the hidden output, or "c", the
    cell state) in layer ``layer`` — at every step: ``how`` is "zero", "mean" (its mean over
    the text) or a number. Written ``L:S:U=HOW`` (``0:c:89=5``), as ``--clamp`` takes it."""

    layer: int
    stream: str
    unit: int
    how: str | float = "zero"

    def __str__(self) -> str:
        return f"{self.layer}:{self.stream}:{self.unit}={self.how}"

    @property
    def point(self) -> tuple[int, str]:
        return self.layer, self.stream

    def hook(self) -> Hook:
        """The hook that pins this cell to ``how`` (a number) wherever it runs: on its point in
        ``probe.lm.recurrence.run`` (``{edit.point: edit.hook()}``), or as a ``stepwise`` edit."""
        return recurrence.pinning([(self.layer, self.stream, self.unit)], [self.how])[self.point]


def check(model: CharRNN, edits) -> None:
    """One line for the first edit the model cannot take (a state it lacks, a bad ``how``)."""
    recurrence.check_cells(model, [(e.layer, e.stream, e.unit) for e in edits])
    for e in edits:
        if isinstance(e.how, str) and e.how not in ("zero", "mean"):
            raise ProbeError(f"an edit pins to zero, mean or a number, not {e.how!r}")


def parse_how(text: str) -> str | float:
    """``--how``: zero, mean, or a number."""
    if text in ("zero", "mean"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise ProbeError(f"--how must be zero, mean or a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ProbeError(f"--how must be a finite number, got {text!r}")
    return value


def parse_cells(spec: str, flag: str = "--cells") -> list[tuple[int, str, int]]:
    """``--cells 0:c:89,1:h:158`` → [(0, "c", 89), (1, "h", 158)]: cells as layer:stream:unit.

    The old form LAYER:UNIT (``0:89``, meaning h) still works, with one deprecation line."""
    cells = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+):([a-z]+):(\d+)\s*", part)
        if m:
            cells.append((int(m.group(1)), m.group(2), int(m.group(3))))
            continue
        m = re.fullmatch(r"\s*(\d+):(\d+)\s*", part)
        if not m:
            raise ProbeError(f"{flag}: {part.strip()!r} is not LAYER:STREAM:UNIT (e.g. 0:c:89,1:h:158)")
        deprecated(f"{flag} {part.strip()}", f"{m.group(1)}:h:{m.group(2)}")
        cells.append((int(m.group(1)), "h", int(m.group(2))))
    return cells


def parse_clamp(spec: str) -> Edit:
    """``--clamp 0:c:89=5``: pin layer 0's cell state unit 89 to 5 (``0:h:89=0.9`` pins h).

    The old forms ``0:89=0.9`` and ``0:89:c=5`` still work, with one deprecation line."""
    m = re.fullmatch(r"\s*(\d+):([a-z]+):(\d+)=([^=\s]+)\s*", spec)
    if m:
        layer, stream, unit, value = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
    else:
        m = re.fullmatch(r"\s*(\d+):(\d+)(?::([hc]))?=([^=\s]+)\s*", spec)
        if not m:
            raise ProbeError(f"--clamp: {spec!r} is not LAYER:STREAM:UNIT=VALUE (e.g. 0:c:89=5)")
        layer, stream, unit, value = int(m.group(1)), m.group(3) or "h", int(m.group(2)), m.group(4)
        deprecated(f"--clamp {spec.strip()}", f"{layer}:{stream}:{unit}={value}")
    how = parse_how(value)
    if how == "mean":
        raise ProbeError(f"--clamp: {spec!r}: give a value (mean needs a text to average over)")
    return Edit(layer, stream, unit, 0.0 if how == "zero" else how)


def resolve(model: CharRNN, texts: list[str], edits: list[Edit]) -> list[Edit]:
    """The same edits with "zero" and "mean" replaced by numbers (mean: over all ``texts``)."""
    check(model, edits)
    means = {}
    if any(e.how == "mean" for e in edits):
        sums, n = {}, 0
        for text in texts:
            streams, _ = activations(model, text)
            for key, v in streams.items():
                sums[key] = sums.get(key, 0.0) + v.astype(np.float64).sum(axis=0)
            n += len(next(iter(streams.values())))  # positions: characters, or a word model's tokens
        means = {key: s / max(n, 1) for key, s in sums.items()}
    return [Edit(e.layer, e.stream, e.unit, 0.0 if e.how == "zero" else float(means[(e.layer, e.stream)][e.unit])
                 if e.how == "mean" else float(e.how)) for e in edits]


def bar_unit(model) -> str:
    """A progress bar's unit: cells times positions read (characters, or a word model's tokens)."""
    return "unit-char" if toks.of(model).kind == "chars" else "unit-token"


def _batch_losses(model: CharRNN, ids: np.ndarray, layer: int, edits: list[Edit],
                  bar=None) -> np.ndarray:
    """Losses [1 + len(edits), T] in bits: row 0 unedited, then one row per edit, all edits
    on ``layer`` and already resolved to numbers: one ``recurrence.bits`` pass, each edit a
    pin on its own row."""
    hooks = {}
    for s in {e.stream for e in edits}:
        rows = [1 + j for j, e in enumerate(edits) if e.stream == s]
        hooks[(layer, s)] = row_pins(rows, [e.unit for e in edits if e.stream == s],
                                     [float(e.how) for e in edits if e.stream == s])
    done = None if bar is None else (lambda n: bar.update(n * len(edits)))
    return recurrence.bits(model, ids, hooks, rows=1 + len(edits), done=done)


def row_pins(rows: list[int], units: list[int], values: list[float]) -> Hook:
    """The hook that sets value[rows[j], units[j]] = values[j]: row j's own edit in a batch
    of variants (in place: the step's fresh tensor)."""
    rows_t, units_t, values_t = torch.tensor(rows), torch.tensor(units), torch.tensor(values)

    def pin(layer: int, stream: str, position: int, value: torch.Tensor) -> torch.Tensor:
        value[rows_t.to(value.device), units_t.to(value.device)] = values_t.to(value.device)
        return value
    return pin


def losses(model: CharRNN, text: str, edits: list[Edit], *, batch: int = BATCH,
           progress: bool = False, bar=None) -> np.ndarray:
    """Bits per position [1 + len(edits), T] of ``text`` read from a zero state: row 0
    unedited, then one row per edit (loss[t] is the cost of position t, a character or a
    word model's token; NaN at 0).

    Edits on the same layer run ``batch`` at a time as rows of one recurrent pass."""
    model = model.eval()
    ids, _ = toks.encode(model, text)
    if len(ids) == 0:
        raise ProbeError("empty text")
    edits = resolve(model, [text], list(edits))
    out = np.full((1 + len(edits), len(ids)), np.nan, dtype=np.float32)
    own_bar = bar is None  # effects passes one bar for all its documents
    if own_bar:
        bar = tqdm(total=len(ids) * len(edits), unit=bar_unit(model), unit_scale=True,
                   disable=not progress,
                   desc="ablating")
    try:
        if not edits:
            return _batch_losses(model, ids, 0, [])
        by_layer: dict[int, list[int]] = {}
        for j, e in enumerate(edits):
            by_layer.setdefault(e.layer, []).append(j)
        for layer, rows in sorted(by_layer.items()):
            for s in range(0, len(rows), batch):
                part = rows[s:s + batch]
                res = _batch_losses(model, ids, layer, [edits[j] for j in part], bar)
                if np.isnan(out[0, 1:]).all():
                    out[0] = res[0]
                out[[1 + j for j in part]] = res[1:]
    finally:
        if own_bar:
            bar.close()
    return out


EFFECT_COLUMNS = ["layer", "stream", "unit", "feature", "delta_bits", "delta_bits_elsewhere", "random_median",
                  "ratio", "percentile", "positions"]


def effects(model: CharRNN, documents: list[tuple[str, str]], cells: list[tuple[int, str, int]] | None = None,
            *, layer: int | None = None, feature_names: list[str] | None = None, how: str | float = "zero",
            stream: str = "h", random: int = 32, seed: int = 0, batch: int = BATCH,
            progress: bool = False) -> pd.DataFrame:
    """The causal effect of each cell on predicting the next position, per feature.

    ``cells`` [(layer, stream, unit)], or ``layer`` to sweep all units of its ``stream``
    ("h" or "c"); each is pinned (``how``) on every document (``[(name, text)]``, each read from a zero state). For a
    position t (a character, or a word model's token), the effect is the change in the cost
    of position t+1 (bits): the state after reading t is what predicts it, and features
    describe that state (``position_features``: a token's at its last character). Per (layer,
    stream, unit, feature): ``delta_bits`` (mean over positions where the feature holds),
    ``delta_bits_elsewhere``, ``random_median`` (median |delta_bits| of ``random`` random
    units of the same layer, seeded; drawn from the sweep when a layer is swept),
    ``ratio`` = delta_bits / random_median, ``percentile`` of |delta_bits| among all the
    layer's units (sweeps only), ``positions`` where the feature holds.
    """
    documents = [(n, t) for n, t in documents if t]
    if not documents:
        raise ProbeError("empty text: nothing to ablate")
    if (cells is None) == (layer is None):
        raise ProbeError("give cells or a layer to sweep, not both")
    width = recurrence.widths(model)  # {(layer, stream): units}: layers may differ
    if layer is not None:
        check(model, [Edit(layer, stream, 0)])
        cells = [(layer, stream, u) for u in range(width[(layer, stream)])]
    cells = list(dict.fromkeys(cells))
    check(model, [Edit(k, s, u) for k, s, u in cells])
    points = sorted({(k, s) for k, s, _ in cells})
    fewest = min(width[p] for p in points)
    if random < 0 or random > fewest:
        raise ProbeError(f"--random must be between 0 and the layer's {fewest} units, got {random}")
    rng = np.random.default_rng(seed)
    controls = {ks: sorted(rng.choice(width[ks], random, replace=False).tolist())
                for ks in points}  # random units of the same layer and stream
    todo = list(dict.fromkeys(cells + [(k, s, u) for (k, s), us in controls.items() for u in us]))
    texts = [t for _, t in documents]
    feats = position_features(model, texts, feature_names)
    names = feature_names or [n for n in feats.columns  # every binary feature that holds somewhere
                              if features_mod.is_binary(n, feats[n].to_numpy()) and feats[n].any()]
    edits = resolve(model, texts, [Edit(k, s, u, how) for k, s, u in todo])

    # bits [1 + E, T] over all documents; delta at position t is the change at t + 1
    with tqdm(total=len(feats) * len(edits), unit=bar_unit(model), unit_scale=True,
              disable=not progress, desc="ablating") as bar:
        parts = [losses(model, t, edits, batch=batch, bar=bar) for t in texts]
    bits = np.concatenate(parts, axis=1)
    delta = np.full_like(bits[1:], np.nan)
    delta[:, :-1] = bits[1:, 1:] - bits[0, 1:]
    row = {cell: j for j, cell in enumerate(todo)}
    out = []
    for name in names:
        mask = feats[name].to_numpy() != 0
        inside = np.nanmean(np.where(mask, delta, np.nan), axis=1) if mask.any() else np.full(len(todo), np.nan)
        outside = np.nanmean(np.where(~mask, delta, np.nan), axis=1) if (~mask).any() else np.full(len(todo), np.nan)
        for k, s, u in cells:
            j = row[(k, s, u)]
            rand = np.median(np.abs([inside[row[(k, s, r)]] for r in controls[(k, s)]])) if random else np.nan
            pct = np.nan
            if layer is not None:
                mine = np.abs(inside[[row[(layer, stream, v)] for v in range(width[(layer, stream)])]])
                pct = 100.0 * np.mean(mine <= abs(inside[j]))
            out.append({"layer": k, "stream": s, "unit": u, "feature": name, "delta_bits": float(inside[j]),
                        "delta_bits_elsewhere": float(outside[j]), "random_median": float(rand),
                        "ratio": float(inside[j] / rand) if rand and np.isfinite(rand) else np.nan,
                        "percentile": pct, "positions": int(mask.sum())})
    return pd.DataFrame(out, columns=EFFECT_COLUMNS)


def position_features(model, texts: list[str], names: list[str] | None = None, *,
                      document_names: list[str] | None = None, regex: dict | None = None) -> pd.DataFrame:
    """Features of the documents ``texts`` (each lexed on its own), one row per position the
    model reads, the documents one after another: per character for a character model; per
    token for a word model, every feature read at the token's last character (the state
    after reading it) and a regex marking the tokens its matches overlap
    (``features.compute(..., spans=)``), the spans from the model's own tokenizer."""
    tok = toks.of(model)
    edges = np.cumsum([0] + [len(t) for t in texts])
    spans = None
    if tok.kind != "chars":
        spans = recorder.tokenize(tok, list(texts))[1]  # each document on its own, as recorded
    return features_mod.compute("".join(texts), names, documents=list(zip(edges[:-1].tolist(), edges[1:].tolist())),
                                document_names=document_names, regex=regex, spans=spans)


def report(df: pd.DataFrame, how: str = "zero", unit: str = "character") -> str:
    """What ``probe ablate`` prints: per feature, each cell's effect beside random units'.

    The percentile column (rank among the layer's units) is shown for a sweep only; ``unit``
    is what a position is (the model's tokenizer's ``unit``: character or token)."""
    sweep = df["percentile"].notna().any()
    lines = [f"pinning to {how}: change in bits per next {unit} (positive: the model needs the cell)"]
    for feature, g in df.groupby("feature", sort=False):
        lines += ["", f"{feature}  ({int(g['positions'].iloc[0]):,} positions)",
                  "  cell          delta_bits  elsewhere  random_median   ratio" + ("  percentile" if sweep else "")]
        for r in g.sort_values("delta_bits", ascending=False, key=np.abs).itertuples():
            pct = f"  {r.percentile:10.1f}" if sweep else ""
            cell = f"{r.layer}:{r.stream}:{r.unit}"
            lines.append(f"  {cell:<12}  {r.delta_bits:+10.4f}  {r.delta_bits_elsewhere:+9.4f}"
                         f"  {r.random_median:13.4f}  {r.ratio:+6.1f}{pct}")
    return "\n".join(lines)
