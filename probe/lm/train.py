"""Train a character-level LSTM with truncated backpropagation through time.

The text is cut into ``batch`` contiguous rows; each step reads the next ``seq``
characters of every row, carries the recurrent state over from the previous step
(detached), clips the gradient norm and takes an Adam step on a warmup + cosine
learning-rate schedule. Every ``eval_every`` steps it measures validation bits/char,
keeps the best weights at ``out`` and writes a resumable checkpoint beside it.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.files import check_target, interrupts
from probe.lm.model import (
    CELLS,
    DROPOUT,
    EMBEDDING,
    LAYERS,
    UNITS,
    CharRNN,
    detach,
    load_model,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
    widen,
)
from probe.text import corpus as corpora

LN2 = math.log(2)
DEFAULT_STEPS = 4000


@dataclass
class TrainConfig:
    """Everything that decides a training run; ``probe train``'s flags are its fields.

    Stored in the checkpoint (``metrics["args"]``), so ``--resume`` continues with the same
    settings; only ``steps`` may change on resume (a larger number extends the schedule).
    """
    corpus: str | None = "stdlib"  # built-in corpus (stdlib or linux); ignored when text is given
    text: str | None = None        # a UTF-8 text file or a folder of them
    glob: str = "**/*"             # files to take from a text folder
    limit: int | None = None       # read at most this many characters of each split (a quick try)
    cell: str = "lstm"             # the recurrent cell: lstm, gru or rnn (vanilla, tanh)
    layers: int = LAYERS
    units: int = UNITS
    embedding: int = EMBEDDING
    dropout: float = DROPOUT
    batch: int = 64                # rows of text read side by side, one TBPTT window each per step
    seq: int = 128                 # characters per TBPTT window
    steps: int | None = None       # optimizer steps (None: DEFAULT_STEPS, or as before on resume)
    lr: float = 2e-3
    warmup: int = 100              # steps of linear warmup before the cosine decay
    min_lr_frac: float = 0.05      # the cosine decays to lr * min_lr_frac
    clip: float = 5.0              # gradient-norm clip
    eval_every: int = 250          # steps between validations (and checkpoints)
    eval_chars: int = 300_000      # validation characters per evaluation
    seed: int = 0
    init: str | None = None        # start from this checkpoint's weights, widened to units


    def check(self) -> None:
        """A one-line error for the first setting no run could use."""
        positive = ("layers", "units", "embedding", "batch", "seq", "eval_every", "eval_chars")
        for name in positive + (("steps",) if self.steps is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ProbeError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 2):
            raise ProbeError(f"--limit must be a whole number >= 2, got {self.limit!r}")
        if self.cell not in CELLS:
            raise ProbeError(f"--cell-type must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ProbeError(f"--warmup must be a whole number >= 0, got {self.warmup!r}")
        for name, ok, rule in (("lr", lambda v: v > 0, "> 0"), ("clip", lambda v: v > 0, "> 0"),
                               ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("min_lr_frac", lambda v: 0 <= v <= 1, "in [0, 1]")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ProbeError(f"--{name.replace('_', '-')} must be a finite number {rule}, got {v!r}")


SETTINGS = ("batch", "seq", "steps", "lr", "warmup", "min_lr_frac", "clip", "eval_every",
            "eval_chars", "seed")  # what --resume takes from the checkpoint


def resume_path(out: str | os.PathLike) -> Path:
    """Where the resumable state of a run writing ``out`` lives: ``NAME.resume.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".resume.pt")


def rows(ids: np.ndarray, batch: int) -> torch.Tensor:
    """Cut ids [N] into ``batch`` contiguous rows: [batch, N // batch]."""
    n = len(ids) // batch
    return torch.from_numpy(ids[: n * batch].reshape(batch, n).copy())


