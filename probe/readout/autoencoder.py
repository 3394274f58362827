"""A top-k sparse autoencoder and its training step (Gao et al. 2024).

    z  = TopK(relu(W_enc (x - b_dec) + b_enc), k)     # [features], at most k nonzero
    x̂  = z W_dec + b_dec                               # [D]

``encode`` and ``decode`` (``probe.recording.transforms``: applying a saved dictionary
needs them too) are the two halves; here is how the weights are learnt: a fresh state
(``new_state``: unit decoder rows, W_enc = W_dec, b_dec the median), the learning rate's
warm-up and decay (``lr_at``), one Adam step with the AuxK loss that revives dead
features (``step``), and ``fit_arrays``, the whole loop on rows in memory.
``probe.readout.dictionary.train`` runs the same step on a recording read in chunks.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.recording.transforms import decode, encode

FEATURES = 1024      # dictionary size: 4 × a 256-unit layer
K = 32               # active features per position
STEPS = 6000         # held-out explained variance on stdlib, layer 1 c: 0.896 at 3,000, 0.913 at 6,000
BATCH = 2048
LR = 1e-3            # Adam; warmed up over the first 5 % of steps, decayed to 0 over the last 20 %
AUX_COEF = 1 / 32    # weight of the AuxK loss (Gao et al.)
DEAD_STEPS = 100     # a feature that has not fired for this many batches is dead (for AuxK)
STAT_ROWS = 65536    # training rows the mean and scale are computed on


def aux_k_for(D: int) -> int:
    """Gao et al.'s k_aux: a power of two near half the input width."""
    return 2 ** max(0, round(math.log2(max(D / 2, 1))))


def new_state(sample: np.ndarray, features: int, seed: int, lr: float) -> dict:
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


def lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, min(100, steps // 20))
    f = min(1.0, (step + 1) / warm)
    decay = max(1, steps // 5)
    return lr * f * min(1.0, (steps - step) / decay)


def step(state: dict, x: torch.Tensor, k: int, lr: float, aux_k: int, aux_coef: float,
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
    vals, idx, pre = encode(p, x, k)
    err = x - decode(p, vals, idx)
    var = ((x - x.mean(0)) ** 2).sum(1).mean().clamp_min(1e-12)
    mse = (err ** 2).sum(1).mean() / var
    loss = mse
    dead = since >= dead_steps
    if aux_k and aux_coef and bool(dead.any()):
        ka = min(aux_k, int(dead.sum()))
        avals, aidx = pre.masked_fill(~dead, -torch.inf).topk(ka, dim=1)
        residual = err.detach()
        e_hat = decode(p, torch.relu(avals), aidx, bias=False)
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


def check_sizes(features: int, k: int, steps: int, batch: int, lr: float) -> None:
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


def params_of(state: dict, k: int) -> dict:
    """The spec's params: detached float32 copies, and k."""
    return {**{n: t.detach().clone() for n, t in state["params"].items()}, "k": int(k)}


def fit_arrays(X: np.ndarray, *, features: int = FEATURES, k: int = K, steps: int = STEPS,
               batch: int = BATCH, lr: float = LR, seed: int = 0, aux_k: int | None = None,
               aux_coef: float = AUX_COEF, dead_steps: int = DEAD_STEPS,
               progress: bool = False) -> dict:
    """Train a dictionary on rows X [n, D] already standardised (the trainer ``dictionary.train``
    uses, on an array in memory). Batch s is ``batch`` rows drawn with replacement by a generator
    seeded with (seed, s), so the same seed gives the same result. Returns the params:
    W_enc, b_enc, W_dec, b_dec (float32 tensors) and k."""
    check_sizes(features, k, steps, batch, lr)
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ProbeError(f"X must be a [rows, columns] array, got shape {X.shape}")
    if len(X) < batch:
        raise ProbeError(f"{len(X):,} rows, fewer than a batch of {batch:,}")
    if not np.isfinite(X).all():
        raise ProbeError("X has NaN or infinite values")
    aux_k = aux_k_for(X.shape[1]) if aux_k is None else aux_k
    state = new_state(X[np.random.default_rng([seed, 0]).choice(len(X), min(len(X), STAT_ROWS), replace=False)],
                 features, seed, lr)
    data = torch.from_numpy(np.ascontiguousarray(X))
    with tqdm(total=steps, disable=not progress, unit="step", desc="dictionary") as bar:
        while state["step"] < steps:
            s = state["step"]
            rows = torch.from_numpy(np.random.default_rng([seed, 1, s]).integers(0, len(X), batch))
            mse = step(state, data[rows], k, lr_at(s, steps, lr), aux_k, aux_coef, dead_steps)
            bar.update(1)
            bar.set_postfix(fvu=f"{mse:.3f}", refresh=False)
    return params_of(state, k)
