"""Recordings whose positions are tokens (format version 3): spans in the text, features read
at each token's last character, older files still read."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import CODE, PROSE

from probe import ProbeError, open_recording
from probe.lm.stepwise import stepwise
from probe.lm.model import load_model
from probe.recording import h5format
from probe.text import features, tokens


def test_a_word_recording_keeps_each_token_with_its_span(word_recording_path, word_model_path):
    with open_recording(word_recording_path) as rec:
        text = PROSE + CODE + PROSE.replace("cat", "bird")
        assert rec.text == text and not rec.char_level and rec.unit_name == "token"
        assert rec.tokenizer["kind"] == "words" and "<eos>" in rec.tokenizer["vocab"]
        assert len(rec.tokens) == len(rec) == len(rec.spans) == len(rec.ids)
        assert all(text[a:b] == t for (a, b), t in zip(rec.spans.tolist(), rec.tokens))
        assert rec.tokens[:4] == ["The", "cat", "sat", "on"] and rec.tokens[13] == "\n"
        # documents: positions and characters
        d = rec.documents
        assert d["start"].tolist()[0] == 0 and d["stop"].tolist()[-1] == len(rec)
        assert d["text_start"].tolist() == [0, len(PROSE)] and d["text_stop"].tolist() == [len(PROSE), len(text)]
        assert rec.tokens[d["start"][1]] == "def"
        # the ids are the model's input: an unknown word is <unk>, its span the word itself
        model = load_model(word_model_path)
        ids, spans, unknown = model.tokenizer.encode(PROSE)
        np.testing.assert_array_equal(rec.ids[:len(ids)], ids)
        assert unknown > 0 and rec.unknown_chars > 0
        # the values are what the model computes, token by token
        ref, loss = stepwise(model, PROSE)
        np.testing.assert_allclose(rec.stream(1, "c")[:len(ids)], ref[(1, "c")], atol=1e-5)
        np.testing.assert_allclose(rec.loss[:len(ids)], loss, atol=1e-4)


def test_features_are_read_at_each_tokens_last_character(word_recording_path):
    with open_recording(word_recording_path) as rec:
        f = rec.features(["in_string", "column", "bracket_depth", "dog"], regex={"dog": "dog"})
        per_char = features.compute(rec.text, ["in_string", "column", "bracket_depth"],
                                    documents=rec.text_documents, document_names=list(rec.documents["name"]))
        last = rec.spans[:, 1] - 1
        for name in ("in_string", "column", "bracket_depth"):
            np.testing.assert_array_equal(f[name].to_numpy(), per_char[name].to_numpy()[last])
        assert [t for t, on in zip(rec.tokens, f["dog"]) if on] == ["dog", "dog"] * 2
        where = rec.tokens.index('"quoted')
        assert f["in_string"][where] == 1 and f["in_string"][where + 1] == 0  # 'words"' closes it
        frame = rec.frame(0, "h", units=[0])
        assert list(frame.columns[:6]) == ["position", "token", "document", "line", "column", "loss"]
        row = frame.iloc[rec.tokens.index("Indented")]
        assert (row["line"], row["column"]) == (1, 2 + len("Indented") - 1)


def test_a_regex_marks_every_token_its_match_overlaps():
    text = "foo bar_baz qux\n"
    tok = tokens.words(["foo", "bar_baz", "qux", "<unk>", "<eos>"])
    _, spans, _ = tok.encode(text)
    f = features.compute(text, ["in_string", "r"], regex={"r": "o b"}, spans=spans)  # across the space
    assert f["r"].tolist() == [1, 1, 0, 0]


def test_character_recordings_are_unchanged(recording_path, text):
    with open_recording(recording_path) as rec:
        assert rec.char_level and rec.tokens is rec.text and rec.version == 3
        np.testing.assert_array_equal(rec.spans[:, 1] - rec.spans[:, 0], 1)
        assert "char" in rec.frame(0, "h", units=[0]).columns


def test_a_version_2_file_reads_as_characters(tmp_path):
    """Before version 3 there were no spans, ids or character offsets of documents."""
    text = CODE * 2
    values = {(0, "h"): np.random.default_rng(0).random((len(text), 3))}
    path = h5format.write(tmp_path / "v2.h5", text, values, streams=("h",), model={"vocab": "abc"})
    with h5py.File(path, "r+") as f:
        for name in h5format.TOKEN_TABLES:
            del f[name]
        del f.attrs["tokens"]
        f.attrs["version"] = 2
        f.attrs["digest"] = h5format.digest(f)
    with open_recording(path) as rec:
        assert rec.version == 2 and rec.char_level and len(rec) == len(text)
        assert rec.spans[5].tolist() == [5, 6] and rec.tokens[5] == text[5]
        assert rec.text_documents == [(0, len(text))]
        assert rec.features(["column"])["column"].tolist() == features.column(text).tolist()


def test_a_version_3_file_without_spans_is_refused_in_one_line(word_recording_path, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(word_recording_path.read_bytes())
    with h5py.File(bad, "r+") as f:
        del f["spans"]
    with pytest.raises(ProbeError, match=r"bad.h5: recording is missing dataset 'spans'$"):
        open_recording(bad)


def test_the_tokenizer_is_kept_in_the_checkpoint_and_the_recording(word_model_path, word_recording_path):
    model = load_model(word_model_path)
    assert model.config["tokens"] == "words" and model.tokenizer.kind == "words"
    with open_recording(word_recording_path) as rec:
        assert rec.model_config["tokens"] == "words"
        assert tuple(rec.tokenizer["vocab"]) == model.vocab == tuple(rec.model_config["vocab"])
    with h5py.File(word_recording_path) as f:  # plain h5py: the file describes itself
        assert json.loads(f.attrs["tokens"])["kind"] == "words" and f["spans"].shape == (len(f["loss"]), 2)


def test_the_text_of_positions_keeps_what_lies_between_tokens(word_recording_path, recording_path):
    with open_recording(word_recording_path) as rec:
        assert rec.text_of(0, 4) == "The cat sat on" and rec.text_of(3, 3) == ""
        assert rec.document_texts() == [("a.txt", PROSE), ("b.py", CODE + PROSE.replace("cat", "bird"))]
        assert rec.document_texts(limit=10) == [("a.txt", PROSE[:10])]
    with open_recording(recording_path) as rec:
        assert rec.text_of(5, 9) == rec.text[5:9]