def lr_at(step: int, steps: int, lr: float, warmup: int, min_frac: float) -> float:
    """Linear warmup, then cosine decay from ``lr`` to ``lr * min_frac`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def bits_per_char(model: CharRNN, ids: np.ndarray, batch: int = 16, seq: int = 256,
                  desc: str | None = None) -> float:
    """Mean −log2 p(next char) over ``ids``, read as ``batch`` rows with state carried."""
    was_training = model.training
    model.eval()
    data = rows(ids, batch) if len(ids) >= batch * 2 else torch.from_numpy(ids[None].copy())
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


def split_data(corpus: str | None, text: str | None, glob: str,
               limit: int | None = None) -> tuple[corpora.Corpus, str, str, str | None]:
    """(train corpus, train text, validation text, test text or None); each split's first
    ``limit`` characters if given."""
    if text is not None:  # a user's text: the last 5% of characters validate
        c = corpora.load(text=text, glob=glob).limited(limit)
        full = c.text
        cut = max(1, int(len(full) * 0.95))
        if len(full) < 2:
            raise ProbeError(f"{text}: text too short to train on ({len(full)} characters)")
        return c, full[:cut], full[cut:] or full[-1:], None
    train_c = corpora.load(corpus, "train").limited(limit)
    return (train_c, train_c.text, corpora.load(corpus, "val").limited(limit).text,
            corpora.load(corpus, "test").limited(limit).text)


def train(out: str | os.PathLike, config: TrainConfig | None = None, *, resume: bool = False,
          force: bool = False, threads: int | None = None, progress: bool = True) -> dict:
    """Train a model and return its metrics; the best weights are saved at ``out``.

    With ``resume``, training continues from ``out``'s ``.resume.pt`` with its saved
    settings; a larger ``config.steps`` extends the cosine schedule over the new total.
    With ``config.init``, training starts from that checkpoint's weights (its vocabulary,
    layers and embedding), widened to ``config.units`` without changing what it computes
    (``widen``).
    """
    cfg = config or TrainConfig()
    cfg.check()
    out = Path(out)
    rpath = resume_path(out)
    if resume and cfg.init is not None:
        raise ProbeError(f"{out}: --resume continues a run, --init starts one; pass only one")
    if resume and not rpath.exists():
        raise ProbeError(f"{rpath}: no resumable checkpoint to --resume from")
    if not resume and not force and (out.exists() or rpath.exists()):
        raise ProbeError(f"{out if out.exists() else rpath}: already exists; pass --force to "
                         "overwrite or --resume to continue")
    check_target(out, force=True)  # its folder exists and is writable; it is not a folder
    if threads:
        torch.set_num_threads(threads)

    source, train_text, val_text, test_text = split_data(None if cfg.text else cfg.corpus, cfg.text, cfg.glob, cfg.limit)
    if resume:
        ck = read_checkpoint(rpath)
        st = ck.get("train_state") or {}
        if "step" not in st:
            raise ProbeError(f"{rpath}: checkpoint holds no training state to resume")
        if ck["config"].get("corpus", {}).get("fingerprint") != source.source["fingerprint"]:
            raise ProbeError(f"{rpath}: was trained on a different corpus (fingerprint differs)")
        model = model_from_checkpoint(ck, rpath)
        args = dict(st["args"])
        if cfg.steps is not None and cfg.steps != args["steps"]:  # extend (or shorten) the schedule
            if cfg.steps <= st["step"]:
                raise ProbeError(f"{rpath}: already at step {st['step']}; --steps {cfg.steps} would not "
                                 "train further")
            args["steps"] = cfg.steps
        cfg = replace(cfg, **{k: args[k] for k in SETTINGS})
    else:
        cfg = replace(cfg, steps=DEFAULT_STEPS if cfg.steps is None else cfg.steps)
        torch.manual_seed(cfg.seed)
        args = {k: getattr(cfg, k) for k in SETTINGS}
        if cfg.init is not None:
            base = load_model(cfg.init)
            if cfg.layers != base.layers:
                raise ProbeError(f"{cfg.init}: has {base.layers} layers; --layers {cfg.layers} cannot "
                                 "start from it")
            if cfg.units < base.units:
                raise ProbeError(f"{cfg.init}: has {base.units} units; --units {cfg.units} would shrink it")
            model = widen(base, cfg.units, cfg.dropout, cfg.seed)
            args["init"] = {"path": str(cfg.init), "sha256": base.sha256, "units": base.units,
                            "chars": base.metrics.get("chars"), "test_bpc": base.metrics.get("test_bpc")}
        else:
            model = CharRNN(corpora.build_vocab(train_text), cfg.layers, cfg.units, cfg.embedding,
                            cfg.dropout, cfg.cell)
    batch, seq, steps, lr, warmup = cfg.batch, cfg.seq, cfg.steps, cfg.lr, cfg.warmup
    min_lr_frac, clip, eval_every, eval_chars = cfg.min_lr_frac, cfg.clip, cfg.eval_every, cfg.eval_chars
    vocab = model.vocab
    train_ids, n_unk = corpora.encode(train_text, vocab)
    val_ids, n_unk_val = corpora.encode(val_text[:eval_chars], vocab)
    data = rows(train_ids, batch)  # [batch, L]
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
        if st.get("h") is not None:  # (h, c) for an LSTM, h alone otherwise
            state = (st["h"], st["c"]) if st.get("c") is not None else st["h"]

    def metrics() -> dict:
        return {"step": step, "chars": chars, "train_seconds": round(elapsed, 1), "best_val_bpc": best,
                "history": history, "unknown_train_chars": n_unk, "unknown_val_chars": n_unk_val,
                "args": args}

    def save_resume() -> None:
        save_checkpoint(rpath, model, source.source, metrics(), train_state={
            "step": step, "pos": pos, "best": best, "elapsed": elapsed, "chars": chars,
            "history": history, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "h": None if state is None else state[0] if isinstance(state, tuple) else state,
            "c": state[1] if isinstance(state, tuple) else None, "args": args})

    if n_unk:
        print(f"probe: {n_unk} training characters are outside the vocabulary (mapped to unknown)")
    model.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    t0, loss_ema = time.perf_counter(), None
    with interrupts(raising=True):  # Ctrl-C and SIGTERM: save a resumable checkpoint, then stop
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
                # next window of every row; wrap around to a fresh state at the end
                if pos + seq + 1 > data.shape[1]:
                    pos, state = 0, None
                x, y = data[:, pos : pos + seq], data[:, pos + 1 : pos + seq + 1]  # [B, seq]
                pos += seq
                # TBPTT step with clipping
                logits, state = model(x, state)
                state = detach(state)
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
            raise ProbeError(f"interrupted at step {step}; resumable checkpoint saved to {rpath} "
                             f"(continue with --resume)") from None
    bar.close()
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
