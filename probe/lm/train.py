"""Train a character- or word-level LSTM/GRU/RNN with truncated backpropagation through time.

The text is tokenized (``probe.text.tokens``: characters, or whitespace words with
``<eos>`` at line ends over the training split's most frequent words) and the ids cut into
``batch`` contiguous rows; each step reads the next ``seq`` positions of every row, carries
the recurrent state over from the previous step (detached), clips the gradient norm and
takes an Adam step on a warmup + cosine learning-rate schedule. Every ``eval_every`` steps
it measures validation bits per position, keeps the best weights at ``out`` and writes a
resumable checkpoint beside it.

Metrics keep the character models' keys (``val_bpc``, ``test_bpc``, ``chars``…); a word
model's say ``bits_per_token`` and ``tokens`` instead, and add perplexity (2 ** bits per
token), the unknown-token rates and a unigram baseline's perplexity on the same test tokens.
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
from probe.text import tokens as toks

LN2 = math.log(2)
DEFAULT_STEPS = 4000
# a word model's defaults where they differ from a character model's: 10,000 words cover
# about 92% of the stdlib prose corpus's training tokens; a word needs a wider embedding
# than a character; half a million training tokens overfit a 4M-parameter model without
# more dropout
VOCAB_SIZE, WORD_EMBEDDING, WORD_DROPOUT = 10_000, 128, 0.3
CORPUS = {"chars": "stdlib", "words": "stdlib-prose"}  # the built-in corpus each kind trains on


@dataclass
class TrainConfig:
    """Everything that decides a training run; ``probe train``'s flags are its fields.

    Stored in the checkpoint (``metrics["args"]``), so ``--resume`` continues with the same
    settings; only ``steps`` may change on resume (a larger number extends the schedule).
    """
    corpus: str | None = None      # built-in corpus (None: CORPUS[tokens]); ignored when text is given
    text: str | None = None        # a UTF-8 text file or a folder of them
    glob: str = "**/*"             # files to take from a text folder
    limit: int | None = None       # read at most this many characters of each split (a quick try)
    tokens: str = "chars"          # what a position is: chars, or words (probe.text.tokens)
    vocab_size: int | None = None  # words: the training split's N most frequent (None: VOCAB_SIZE)
    cell: str = "lstm"             # the recurrent cell: lstm, gru or rnn (vanilla, tanh)
    layers: int = LAYERS
    units: int = UNITS
    embedding: int | None = None   # None: EMBEDDING for characters, WORD_EMBEDDING for words
    dropout: float | None = None   # None: DROPOUT for characters, WORD_DROPOUT for words
    batch: int = 64                # rows of text read side by side, one TBPTT window each per step
    seq: int = 128                 # positions (characters or words) per TBPTT window
    steps: int | None = None       # optimizer steps (None: DEFAULT_STEPS, or as before on resume)
    lr: float = 2e-3
    warmup: int = 100              # steps of linear warmup before the cosine decay
    min_lr_frac: float = 0.05      # the cosine decays to lr * min_lr_frac
    clip: float = 5.0              # gradient-norm clip
    eval_every: int = 250          # steps between validations (and checkpoints)
    eval_chars: int = 300_000      # validation characters per evaluation
    seed: int = 0
    init: str | None = None        # start from this checkpoint's weights, widened to units


    def sized(self) -> "TrainConfig":
        """The settings left to the kind of token (None) filled in."""
        words = self.tokens == "words"
        return replace(self, embedding=self.embedding if self.embedding is not None else
                       WORD_EMBEDDING if words else EMBEDDING,
                       dropout=self.dropout if self.dropout is not None else WORD_DROPOUT if words else DROPOUT,
                       vocab_size=self.vocab_size if self.vocab_size is not None or not words else VOCAB_SIZE)

    def check(self) -> None:
        """A one-line error for the first setting no run could use."""
        if self.tokens == "vocab":
            raise ProbeError("--tokens vocab (longest match over a vocabulary file) is not trained by probe "
                             "train: train --tokens words, or bring the model with probe import --tokens vocab")
        if self.tokens not in ("chars", "words"):
            raise ProbeError(f"--tokens must be chars or words, got {self.tokens!r}")
        if self.vocab_size is not None and self.tokens != "words":
            raise ProbeError("--vocab-size is the size of a word vocabulary: pass --tokens words with it")
        positive = ("layers", "units", "embedding", "batch", "seq", "eval_every", "eval_chars")
        optional = ("steps", "vocab_size", "embedding")
        for name in positive + ("steps", "vocab_size"):
            v = getattr(self, name)
            if v is None and name in optional:
                continue
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
            if v is None and name == "dropout":
                continue
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
    """Mean −log2 p(next position) over ``ids`` (bits per character, or per token for a word
    model), read as ``batch`` rows with state carried; ``targets`` are the positions scored."""
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


def targets(ids: np.ndarray, batch: int = 16) -> np.ndarray:
    """The ids ``bits_per_char`` scores: every row's but its first."""
    data = rows(ids, batch) if len(ids) >= batch * 2 else torch.from_numpy(ids[None].copy())
    return data[:, 1:].numpy().ravel()


