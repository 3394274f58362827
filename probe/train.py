"""Train a character-level LSTM with truncated backpropagation through time.

The text is cut into ``batch`` contiguous streams; each step reads the next ``seq``
characters of every stream, carries the LSTM state over from the previous step
(detached), clips the gradient norm and takes an Adam step on a warmup + cosine
learning-rate schedule. Every ``eval_every`` steps it measures validation bits/char,
keeps the best weights at ``out`` and writes a resumable checkpoint beside it.
"""
from __future__ import annotations

import math
import signal
import threading
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import corpus as corpora
from .errors import ProbeError
from .model import CharLSTM, load_model, model_from_checkpoint, read_checkpoint, save_checkpoint, widen

LN2 = math.log(2)
DEFAULT_STEPS = 4000


def resume_path(out: str | os.PathLike) -> Path:
    """Where the resumable state of a run writing ``out`` lives: ``NAME.resume.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".resume.pt")


def streams(ids: np.ndarray, batch: int) -> torch.Tensor:
    """Cut ids [N] into ``batch`` contiguous streams: [batch, N // batch]."""
    n = len(ids) // batch
    return torch.from_numpy(ids[: n * batch].reshape(batch, n).copy())


def lr_at(step: int, steps: int, lr: float, warmup: int, min_frac: float) -> float:
    """Linear warmup, then cosine decay from ``lr`` to ``lr * min_frac`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def bits_per_char(model: CharLSTM, ids: np.ndarray, batch: int = 16, seq: int = 256,
                  desc: str | None = None) -> float:
    """Mean −log2 p(next char) over ``ids``, read as ``batch`` streams with state carried."""
    was_training = model.training
    model.eval()
    data = streams(ids, batch) if len(ids) >= batch * 2 else torch.from_numpy(ids[None].copy())
    state, total, count = None, 0.0, 0
    for t in tqdm(range(0, data.shape[1] - 1, seq), desc=desc, disable=desc is None, leave=False):
        x, y = data[:, t : t + seq], data[:, t + 1 : t + seq + 1]
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / max(1, count) / LN2


def _interruptible() -> dict:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt (so a checkpoint is saved), even in a
    background job started with SIGINT ignored. Returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


def split_data(corpus: str | None, text: str | None, glob: str) -> tuple[corpora.Corpus, str, str, str | None]:
    """(train corpus, train text, validation text, test text or None)."""
    if text is not None:  # a user's text: the last 5% of characters validate
        c = corpora.load(text=text, glob=glob)
        full = c.text
        cut = max(1, int(len(full) * 0.95))
        if len(full) < 2:
            raise ProbeError(f"{text}: text too short to train on ({len(full)} characters)")
        return c, full[:cut], full[cut:] or full[-1:], None
    train_c = corpora.load(corpus, "train")
    return train_c, train_c.text, corpora.load(corpus, "val").text, corpora.load(corpus, "test").text


def train(out: str | os.PathLike, corpus: str | None = "stdlib", text: str | None = None,
          glob: str = "**/*", layers: int = 2, units: int = 256, embedding: int = 64,
          dropout: float = 0.1, batch: int = 64, seq: int = 128, steps: int | None = None,
          lr: float = 2e-3, warmup: int = 100, min_lr_frac: float = 0.05, clip: float = 5.0,
          eval_every: int = 250, eval_chars: int = 300_000, seed: int = 0,
          resume: bool = False, force: bool = False, threads: int | None = None,
          init: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Train a model and return its metrics; the best weights are saved at ``out``.

    With ``resume``, training continues from ``out``'s ``.resume.pt`` with its saved
    settings; a larger ``steps`` extends the cosine schedule over the new total.
    With ``init``, training starts from that checkpoint's weights (its vocabulary, layers
    and embedding), widened to ``units`` without changing what it computes (``widen``).
    """
    out = Path(out)
    rpath = resume_path(out)
    if not out.parent.is_dir():
        raise ProbeError(f"{out.parent}: output folder does not exist")
    if resume and init is not None:
        raise ProbeError(f"{out}: --resume continues a run, --init starts one; pass only one")
    if resume and not rpath.exists():
        raise ProbeError(f"{rpath}: no resumable checkpoint to --resume from")
    if not resume and not force and (out.exists() or rpath.exists()):
        raise ProbeError(f"{out if out.exists() else rpath}: already exists; pass --force to "
                         "overwrite or --resume to continue")
    if threads:
        torch.set_num_threads(threads)

    source, train_text, val_text, test_text = split_data(corpus, text, glob)
    if resume:
        ck = read_checkpoint(rpath)
        st = ck.get("train_state") or {}
        if "step" not in st:
            raise ProbeError(f"{rpath}: checkpoint holds no training state to resume")
        if ck["config"].get("corpus", {}).get("fingerprint") != source.source["fingerprint"]:
            raise ProbeError(f"{rpath}: was trained on a different corpus (fingerprint differs)")
        model = model_from_checkpoint(ck, rpath)
        args = dict(st["args"])
        if steps is not None and steps != args["steps"]:  # extend (or shorten) the schedule
            if steps <= st["step"]:
                raise ProbeError(f"{rpath}: already at step {st['step']}; --steps {steps} would not "
                                 "train further")
            args["steps"] = steps
        batch, seq, steps, lr, warmup = args["batch"], args["seq"], args["steps"], args["lr"], args["warmup"]
        min_lr_frac, clip, eval_every, eval_chars = args["min_lr_frac"], args["clip"], args["eval_every"], args["eval_chars"]
    else:
        steps = DEFAULT_STEPS if steps is None else steps
        torch.manual_seed(seed)
        args = dict(batch=batch, seq=seq, steps=steps, lr=lr, warmup=warmup, min_lr_frac=min_lr_frac,
                    clip=clip, eval_every=eval_every, eval_chars=eval_chars, seed=seed)
        if init is not None:
            base = load_model(init)
            if layers != base.layers:
                raise ProbeError(f"{init}: has {base.layers} layers; --layers {layers} cannot start from it")
            if units < base.units:
                raise ProbeError(f"{init}: has {base.units} units; --units {units} would shrink it")
            model = widen(base, units, dropout, seed)
            args["init"] = {"path": str(init), "sha256": base.sha256, "units": base.units,
                            "chars": base.metrics.get("chars"), "test_bpc": base.metrics.get("test_bpc")}
        else:
            model = CharLSTM(corpora.build_vocab(train_text), layers, units, embedding, dropout)
    vocab = model.vocab
    train_ids, n_unk = corpora.encode(train_text, vocab)
    val_ids, n_unk_val = corpora.encode(val_text[:eval_chars], vocab)
    data = streams(train_ids, batch)  # [batch, L]
    if data.shape[1] < seq + 1:
        raise ProbeError(f"text too short for --batch {batch} --seq {seq}: "
                         f"{len(train_ids)} training characters, need {batch * (seq + 1)}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step, pos, best, elapsed, chars, state = 0, 0, float("inf"), 0.0, 0, None
    history: list[dict] = []
    if resume:
        optimizer.load_state_dict(st["optimizer"])
        step, pos, best, elapsed, chars = st["step"], st["pos"], st["best"], st["elapsed"], st["chars"]
        history = list(st.get("history", []))
        torch.set_rng_state(st["rng"])
        state = (st["h"], st["c"]) if st.get("h") is not None else None

    def metrics() -> dict:
        return {"step": step, "chars": chars, "train_seconds": round(elapsed, 1), "best_val_bpc": best,
                "history": history, "unknown_train_chars": n_unk, "unknown_val_chars": n_unk_val,
                "args": args}

    def save_resume() -> None:
        save_checkpoint(rpath, model, source.source, metrics(), train_state={
            "step": step, "pos": pos, "best": best, "elapsed": elapsed, "chars": chars,
            "history": history, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "h": state[0] if state else None, "c": state[1] if state else None, "args": args})

    if n_unk:
        print(f"probe: {n_unk} training characters are outside the vocabulary (mapped to unknown)")
    model.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    t0, loss_ema = time.perf_counter(), None
    old = _interruptible()
    try:
        while step < steps:
            # learning rate for this step
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup, min_lr_frac)
            # periodic evaluation and checkpoint
            if step % eval_every == 0 and step > 0:
                val = bits_per_char(model, val_ids)
                history.append({"step": step, "chars": chars, "val_bpc": round(val, 4),
                                "train_bpc": round(loss_ema / LN2, 4) if loss_ema else None})
                if val < best:
                    best = val
                    save_checkpoint(out, model, source.source, metrics())
                save_resume()
                bar.write(f"step {step}: val {val:.3f} bits/char (best {best:.3f})")
            # next window of every stream; wrap around to a fresh state at the end
            if pos + seq + 1 > data.shape[1]:
                pos, state = 0, None
            x, y = data[:, pos : pos + seq], data[:, pos + 1 : pos + seq + 1]  # [B, seq]
            pos += seq
            # TBPTT step with clipping
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            # log
            step += 1
            chars += x.numel()
            now = time.perf_counter()
            elapsed += now - t0
            t0 = now
            loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", bpc=f"{loss_ema / LN2:.3f}",
                            chars_s=f"{chars / max(elapsed, 1e-9):.0f}", refresh=False)
    except KeyboardInterrupt:
        bar.close()
        save_resume()
        _restore(old)
        raise ProbeError(f"interrupted at step {step}; resumable checkpoint saved to {rpath} "
                         f"(continue with --resume)") from None
    bar.close()
    _restore(old)
    # final evaluation: keep the better of the last and the best weights
    val = bits_per_char(model, val_ids)
    history.append({"step": step, "chars": chars, "val_bpc": round(val, 4),
                    "train_bpc": round(loss_ema / LN2, 4) if loss_ema else None})
    if val < best or not out.exists():
        best = val
        save_checkpoint(out, model, source.source, metrics())
    save_resume()
    ck = read_checkpoint(out)
    best_model = model_from_checkpoint(ck, out)
    m = dict(ck["metrics"])
    m["val_bpc"] = round(bits_per_char(best_model, corpora.encode(val_text, vocab)[0]), 4)
    if test_text is not None:
        m["test_bpc"] = round(bits_per_char(best_model, corpora.encode(test_text, vocab)[0],
                                            desc="test bits/char" if progress else None), 4)
    m["history"], m["train_seconds"], m["chars"] = history, round(elapsed, 1), chars
    save_checkpoint(out, best_model, source.source, m)
    return m
