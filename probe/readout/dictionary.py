"""A sparse dictionary of one recorded stream: a top-k sparse autoencoder.

A cell can answer to several things at once, and a feature can be spread over many cells
(``probe.readout.probes``). A dictionary learns ``features`` directions in one layer's state such
that every position is close to the sum of at most ``k`` of them, each with a strength ≥ 0:
those strengths are its derived units f0 … fN, saved as a ``probe.recording.derived`` spec of kind
"dictionary". After Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (TopK,
AuxK, unit-norm decoder) and Bricken et al. 2023, "Towards monosemanticity"::

    z  = TopK(relu(W_enc (x - b_dec) + b_enc), k)     # [features], at most k nonzero
    x̂  = z W_dec + b_dec                               # [D]

x is one standardised input row (``derived.read_inputs``: ``c`` is read through tanh);
``W_enc`` and ``W_dec`` are both [features, D]: row j is feature j's encoder and decoder
direction, decoder rows of unit length, so a code is a strength along its direction::

    from probe.readout import dictionary
    from probe.recording import derived
    with probe.open_recording("recordings/stdlib-train.h5") as rec:
        spec = dictionary.train(rec, 1, "c", out="dict-1c.pt", progress=True)
        codes = dictionary.transform(spec, derived.read_inputs(rec, spec["inputs"], 0, 1000))
        dictionary.quality(spec, rec)   # explained variance, l0, dead, loss recovered

``train`` streams the recording: the training part is read in chunks of ``CHUNK_ROWS``
rows from random HDF5-chunk-aligned blocks, so its memory does not grow with the length
of the recording; ``quality`` scores on the held-out part (``probes.split_positions``).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.files import check_target, interrupts
from probe.recording import derived, h5format

FEATURES = 1024      # dictionary size: 4 × a 256-unit layer
K = 32               # active features per position
STEPS = 6000         # held-out explained variance on stdlib, layer 1 c: 0.896 at 3,000, 0.913 at 6,000
BATCH = 2048
LR = 1e-3            # Adam; warmed up over the first 5 % of steps, decayed to 0 over the last 20 %
AUX_COEF = 1 / 32    # weight of the AuxK loss (Gao et al.)
DEAD_STEPS = 100     # a feature that has not fired for this many batches is dead (for AuxK)
CHUNK_ROWS = 65536   # training rows in memory at once
STAT_ROWS = 65536    # training rows the mean and scale are computed on
EVAL_BATCH = 8192    # rows encoded at once by transform
SAVE_EVERY = 200     # steps between resume checkpoints
EPS = 1e-6           # c = arctanh(clip(x̂, -1 + EPS, 1 - EPS)) for a stream read through tanh
LOG2E = 1.4426950408889634


# ---- the autoencoder ------------------------------------------------------------------------
def _encode(p: dict, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [n, k] ≥ 0, indices [n, k], pre-activations [n, F]) of standardised rows x."""
    pre = torch.addmm(p["b_enc"], x - p["b_dec"], p["W_enc"].T)
    vals, idx = pre.topk(k, dim=1)
    return torch.relu(vals), idx, pre


