"""Recurrent language models written the way common public PyTorch code writes them (our own
code, in their shapes), for the import tests: probe must adapt each without being told its
parameter names, and prove it computes what each one's own forward computes."""
from __future__ import annotations

import string

import torch
import torch.nn as nn
import torch.nn.functional as F

PRINTABLE = list(string.printable)  # 100 characters, no unknown symbol: the common char vocabulary


class WordLMShape(nn.Module):
    """The shape of pytorch/examples' word_language_model ``RNNModel``: seq-first input
    [T, B], ``encoder`` / ``rnn`` / ``decoder``, dropout, optional tied weights; its forward
    returns log-softmax flattened to [T·B, V] and the hidden state."""

    def __init__(self, rnn_type: str, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float = 0.5,
                 tie_weights: bool = False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def word_lm_scores(model: WordLMShape, ids: torch.Tensor) -> torch.Tensor:
    """Its own forward on ids [B, T]: transposed in, unflattened out."""
    B, T = ids.shape
    out, _ = model(ids.T, model.init_hidden(B))
    return out.view(T, B, -1).transpose(0, 1)


class CharRNNShape(nn.Module):
    """The shape of the PyTorch char-rnn ports: one step per call, ``forward(input [B],
    hidden)``, trained and sampled by a loop over time."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, model: str = "gru", n_layers: int = 1):
        super().__init__()
        self.model, self.hidden_size, self.n_layers = model.lower(), hidden_size, n_layers
        self.encoder = nn.Embedding(input_size, hidden_size)
        rnn = nn.GRU if self.model == "gru" else nn.LSTM
        self.rnn = rnn(hidden_size, hidden_size, n_layers)
        self.decoder = nn.Linear(hidden_size, output_size)

    def forward(self, input, hidden):
        batch_size = input.size(0)
        encoded = self.encoder(input)
        output, hidden = self.rnn(encoded.view(1, batch_size, -1), hidden)
        output = self.decoder(output.view(batch_size, -1))
        return output, hidden

    def init_hidden(self, batch_size: int):
        z = torch.zeros(self.n_layers, batch_size, self.hidden_size)
        return (z, z.clone()) if self.model == "lstm" else z


def char_rnn_scores(model: CharRNNShape, ids: torch.Tensor) -> torch.Tensor:
    """Its own loop: one ``forward(input, hidden)`` per position."""
    hidden, out = model.init_hidden(ids.shape[0]), []
    for t in range(ids.shape[1]):
        logits, hidden = model(ids[:, t], hidden)
        out.append(logits)
    return torch.stack(out, 1)


class TwoWidths(nn.Module):
    """Two separate ``nn.LSTM`` layers of different widths, batch-first, dropout between, a
    decoder tied to the embedding (so the top layer is as wide as the embedding)."""

    def __init__(self, vocab_size: int, emb: int = 24, wide: int = 40):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb)
        self.lstm1 = nn.LSTM(emb, wide, batch_first=True)
        self.dropout = nn.Dropout(0.3)
        self.lstm2 = nn.LSTM(wide, emb, batch_first=True)
        self.fc = nn.Linear(emb, vocab_size)
        self.fc.weight = self.embedding.weight

    def forward(self, x):
        x, _ = self.lstm1(self.embedding(x))
        x, _ = self.lstm2(self.dropout(x))
        return self.fc(x)


class OneHotRNN(nn.Module):
    """No embedding: one-hot vectors into a two-layer relu RNN, batch-first."""

    def __init__(self, vocab_size: int, hidden: int = 32):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = nn.RNN(vocab_size, hidden, num_layers=2, nonlinearity="relu", batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, ids):
        return self.out(self.rnn(F.one_hot(ids, self.vocab_size).float())[0])


class Projected(nn.Module):
    """An LSTM with ``proj_size`` (h narrower than c) and no biases, two layers."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 16)
        self.lstm = nn.LSTM(16, 40, 2, proj_size=24, bias=False, batch_first=True)
        self.head = nn.Linear(24, vocab_size)

    def forward(self, ids):
        return self.head(self.lstm(self.embed(ids))[0])


def trained_a_little(model: nn.Module, scores, vocab_size: int, steps: int = 30, seed: int = 0) -> nn.Module:
    """A few steps of next-token training on random text, so the weights are not the init."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    text = torch.randint(vocab_size, (4, 33))
    for _ in range(steps):
        logits = scores(model, text[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), text[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class Dictionary:
    """The shape of word_language_model's ``Dictionary``: ``word2idx`` and ``idx2word``, a
    word's id the order it was first seen in."""

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


# A little PTB-style prose: lower case, rare words already <unk>, one sentence a line.
WORDS_TRAIN = """the cat sat on the mat and the dog sat by the door .
a dog ran to the cat and the cat ran to the <unk> .
the man said that the dog was on the mat , not the cat .
she said the <unk> was by the door and the man sat down .
the cat and the dog and the man ran , and then they sat on the mat .
"""


def word_corpus(text: str, dictionary: Dictionary, grow: bool = True) -> torch.Tensor:
    """A text as word ids the way word_language_model's ``Corpus`` reads a file: each line
    split on whitespace with <eos> after it; a word the dictionary lacks is added (training)
    or read as <unk> (``grow=False``)."""
    ids = []
    for line in text.splitlines():
        for word in line.split() + ["<eos>"]:
            if grow:
                ids.append(dictionary.add_word(word))
            else:
                ids.append(dictionary.word2idx.get(word, dictionary.word2idx["<unk>"]))
    return torch.tensor(ids, dtype=torch.int64)
