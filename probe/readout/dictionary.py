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
rows from random HDF5-chunk-aligned blocks (``rows.gather``), so its memory does not grow
with the length of the recording; ``quality`` scores on the held-out part
(``rows.split_positions``). The autoencoder and its training step are ``autoencoder``'s;
applying a saved dictionary is ``probe.recording.transforms``'; the loss it recovers is
``loss_recovered``'s.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.analysis.threads import one_torch_thread
from probe.errors import ProbeError
from probe.files import atomic, check_target, interrupts
from probe.lm.train import resume_path
from probe.readout import loss_recovered as recovered
from probe.readout.autoencoder import (
    AUX_COEF,
    BATCH,
    DEAD_STEPS,
    FEATURES,
    LR,
    STAT_ROWS,
    STEPS,
    K,
    aux_k_for,
    check_sizes,
    fit_arrays,
    lr_at,
    new_state,
    params_of,
)
from probe.readout.autoencoder import (
    step as _step,  # train looks it up here: a test wraps it
)
from probe.readout.rows import gather, split_positions
from probe.recording import derived, transforms
from probe.recording.transforms import decode, dictionary_params, encode

CHUNK_ROWS = 65536   # training rows in memory at once
SAVE_EVERY = 200     # steps between resume checkpoints
EVAL_BATCH = transforms.EVAL_BATCH  # rows encoded at once by transform and reconstruct

__all__ = ["train", "transform", "reconstruct", "quality", "split", "held_out_metrics", "fit_arrays",
           "FEATURES", "K", "STEPS", "BATCH", "LR", "AUX_COEF", "DEAD_STEPS", "STAT_ROWS", "CHUNK_ROWS",
           "SAVE_EVERY", "EVAL_BATCH"]

# the old private names, which tests still reach
_encode, _torch_params, _gather = encode, dictionary_params, gather
_recon_fn, _spliced_bits = recovered.recon_fn, recovered.spliced_bits


# ---- training on a recording ----------------------------------------------------------------
def split(rec, held_out: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) masks over the recording: ``rows.split_positions`` with its own
    seed (0), whatever the dictionary's seed, so dictionaries of a recording share a test."""
    return split_positions(len(rec), held_out)


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
    D / 2), ``aux_coef`` and ``dead_steps`` set the AuxK loss (``autoencoder.step``).

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
    rpath = resume_path(out) if out is not None else None
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
                             f"{saved['fitted_on']['length']:,}-position recording, not this one")
        if steps is not None and steps != cfg["steps"]:
            if steps <= saved["step"]:
                raise ProbeError(f"{rpath}: already at step {saved['step']}; steps {steps} would not train further")
            cfg["steps"] = steps
    else:
        cfg = {"layer": int(layer), "stream": str(stream), "features": features, "k": k,
               "steps": STEPS if steps is None else steps,
               "batch": batch, "lr": lr, "seed": seed, "held_out": held_out,
               "aux_k": aux_k_for(D) if aux_k is None else aux_k, "aux_coef": aux_coef,
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
    check_sizes(features, k, steps, batch, lr)
    if not 0 < held_out < 1:
        raise ProbeError(f"held_out must be a fraction between 0 and 1, got {held_out!r}")
    train_mask, _ = split(rec, held_out)
    n_train = int(train_mask.sum())
    if n_train < batch:
        raise ProbeError(f"{rec.path}: {n_train:,} training {rec.unit_name}s (after holding out "
                         f"{held_out:.0%}), fewer than a batch of {batch:,}")
    fitted_on = {"path": str(rec.path), "length": len(rec), "created": rec.created}

    if resume:
        mean, scale = saved["mean"], saved["scale"]
        state = new_state(np.zeros((1, D), np.float32), features, seed, lr)
        with torch.no_grad():
            for n, t in state["params"].items():
                t.copy_(saved["params"][n])
        state["adam"].load_state_dict(saved["adam"])
        state["step"], state["since"] = int(saved["step"]), saved["since"].clone()
    else:
        sample = gather(rec, inputs, train_mask, STAT_ROWS, np.random.default_rng([seed, 0]))
        mu = sample.mean(0, dtype=np.float64)
        sd = float(np.sqrt(((sample - mu) ** 2).mean(0, dtype=np.float64).mean()))
        mean = torch.from_numpy(mu.astype(np.float32))
        scale = torch.full((D,), sd if sd > 0 else 1.0, dtype=torch.float32)
        state = new_state((sample - mean.numpy()) / scale.numpy(), features, seed, lr)
        del sample

    per_chunk = max(1, min(cfg["chunk_rows"], n_train) // batch)  # batches per chunk
    mu_np, sd_np = mean.numpy(), scale.numpy()
    chunk: tuple[int, torch.Tensor | None] = (-1, None)

    def save_state() -> None:
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
                x = gather(rec, inputs, train_mask, per_chunk * batch, np.random.default_rng([seed, 1, c]))
                chunk = (c, torch.from_numpy((x - mu_np) / sd_np))
                del x
            xb = chunk[1][j * batch:(j + 1) * batch]
            mse = _step(state, xb, k, lr_at(s, steps, lr), cfg["aux_k"], cfg["aux_coef"], cfg["dead_steps"])
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
            "layer": int(layer), "inputs": inputs, "widths": [D], "unit_names": [f"f{j}" for j in range(features)],
            "model_sha256": rec.model_sha256, "fitted_on": fitted_on, "mean": mean, "scale": scale,
            "params": params_of(state, k), "metrics": {}, "config": cfg}
    spec["metrics"] = held_out_metrics(spec, rec, model)
    if out is not None:
        derived.save(spec, out)
        rpath.unlink(missing_ok=True)
    return spec


def held_out_metrics(spec: dict, rec, model) -> dict:
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
@torch.no_grad()
def transform(spec: dict, x: np.ndarray) -> np.ndarray:
    """The codes float32 [n, features] of input rows x [n, D] as ``derived.read_inputs``
    gives them (standardised here): ≥ 0, at most k nonzero per row. Encoded ``EVAL_BATCH``
    rows at a time (``transforms.dictionary``)."""
    return transforms.dictionary(spec, x, EVAL_BATCH)


@torch.no_grad()
def reconstruct(spec: dict, x: np.ndarray) -> np.ndarray:
    """x̂ [n, D] for input rows x [n, D] (as read_inputs gives them), in their own units."""
    p, k = dictionary_params(spec)
    z = torch.from_numpy(np.ascontiguousarray(derived.standardise(spec, np.asarray(x, dtype=np.float32))))
    out = torch.cat([decode(p, *encode(p, z[a:a + EVAL_BATCH], k)[:2])
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
    dictionary_params(spec)  # a dictionary, or a one-line error
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
        raise ProbeError(f"{rec.path}: no held-out {rec.unit_name}s to score on")
    x = gather(rec, spec["inputs"], test, rows, np.random.default_rng(0))
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
        with one_torch_thread():  # a step is a few small products: more threads only wait (100x slower busy)
            out.update(recovered.loss_recovered(spec, rec, model, test, loss_chars))
    return out
