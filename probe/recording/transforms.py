"""How each kind of derived-stream spec turns input rows into derived units.

``derived`` stores a spec and its stream; this module holds what a spec *computes*, one
function per kind, so that writing a derived stream needs no read-out code: the read-outs
(``probe.readout.directions`` and ``probe.readout.dictionary``) make specs and apply
them through these functions.

- ``directions``: a linear read-out, ``standardise(x) @ W + b`` (one predicted feature
  value per unit);
- ``dictionary``: a top-k sparse code, ``TopK(relu(W_enc (standardise(x) - b_dec) + b_enc), k)``
  (``encode`` and ``decode`` are the autoencoder's two halves, shared with its training).

Input rows x [n, D] are as ``derived.read_inputs`` gives them (c through tanh), not yet
standardised.
"""
from __future__ import annotations

import numpy as np
import torch

from probe.errors import ProbeError

EVAL_BATCH = 8192    # rows a dictionary encodes at once
CHUNK = 65536        # rows a directions read-out multiplies at once


def standardise(spec: dict, x: np.ndarray) -> np.ndarray:
    """(x - mean) / scale, float32 [n, D]."""
    mean = spec["mean"].numpy().astype(np.float32)
    scale = spec["scale"].numpy().astype(np.float32)
    if x.shape[1] != len(mean):
        raise ProbeError(f"inputs have {x.shape[1]} columns; the spec was fitted on {len(mean)}")
    return (x - mean) / scale


# ---- directions: a linear read-out ------------------------------------------------------------

def check_directions(spec: dict) -> None:
    """A one-line error unless a spec (well-formed as ``derived.check`` says) holds probe
    directions: W [D, F], b [F] and state_mean [D]."""
    if spec["kind"] != "directions":
        raise ProbeError(f"spec: a {spec['kind']!r} spec, not probe directions")
    D, F = len(spec["mean"]), len(spec["unit_names"])
    p = spec["params"]
    if not isinstance(p, dict) or any(k not in p for k in ("W", "b", "state_mean")):
        raise ProbeError("spec: directions params need W, b and state_mean")
    if tuple(p["W"].shape) != (D, F) or tuple(p["b"].shape) != (F,) or tuple(p["state_mean"].shape) != (D,):
        raise ProbeError(f"spec: W must be [{D}, {F}], b [{F}] and state_mean [{D}]")


def directions(spec: dict, x: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Each feature's predicted value at input rows x [n, D]: ``standardise`` then x @ W + b,
    float32 [n, F] (about 0..1 for a binary feature, the count for column or depth),
    ``chunk`` rows at a time."""
    check_directions(spec)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ProbeError(f"inputs must be a 2-D array [rows, columns], got shape {x.shape}")
    W = spec["params"]["W"].numpy().astype(np.float32)
    b = spec["params"]["b"].numpy().astype(np.float32)
    out = np.empty((len(x), W.shape[1]), dtype=np.float32)
    if len(x) == 0:
        standardise(spec, x)  # the column check
    for a in range(0, len(x), chunk):
        np.matmul(standardise(spec, x[a:a + chunk]), W, out=out[a:a + chunk])
    out += b
    return out


# ---- dictionary: a top-k sparse code ----------------------------------------------------------

def dictionary_params(spec: dict) -> tuple[dict, int]:
    """A dictionary spec's tensors (W_enc, b_enc, W_dec, b_dec as float32) and k; a one-line
    error for a spec of another kind."""
    if not isinstance(spec, dict) or spec.get("kind") != "dictionary":
        kind = spec.get("kind") if isinstance(spec, dict) else type(spec).__name__
        raise ProbeError(f"a {kind!r} spec is not a dictionary")
    p = spec["params"]
    return {n: p[n].detach().float() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}, int(p["k"])


def encode(p: dict, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [n, k] ≥ 0, indices [n, k], pre-activations [n, F]) of standardised rows x."""
    pre = torch.addmm(p["b_enc"], x - p["b_dec"], p["W_enc"].T)
    vals, idx = pre.topk(k, dim=1)
    return torch.relu(vals), idx, pre


def decode(p: dict, vals: torch.Tensor, idx: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Σ vals · W_dec[idx] (+ b_dec): [n, D]. A weighted embedding bag: k rows per input
    row are read, where a dense product with the whole code would read all of W_dec."""
    out = torch.nn.functional.embedding_bag(idx, p["W_dec"], per_sample_weights=vals, mode="sum")
    return out + p["b_dec"] if bias else out


@torch.no_grad()
def dictionary(spec: dict, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """The codes float32 [n, features] of input rows x [n, D] (standardised here): ≥ 0, at
    most k nonzero per row, the k that ``encode`` keeps. Encoded ``batch`` rows at a time."""
    p, k = dictionary_params(spec)
    z = standardise(spec, np.asarray(x, dtype=np.float32))
    F = p["W_enc"].shape[0]
    out = np.zeros((len(z), F), dtype=np.float32)
    w_t = p["W_enc"].T.contiguous()
    for a in range(0, len(z), batch):
        zb = torch.from_numpy(np.ascontiguousarray(z[a:a + batch]))
        pre = torch.addmm(p["b_enc"], zb - p["b_dec"], w_t).numpy()  # [n, F]
        # the k-th largest per row by numpy's partition (3x faster than torch.topk here), then
        # every pre-activation at least that large; rows where ties let in more than k (rare)
        # are redone with topk, so each row keeps exactly the k that encode keeps
        kth = np.partition(pre, F - k, axis=1)[:, F - k:F - k + 1]
        keep = pre >= kth
        block = np.where(keep, np.maximum(pre, 0), 0)
        over = np.flatnonzero(keep.sum(1) > k)
        if len(over):
            vals, idx, _ = encode(p, zb[over], k)
            block[over] = 0
            torch.from_numpy(block)[over] = torch.zeros(len(over), F).scatter_(1, idx, vals)
        out[a:a + len(block)] = block
    return out


TRANSFORMS = {"directions": directions, "dictionary": dictionary}  # kind → what it computes
