"""Tokens with their spans in the text (issue 28's first step): characters, words with <eos>
at line ends, longest match; unknown tokens; per-character features read per token."""
from __future__ import annotations

import numpy as np
import pytest

from probe.errors import ProbeError
from probe.text import corpus, features, tokens
from probe.text.tokens import EOS, UNK

TEXT = "the cat sat\non the mat .\n\nthe end"


def test_characters_are_the_case_where_every_token_is_one_character():
    vocab = corpus.build_vocab(TEXT)
    ids, spans, unknown = tokens.chars(vocab).encode(TEXT + "€")
    want, n = corpus.encode(TEXT + "€", vocab)
    assert ids.tolist() == want.tolist() and unknown == n == 1
    assert spans.tolist() == [[i, i + 1] for i in range(len(TEXT) + 1)]


def test_words_split_on_whitespace_with_eos_at_each_line_end():
    tok = tokens.words(["the", "cat", "on", "mat", ".", UNK, EOS])
    ids, spans, unknown = tok.encode(TEXT)
    words = tok.decode(ids)
    assert words == ["the", "cat", UNK, EOS, "on", "the", "mat", ".", EOS, EOS, "the", UNK]
    assert unknown == 2  # sat, end
    for (a, b), w in zip(spans.tolist(), words):
        assert TEXT[a:b] == ("\n" if w == EOS else w) or w == UNK
    assert TEXT[spans[2, 0]:spans[2, 1]] == "sat" and TEXT[spans[-1, 0]:spans[-1, 1]] == "end"


def test_longest_match_takes_the_longest_token_and_unk_for_the_rest():
    tok = tokens.longest_match(["th", "the", "e", " ", "cat", UNK])
    ids, spans, unknown = tok.encode("the cats")
    assert tok.decode(ids) == ["the", " ", "cat", UNK]
    assert spans.tolist() == [[0, 3], [3, 4], [4, 7], [7, 8]] and unknown == 1


def test_a_word_vocabulary_from_texts():
    vocab = tokens.word_vocab([TEXT, "the cat"], 3)
    assert vocab[:3] == ("the", "cat", "sat") and vocab[-2:] == (UNK, EOS)


def test_features_are_read_at_each_tokens_last_character():
    text = "x = 'a b' # c\n"
    tok = tokens.words(["x", "=", "'a", "b'", "#", "c", UNK, EOS])
    ids, spans, _ = tok.encode(text)
    f = features.compute(text, ["in_string", "in_comment"])
    assert tokens.at_tokens(f["in_string"].to_numpy(), spans).tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert tokens.at_tokens(f["in_comment"].to_numpy(), spans).tolist() == [0, 0, 0, 0, 1, 1, 0]
    digits = np.array([ch == "b" for ch in text])  # a regex match inside a token marks it
    assert tokens.overlapping(digits, spans).tolist() == [False, False, False, True, False, False, False]


def test_a_tokenizer_is_kept_as_plain_values():
    tok = tokens.words(["a", UNK, EOS])
    assert tokens.from_config(tok.config()) == tok


@pytest.mark.parametrize("make, message", [
    (lambda: tokens.Tokenizer("bytes", ("a",)), "unknown tokenizer 'bytes'"),
    (lambda: tokens.words(["a", EOS]), "a words vocabulary needs <unk>, read for every word"),
    (lambda: tokens.words(["a", UNK]), "a words vocabulary needs <eos>, read at every line end"),
    (lambda: tokens.words(["a", "a", UNK, EOS]), "lists 'a' twice \\(ids 0 and 1\\)"),
    (lambda: tokens.Tokenizer("chars", ("ab",)), "single characters"),
    (lambda: tokens.from_config({"kind": "words"}), "needs kind and vocab"),
    (lambda: tokens.word_vocab(["a"], 0), "holds nothing"),
])
def test_bad_tokenizers_are_one_line(make, message):
    with pytest.raises(ProbeError, match=message):
        make()
