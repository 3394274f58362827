"""Corpus, model checkpoint, training and sampling: the pieces issue 2 promises."""
from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from probe import ProbeError, load_model
from probe.causal import intervene
from probe.cli import main
from probe.lm.model import read_checkpoint, save_checkpoint, widen
from probe.lm.sample import sample
from probe.lm.train import TrainConfig, bits_per_char, train
from probe.text import corpus


def test_stdlib_split_is_deterministic_and_disjoint():
    files = [name for name, _ in corpus.stdlib_files()]
    assert files == sorted(files) and len(files) > 100
    assert not any("/test/" in f or f.startswith("test/") for f in files)
    splits = {name: corpus.split_of(name) for name in files}
    assert splits == {name: corpus.split_of(name) for name in files}  # same answer twice
    counts = {s: list(splits.values()).count(s) for s in corpus.SPLITS}
    assert counts["train"] > 10 * counts["test"] > 0 and counts["val"] > 0
    test = corpus.stdlib("test")
    assert {n for n, _ in test.documents} == {n for n, s in splits.items() if s == "test"} - {
        n for n, t in test.documents if not t}
    assert test.source["fingerprint"] == corpus.fingerprint(test.text)


def test_unknown_characters_are_mapped_and_counted():
    vocab = corpus.build_vocab("abc\n")
    ids, unknown = corpus.encode("abxc\u00e9\n", vocab)
    assert vocab[0] == corpus.UNK
    assert unknown == 2
    assert corpus.decode(ids, vocab) == f"ab{corpus.UNK}c{corpus.UNK}\n"


def test_checkpoint_round_trip_is_exact(tiny_model, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model, {"kind": "text", "fingerprint": "abc"}, {"val_bpc": 1.5})
    ckpt = torch.load(path, weights_only=True)  # plain containers only
    assert ckpt["config"]["units"] == 8 and ckpt["config"]["corpus"]["fingerprint"] == "abc"
    loaded = load_model(path)
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.vocab == tiny_model.vocab and loaded.metrics == {"val_bpc": 1.5}


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable checkpoint"),
    (b"garbage bytes \x00\x01", "not a readable checkpoint"),
    (pickle.dumps({"a": 1}), "not a readable checkpoint"),
])
def test_corrupt_checkpoints_give_one_clear_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert main(["sample", "--model", str(bad), "--length", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"probe: error: {bad}: {message}") and err.count("\n") == 1


def test_foreign_and_truncated_checkpoints(tiny_model, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ProbeError, match="not a probe checkpoint"):
        read_checkpoint(foreign)

    class Evil:  # a pickle with arbitrary objects is refused, never executed
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "probe-model", "x": Evil()}, evil)
    with pytest.raises(ProbeError, match="not a probe checkpoint"):
        read_checkpoint(evil)
    good = tmp_path / "good.pt"
    save_checkpoint(good, tiny_model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ProbeError, match="truncated.pt: not a readable checkpoint"):
        read_checkpoint(truncated)
    with pytest.raises(ProbeError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pt")


def test_training_lowers_the_loss_and_never_overwrites(tmp_path, text):
    src = tmp_path / "code.py"
    src.write_text(text * 30)
    out = tmp_path / "m.pt"
    m = train(out, TrainConfig(corpus=None, text=str(src), units=32, embedding=16, batch=8, seq=32,
                               steps=120, eval_every=40, lr=1e-2, warmup=10), progress=False)
    vals = [h["val_bpc"] for h in m["history"]]
    assert vals[-1] < vals[0] - 1.0  # from ~6 bits/char towards the text's structure
    assert load_model(out).metrics["val_bpc"] == m["val_bpc"]
    with pytest.raises(ProbeError, match="already exists"):
        train(out, TrainConfig(text=str(src), units=32, steps=5), progress=False)


def test_seed_makes_training_repeatable_and_resume_continues(tmp_path, text):
    src = tmp_path / "code.py"
    src.write_text(text * 10)
    cfg = TrainConfig(text=str(src), units=16, embedding=8, batch=4, seq=16, steps=30, eval_every=10,
                      seed=3)
    a = train(tmp_path / "a.pt", cfg, progress=False)
    b = train(tmp_path / "b.pt", cfg, progress=False)
    assert a["history"] == b["history"]
    # a resumed run reaches the same step count from the resumable checkpoint
    c = train(tmp_path / "a.pt", cfg, resume=True, progress=False)
    assert c["step"] == 30
    # a larger --steps extends a finished run
    d = train(tmp_path / "a.pt", replace(cfg, steps=40), resume=True, progress=False)
    assert d["step"] == 40 and d["history"][-1]["step"] == 40


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, text):
    with pytest.raises(ProbeError, match="no resumable checkpoint"):
        train(tmp_path / "x.pt", TrainConfig(text="whatever"), resume=True, progress=False)


