"""Word-level training (issue 28, item 4): the stdlib prose corpus, a vocabulary from the
training split only, ``probe train --tokens words``, perplexity beside a unigram baseline,
checkpoints that keep their tokenizer, and the flags that cannot go together."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import PROSE
from probe import ProbeError, load_model
from probe.cli import main
from probe.lm.model import read_checkpoint
from probe.lm.train import TrainConfig, train, unigram_bits
from probe.text import corpus, prose, tokens

SOURCE = '''#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""Module summary line
wrapped onto a second line.

Second paragraph of the module.
"""
import os  # inline remark about imports

# ----------------------------------
# A block comment that spans
# two lines of prose.
# type: ignore
CONSTANT_NAME = "a string literal that is code"


def function_name(argument):
    """Do the thing.

    >>> function_name(1)
    2
    """
    return argument + 1  # noqa: E501
'''

SMALL = ["--units", "8", "--embedding", "4", "--batch", "4", "--seq", "8", "--quiet"]


def test_prose_keeps_docstrings_and_comments_one_paragraph_a_line_and_no_code():
    lines = prose.prose(SOURCE).splitlines()
    assert lines == ["Module summary line wrapped onto a second line.", "Second paragraph of the module.",
                     "inline remark about imports", "A block comment that spans two lines of prose.",
                     "Do the thing."]
    text = "\n".join(lines)
    for code in ("CONSTANT_NAME", "string literal", "import os", "function_name", "argument", "usr/bin",
                 "coding", "type:", "noqa", "---"):
        assert code not in text, code


def test_a_file_that_does_not_parse_still_gives_its_comments():
    broken = "# a comment about broken code\ndef (:\n    pass  # another remark\n"
    assert prose.prose(broken).splitlines() == ["a comment about broken code", "another remark"]


def test_the_prose_corpus_splits_by_file_like_the_code_corpus():
    held_out = corpus.stdlib_prose("test")
    names = {n for n, _ in held_out.documents}
    by_split = {n: corpus.split_of(n) for n, _ in corpus.stdlib_files()}
    assert names and all(by_split[n] == "test" for n in names)
    assert not names & {n for n, s in by_split.items() if s == "train"}
    assert held_out.source["kind"] == "stdlib-prose"
    assert held_out.source["fingerprint"] == corpus.fingerprint(held_out.text)
    code = dict(corpus.stdlib("test").documents)
    for name, text in held_out.documents[:5]:  # each document is its file's prose
        assert text == prose.prose(code[name]) and text.endswith("\n")
    assert corpus.load("stdlib-prose", "test", limit=500).text == held_out.text[:500]
    with pytest.raises(ProbeError, match="stdlib-prose"):
        corpus.load("prose", "test")


def test_cli_trains_a_word_model_whose_vocabulary_comes_from_training_text_only(tmp_path, capsys):
    out = tmp_path / "w.pt"
    argv = ["train", "--tokens", "words", "--vocab-size", "60", "--limit", "20000", *SMALL,
            "--steps", "6", "--eval-every", "3", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "bits/token (perplexity " in printed and "tokens in" in printed and "bits/char" not in printed
    model = load_model(out)
    train_text = corpus.load("stdlib-prose", "train", limit=20000).text
    assert model.tokenizer.kind == "words" and model.config["tokens"] == "words"
    assert model.vocab == tokens.word_vocab([train_text], 60)  # the training split's, not validation's
    assert read_checkpoint(out)["config"]["corpus"]["kind"] == "stdlib-prose"
    m = model.metrics
    for split in ("val", "test"):
        assert m[f"{split}_perplexity"] == pytest.approx(2 ** m[f"{split}_bits_per_token"], rel=1e-3)
        assert 1 < m[f"{split}_unigram_perplexity"] < len(model.vocab)
        assert 0 < m[f"{split}_unknown_rate"] < 1
    assert "val_bpc" not in m and m["tokens"] == 6 * 4 * 8 and m["history"][-1]["step"] == 6
    # --resume continues it without repeating --tokens (the checkpoint says what it is)
    assert main(["train", "--resume", "--steps", "8", "--limit", "20000", "--quiet", "--out", str(out)]) == 0
    resumed = load_model(out)
    assert resumed.vocab == model.vocab
    assert [h["step"] for h in resumed.metrics["history"]] == [3, 6, 8]  # step 6 not measured twice


def test_a_word_model_learns_and_beats_the_unigram_baseline(tmp_path):
    src = tmp_path / "prose.txt"
    src.write_text(PROSE * 40)
    m = train(tmp_path / "w.pt", TrainConfig(text=str(src), tokens="words", vocab_size=30, units=32,
                                             embedding=16, dropout=0.0, batch=4, seq=16, steps=80,
                                             eval_every=20, lr=1e-2, warmup=5), progress=False)
    vals = [h["val_bits_per_token"] for h in m["history"]]
    assert vals[-1] < vals[0] - 1
    assert m["val_perplexity"] < m["val_unigram_perplexity"]  # a repeated text: context predicts words
    assert "test_perplexity" not in m  # a user's text has no test split
    model = load_model(tmp_path / "w.pt")
    ids, spans, unknown = model.tokenizer.encode("The cat sat on the mat\n")
    assert unknown == 0 and model.tokenizer.decode(ids)[-1] == tokens.EOS


def test_sample_from_a_word_model_writes_its_words(tmp_path, capsys):
    src = tmp_path / "prose.txt"
    src.write_text(PROSE * 10)
    out = tmp_path / "w.pt"
    assert main(["train", "--text", str(src), "--tokens", "words", *SMALL, "--steps", "4",
                 "--eval-every", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", "--model", str(out), "--prime", "The", "--length", "12", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    vocab = set(load_model(out).vocab) - {tokens.UNK}
    assert text.startswith("The ") and len(text.split()) >= 2
    assert all(w in vocab for w in text.split())


def test_unigram_baseline_is_the_entropy_of_the_training_counts():
    uniform = np.arange(40) % 4
    assert unigram_bits(uniform, uniform, 4) == pytest.approx(2.0)
    skewed = np.array([0] * 90 + [1] * 10)
    p0, p1 = 91 / 102, 11 / 102  # add-one counts over 2 ids
    scored = unigram_bits(skewed, np.array([0, 0, 0, 1]), 2)  # too short for rows: all but the first
    assert scored == pytest.approx(-(2 * math.log2(p0) + math.log2(p1)) / 3)


@pytest.mark.parametrize("argv, message", [
    (["--vocab-size", "100"], "--vocab-size is the size of a word vocabulary: pass --tokens words"),
    (["--tokens", "vocab"], "--tokens vocab (longest match over a vocabulary file) is not trained"),
    (["--tokens", "words", "--vocab-size", "0"], "--vocab-size must be a whole number >= 1"),
    (["--tokens", "words", "--init", "x.pt"], "--init widens a character model"),
])
def test_flags_that_cannot_train_give_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "w.pt"
    assert main(["train", *argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("probe: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_character_run_keeps_its_keys(tmp_path, text):
    src = tmp_path / "code.py"
    src.write_text(text * 10)
    m = train(tmp_path / "c.pt", TrainConfig(text=str(src), units=8, embedding=4, batch=4, seq=16,
                                             steps=4, eval_every=2), progress=False)
    assert {"val_bpc", "best_val_bpc", "chars", "unknown_train_chars"} <= set(m)
    assert not any("perplexity" in k or "token" in k for k in m)
    assert load_model(tmp_path / "c.pt").config["embedding"] == 4
    assert load_model(tmp_path / "c.pt").tokenizer.kind == "chars"