def unigram_bits(train_ids: np.ndarray, ids: np.ndarray, size: int) -> float:
    """A baseline: bits per position of the unigram model of ``train_ids`` (add-one counts
    over ``size`` ids), on exactly the positions ``bits_per_char`` scores in ``ids``."""
    counts = np.bincount(train_ids, minlength=size).astype(np.float64) + 1.0
    return float(-np.log2(counts / counts.sum())[targets(ids)].mean())


def split_data(corpus: str | None, text: str | None, glob: str, limit: int | None = None,
               lines: bool = False) -> tuple[corpora.Corpus, str, str, str | None]:
    """(train corpus, train text, validation text, test text or None); each split's first
    ``limit`` characters if given. A user's text: its last 5% of characters validate (from
    a line start with ``lines``, so no word is cut in two)."""
    if text is not None:
        c = corpora.load(text=text, glob=glob, limit=limit)
        full = c.text
        cut = max(1, int(len(full) * 0.95))
        if len(full) < 2:
            raise ProbeError(f"{text}: text too short to train on ({len(full)} characters)")
        if lines and full.rfind("\n", 0, cut) > 0:
            cut = full.rfind("\n", 0, cut) + 1
        return c, full[:cut], full[cut:] or full[-1:], None
    train_c = corpora.load(corpus, "train", limit=limit)
    return (train_c, train_c.text, corpora.load(corpus, "val", limit=limit).text,
            corpora.load(corpus, "test", limit=limit).text)


def keys(kind: str) -> tuple[str, str]:
    """(bits, count): the metric names' parts for a kind of token; characters keep theirs."""
    return ("bpc", "chars") if kind == "chars" else ("bits_per_token", "tokens")