def test_widening_keeps_the_function_and_adds_trainable_units(tiny_model, text):
    wide = widen(tiny_model, 20).eval()
    ids = torch.from_numpy(corpus.encode(text, tiny_model.vocab)[0][None].astype(np.int64))
    with torch.no_grad():
        (small, (h, c)), (big, (h2, c2)) = tiny_model(ids), wide(ids)
    assert torch.equal(small, big)              # same logits, bit for bit
    assert torch.equal(h, h2[..., :8]) and torch.equal(c, c2[..., :8])
    assert h2[..., 8:].abs().mean() > 1e-3      # the new units run, only unread
    with pytest.raises(ProbeError, match="cannot widen"):
        widen(tiny_model, 4)


def test_training_can_start_from_a_smaller_checkpoint(tmp_path, text, model_path):
    src = tmp_path / "code.py"
    src.write_text(text * 10)
    cfg = TrainConfig(text=str(src), embedding=4, batch=4, seq=16, steps=10, eval_every=5,
                      init=str(model_path), units=12)
    m = train(tmp_path / "w.pt", cfg, progress=False)
    wide = load_model(tmp_path / "w.pt")
    assert wide.units == 12 and wide.vocab == load_model(model_path).vocab
    assert m["args"]["init"]["units"] == 8
    with pytest.raises(ProbeError, match="would shrink"):
        train(tmp_path / "s.pt", replace(cfg, units=4), progress=False)
    with pytest.raises(ProbeError, match="has 2 layers"):
        train(tmp_path / "s.pt", replace(cfg, layers=3), progress=False)
    with pytest.raises(ProbeError, match="pass only one"):
        train(tmp_path / "w.pt", cfg, resume=True, progress=False)


def test_sampling_with_a_seed_repeats(tiny_model):
    a = sample(tiny_model, "def ", 50, temperature=1.0, seed=7)
    b = sample(tiny_model, "def ", 50, temperature=1.0, seed=7)
    assert a == b and len(a) == 50 and corpus.UNK not in a
    greedy = {sample(tiny_model, "def ", 30, temperature=0, seed=s) for s in range(3)}
    assert len(greedy) == 1  # temperature 0 ignores the seed


