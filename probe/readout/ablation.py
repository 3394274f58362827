"""Does the model use a direction? Remove it from the state at every step and measure.

A directions spec says where a feature lies in the state (``probe.readout.directions``);
ablation asks whether the model *uses* it. ``direction`` turns a feature's read-out
weights into a unit vector per input block (in the space the read-out reads: h, and
tanh(c)); ``remove`` takes it out of a state (its component held at its mean);
``random_directions`` are the controls; ``losses`` runs every removal as one batch
(``probe.lm.recurrence``, a hook per edited stream); ``ablate`` turns the losses into one row per feature,
``report`` into text.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from probe.analysis.threads import one_torch_thread
from probe.errors import ProbeError
from probe.causal.intervene import position_features
from probe.lm import recurrence
from probe.readout.linear import blocks, check_spec, pick_names
from probe.recording import derived
from probe.text import tokens as toks
from probe.text import features as features_mod

EFFECT_COLUMNS = ["feature", "where", "delta_bits", "delta_bits_elsewhere", "random_median",
                  "random_max", "ratio", "percentile", "positions"]

Direction = dict  # {(layer, stream): (v float32 [units], mu float)}: what one ablation removes


def project(value: torch.Tensor, v: torch.Tensor, mu: float | torch.Tensor) -> torch.Tensor:
    """value − (value·v − μ) v: the component along the unit vector v set to μ, the rest
    kept. Works on one state [H] (the ``stepwise`` hook) or a batch [B, H] (v [B, H], μ [B])."""
    if value.dim() == 1:
        return value - (value @ v - mu) * v
    return value - ((value * v).sum(1) - mu)[:, None] * v


def remove(value: torch.Tensor, v: torch.Tensor, mu: float | torch.Tensor, stream: str) -> torch.Tensor:
    """A direction removed from a state as the read-out sees it: ``project`` on h; on c, which
    the read-out reads through tanh, in tanh space — u = tanh(c) projected to u', and c set
    to atanh(u') (u' clipped 1e-6 inside ±1), so tanh(c') = u' but where u' had to be
    clipped. A unit whose clipped u the edit leaves as it was keeps its c exactly (a row the
    edit leaves alone, v = 0, is untouched; a saturated c is not pulled back to the clip).
    One state [H] (``stepwise``'s hook) or a batch [B, H]."""
    if stream != "c":
        return project(value, v, mu)
    edge = 1 - 1e-6
    u = torch.tanh(value).clamp(-edge, edge)
    moved = project(u, v, mu).clamp(-edge, edge)
    return torch.where(moved == u, value, torch.atanh(moved))


def direction(spec: dict, feature: str) -> Direction:
    """The direction of a feature per input block, in the space the read-out reads (h, and
    tanh(c)): v = W_block / scale_block, normalised (the read-out's weights on the inputs
    themselves, not the standardised ones), with μ_v = mean_block · v, the inputs' mean over
    the fitting data. A block the read-out gives no weight is left out. ``remove`` takes it
    out of a state."""
    check_spec(spec)
    names = pick_names(feature, list(spec["unit_names"]), "the spec's directions are")
    f = list(spec["unit_names"]).index(names[0])
    W = spec["params"]["W"].numpy()[:, f].astype(np.float64)
    scale = spec["scale"].numpy().astype(np.float64)
    state = spec["mean"].numpy().astype(np.float64)  # of h and tanh(c), as read
    raw = {}
    for (layer, stream), sl in zip(spec["inputs"], blocks(input_widths(spec))):
        key = (int(layer), str(stream))
        w, m = W[sl] / scale[sl], state[sl]
        if key in raw:  # an input read twice: its weights add up
            w = raw[key][0] + w
        raw[key] = (w, m)
    out = {}
    for key, (w, m) in raw.items():
        norm = float(np.linalg.norm(w))
        if norm > 0:
            v = w / norm
            out[key] = (torch.from_numpy(v.astype(np.float32)), float(m @ v))
    return out


def random_directions(spec: dict, n: int, seed: int = 0) -> list[Direction]:
    """``n`` controls: per input block a random unit vector (Gaussian, normalised), with
    μ_v from the fitting data as for a feature's direction."""
    check_spec(spec)
    rng = np.random.default_rng(seed)
    state = spec["mean"].numpy().astype(np.float64)  # of h and tanh(c), as read
    cols = blocks(input_widths(spec))
    out = []
    for _ in range(n):
        row = {}
        for (layer, stream), sl in zip(spec["inputs"], cols):
            v = rng.standard_normal(sl.stop - sl.start)
            v /= np.linalg.norm(v)
            row[(int(layer), str(stream))] = (torch.from_numpy(v.astype(np.float32)), float(state[sl] @ v))
        out.append(row)
    return out


def input_widths(spec: dict) -> list[int]:
    """Columns of each input block: the spec's own ``widths``, or (specs made before layers
    could differ) the inputs splitting the columns evenly."""
    if spec.get("widths"):
        return [int(w) for w in spec["widths"]]
    n = len(spec["inputs"])
    return [len(spec["mean"]) // n] * n


def check_model(model, spec: dict) -> None:
    """One line if the model cannot take the spec's ablation: a layer it lacks, a stream
    other than h and c (LSTM) or h (GRU, RNN), streams of another width."""
    check_spec(spec)
    cell = getattr(model, "cell", "lstm")
    allowed = recurrence.PINNABLE.get(cell, ("h",))
    for layer, stream in spec["inputs"]:
        if not 0 <= int(layer) < model.layers:
            raise ProbeError(f"the spec reads layer {layer}; the model's layers are 0..{model.layers - 1}")
        if stream not in allowed:
            raise ProbeError(f"the spec reads {stream} of layer {layer}: ablation removes directions from "
                             f"{' and '.join(allowed)} of {'an' if cell == 'lstm' else 'a'} {cell.upper()} model")
    have = recurrence.widths(model)
    derived.check_widths(spec, [have[(int(k), str(s))] for k, s in spec["inputs"]], "the model")
    sha = getattr(model, "sha256", "")
    if spec["model_sha256"] and sha and sha != spec["model_sha256"]:
        warnings.warn("the spec was fitted on recordings of another checkpoint (model_sha256 differs)",
                      stacklevel=3)


def stacked(rows: list[Direction], B: int) -> dict:
    """{(layer, stream): (V [B, width], μ [B])}: row 0 (unedited) and rows without an edit of
    a block have v = 0, which leaves the state exactly as it is."""
    out = {}
    for j, row in enumerate(rows, 1):
        for key, (v, mu) in row.items():
            if key not in out:
                out[key] = (torch.zeros(B, len(v)), torch.zeros(B))
            out[key][0][j] = v
            out[key][1][j] = mu
    return out


def losses(model, text: str, rows: list[Direction]) -> np.ndarray:
    """Bits per position [1 + len(rows), T] of ``text`` read from a zero state: row 0
    unedited, then one row per direction removed (``remove`` at every step, in every
    block it names; loss[t] is the cost of position t — a character, or a word model's
    token — NaN at 0).

    One batch (``probe.lm.recurrence.bits``, a hook on each edited stream): the layers below
    the lowest edited one run once (they cannot see the edit), the edited ones step by step
    with one row per direction, the layers above fused, as ``intervene.losses`` does. It
    equals ``probe.lm.stepwise`` with ``remove`` in its edit hook (tested)."""
    model = model.eval()
    ids, _ = toks.encode(model, text)
    if len(ids) == 0:
        raise ProbeError("empty text")
    hooks = {key: remover(V, mu) for key, (V, mu) in stacked(rows, 1 + len(rows)).items()}
    with one_torch_thread():  # a step is a few small products: more threads only wait
        return recurrence.bits(model, ids, hooks, rows=1 + len(rows))


def remover(V: torch.Tensor, mu: torch.Tensor) -> recurrence.Hook:
    """The hook that removes row j's direction V[j] (to its mean mu[j]) from its stream."""
    return lambda layer, stream, position, value: remove(value, V.to(value.device), mu.to(value.device), stream)


def documents(text, chars: int) -> list[tuple[str, str]]:
    """[(name, text)] of at most ``chars`` characters in all, empty documents dropped."""
    if isinstance(chars, bool) or not isinstance(chars, (int, np.integer)) or chars < 2:
        raise ProbeError(f"chars must be at least 2, got {chars!r}")
    docs = [("text", text)] if isinstance(text, str) else [(str(n), t) for n, t in text]
    out, left = [], int(chars)
    for name, t in docs:
        if t and left > 0:
            out.append((name, t[:left]))
            left -= len(out[-1][1])
    if not out:
        raise ProbeError("empty text: nothing to ablate")
    return out


def ablate(model, text, spec: dict, features: list[str] | None = None, *, random: int = 16,
           seed: int = 0, chars: int = 20_000, streams=None, progress: bool = False) -> pd.DataFrame:
    """Does the model use a feature's direction? Remove it at every step and measure.

    For each feature's direction (``direction``), in every input block (layer, stream) of
    its read-out the component of the state along v is set to its mean over the fitting
    data, μ_v, at every step (``project``: h' = h − (h·v − μ_v) v), so the read-out loses
    what it reads while the state is not shifted on average. The read-out reads c through
    tanh, so c is edited in tanh space (``remove``): tanh(c) is projected and c moved to
    match (a first version edited c itself, taking tanh as the identity; with many c units
    saturated that left some read-outs intact and reversed others). Edited c feeds
    h = o · tanh(c) and the next step; edited h the
    layer above, the head and the next step, as ``probe.lm.stepwise``'s edit hook would.
    ``random`` controls remove random unit directions of every block the same way, μ from
    the fitting data too (``random_directions``, seeded). All directions and controls run
    as one batch (``losses``) over the documents (``text``: a string or [(name, text)],
    each read from a zero state, the first ``chars`` characters in all). ``streams`` (say
    ``("h",)``) edits only those streams' blocks, directions and controls alike (default:
    every block the read-out reads; on the shipped model the c blocks cost the most).

    As in ``intervene.effects``, the effect at position t is the change in the cost of
    position t + 1 (the state after reading t predicts it); a position is a character, or a
    word model's token, with the features read per token (``intervene.position_features``). One row per feature:
    ``delta_bits`` is its mean where a binary feature holds, or over all positions for a
    count (column, depth: its direction carries the value everywhere, so there is no
    "elsewhere"); ``delta_bits_elsewhere`` where a binary feature does not hold (NaN for
    counts); ``random_median`` and ``random_max`` of the controls' |delta| over the same
    positions; ``ratio`` = delta_bits / random_median; ``percentile`` of |delta_bits|
    among the controls' (100: larger than every one); ``positions`` counted. Regex
    features are recomputed from the spec's ``config``; others must be built in.
    """
    check_model(model, spec)
    names = pick_names(features, list(spec["unit_names"]), "the spec's directions are")
    if isinstance(random, bool) or not isinstance(random, (int, np.integer)) or random < 0:
        raise ProbeError(f"random must be a count of random directions (0 or more), got {random!r}")
    docs = documents(text, chars)
    regex = dict(spec["config"].get("regex") or {})
    for n in names:
        if n not in features_mod.FEATURES and n not in regex:
            raise ProbeError(f"feature {n!r} is neither built in nor a regex of the spec: ablate cannot tell "
                             "where it holds")
    texts = [t for _, t in docs]
    feats = position_features(model, texts, names, document_names=[n for n, _ in docs],
                              regex={k: v for k, v in regex.items() if k in names})  # per position
    rows = [direction(spec, n) for n in names] + random_directions(spec, int(random), seed)
    if streams is not None:
        streams = [streams] if isinstance(streams, str) else list(streams)
        read = sorted({s for _, s in spec["inputs"]})
        if not set(streams) & set(read):
            raise ProbeError(f"streams {' '.join(map(str, streams))}: the spec reads only {' '.join(read)}")
        rows = [{key: e for key, e in row.items() if key[1] in streams} for row in rows]

    from tqdm.auto import tqdm
    parts = [losses(model, t, rows) for t in tqdm(texts, unit="doc", disable=not progress, desc="ablating")]
    bits = np.concatenate(parts, axis=1)
    delta = np.full_like(bits[1:], np.nan)
    delta[:, :-1] = bits[1:, 1:] - bits[0, 1:]
    F = len(names)
    out = []
    for j, name in enumerate(names):
        values = feats[name].to_numpy()
        binary = features_mod.is_binary(name, values)
        mask = values != 0 if binary else np.ones(len(values), bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a mask with no finite delta: NaN
            inside = np.nanmean(delta[:, mask], axis=1) if mask.any() else np.full(len(delta), np.nan)
            outside = (np.nanmean(delta[j, ~mask]) if binary and (~mask).any() else np.nan)
        rand = np.abs(inside[F:])
        med = float(np.median(rand)) if random else np.nan
        mine = float(inside[j])
        out.append({"feature": name, "where": "holds" if binary else "all", "delta_bits": mine,
                    "delta_bits_elsewhere": float(outside), "random_median": med,
                    "random_max": float(rand.max()) if random else np.nan,
                    "ratio": mine / med if med and np.isfinite(med) else np.nan,
                    "percentile": 100.0 * float(np.mean(rand <= abs(mine))) if random else np.nan,
                    "positions": int(mask.sum())})
    return pd.DataFrame(out, columns=EFFECT_COLUMNS)


def report(df: pd.DataFrame, unit: str = "character") -> str:
    """The ablation table as text: per feature its direction's effect beside random ones'
    (``unit``: what a position is, the model's tokenizer's ``unit``)."""
    lines = ["removing each feature's direction (its component held at its mean): change in bits per next "
             f"{unit}", "  feature           positions   delta_bits  elsewhere  random_median  random_max"
             "   ratio  percentile"]
    for r in df.itertuples():
        lines.append(f"  {r.feature:<16} {r.positions:>10,}  {r.delta_bits:+11.4f}  {r.delta_bits_elsewhere:+9.4f}"
                     f"  {r.random_median:13.4f}  {r.random_max:10.4f}  {r.ratio:+6.1f}  {r.percentile:10.1f}")
    return "\n".join(lines)