def train(out: str | os.PathLike, config: TrainConfig | None = None, *, resume: bool = False,
          force: bool = False, threads: int | None = None, progress: bool = True) -> dict:
    """Train a model and return its metrics; the best weights are saved at ``out``.

    With ``resume``, training continues from ``out``'s ``.resume.pt`` with its saved
    settings (its kind of token included); a larger ``config.steps`` extends the cosine
    schedule over the new total. With ``config.init``, training starts from that character
    checkpoint's weights (its vocabulary, layers and embedding), widened to ``config.units``
    without changing what it computes (``widen``). ``config.tokens`` "words": the vocabulary
    is the training split's ``vocab_size`` most frequent words, plus <unk> and <eos>.
    """
    cfg = config or TrainConfig()
    cfg.check()
    out = Path(out)
    rpath = resume_path(out)
    if resume and cfg.init is not None:
        raise ProbeError(f"{out}: --resume continues a run, --init starts one; pass only one")
    if cfg.init is not None and cfg.tokens != "chars":
        raise ProbeError(f"{cfg.init}: --init widens a character model; it cannot start a {cfg.tokens} model")
    if resume and not rpath.exists():
        raise ProbeError(f"{rpath}: no resumable checkpoint to --resume from")
    if not resume and not force and (out.exists() or rpath.exists()):
        raise ProbeError(f"{out if out.exists() else rpath}: already exists; pass --force to "
                         "overwrite or --resume to continue")
    check_target(out, force=True)  # its folder exists and is writable; it is not a folder
    if threads:
        torch.set_num_threads(threads)

    if resume:
        ck = read_checkpoint(rpath)
        st = ck.get("train_state") or {}
        if "step" not in st:
            raise ProbeError(f"{rpath}: checkpoint holds no training state to resume")
        kind = ck["config"].get("tokens", "chars")
        if cfg.tokens != "chars" and cfg.tokens != kind:
            raise ProbeError(f"{rpath}: is a {kind} model; --tokens {cfg.tokens} cannot continue it")
        if cfg.vocab_size is not None and cfg.vocab_size != st["args"].get("vocab_size"):
            raise ProbeError(f"{rpath}: was trained with --vocab-size {st['args'].get('vocab_size')}; "
                             "the vocabulary cannot change on --resume")
        cfg = replace(cfg, tokens=kind)
    cfg = cfg.sized()
    words = cfg.tokens == "words"
    source, train_text, val_text, test_text = split_data(
        None if cfg.text else cfg.corpus or CORPUS[cfg.tokens], cfg.text, cfg.glob, cfg.limit, lines=words)
    if resume:
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
            if toks.of(base).kind != "chars":
                raise ProbeError(f"{cfg.init}: is a {toks.of(base).kind} model; --init widens character models only")
            if cfg.layers != base.layers:
                raise ProbeError(f"{cfg.init}: has {base.layers} layers; --layers {cfg.layers} cannot "
                                 "start from it")
            if cfg.units < base.units:
                raise ProbeError(f"{cfg.init}: has {base.units} units; --units {cfg.units} would shrink it")
            model = widen(base, cfg.units, cfg.dropout, cfg.seed)
            args["init"] = {"path": str(cfg.init), "sha256": base.sha256, "units": base.units,
                            "chars": base.metrics.get("chars"), "test_bpc": base.metrics.get("test_bpc")}
        elif words:
            args.update(tokens="words", vocab_size=cfg.vocab_size)
            model = CharRNN(toks.word_vocab([train_text], cfg.vocab_size), cfg.layers, cfg.units,
                            cfg.embedding, cfg.dropout, cfg.cell, tokens="words")
        else:
            model = CharRNN(corpora.build_vocab(train_text), cfg.layers, cfg.units, cfg.embedding,
                            cfg.dropout, cfg.cell)
    batch, seq, steps, lr, warmup = cfg.batch, cfg.seq, cfg.steps, cfg.lr, cfg.warmup
    min_lr_frac, clip, eval_every, eval_chars = cfg.min_lr_frac, cfg.clip, cfg.eval_every, cfg.eval_chars
    unit, (B, N) = toks.of(model).unit, keys(cfg.tokens)
    train_ids, n_unk = toks.encode(model, train_text)
    val_ids, n_unk_val = toks.encode(model, val_text[:eval_chars])
    data = rows(train_ids, batch)  # [batch, L]
    if data.shape[1] < seq + 1:
        raise ProbeError(f"text too short for --batch {batch} --seq {seq}: "
                         f"{len(train_ids)} training {unit}s, need {batch * (seq + 1)}")
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
        return {"step": step, N: chars, "train_seconds": round(elapsed, 1), f"best_val_{B}": best,
                "history": history, f"unknown_train_{N}": n_unk, f"unknown_val_{N}": n_unk_val,
                "args": args}

    def save_resume() -> None:
        save_checkpoint(rpath, model, source.source, metrics(), train_state={
            "step": step, "pos": pos, "best": best, "elapsed": elapsed, "chars": chars,
            "history": history, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "h": None if state is None else state[0] if isinstance(state, tuple) else state,
            "c": state[1] if isinstance(state, tuple) else None, "args": args})

    if n_unk and words:
        print(f"probe: {n_unk / len(train_ids):.1%} of the training tokens are outside the "
              f"{len(model.vocab):,}-token vocabulary (read as {toks.UNK})")
    elif n_unk:
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
                if step % eval_every == 0 and step > 0 and not (history and history[-1]["step"] == step):
                    val = bits_per_char(model, val_ids)
                    history.append({"step": step, N: chars, f"val_{B}": round(val, 4),
                                    f"train_{B}": round(loss_ema / LN2, 4) if loss_ema else None})
                    if val < best:
                        best = val
                        save_checkpoint(out, model, source.source, metrics())
                    save_resume()
                    bar.write(f"step {step}: val {val:.3f} bits/{unit} (best {best:.3f})")
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
                bar.set_postfix({"loss": f"{loss_ema:.3f}", "bits": f"{loss_ema / LN2:.3f}",
                                 f"{N}_s": f"{chars / max(elapsed, 1e-9):.0f}"}, refresh=False)
        except KeyboardInterrupt:
            bar.close()
            save_resume()
            raise ProbeError(f"interrupted at step {step}; resumable checkpoint saved to {rpath} "
                             f"(continue with --resume)") from None
    bar.close()
    # final evaluation: keep the better of the last and the best weights
    val = bits_per_char(model, val_ids)
    history.append({"step": step, N: chars, f"val_{B}": round(val, 4),
                    f"train_{B}": round(loss_ema / LN2, 4) if loss_ema else None})
    if val < best or not out.exists():
        best = val
        save_checkpoint(out, model, source.source, metrics())
    save_resume()
    ck = read_checkpoint(out)
    best_model = model_from_checkpoint(ck, out)
    m = dict(ck["metrics"])
    held_out = {"val": val_text} if test_text is None else {"val": val_text, "test": test_text}
    for split, text in held_out.items():
        ids, unknown = toks.encode(best_model, text)
        m[f"{split}_{B}"] = round(bits_per_char(best_model, ids, desc=f"{split} bits/{unit}"
                                                if progress and split == "test" else None), 4)
        if words:  # perplexity beside a unigram baseline's on the same tokens, and how many were <unk>
            m[f"{split}_perplexity"] = round(2 ** m[f"{split}_{B}"], 2)
            m[f"{split}_unigram_perplexity"] = round(2 ** unigram_bits(train_ids, ids, len(model.vocab)), 2)
            m[f"{split}_unknown_rate"] = round(unknown / max(1, len(ids)), 4)
    m["history"], m["train_seconds"], m[N] = history, round(elapsed, 1), chars
    save_checkpoint(out, best_model, source.source, m)
    return m
