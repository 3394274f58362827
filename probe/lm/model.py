"""The character-level language model (LSTM, GRU or vanilla RNN) and its checkpoint file.

embedding → multi-layer ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (dropout between layers) →
linear head.
A checkpoint is one ``torch.save`` file of plain containers (readable with
``torch.load(path, weights_only=True)``)::

    {"format": "probe-model", "version": 1, "config": {...}, "state_dict": {...},
     "metrics": {...}, "train_state": {...} | None}

``config`` holds layers, units, embedding size, dropout, the vocabulary and the corpus
description (with its fingerprint); ``metrics`` holds training results in bits/char.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from probe.errors import ProbeError
from probe.files import atomic
from probe.lm import imported
from probe.text import tokens as toks

FORMAT = "probe-model"
VERSION = 1
SHIPPED = Path(__file__).parents[1] / "models" / "stdlib.pt"  # the LSTM: the default everywhere
# shipped models by name (``load_model("gru")``, ``--model gru``), and how each is trained
NAMED = {"lstm": "stdlib.pt", "gru": "stdlib-gru.pt", "rnn": "stdlib-rnn.pt"}
HOW = {"lstm": "probe train --steps 12000", "gru": "probe train --cell-type gru --units 296 --steps 12000",
       "rnn": "probe train --cell-type rnn --units 506 --steps 12000"}
# the one default of each size (the shipped model's): CharRNN, probe train and its CLI
LAYERS, UNITS, EMBEDDING, DROPOUT = 2, 256, 64, 0.1
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # the recurrent cell types (rnn: tanh)
LOG2E = 1.4426950408889634  # bits per nat: every loss is in bits per character, -ln p · LOG2E


class CharRNN(nn.Module):
    """Embedding → recurrent layers (``cell``: lstm, gru or rnn; layers × units) → Linear
    over the vocabulary. ``tokens`` says what a position is (``probe.text.tokens``): a
    character (the default; ``vocab`` a string), a word or a longest-match piece (``vocab``
    a list of tokens holding ``<unk>``, and ``<eos>`` for words)."""

    def __init__(self, vocab, layers: int = LAYERS, units: int = UNITS,
                 embedding: int = EMBEDDING, dropout: float = DROPOUT, cell: str = "lstm",
                 tokens: str = "chars"):
        super().__init__()
        if cell not in CELLS:
            raise ProbeError(f"unknown cell type {cell!r}: choose {', '.join(CELLS)}")
        self.tokenizer = toks.Tokenizer(tokens, tuple(vocab))
        self.vocab = vocab if tokens == "chars" else tuple(vocab)
        self.cell = cell
        self.config = dict(vocab=vocab if tokens == "chars" else list(vocab), layers=layers, units=units,
                           embedding=embedding, dropout=dropout, cell=cell)
        if tokens != "chars":  # character models' configs stay as they were
            self.config["tokens"] = tokens
        self.embed = nn.Embedding(len(vocab), embedding)
        self.rnn = CELLS[cell](embedding, units, layers, batch_first=True,
                               dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(units, len(vocab))

    @property
    def layers(self) -> int:
        return self.rnn.num_layers

    @property
    def units(self) -> int:
        return self.rnn.hidden_size

    def forward(self, ids: torch.Tensor, state=None):
        """ids [B, T] → logits [B, T, V], state ((h, c) for an LSTM, h otherwise; each
        [layers, B, units])."""
        out, state = self.rnn(self.embed(ids), state)  # [B, T, units]
        return self.head(self.drop(out)), state


CharLSTM = CharRNN  # the name before GRU and vanilla RNN models: older code imports it


def detach(state):
    """A recurrent state cut from the graph (TBPTT): (h, c) for an LSTM, h otherwise."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _renamed(state_dict: dict) -> dict:
    """Checkpoints from before GRU and RNN models name the recurrent module ``lstm``."""
    return {("rnn." + k[5:] if k.startswith("lstm.") else k): v for k, v in state_dict.items()}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: CharRNN, corpus: dict | None = None,
                    metrics: dict | None = None, train_state: dict | None = None) -> None:
    """Write a checkpoint atomically (temporary name beside it, then rename)."""
    path = Path(path)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "config": {**model.config, "corpus": corpus or {}},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": metrics or {},
        "train_state": train_state,
    }
    with atomic(path) as tmp:
        torch.save(ckpt, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint dict, or raise a one-line ProbeError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ProbeError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise ProbeError(f"{path}: is a folder, not a checkpoint file")
    if not zipfile.is_zipfile(path):
        raise ProbeError(f"{path}: not a readable checkpoint (not a torch file: corrupt, truncated "
                         "or another format)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only loader met an object it will not build
        raise ProbeError(f"{path}: not a probe checkpoint (a pickle with arbitrary objects, "
                         "refused for safety)") from None
    except Exception as e:  # torch raises many types for corrupt files; all mean the same to a user
        msg = str(e)
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        raise ProbeError(f"{path}: not a readable checkpoint (corrupt: {first[:100]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ProbeError(f"{path}: not a probe checkpoint (expected format {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise ProbeError(f"{path}: probe checkpoint version {ckpt.get('version')!r} is not supported "
                         f"(this probe reads version {VERSION})")
    for key in ("config", "state_dict"):
        if not isinstance(ckpt.get(key), dict):
            raise ProbeError(f"{path}: probe checkpoint is missing its {key!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | os.PathLike = "checkpoint") -> CharRNN:
    """The model a checkpoint dict describes, or a one-line error naming the first tensor
    that does not fit its config."""
    cfg = ckpt["config"]
    try:
        if cfg.get("kind") == imported.KIND:  # a user's model, brought in by probe import
            model = imported.build(cfg)
        else:
            model = CharRNN(cfg["vocab"], int(cfg["layers"]), int(cfg["units"]), int(cfg["embedding"]),
                            cfg.get("dropout", 0.0),  # checkpoints from before dropout was stored had none
                            cfg.get("cell", "lstm"), cfg.get("tokens", "chars"))
    except ProbeError as e:
        raise ProbeError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ProbeError(f"{path}: checkpoint config is unusable ({type(e).__name__}: {e})") from None
    want, got = model.state_dict(), _renamed(ckpt["state_dict"])
    for name in sorted(set(want) | set(got)):
        if name not in got:
            raise ProbeError(f"{path}: checkpoint lacks the tensor {name} its config needs")
        if name not in want:
            raise ProbeError(f"{path}: checkpoint has a tensor {name} its config does not have")
        if not isinstance(got[name], torch.Tensor) or tuple(got[name].shape) != tuple(want[name].shape):
            shape = tuple(got[name].shape) if isinstance(got[name], torch.Tensor) else type(got[name]).__name__
            raise ProbeError(f"{path}: tensor {name} has shape {shape}, but the config "
                             f"(layers {cfg['layers']}, units {cfg['units']}, embedding {cfg['embedding']}, "
                             f"{len(cfg['vocab'])} tokens) needs {tuple(want[name].shape)}")
    if cfg.get("tied") and "head.weight" in got and "embed.weight" in got:
        got = {**got, "head.weight": got["embed.weight"]}  # one tensor, as the model shares it
    model.load_state_dict(got)
    model.corpus = cfg.get("corpus", {})
    model.metrics = ckpt.get("metrics", {})
    return model


def shipped(name: str) -> Path:
    """The file of a shipped model by name: lstm (the default), gru or rnn."""
    return SHIPPED if name == "lstm" else SHIPPED.with_name(NAMED[name])


def load_model(path: str | os.PathLike | None = None) -> CharRNN:
    """Load a probe checkpoint in eval mode: a path, a shipped model's name (lstm, gru,
    rnn), or nothing for the shipped LSTM. A file named like a shipped model wins over the
    name (``--model gru`` in a folder holding a file ``gru``)."""
    named = path is None or (str(path) in NAMED and not Path(path).exists())
    name = "lstm" if path is None else str(path)
    p = shipped(name) if named else Path(path)
    if named and not p.exists():
        raise ProbeError(f"{p}: the shipped {name} model is not in this installation"
                         + ("" if name == "lstm" else f" yet (train it: {HOW[name]} --out {p})"))
    model = model_from_checkpoint(read_checkpoint(p), p)
    model.path = str(p)
    model.sha256 = file_sha256(p)
    return model.eval()


def on_device(model: nn.Module, device: str | None) -> nn.Module:
    """The model moved to ``device`` (``--device``: cpu, cuda, cuda:1, mps), or one line saying
    the device is not there; every tensor probe makes for the model follows its weights."""
    if device in (None, "", "cpu"):
        return model
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ProbeError(f"--device {device!r}: not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ProbeError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ProbeError(f"--device {device}: MPS is not available here")
    return model.to(dev)


def summary(path: str | os.PathLike | None = None, history: bool = False) -> dict:
    """What ``probe info CKPT`` prints: the file, its sha256, the config, the parameter count
    and the training metrics (the learning curve ``history`` only when asked for). ``path``
    as ``load_model`` takes it; weights that do not fit the config are refused, naming the tensor."""
    named = path is None or (str(path) in NAMED and not Path(path).exists())
    p = shipped("lstm" if path is None else str(path)) if named else Path(path)
    ck = read_checkpoint(p)
    model_from_checkpoint(ck, p)
    cfg = dict(ck["config"])
    vocab = cfg.pop("vocab")
    metrics = {k: v for k, v in ck["metrics"].items() if history or k != "history"}
    return {"path": str(p), "sha256": file_sha256(p), "vocab_size": len(vocab), **cfg,
            "parameters": sum(v.numel() for v in ck["state_dict"].values()), "metrics": metrics}


@torch.no_grad()
def widen(model: CharRNN, units: int, dropout: float | None = None, seed: int = 0) -> CharRNN:
    """A copy of ``model`` with ``units`` units per layer that computes the same function.

    The old units keep their weights; each new unit gets fresh random incoming weights
    (PyTorch's own LSTM initialisation) and zero outgoing weights: nothing reads a new
    unit yet, so the logits are unchanged until training grows those weights. This lets
    a bigger model start from a trained smaller one (function-preserving widening, as in
    Net2Net's zero-init variant) instead of from scratch.
    """
    old = model.units
    if model.cell != "lstm":
        raise ProbeError(f"widening is written for LSTM models, not {model.cell}")
    if units < old:
        raise ProbeError(f"cannot widen a {old}-unit model to {units} units")
    torch.manual_seed(seed)
    cfg = model.config
    big = CharRNN(model.vocab, cfg["layers"], units, cfg["embedding"],
                   cfg["dropout"] if dropout is None else dropout)
    big.embed.weight.copy_(model.embed.weight)
    for k in range(model.layers):
        for kind in ("ih", "hh"):
            w_old, w = getattr(model.rnn, f"weight_{kind}_l{k}"), getattr(big.rnn, f"weight_{kind}_l{k}")
            b_old, b = getattr(model.rnn, f"bias_{kind}_l{k}"), getattr(big.rnn, f"bias_{kind}_l{k}")
            reads_h = kind == "hh" or k > 0  # the columns are units of a layer (else the embedding)
            for gate in range(4):  # i, f, g, o blocks of rows
                rows, rows_old = slice(gate * units, gate * units + old), slice(gate * old, (gate + 1) * old)
                if reads_h:
                    w[rows, old:] = 0  # old units ignore the new ones
                    w[rows, :old] = w_old[rows_old]
                else:
                    w[rows] = w_old[rows_old]
                b[rows] = b_old[rows_old]
    big.head.weight.zero_()
    big.head.weight[:, :old] = model.head.weight
    big.head.bias.copy_(model.head.bias)
    return big


def for_recording(rec) -> tuple[CharRNN, str]:
    """(model, note): the model a recording was made with, to run it again (live text,
    ablation). Its own checkpoint if the file is still there, else the shipped model if it
    has the same vocabulary and shape; the note says which when it is not the recorded
    file (names only: it may be shown on a page). A one-line error if neither fits."""
    cfg = rec.model_config
    own = rec.model_path
    candidates = ([own] if own and Path(own).is_file() else []) + [None]
    for path in candidates:
        try:
            model = load_model(path)
        except ProbeError:
            continue
        if (model.config["vocab"], model.config.get("tokens", "chars"), model.layers, model.units, model.cell) != (
                cfg.get("vocab"), cfg.get("tokens", "chars"), cfg.get("layers"), cfg.get("units"), cfg.get("cell", "lstm")):
            continue
        note, own_name = "", Path(own).name
        if path is None and own:
            note = (f"the recording's model {own_name} is missing; using the shipped model, which has "
                    "the same shape.")
        elif rec.model_sha256 and model.sha256 != rec.model_sha256:
            note = f"{own_name} changed since the recording was made."
        return model, note
    raise ProbeError(f"{rec.path.name}: no model to run: its checkpoint {Path(own).name or '(unknown)'} "
                     "is missing and the shipped model has a different vocabulary or shape")