def _decode(p: dict, vals: torch.Tensor, idx: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Σ vals · W_dec[idx] (+ b_dec): [n, D]. A weighted embedding bag: k rows per input
    row are read, where a dense product with the whole code would read all of W_dec."""
    out = torch.nn.functional.embedding_bag(idx, p["W_dec"], per_sample_weights=vals, mode="sum")
    return out + p["b_dec"] if bias else out


def _aux_k(D: int) -> int:
    """Gao et al.'s k_aux: a power of two near half the input width."""
    return 2 ** max(0, round(math.log2(max(D / 2, 1))))


def _new(sample: np.ndarray, features: int, seed: int, lr: float) -> dict:
    """A fresh training state: random unit decoder rows, W_enc = W_dec (the transpose in the
    column convention), b_enc = 0, b_dec = the sample's coordinate-wise median; Adam."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(features, sample.shape[1], generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": W_dec.clone(), "b_enc": torch.zeros(features), "W_dec": W_dec,
              "b_dec": torch.from_numpy(np.median(sample, axis=0).astype(np.float32))}
    for t in params.values():
        t.requires_grad_(True)
    return {"params": params, "adam": torch.optim.Adam(list(params.values()), lr=lr), "step": 0,
            "since": torch.zeros(features, dtype=torch.long)}  # batches since each feature fired


def _lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, min(100, steps // 20))
    f = min(1.0, (step + 1) / warm)
    decay = max(1, steps // 5)
    return lr * f * min(1.0, (steps - step) / decay)


def _step(state: dict, x: torch.Tensor, k: int, lr: float, aux_k: int, aux_coef: float,
          dead_steps: int) -> float:
    """One Adam step on a batch of standardised rows; returns its normalised MSE (1 − EV).

    The loss is ‖x − x̂‖² over the batch's variance, plus ``aux_coef`` × AuxK: the error
    left over, modelled by the top ``aux_k`` dead features alone (Gao et al.), which gives
    features that stopped firing a gradient back towards the data. The decoder's gradient
    loses its component along each row before the step and the rows are renormalised
    after it, so they stay unit length."""
    p, adam, since = state["params"], state["adam"], state["since"]
    for group in adam.param_groups:
        group["lr"] = lr
    vals, idx, pre = _encode(p, x, k)
    err = x - _decode(p, vals, idx)
    var = ((x - x.mean(0)) ** 2).sum(1).mean().clamp_min(1e-12)
    mse = (err ** 2).sum(1).mean() / var
    loss = mse
    dead = since >= dead_steps
    if aux_k and aux_coef and bool(dead.any()):
        ka = min(aux_k, int(dead.sum()))
        avals, aidx = pre.masked_fill(~dead, -torch.inf).topk(ka, dim=1)
        residual = err.detach()
        e_hat = _decode(p, torch.relu(avals), aidx, bias=False)
        aux = ((residual - e_hat) ** 2).sum(1).mean() / (residual ** 2).sum(1).mean().clamp_min(1e-12)
        loss = loss + aux_coef * aux
    adam.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        W, G = p["W_dec"], p["W_dec"].grad
        G -= (G * W).sum(1, keepdim=True) * W
        adam.step()
        W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        fired = torch.zeros_like(dead)
        fired[idx[vals > 0]] = True
        since += 1
        since[fired] = 0
    state["step"] += 1
    return float(mse.detach())


def _check_sizes(features: int, k: int, steps: int, batch: int, lr: float) -> None:
    if not isinstance(features, (int, np.integer)) or features < 1:
        raise ProbeError(f"features must be at least 1, got {features!r}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= features:
        raise ProbeError(f"k must be between 1 and features ({features}), got {k!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ProbeError(f"steps must be at least 1, got {steps!r}")
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ProbeError(f"batch must be at least 1, got {batch!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ProbeError(f"lr must be a positive number, got {lr!r}")


def _params(state: dict, k: int) -> dict:
    """The spec's params: detached float32 copies, and k."""
    return {**{n: t.detach().clone() for n, t in state["params"].items()}, "k": int(k)}


def fit_arrays(X: np.ndarray, *, features: int = FEATURES, k: int = K, steps: int = STEPS,
               batch: int = BATCH, lr: float = LR, seed: int = 0, aux_k: int | None = None,
               aux_coef: float = AUX_COEF, dead_steps: int = DEAD_STEPS,
               progress: bool = False) -> dict:
    """Train a dictionary on rows X [n, D] already standardised (the trainer ``train`` uses,
    on an array in memory). Batch s is ``batch`` rows drawn with replacement by a generator
    seeded with (seed, s), so the same seed gives the same result. Returns the params:
    W_enc, b_enc, W_dec, b_dec (float32 tensors) and k."""
    _check_sizes(features, k, steps, batch, lr)
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ProbeError(f"X must be a [rows, columns] array, got shape {X.shape}")
    if len(X) < batch:
        raise ProbeError(f"{len(X):,} rows, fewer than a batch of {batch:,}")
    if not np.isfinite(X).all():
        raise ProbeError("X has NaN or infinite values")
    aux_k = _aux_k(X.shape[1]) if aux_k is None else aux_k
    state = _new(X[np.random.default_rng([seed, 0]).choice(len(X), min(len(X), STAT_ROWS), replace=False)],
                 features, seed, lr)
    data = torch.from_numpy(np.ascontiguousarray(X))
    with tqdm(total=steps, disable=not progress, unit="step", desc="dictionary") as bar:
        while state["step"] < steps:
            s = state["step"]
            rows = torch.from_numpy(np.random.default_rng([seed, 1, s]).integers(0, len(X), batch))
            mse = _step(state, data[rows], k, _lr_at(s, steps, lr), aux_k, aux_coef, dead_steps)
            bar.update(1)
            bar.set_postfix(fvu=f"{mse:.3f}", refresh=False)
    return _params(state, k)


# ---- reading a recording ----------------------------------------------------------------------
def _blocks(mask: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, rows of the part) of every aligned block holding some of ``mask``."""
    starts = np.arange(0, len(mask), block)
    counts = np.add.reduceat(mask.astype(np.int64), starts) if len(mask) else np.zeros(0, np.int64)
    keep = counts > 0
    return starts[keep], counts[keep]


def _gather(rec, inputs, mask: np.ndarray, n: int, rng: np.random.Generator,
            block: int = h5format.CHUNK_T) -> np.ndarray:
    """``n`` rows of the part ``mask`` (all of it if smaller), shuffled, as read_inputs gives
    them: whole aligned blocks are read in random order (one HDF5 chunk row each, cheap)
    until there are enough rows, so the memory is about n + one block whatever the length."""
    starts, counts = _blocks(mask, block)
    order = rng.permutation(len(starts))
    take = order[:int(np.searchsorted(np.cumsum(counts[order]), n) + 1)]
    parts = []
    for j in np.sort(take):
        a = int(starts[j])
        b = min(a + block, len(mask))
        x = derived.read_inputs(rec, inputs, a, b)
        parts.append(x[mask[a:b]])
    x = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return x[rng.permutation(len(x))[:n]]


def split(rec, held_out: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) masks over the recording: ``probes.split_positions`` with its own
    seed (0), whatever the dictionary's seed, so dictionaries of a recording share a test."""
    from probe.readout.probes import split_positions
    return split_positions(len(rec), held_out)


def _resume_path(out: Path) -> Path:
    from probe.lm.train import resume_path
    return resume_path(out)


def train(rec, layer: int, stream: str, *, features: int = FEATURES, k: int = K, steps: int | None = None,
          batch: int = BATCH, lr: float = LR, seed: int = 0, held_out: float = 0.2,
          out: str | os.PathLike | None = None, resume: bool = False, force: bool = False,
          progress: bool = False, name: str = "dict", aux_k: int | None = None,
          aux_coef: float = AUX_COEF, dead_steps: int = DEAD_STEPS, model=None) -> dict:
    """Train a dictionary of ``layer``'s ``stream`` in ``rec`` and return its spec.

    Inputs are standardised with the mean and one scale (the root mean variance over the
    units, so E‖x − mean‖² = D; every unit keeps its share of the state) computed on up to
    ``STAT_ROWS`` training rows. The training part is the complement of ``held_out`` of the
    recording's segments (``split``); it is read a chunk of ``CHUNK_ROWS`` rows at a time,
    each chunk from its own generator seeded with (seed, chunk), so a run is a function of
    its arguments alone. ``steps`` None is ``STEPS``. ``aux_k`` (None: a power of two near
    D / 2), ``aux_coef`` and ``dead_steps`` set the AuxK loss (see ``_step``).

    ``spec["metrics"]`` holds ``quality`` on the held-out part (``model``, else the
    recording's own); without a model to run, no ``loss_recovered`` but a ``note`` saying why.

    With ``out``: the spec is saved there (``derived.save``; an existing file is refused
    unless ``force``), and a resumable state ``NAME.resume.pt`` is written every
    ``SAVE_EVERY`` steps and on Ctrl-C or SIGTERM; ``resume`` continues from it with its
    stored settings (the other arguments are ignored, but ``steps``, which may extend the
    run) and ends where an uninterrupted run would have. The state file is removed once the
    spec is saved.
    """
    rec.check(layer, stream)
    inputs = [[int(layer), str(stream)]]
    D = sum(derived.width(rec, inputs))
    out = Path(out) if out is not None else None
    rpath = _resume_path(out) if out is not None else None
    if resume:
        if out is None:
            raise ProbeError("resume needs out: the state is kept beside the output file")
        if not rpath.is_file():
            raise ProbeError(f"{rpath}: no resumable state to resume from")
        try:
            saved = torch.load(rpath, map_location="cpu", weights_only=True)
            cfg = dict(saved["config"])
        except Exception as e:  # noqa: BLE001 - any unreadable file: one line
            raise ProbeError(f"{rpath}: not a resumable dictionary state ({type(e).__name__})") from None
        if [cfg["layer"], cfg["stream"]] != inputs[0] or saved["fitted_on"]["length"] != len(rec):
            raise ProbeError(f"{rpath}: was started on layer {cfg['layer']} {cfg['stream']} of a "
                             f"{saved['fitted_on']['length']:,}-character recording, not this one")
        if steps is not None and steps != cfg["steps"]:
            if steps <= saved["step"]:
                raise ProbeError(f"{rpath}: already at step {saved['step']}; steps {steps} would not train further")
            cfg["steps"] = steps
    else:
        cfg = {"layer": int(layer), "stream": str(stream), "features": features, "k": k,
               "steps": STEPS if steps is None else steps,
               "batch": batch, "lr": lr, "seed": seed, "held_out": held_out,
               "aux_k": _aux_k(D) if aux_k is None else aux_k, "aux_coef": aux_coef,
               "dead_steps": dead_steps, "chunk_rows": CHUNK_ROWS, "stat_rows": STAT_ROWS,
               "split": "probes.split_positions(length, held_out), seed 0", "name": name,
               "scaling": "mean and one scale (root mean variance of the units)"}
        if out is not None and rpath.exists() and not force:
            raise ProbeError(f"{rpath}: already exists (an interrupted run); pass --resume to continue it "
                             "or --force to start again")
    if out is not None:
        check_target(out, force=force)
    features, k, steps, batch, lr, seed, held_out = (cfg[n] for n in ("features", "k", "steps", "batch",
                                                                      "lr", "seed", "held_out"))
    name = cfg["name"]
    _check_sizes(features, k, steps, batch, lr)
    if not 0 < held_out < 1:
        raise ProbeError(f"held_out must be a fraction between 0 and 1, got {held_out!r}")
    train_mask, _ = split(rec, held_out)
    n_train = int(train_mask.sum())
    if n_train < batch:
        raise ProbeError(f"{rec.path}: {n_train:,} training characters (after holding out "
                         f"{held_out:.0%}), fewer than a batch of {batch:,}")
    fitted_on = {"path": str(rec.path), "length": len(rec), "created": rec.created}

    if resume:
        mean, scale = saved["mean"], saved["scale"]
        state = _new(np.zeros((1, D), np.float32), features, seed, lr)
        with torch.no_grad():
            for n, t in state["params"].items():
                t.copy_(saved["params"][n])
        state["adam"].load_state_dict(saved["adam"])
        state["step"], state["since"] = int(saved["step"]), saved["since"].clone()
    else:
        sample = _gather(rec, inputs, train_mask, STAT_ROWS, np.random.default_rng([seed, 0]))
        mu = sample.mean(0, dtype=np.float64)
        sd = float(np.sqrt(((sample - mu) ** 2).mean(0, dtype=np.float64).mean()))
        mean = torch.from_numpy(mu.astype(np.float32))
        scale = torch.full((D,), sd if sd > 0 else 1.0, dtype=torch.float32)
        state = _new((sample - mean.numpy()) / scale.numpy(), features, seed, lr)
        del sample

    per_chunk = max(1, min(cfg["chunk_rows"], n_train) // batch)  # batches per chunk
    mu_np, sd_np = mean.numpy(), scale.numpy()
    chunk: tuple[int, torch.Tensor | None] = (-1, None)

    def save_state() -> None:
        from probe.files import atomic
        with atomic(rpath) as tmp:
            torch.save({"format": "probe-dictionary-resume", "config": cfg, "fitted_on": fitted_on,
                        "mean": mean, "scale": scale, "step": state["step"], "since": state["since"],
                        "params": {n: t.detach() for n, t in state["params"].items()},
                        "adam": state["adam"].state_dict()}, tmp)

    bar = tqdm(total=steps, initial=state["step"], disable=not progress, unit="step", desc="dictionary",
               dynamic_ncols=True)
    with interrupts() as stop:
        while state["step"] < steps:
            if stop.is_set():
                bar.close()
                if out is None:
                    raise ProbeError(f"interrupted at step {state['step']}")
                save_state()
                raise ProbeError(f"interrupted at step {state['step']}; resumable state saved to {rpath} "
                                 "(continue with resume)")
            s = state["step"]
            c, j = divmod(s, per_chunk)
            if chunk[0] != c:
                chunk = (-1, None)  # free the old chunk before reading the next
                x = _gather(rec, inputs, train_mask, per_chunk * batch, np.random.default_rng([seed, 1, c]))
                chunk = (c, torch.from_numpy((x - mu_np) / sd_np))
                del x
            xb = chunk[1][j * batch:(j + 1) * batch]
            mse = _step(state, xb, k, _lr_at(s, steps, lr), cfg["aux_k"], cfg["aux_coef"], cfg["dead_steps"])
            bar.update(1)
            dead = float((state["since"] >= cfg["dead_steps"]).float().mean())
            bar.set_postfix(fvu=f"{mse:.3f}", dead=f"{dead:.0%}", refresh=False)
            if out is not None and state["step"] % SAVE_EVERY == 0 and state["step"] < steps:
                save_state()
    bar.close()
    chunk = (-1, None)
    if out is not None:
        save_state()  # the training is done: an interrupted scoring resumes straight to it

    spec = {"format": derived.FORMAT, "version": derived.VERSION, "kind": "dictionary", "stream": name,
            "layer": int(layer), "inputs": inputs, "unit_names": [f"f{j}" for j in range(features)],
            "model_sha256": rec.model_sha256, "fitted_on": fitted_on, "mean": mean, "scale": scale,
            "params": _params(state, k), "metrics": {}, "config": cfg}
    spec["metrics"] = _metrics(spec, rec, model)
    if out is not None:
        derived.save(spec, out)
        rpath.unlink(missing_ok=True)
    return spec


def _metrics(spec: dict, rec, model) -> dict:
    """``quality`` on the held-out part, for the spec's metrics; no loss without a model."""
    _, test = split(rec, spec["config"]["held_out"])
    if test.sum() < 2:
        return {"note": "too short to hold out rows for scoring"}
    try:  # the model: the argument, else the recording's own
        if model is None:
            from probe.lm.model import for_recording
            model = for_recording(rec)[0]
        return quality(spec, rec, model=model)
    except ProbeError as e:  # no model, or not one that fits: the other scores still count
        note = f"loss_recovered not measured: {e}"
    return {**quality(spec, rec, loss_chars=0), "note": note}


# ---- applying a dictionary --------------------------------------------------------------------
def _torch_params(spec: dict) -> tuple[dict, int]:
    if not isinstance(spec, dict) or spec.get("kind") != "dictionary":
        kind = spec.get("kind") if isinstance(spec, dict) else type(spec).__name__
        raise ProbeError(f"a {kind!r} spec is not a dictionary")
    p = spec["params"]
    return {n: p[n].detach().float() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}, int(p["k"])


@torch.no_grad()
def transform(spec: dict, x: np.ndarray) -> np.ndarray:
    """The codes float32 [n, features] of input rows x [n, D] as ``derived.read_inputs``
    gives them (standardised here): ≥ 0, at most k nonzero per row. Encoded ``EVAL_BATCH``
    rows at a time."""
    p, k = _torch_params(spec)
    z = derived.standardise(spec, np.asarray(x, dtype=np.float32))
    F = p["W_enc"].shape[0]
    out = np.zeros((len(z), F), dtype=np.float32)
    w_t = p["W_enc"].T.contiguous()
    for a in range(0, len(z), EVAL_BATCH):
        zb = torch.from_numpy(np.ascontiguousarray(z[a:a + EVAL_BATCH]))
        pre = torch.addmm(p["b_enc"], zb - p["b_dec"], w_t).numpy()  # [n, F]
        # the k-th largest per row by numpy's partition (3x faster than torch.topk here), then
        # every pre-activation at least that large; rows where ties let in more than k (rare)
        # are redone with topk, so each row keeps exactly the k that _encode keeps
        kth = np.partition(pre, F - k, axis=1)[:, F - k:F - k + 1]
        keep = pre >= kth
        block = np.where(keep, np.maximum(pre, 0), 0)
        over = np.flatnonzero(keep.sum(1) > k)
        if len(over):
            vals, idx, _ = _encode(p, zb[over], k)
            block[over] = 0
            torch.from_numpy(block)[over] = torch.zeros(len(over), F).scatter_(1, idx, vals)
        out[a:a + len(block)] = block
    return out


@torch.no_grad()
def reconstruct(spec: dict, x: np.ndarray) -> np.ndarray:
    """x̂ [n, D] for input rows x [n, D] (as read_inputs gives them), in their own units."""
    p, k = _torch_params(spec)
    z = torch.from_numpy(np.ascontiguousarray(derived.standardise(spec, np.asarray(x, dtype=np.float32))))
    out = torch.cat([_decode(p, *_encode(p, z[a:a + EVAL_BATCH], k)[:2])
                     for a in range(0, len(z), EVAL_BATCH)]) if len(z) else z
    return (out * spec["scale"].float() + spec["mean"].float()).numpy()


# ---- how good it is -------------------------------------------------------------------------
def quality(spec: dict, rec, *, rows: int = 50_000, loss_chars: int = 20_000, model=None,
            whole: bool = False) -> dict:
    """How well the dictionary describes the held-out part of ``rec`` (the complement of
    its training part: ``split`` with the spec's ``held_out``), or with ``whole`` all of it
    (a recording of text the dictionary never saw).

    On up to ``rows`` held-out rows, in standardised space: ``explained_variance``
    1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄ the rows' own mean), ``l0`` (nonzero codes per row),
    ``dead_fraction`` (features that fire on none of them). ``loss_recovered``: the model
    (``model``, else the recording's own, ``model.for_recording``) reads up to
    ``loss_chars`` held-out characters — the start of each held-out segment, cut at
    document starts, each piece from a zero state — three times: clean, with the layer's
    stream replaced at every step by its reconstruction (through arctanh for ``c``), and
    with it zeroed; (L_zero − L_recon) / (L_zero − L_clean) of the bits per character
    (1: nothing the model uses is lost; 0: as bad as no state). ``loss_chars=0`` skips it.
    """
    _torch_params(spec)  # a dictionary, or a one-line error
    derived.check(spec, "spec")
    if len(spec["inputs"]) != 1:
        raise ProbeError("quality scores a dictionary of one stream; this one reads "
                         f"{len(spec['inputs'])}")
    layer, stream = int(spec["inputs"][0][0]), str(spec["inputs"][0][1])
    rec.check(layer, stream)
    _, test = split(rec, spec["config"].get("held_out", 0.2))
    if whole:
        test = np.ones(len(rec), bool)
    if not test.any():
        raise ProbeError(f"{rec.path}: no held-out characters to score on")
    x = _gather(rec, spec["inputs"], test, rows, np.random.default_rng(0))
    codes = transform(spec, x)
    z = derived.standardise(spec, x).astype(np.float64)
    zhat = (reconstruct(spec, x).astype(np.float64) - spec["mean"].numpy()) / spec["scale"].numpy()
    total = ((z - z.mean(0)) ** 2).sum()
    out = {"explained_variance": float(1 - ((z - zhat) ** 2).sum() / total) if total > 0 else float("nan"),
           "l0": float((codes > 0).sum(1).mean()), "dead_fraction": float(((codes > 0).sum(0) == 0).mean()),
           "rows": len(x)}
    if loss_chars > 0:
        if model is None:
            from probe.lm.model import for_recording
            model = for_recording(rec)[0]
        from probe.analysis.detectors import one_torch_thread
        with one_torch_thread():  # a step is a few small products: more threads only wait (100x slower busy)
            out.update(_loss_recovered(spec, rec, model, test, loss_chars))
    return out


def _recon_fn(spec: dict, stream: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """value [n, H] of the stream inside the model → its reconstruction, in the same units."""
    p, k = _torch_params(spec)
    mean, scale = spec["mean"].float(), spec["scale"].float()
    bounded = h5format.is_bounded(stream)

    def recon(v: torch.Tensor) -> torch.Tensor:
        x = v if bounded else torch.tanh(v)
        xh = _decode(p, *_encode(p, (x - mean) / scale, k)[:2]) * scale + mean
        return xh if bounded else torch.atanh(xh.clamp(-1 + EPS, 1 - EPS))
    return recon


CELL_STREAMS = {"lstm": ("i", "f", "g", "o", "c", "h"), "gru": ("r", "z", "n", "h"), "rnn": ("h",)}


@torch.no_grad()
def _spliced_bits(model, ids: np.ndarray, layer: int, stream: str,
                  recon: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Bits [3, T − 1] of characters 1 … T − 1 of ids read from a zero state: row 0 clean,
    row 1 with ``layer``'s ``stream`` replaced by recon(it) at every step, row 2 with it
    zero. The layers below run once, fused; the edited layer one step at a time (the
    equations of ``probe.lm.stepwise``), for the three rows at once; the layers above fused."""
    from probe.recording.record import layer_modules
    cell, H = getattr(model, "cell", "lstm"), model.units
    modules = layer_modules(model)
    x = model.embed(torch.from_numpy(ids))  # [T, E]
    for j in range(layer):
        x = modules[j](x[None])[0][0]
    m = modules[layer]
    gi = torch.addmm(m.bias_ih_l0, x, m.weight_ih_l0.T)  # [T, gates × H]
    w_hh_t, b_hh = m.weight_hh_l0.T.contiguous(), m.bias_hh_l0

    def named(s: str, v: torch.Tensor) -> torch.Tensor:
        if s != stream:
            return v
        v = v.clone()
        v[1] = recon(v[1:2])[0]
        v[2] = 0
        return v

    h, c = torch.zeros(3, H), torch.zeros(3, H)
    hs = torch.empty(3, len(ids), H)
    for t in range(len(ids)):
        gh = torch.addmm(b_hh, h, w_hh_t)  # [3, gates × H]
        if cell == "lstm":  # PyTorch's order i f g o
            z = gi[t] + gh
            i = named("i", torch.sigmoid(z[:, :H]))
            f = named("f", torch.sigmoid(z[:, H:2 * H]))
            g = named("g", torch.tanh(z[:, 2 * H:3 * H]))
            o = named("o", torch.sigmoid(z[:, 3 * H:]))
            c = named("c", f * c + i * g)
            h = named("h", o * torch.tanh(c))
        elif cell == "gru":  # r z n
            r = named("r", torch.sigmoid(gi[t, :H] + gh[:, :H]))
            u = named("z", torch.sigmoid(gi[t, H:2 * H] + gh[:, H:2 * H]))
            n = named("n", torch.tanh(gi[t, 2 * H:] + r * gh[:, 2 * H:]))
            h = named("h", (1 - u) * n + u * h)
        else:
            h = named("h", torch.tanh(gi[t] + gh))
        hs[:, t] = h
    y = hs
    for j in range(layer + 1, model.layers):
        y = modules[j](y)[0]  # [3, T, H]
    logp = torch.log_softmax(model.head(y[:, :-1]), dim=-1)  # [3, T − 1, V]
    nxt = torch.from_numpy(ids[1:])[None, :, None].expand(3, -1, 1)
    return (-logp.gather(2, nxt)[..., 0] * LOG2E).numpy()


def _pieces(rec, test: np.ndarray, chars: int) -> list[tuple[int, int]]:
    """[start, stop) of up to ``chars`` held-out characters: the start of each held-out
    segment (an equal share each), cut at document starts."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], test.astype(np.int8), [0]])))
    segments = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
    share = max(2, chars // max(1, len(segments)))
    doc_starts = rec.documents["start"].to_numpy()
    out = []
    for a, b in segments:
        b = min(b, a + share)
        cuts = [a] + [int(s) for s in doc_starts if a < s < b] + [b]
        out += [(u, v) for u, v in pairwise(cuts) if v - u >= 2]
    return out


def _loss_recovered(spec: dict, rec, model, test: np.ndarray, chars: int) -> dict:
    from probe.text import corpus as corpora
    layer, stream = int(spec["inputs"][0][0]), str(spec["inputs"][0][1])
    cell = getattr(model, "cell", "lstm")
    if stream not in CELL_STREAMS.get(cell, ()):
        raise ProbeError(f"loss_recovered replaces a stream of the model: {cell} layers have "
                         f"{' '.join(CELL_STREAMS.get(cell, ()))}, not {stream!r}")
    if not 0 <= layer < model.layers or model.units != len(spec["mean"]):
        raise ProbeError(f"the model ({model.layers} × {model.units}) does not fit a dictionary of "
                         f"layer {layer} with {len(spec['mean'])} inputs")
    model = model.eval()
    recon = _recon_fn(spec, stream)
    text = rec.dataset("text")
    sums, n = np.zeros(3), 0
    for a, b in _pieces(rec, test, chars):
        ids, _ = corpora.encode(np.asarray(text[a:b]).astype("<u4").tobytes().decode("utf-32-le"), model.vocab)
        bits = _spliced_bits(model, ids, layer, stream, recon)
        sums += bits.astype(np.float64).sum(1)
        n += bits.shape[1]
    clean, rec_bits, zero = sums / max(n, 1)
    gap = zero - clean
    return {"loss_recovered": float((zero - rec_bits) / gap) if n and abs(gap) > 1e-9 else float("nan"),
            "bits_clean": float(clean), "bits_reconstructed": float(rec_bits), "bits_zero": float(zero),
            "chars": int(n)}