def test_sampling_reads_unknown_prime_characters_as_the_unknown_symbol(model_path, capsys):
    assert main(["sample", "--model", str(model_path), "--prime", "naïve €", "--length", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("naïve €") and len(out.out) == len("naïve €") + 5 + 1
    assert out.err == ("probe: 3 character(s) of --prime are outside the model's vocabulary; "
                       "read as the unknown symbol\n")


@pytest.mark.parametrize("argv, message", [
    (["sample", "--length", "-1"], "--length must be a whole number >= 0, got -1"),
    (["sample", "--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["train", "--units", "0"], "--units must be a whole number >= 1, got 0"),
    (["train", "--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["train", "--dropout", "1"], "--dropout must be a finite number in [0, 1), got 1.0"),
    (["record", "--limit", "0"], "--limit must be a positive number of characters, got 0"),
])
def test_bad_numbers_are_one_clear_line(model_path, tmp_path, capsys, argv, message):
    extra = {"sample": ["--model", str(model_path)], "train": ["--text", str(model_path), "--out",
             str(tmp_path / "m.pt")], "record": ["--model", str(model_path), "--out", str(tmp_path / "r.h5")]}
    assert main([*argv, *extra[argv[0]]]) == 1
    assert capsys.readouterr().err == f"probe: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_weights_that_do_not_fit_the_config_are_named(model_path, capsys):
    ck = torch.load(model_path, weights_only=True)
    ck["state_dict"]["rnn.weight_hh_l1"] = torch.zeros(32, 4)
    torch.save(ck, model_path)
    for argv in (["info", str(model_path)], ["sample", "--model", str(model_path)]):
        assert main(argv) == 1
        assert capsys.readouterr().err == (
            f"probe: error: {model_path}: tensor rnn.weight_hh_l1 has shape (32, 4), but the config "
            "(layers 2, units 8, embedding 4, 48 tokens) needs (32, 8)\n")


@pytest.mark.parametrize("content, message", [
    (b"", "empty text"),
    (b"\x00\x01\x02binary", "binary file"),
    (b"caf\xe9 latin-1", "not UTF-8 text (invalid byte at offset 3)"),
])
def test_bad_text_files(tmp_path, content, message):
    f = tmp_path / "input.txt"
    f.write_bytes(content)
    with pytest.raises(ProbeError) as e:
        corpus.text_files(f)
    assert str(e.value) == f"{f}: {message}" or (message == "binary file" and "binary file" in str(e.value))


def test_folder_without_matching_files(tmp_path):
    with pytest.raises(ProbeError, match="no files match"):
        corpus.text_files(tmp_path, "*.py")


def test_sigterm_saves_a_resumable_checkpoint(tmp_path, text):
    import signal
    import subprocess
    import sys
    import time
    src = tmp_path / "code.py"
    src.write_text(text * 10)
    out = tmp_path / "m.pt"
    proc = subprocess.Popen([sys.executable, "-m", "probe", "train", "--text", str(src), "--out", str(out),
                             "--units", "16", "--batch", "4", "--seq", "16", "--steps", "1000000",
                             "--eval-every", "5", "--quiet"], stderr=subprocess.PIPE, text=True)
    resume = tmp_path / "m.resume.pt"
    deadline = time.monotonic() + 60
    while not resume.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    assert "resumable checkpoint saved" in proc.stderr.read()
    assert torch.load(resume, weights_only=True)["train_state"]["step"] >= 5


def test_checkpoints_from_before_other_cells_still_load(tiny_model, tmp_path):
    """They name the recurrent module ``lstm`` and have no ``cell`` in their config."""
    path = tmp_path / "old.pt"
    save_checkpoint(path, tiny_model)
    ck = torch.load(path, weights_only=True)
    ck["state_dict"] = {k.replace("rnn.", "lstm.", 1): v for k, v in ck["state_dict"].items()}
    del ck["config"]["cell"]
    torch.save(ck, path)
    old = load_model(path)
    assert old.cell == "lstm"
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), old.state_dict().items()):
        assert torch.equal(a, b), k
    shipped = load_model()  # the shipped model was saved the old way
    assert shipped.cell == "lstm" and shipped.units == 256


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gru_and_vanilla_rnn_train_resume_and_load(tmp_path, text, cell):
    src = tmp_path / "code.py"
    src.write_text(text * 10)
    cfg = TrainConfig(text=str(src), cell=cell, units=16, embedding=8, batch=4, seq=16, steps=20,
                      eval_every=10, seed=1)
    m = train(tmp_path / "m.pt", cfg, progress=False)
    model = load_model(tmp_path / "m.pt")
    assert model.cell == cell and model.config["cell"] == cell and m["step"] == 20
    again = train(tmp_path / "m.pt", replace(cfg, steps=30), resume=True, progress=False)
    assert again["step"] == 30
    assert len(sample(model, "def ", 20, temperature=0, seed=0)) == 20
    clamped = sample(model, "def ", 20, temperature=0, seed=0, clamp=[intervene.Edit(0, "h", 1, 0.5)])
    assert len(clamped) == 20
    with pytest.raises(ProbeError, match=f"0:c:1: a cell to pin is a state of its layer \\(h in {cell.upper()} layers\\)"):
        sample(model, "def ", 5, clamp=[intervene.Edit(0, "c", 1, 0.5)])


def test_an_unknown_cell_is_one_line(model_path, capsys):
    ck = torch.load(model_path, weights_only=True)
    ck["config"]["cell"] = "transformer"
    torch.save(ck, model_path)
    assert main(["info", str(model_path)]) == 1
    assert capsys.readouterr().err == (f"probe: error: {model_path}: unknown cell type 'transformer': "
                                       "choose lstm, gru, rnn\n")
    with pytest.raises(SystemExit):  # the flag itself: argparse lists the choices
        main(["train", "--cell-type", "transformer", "--out", str(model_path.parent / "m.pt")])


def test_shipped_models_by_name(capsys, monkeypatch, tmp_path):
    assert load_model("lstm").sha256 == load_model().sha256
    gru = load_model("gru")  # shipped: 2 x 296, trained on the same characters as the LSTM
    assert (gru.cell, gru.layers, gru.units) == ("gru", 2, 296)
    assert gru.metrics["chars"] == load_model("lstm").metrics["chars"]
    text = corpus.stdlib("test").text[:3000]  # it predicts held-out code as well as its card says
    assert bits_per_char(gru, corpus.encode(text, gru.vocab)[0]) < 1.8
    rnn = load_model("rnn")  # shipped: a vanilla (tanh) RNN, 2 x 506, about as many parameters
    assert (rnn.cell, rnn.layers, rnn.units) == ("rnn", 2, 506)
    assert rnn.metrics["chars"] == gru.metrics["chars"]
    assert bits_per_char(rnn, corpus.encode(text, rnn.vocab)[0]) < 2.0  # 1.75 measured: worse than both
    monkeypatch.setattr("probe.lm.model.SHIPPED", tmp_path / "stdlib.pt")  # an installation without them
    with pytest.raises(ProbeError, match=r"stdlib-gru.pt: the shipped gru model is not in this installation "
                                         r"yet \(train it: probe train --cell-type gru --units 296"):
        load_model("gru")
    assert main(["sample", "--model", "rnn", "--length", "5"]) == 1
    assert "the shipped rnn model is not in this installation yet" in capsys.readouterr().err
