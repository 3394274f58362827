"""``probe train`` and ``probe sample``: make a model, and hear what it says."""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from probe.causal import intervene
from probe.cli.common import Renamed, command, device_flag, text_flags
from probe.lm.model import load_model, on_device
from probe.lm.sample import sample
from probe.lm.model import DROPOUT, EMBEDDING
from probe.lm.train import (CORPUS, DEFAULT_STEPS, VOCAB_SIZE, WORD_DROPOUT, WORD_EMBEDDING, TrainConfig,
                            keys, train)
from probe.text import tokens as toks

# help for probe train's flags, one per numeric TrainConfig field (the defaults come from the field)
TRAIN_HELP = {
    "layers": "recurrent layers", "units": "units per layer",
    "embedding": "embedding size (default {embedding} for characters, {word_embedding} for words: a word "
                 "carries more than a character, and its embedding is still small beside the head)",
    "dropout": "dropout between layers and before the head (default {dropout} for characters, "
               "{word_dropout} for words: the stdlib prose corpus is half a million training words, "
               "which a model with a 10,000-word head overfits)",
    "vocab_size": "with --tokens words: the training split's N most frequent words make the vocabulary, "
                  "plus <unk> and <eos> (default {vocab_size}: about 92%% of the stdlib prose corpus's "
                  "training words)",
    "batch": "rows of text read side by side per step",
    "seq": "positions (characters or words) per TBPTT window",
    "steps": "optimizer steps (default {steps}; with --resume, a larger number extends the run)",
    "lr": "peak learning rate (Adam)", "warmup": "steps of linear warmup",
    "min_lr_frac": "the cosine schedule decays to lr x this", "clip": "gradient-norm clip",
    "eval_every": "steps between validations (and checkpoints)",
    "eval_chars": "validation characters per evaluation", "seed": "random seed",
    "limit": "read at most N characters of each split (train, validation, test): a quick try",
}
CELL_TYPES = ["lstm", "gru", "rnn"]
DEFAULTS = {"steps": DEFAULT_STEPS, "embedding": EMBEDDING, "word_embedding": WORD_EMBEDDING,
            "dropout": DROPOUT, "word_dropout": WORD_DROPOUT, "vocab_size": VOCAB_SIZE}


def add_train(sub) -> None:
    t = command(sub, "train", "train a character- or word-level language model (LSTM, GRU or RNN)", run_train, [
        "probe train --out runs/stdlib.pt              # the shipped model (about 1 h)",
        "probe train --tokens words --vocab-size 10000 --layers 1 --out runs/words.pt  # stdlib prose",
        "probe train --text notes.txt --out runs/notes.pt --units 128 --steps 500",
        "probe train --cell-type gru --units 296 --out runs/gru.pt",
        "probe train --out runs/stdlib.pt --resume"],
        note="the --out folder is created if missing")
    text_flags(t)
    t.set_defaults(corpus=None)  # by --tokens: stdlib (source code) for chars, stdlib-prose for words
    t.add_argument("--tokens", default="chars", choices=["chars", "words", "vocab"],
                   help="what a position is: chars (default), or words (whitespace-split, <eos> at each "
                        f"line end; the default corpus is then {CORPUS['words']}, the standard library's "
                        "docstrings and comments); vocab (longest match) is not trained here")
    t.add_argument("--out", required=True, help="checkpoint to write (best validation weights)")
    t.add_argument("--cell-type", dest="cell", default="lstm", choices=CELL_TYPES,
                   help="the recurrent type: lstm (default), gru, or rnn (vanilla, tanh)")
    t.add_argument("--cell", dest="cell", action=Renamed, new="--cell-type", choices=CELL_TYPES)
    for f in dataclasses.fields(TrainConfig):  # one flag per numeric field, its default from the field
        if f.name not in TRAIN_HELP:
            continue
        kind = float if f.name == "dropout" else int if f.default is None else type(f.default)
        default = "" if f.default is None or f.name == "steps" else f" (default {f.default})"
        t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                       help=TRAIN_HELP[f.name].format(**DEFAULTS) + default)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--resume", action="store_true", help="continue from OUT's .resume.pt")
    t.add_argument("--init", metavar="CKPT", help="start from CKPT's weights, widened to --units "
                   "(same function at step 0; its vocabulary, layers and embedding are kept)")
    t.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(a: argparse.Namespace) -> int:
    config = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    m = train(a.out, config, resume=a.resume, force=a.force, threads=a.threads, progress=not a.quiet)
    bits, count = keys("words" if "tokens" in m else "chars")
    unit = "char" if bits == "bpc" else "token"
    parts = []
    for split, name in (("val", "validation"), ("test", "test")):
        if f"{split}_{bits}" in m:
            part = f"{name} {m[f'{split}_{bits}']:.3f} bits/{unit}"
            if f"{split}_perplexity" in m:
                part += (f" (perplexity {m[f'{split}_perplexity']:,.1f} per token; a unigram model's "
                         f"{m[f'{split}_unigram_perplexity']:,.1f}; {m[f'{split}_unknown_rate']:.1%} <unk>)")
            parts.append(part)
    print(f"saved {a.out}: " + ", ".join(parts) +
          f", {m[count]:,} {'characters' if unit == 'char' else 'tokens'} in {m['train_seconds'] / 60:.1f} min")
    return 0


def add_sample(sub) -> None:
    s = command(sub, "sample", "generate text from a model", run_sample, [
        "probe sample --prime 'def ' --length 400 --temperature 0.7 --seed 1",
        "probe sample --prime 'x = ' --clamp 0:c:89=0 --seed 1     # the quote cell held at 0"])
    s.add_argument("--model", help="checkpoint, or a shipped model: lstm (default), gru, rnn")
    s.add_argument("--prime", default="\n", help="text to start from")
    s.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    s.add_argument("--temperature", type=float, default=0.8, help="1 = model's distribution, 0 = greedy")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: a different sample each run)")
    device_flag(s)
    s.add_argument("--clamp", action="append", default=[], metavar="L:S:U=VALUE",
                   help="pin the cell L:S:U (layer, stream h or c, unit) to VALUE at every step, "
                        "e.g. 0:c:89=5; repeatable")


def run_sample(a: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # one character per step: threads only add synchronisation
    model = on_device(load_model(a.model), a.device)
    clamp = [intervene.parse_clamp(c) for c in a.clamp]
    text = sample(model, a.prime, a.length, a.temperature, a.seed, clamp=clamp)
    unknown = toks.encode(model, a.prime)[1]
    if unknown:
        print(f"probe: {unknown} {toks.of(model).unit}(s) of --prime are outside the model's vocabulary; "
              "read as the unknown symbol", file=sys.stderr)
    print(a.prime + text)
    return 0


def add_parser(sub) -> None:
    add_train(sub)
    add_sample(sub)
