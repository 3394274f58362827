"""``probe import FILE.py:FACTORY``: a user's model file in, a probe checkpoint (data) out;
every failure is one line and writes nothing; the imported model works with the commands."""
from __future__ import annotations

import json
import string
import textwrap

import pytest
import torch

from probe.cli import main
from probe.lm.model import load_model

MODEL_PY = '''
import string
import torch
import torch.nn as nn
import torch.nn.functional as F


class RNNModel(nn.Module):
    """Seq-first, encoder / rnn / decoder, log-softmax flattened: the word_language_model shape."""

    def __init__(self, ntoken=100, ninp=24, nhid=32, nlayers=2):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return F.log_softmax(self.decoder(self.drop(output)).view(-1, self.ntoken), dim=1), hidden

    def init_hidden(self, bsz):
        w = next(self.parameters())
        return (w.new_zeros(2, bsz, 32), w.new_zeros(2, bsz, 32))


def build():
    torch.manual_seed(0)
    return RNNModel(), list(string.printable)


def bare():
    torch.manual_seed(0)
    return RNNModel()


def scores(module, ids):
    B, T = ids.shape
    out, _ = module(ids.T, module.init_hidden(B))
    return out.view(T, B, -1).transpose(0, 1)
'''

CODE = "def add(a, b):\n    return a + b  # sum\n\nprint(add(1, 2), 'ok')\n" * 40


@pytest.fixture
def user(tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_PY)
    (tmp_path / "code.py").write_text(CODE)
    return tmp_path


def test_import_writes_a_data_checkpoint_that_the_commands_take(user, capsys):
    out = user / "runs" / "mine.pt"
    assert main(["import", f"{user / 'mymodel.py'}:build", "--forward", f"{user / 'mymodel.py'}:scores",
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "wrote" in said and "lstm layers 32 x2, 100 tokens, embedding 24" in said
    assert "parity against your forward: max |log p difference|" in said
    ck = torch.load(out, weights_only=True)
    assert ck["config"]["kind"] == "imported" and ck["config"]["vocab"] == string.printable
    assert ck["config"]["parity"]["reference"] == "forward" and ck["config"]["parity"]["max_abs_diff"] <= 1e-5
    assert ck["config"]["source"]["factory"].endswith("mymodel.py:build")
    model = load_model(out)
    assert (model.layers, model.units, model.cell) == (2, 32, "lstm")

    text = str(user / "code.py")
    assert main(["ablate", "--model", str(out), "--text", text, "--cells", "1:h:3,0:c:5", "--random", "4",
                 "--quiet"]) == 0
    assert "1:h:3" in capsys.readouterr().out
    assert main(["sample", "--model", str(out), "--prime", "def ", "--length", "20", "--clamp", "0:h:1=0.5",
                 "--seed", "1"]) == 0
    assert len(capsys.readouterr().out) >= 20
    assert main(["gradients", "--model", str(out), "--text", text, "--span", "10", "--positions", "20",
                 "--quiet"]) == 0
    rec = user / "mine.h5"
    assert main(["record", "--model", str(out), "--text", text, "--out", str(rec), "--quiet"]) == 0
    assert main(["analyze", str(rec)]) == 0


def test_weights_and_a_vocab_file(user, capsys):
    (user / "vocab.json").write_text(json.dumps(list(string.printable)))
    ns: dict = {}
    exec(MODEL_PY, ns)
    trained = ns["bare"]()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1)  # not the factory's initial weights
    torch.save(trained.state_dict(), user / "w.pt")
    out = user / "mine.pt"
    assert main(["import", f"{user / 'mymodel.py'}:bare", "--weights", str(user / "w.pt"), "--vocab",
                 str(user / "vocab.json"), "--out", str(out)]) == 0
    model = load_model(out)
    torch.testing.assert_close(model.head.weight, trained.decoder.weight.detach())
    assert "parity against the parts in order" in capsys.readouterr().out


@pytest.mark.parametrize("extra, factory, message", [
    ([], "missing.py:build", "missing.py: no such file"),
    ([], "mymodel.py", "write FILE.py:FUNCTION"),
    ([], "mymodel.py:nothing", "mymodel.py: has no function nothing"),
    ([], "raises.py:build", "raises.py: build() raised ValueError: no data here"),
    ([], "needs.py:build", "needs.py: its imports failed: No module named 'not_a_package_anywhere'"),
    ([], "broken.py:build", "broken.py: not valid Python (line 1"),
    ([], "other.py:build", "other.py: build() returned a dict; it must return an nn.Module or (module, vocab)"),
    ([], "mymodel.py:bare", "the factory returned no vocabulary: give --vocab V.json"),
    (["--vocab", "short.json"], "mymodel.py:bare", "the vocabulary has 3 tokens but the embedding encoder"),
    (["--vocab", "notjson.json"], "mymodel.py:bare", "notjson.json: not JSON"),
    (["--weights", "wrong.pt"], "mymodel.py:build", "wrong.pt: does not fit the factory's module: it has "
                                                  "encoder.weight of shape (5, 24)"),
    (["--weights", "mymodel.py"], "mymodel.py:build", "mymodel.py: not a readable state_dict"),
])
def test_bad_input_is_one_line_and_writes_nothing(user, capsys, monkeypatch, extra, factory, message):
    monkeypatch.chdir(user)
    (user / "raises.py").write_text("def build():\n    raise ValueError('no data here')\n")
    (user / "needs.py").write_text("import not_a_package_anywhere\n\ndef build():\n    pass\n")
    (user / "broken.py").write_text("def build(:\n")
    (user / "other.py").write_text("def build():\n    return {}\n")
    (user / "short.json").write_text('["a", "b", "c"]')
    (user / "notjson.json").write_text("a b c")
    torch.save({"encoder.weight": torch.zeros(5, 24)}, user / "wrong.pt")
    assert main(["import", factory, *extra, "--out", "out.pt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("probe: error: ") and message in err and err.count("\n") == 1, err
    assert not (user / "out.pt").exists() and not list(user.glob(".*out.pt*"))


def test_an_existing_checkpoint_is_not_replaced_without_force(user, capsys):
    out = user / "mine.pt"
    out.write_bytes(b"mine")
    assert main(["import", f"{user / 'mymodel.py'}:build", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["import", f"{user / 'mymodel.py'}:build", "--out", str(out), "--force"]) == 0


def test_the_factory_file_can_import_its_neighbours(tmp_path, capsys):
    (tmp_path / "nets.py").write_text(textwrap.dedent('''
        import torch.nn as nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb, self.gru, self.out = nn.Embedding(100, 8), nn.GRU(8, 12, batch_first=True), nn.Linear(12, 100)
            def forward(self, ids):
                return self.out(self.gru(self.emb(ids))[0])
    '''))
    (tmp_path / "make.py").write_text("import string\nfrom nets import Net\n\ndef build():\n"
                                      "    return Net(), string.printable\n")
    assert main(["import", f"{tmp_path / 'make.py'}:build", "--out", str(tmp_path / "m.pt")]) == 0
    assert load_model(tmp_path / "m.pt").cell == "gru"
