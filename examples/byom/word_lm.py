"""A word-level LSTM in the shape of PyTorch's ``word_language_model`` example: an
``encoder`` embedding, a seq-first ``rnn`` (``nn.LSTM``), dropout, a ``decoder`` tied to the
encoder, and a ``forward(input [T, B], hidden)`` that returns log-softmax flattened to
``[T·B, V]`` with the hidden state; a ``Dictionary`` of words (``word2idx``, ``idx2word``)
built as its ``Corpus`` builds one: every line split on whitespace, ``<eos>`` after it.

The corpus is offline prose: the docstrings and comments of the standard library
(``probe.text.corpus.stdlib_prose``), preprocessed the Penn Treebank way: words outside the
2,000 most frequent are ``<unk>`` in the text itself, so the dictionary holds ``<unk>``.
Training writes the weights (a state_dict), ``idx2word`` one word per line, and the held-out
text to record::

    python examples/byom/word_lm.py --steps 300
    probe import examples/byom/word_lm.py:build --weights runs/word_lm.weights.pt \\
        --vocab runs/word_lm.vocab.txt --tokens words --forward examples/byom/word_lm.py:scores \\
        --out runs/word_lm.pt
"""
from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

WORDS = 2000  # the most frequent words kept; the dictionary adds <unk> and <eos>
NTOKEN = WORDS + 2


class RNNModel(nn.Module):
    """Encoder, a seq-first recurrent module, decoder; dropout; optionally tied weights."""

    def __init__(self, rnn_type: str = "LSTM", ntoken: int = NTOKEN, ninp: int = 128, nhid: int = 128,
                 nlayers: int = 2, dropout: float = 0.2, tie_weights: bool = True):
        super().__init__()
        self.ntoken, self.rnn_type, self.nhid, self.nlayers = ntoken, rnn_type, nhid, nlayers
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:  # the decoder's weight is the encoder's (needs nhid == ninp)
            self.decoder.weight = self.encoder.weight

    def forward(self, input, hidden):
        """input [T, B] → log-probabilities [T·B, V], the last hidden state."""
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        w = next(self.parameters())
        zeros = w.new_zeros(self.nlayers, bsz, self.nhid)
        return (zeros, zeros.clone()) if self.rnn_type == "LSTM" else zeros


class Dictionary:
    def __init__(self):
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def build():
    """The factory for ``probe import``: a fresh module (weights from --weights, the words
    from --vocab)."""
    return RNNModel()


def scores(module: RNNModel, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, T] → log-probabilities [B, T, V]: time first in, the flat rows back to [T, B, V],
    batch first out."""
    B, T = ids.shape
    logp, _ = module(ids.T, module.init_hidden(B))
    return logp.view(T, B, -1).transpose(0, 1)


def preprocessed(lines: list[str], keep: set[str]) -> list[str]:
    """Each line's words, those outside ``keep`` as <unk> (the Penn Treebank's way)."""
    return [" ".join(w if w in keep else "<unk>" for w in line.split()) for line in lines]


def tokenize(lines: list[str], dictionary: Dictionary, grow: bool) -> torch.Tensor:
    """``Corpus.tokenize``: every line's words, then <eos>."""
    ids = []
    for line in lines:
        for word in line.split() + ["<eos>"]:
            ids.append(dictionary.add_word(word) if grow else dictionary.word2idx[word])
    return torch.tensor(ids, dtype=torch.int64)


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    """[N] → [N // bsz, bsz]: each column a contiguous stretch, time first."""
    n = data.size(0) // bsz
    return data[: n * bsz].view(bsz, -1).t().contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description="train the word-level LSTM on the standard library's prose")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--out", default="runs/word_lm.weights.pt", help="the state_dict to write (the words go "
                   "beside it, .vocab.txt, and the held-out text, .test.txt)")
    p.add_argument("--batch", type=int, default=20, help="columns of the batched text")
    p.add_argument("--bptt", type=int, default=35, help="words per step of back-propagation")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0, help="torch's seed (the same weights every run)")
    a = p.parse_args()
    from probe.text.corpus import stdlib_prose
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    train = stdlib_prose("train", limit=1_000_000).text.splitlines()
    test = stdlib_prose("test", limit=50_000).text.splitlines()
    keep = {w for w, _ in Counter(w for line in train for w in line.split()).most_common(WORDS)}
    train, test = preprocessed(train, keep), preprocessed(test, keep)
    words = Dictionary()
    data = batchify(tokenize(train, words, grow=True), a.batch)
    assert len(words) == NTOKEN, len(words)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    hidden, i, start = model.init_hidden(a.batch), 0, time.time()
    for step in range(1, a.steps + 1):
        if i + a.bptt + 1 > len(data):
            hidden, i = model.init_hidden(a.batch), 0
        x, y = data[i:i + a.bptt], data[i + 1:i + 1 + a.bptt]
        i += a.bptt
        hidden = tuple(h.detach() for h in hidden)  # truncated back-propagation
        logp, hidden = model(x, hidden)
        loss = F.nll_loss(logp, y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        if step % 100 == 0 or step in (1, a.steps):
            print(f"step {step:4d}  loss {loss.item():.3f}  perplexity {math.exp(loss.item()):.0f}  "
                  f"{time.time() - start:.0f} s", flush=True)
    model.eval()
    with torch.no_grad():
        held = tokenize(test, words, grow=False)
        logp, _ = model(held[:-1, None], model.init_hidden(1))
        nll = F.nll_loss(logp, held[1:]).item()
    print(f"held-out perplexity {math.exp(nll):.1f} over {len(held) - 1} words")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name.removesuffix(".pt").removesuffix(".weights")
    torch.save(model.state_dict(), out)
    out.with_name(stem + ".vocab.txt").write_text("".join(w + "\n" for w in words.idx2word), encoding="utf-8")
    out.with_name(stem + ".test.txt").write_text("".join(line + "\n" for line in test), encoding="utf-8")
    print(f"wrote {out}, {out.with_name(stem + '.vocab.txt')} and {out.with_name(stem + '.test.txt')}")


if __name__ == "__main__":
    main()
