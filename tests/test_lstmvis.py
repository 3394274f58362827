"""LSTMVis projects in and out: ``probe import-lstmvis`` reads a project folder into a recording
without a model, ``probe export-lstmvis`` writes one, and the two give back each other's values
and tokens."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from probe import ProbeError
from probe.cli import main
from probe.output.export import export_lstmvis
from probe.recording import h5format, lstmvis
from probe.recording.reader import open_recording
from probe.text import tokens

STATE = "{type: state, layer: 1, path: states1}"

CONFIG = """name: children books
description: a tiny project in the shape of LSTMVis's README
files:
  states: states.hdf5
  train: train.hdf5
  words: train.dict
word_sequence:
  file: train
  path: word_ids
  dict_file: words
states:
  file: states
  types: [
    {type: state, layer: 1, path: states1},
    {type: state, layer: 2, path: states2},
    {type: output, layer: 2, path: output2}
  ]
"""
WORDS = ["<s>", "<unk>", "</s>", "the", "cat", "sat", "on", "mat"]
SENTENCES = "the cat sat on the mat </s> the <unk> sat </s> on the mat the cat </s>"


def project(folder: Path, config: str = CONFIG, dict_text: str | None = None, ids=None, widths=(6, 5, 4),
            rows=None) -> tuple[Path, np.ndarray, dict]:
    """A project as LSTMVis's README describes it: ids from 1 with a gap (10 for 'mat'),
    ``</s>`` as the end of a sentence, layer 1 with its cell state only."""
    folder.mkdir(parents=True, exist_ok=True)
    number = {w: (i + 1 if w != "mat" else 10) for i, w in enumerate(WORDS)}
    (folder / "lstm.yml").write_text(config, encoding="utf-8")
    (folder / "train.dict").write_text(dict_text if dict_text is not None else
                                       "".join(f"{w} {number[w]}\n" for w in WORDS), encoding="utf-8")
    ids = np.array([number[w] for w in SENTENCES.split()] if ids is None else ids, dtype=np.int32)
    with h5py.File(folder / "train.hdf5", "w") as f:
        f["word_ids"] = ids
    rng = np.random.default_rng(0)
    T = len(ids) if rows is None else rows
    states = {name: rng.standard_normal((T, w)).astype(np.float32)
              for name, w in zip(("states1", "states2", "output2"), widths)}
    with h5py.File(folder / "states.hdf5", "w") as f:
        for name, v in states.items():
            f[name] = v
    return folder, ids, states


def test_a_project_reads_as_a_word_recording_with_its_states_as_streams(tmp_path, capsys):
    folder, ids, states = project(tmp_path / "books")
    out = tmp_path / "books.h5"
    assert main(["import-lstmvis", str(folder), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {out}: {len(ids)} tokens") and "1 derived" in said
    with open_recording(out) as rec:
        assert len(rec) == len(ids) and not rec.char_level and rec.model_sha256 == ""
        words = SENTENCES.split()
        assert rec.tokens == ["\n" if w == "</s>" else w for w in words]
        # one space between words, none beside a line end; each span is its token
        assert rec.text == "the cat sat on the mat\nthe <unk> sat\non the mat the cat\n"
        assert all(rec.text[a:b] == t for (a, b), t in zip(rec.spans.tolist(), rec.tokens))
        vocab = rec.tokenizer["vocab"]
        assert rec.tokenizer["kind"] == "words" and vocab[:len(WORDS)] == WORDS and vocab[-1] == "<eos>"
        assert [vocab[i] for i in rec.ids[:]] == words
        tokens.from_config(rec.tokenizer)  # a tokenizer probe can use: <unk> and <eos> are in it
        # state -> c on both layers (recorded); output -> h on layer 2 only (derived, kind lstmvis)
        assert rec.streams == ("c",) and rec.layer_ids == (0, 1) and rec.layers == 2
        assert rec.width(0, "c") == 6 and rec.width(1, "c") == 5 and rec.width(1, "h") == 4
        assert rec.derived[(1, "h")]["kind"] == "lstmvis" and rec.streams_of(0) == ("c",)
        np.testing.assert_array_equal(rec.stream(0, "c")[:], states["states1"])
        np.testing.assert_array_equal(rec.stream(1, "c")[:], states["states2"])
        np.testing.assert_array_equal(rec.stream(1, "h")[:], states["output2"])
        assert np.isnan(rec.loss[:]).all() and rec.source["kind"] == "lstmvis"
        assert rec.source["name"] == "children books"


def test_the_tools_that_need_no_model_work_on_an_imported_project(tmp_path, capsys):
    folder, ids, _ = project(tmp_path / "books")
    out = tmp_path / "books.h5"
    assert main(["import-lstmvis", str(folder), "--out", str(out), "--quiet"]) == 0
    with open_recording(out) as rec:
        feats = rec.features(regex={"cat": r"cat"})
        assert len(feats) == len(ids) and feats["cat"].sum() == SENTENCES.split().count("cat")
    capsys.readouterr()
    assert main(["info", str(out)]) == 0, capsys.readouterr().err
    assert main(["analyze", str(out), "--top", "2", "--feature", "cat=cat", "--json"]) == 0, \
        capsys.readouterr().err
    assert "cat" in capsys.readouterr().out
    assert main(["match", str(out), "--layer", "1", "--stream", "h", "--units", "0",  # a derived stream
                 "--threshold", "0.1", "--json"]) == 0, capsys.readouterr().err
    found = json.loads(capsys.readouterr().out)["matches"]
    with open_recording(out) as rec:
        on = np.tanh(rec.unit(1, "h", 0)) >= 0.1
        assert found and all(on[m["start"]:m["stop"]].all() for m in found)
    page = tmp_path / "c.html"
    assert main(["render", str(out), "--layer", "0", "--stream", "c", "--unit", "5", "--out", str(page)]) == 0
    assert "mat" in page.read_text(encoding="utf-8")


def test_the_dashboard_opens_an_imported_project(tmp_path):
    pytest.importorskip("bokeh")
    from bokeh.command.util import build_single_handler_application
    folder, _, _ = project(tmp_path / "books")
    (tmp_path / "recordings").mkdir()
    lstmvis.import_lstmvis(folder, tmp_path / "recordings" / "books.h5", progress=False)
    app = build_single_handler_application(str(Path(__file__).resolve().parents[1] / "apps" / "cells"),
                                           ["--recordings", str(tmp_path / "recordings")])
    assert not app.handlers[0].failed, app.handlers[0].error_detail
    doc = app.create_document()
    assert "mat" in doc.get_model_by_name("text").text


def test_a_word_recording_comes_back_from_lstmvis_with_every_stream(word_recording_path, tmp_path, capsys):
    vis, back = tmp_path / "vis", tmp_path / "back.h5"
    assert main(["export-lstmvis", str(word_recording_path), str(vis), "--streams", "i,f,g,o,c,h",
                 "--quiet"]) == 0
    assert capsys.readouterr().out == f"wrote {vis}/ (lstm.yml, states.hdf5, words.hdf5, words.dict)\n"
    assert main(["import-lstmvis", str(vis), "--out", str(back), "--quiet"]) == 0, capsys.readouterr().err
    with open_recording(word_recording_path) as rec, open_recording(back) as got:
        assert got.streams == rec.streams and got.layer_ids == rec.layer_ids and not got.derived
        for k in rec.layer_ids:
            for s in rec.streams:
                np.testing.assert_array_equal(got.stream(k, s)[:], rec.stream(k, s)[:].astype(np.float32))
        assert got.tokenizer == rec.tokenizer
        np.testing.assert_array_equal(got.ids[:], rec.ids[:])
        tok = tokens.from_config(rec.tokenizer)
        assert got.text == tok.join(rec.ids[:])  # the words as the model read them: unknown ones are <unk>
        unk = tok.index[tokens.UNK]
        known = [t for t, i in zip(rec.tokens, rec.ids[:]) if i != unk]
        assert [t for t, i in zip(got.tokens, got.ids[:]) if i != unk] == known
        assert len(known) < len(rec) and got.tokens.count("<unk>") == len(rec) - len(known)


def test_a_character_recording_comes_back_with_its_text(recording_path, tmp_path):
    with open_recording(recording_path) as rec:
        vis = export_lstmvis(rec, tmp_path / "vis", streams=("c", "h", "f"), progress=False)
    back = lstmvis.import_lstmvis(vis, tmp_path / "back.h5", progress=False)
    with open_recording(recording_path) as rec, open_recording(back) as got:
        assert got.char_level and got.text == rec.text and got.tokens == rec.tokens
        assert got.streams == ("c", "h", "f")
        for k in rec.layer_ids:
            for s in got.streams:
                np.testing.assert_array_equal(got.stream(k, s)[:], rec.stream(k, s)[:].astype(np.float32))
    # the same project read as words: the named characters stay words, joined by spaces
    with open_recording(lstmvis.import_lstmvis(vis, tmp_path / "w.h5", tokens="words", progress=False)) as got:
        assert not got.char_level and "<space>" in got.tokens


def test_a_longest_match_recording_comes_back_with_tokens_holding_whitespace(tmp_path):
    tok = tokens.longest_match(("ab", " ", "cd\n", "a", "\u00a0", tokens.UNK))
    text = "ab cd\nab\u00a0a cd\n"
    ids, spans, unknown = tok.encode(text)
    assert unknown == 0
    rng = np.random.default_rng(1)
    values = {(0, "h"): rng.standard_normal((len(ids), 3)), (1, "h"): rng.standard_normal((len(ids), 2))}
    rec_path = h5format.write(tmp_path / "v.h5", text, values, spans=spans, ids=ids, tokens=tok.config())
    with open_recording(rec_path) as rec:
        vis = export_lstmvis(rec, tmp_path / "vis", streams=("h",), progress=False)
    assert "<space> 2" in (vis / "words.dict").read_text() and "cd<nl> 3" in (vis / "words.dict").read_text()
    with open_recording(lstmvis.import_lstmvis(vis, tmp_path / "back.h5", progress=False)) as got:
        assert got.tokenizer == tok.config() and got.text == text
        np.testing.assert_array_equal(got.spans, spans)
        np.testing.assert_array_equal(got.stream(1, "h")[:], values[(1, "h")].astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.uint16])
def test_word_ids_of_any_number_type_read_and_a_fraction_is_refused(tmp_path, dtype):
    folder, ids, _ = project(tmp_path / "p")
    with h5py.File(folder / "train.hdf5", "a") as f:
        del f["word_ids"]
        f["word_ids"] = ids.astype(dtype)[:, None]  # [T, 1] as some writers leave it
    with open_recording(lstmvis.import_lstmvis(folder, tmp_path / "p.h5", progress=False)) as rec:
        assert rec.tokens[:3] == ["the", "cat", "sat"]
    if dtype is np.float64:
        with h5py.File(folder / "train.hdf5", "a") as f:
            f["word_ids"][3, 0] = 1.5
        with pytest.raises(ProbeError, match=r"train.hdf5: dataset word_ids holds 1.5 at position 3, not a word id"):
            lstmvis.import_lstmvis(folder, tmp_path / "q.h5", progress=False)


def test_states_are_copied_in_blocks_to_the_same_file(tmp_path):
    folder, _, _ = project(tmp_path / "books")
    a = lstmvis.import_lstmvis(folder, tmp_path / "a.h5", progress=False)
    b = lstmvis.import_lstmvis(folder, tmp_path / "b.h5", progress=False, block=3)
    with open_recording(a) as ra, open_recording(b) as rb:
        for k, s in ra.pairs:
            np.testing.assert_array_equal(ra.stream(k, s)[:], rb.stream(k, s)[:])


def test_an_existing_recording_is_replaced_only_with_force(tmp_path, capsys):
    folder, _, _ = project(tmp_path / "books")
    out = tmp_path / "books.h5"
    out.write_text("mine")
    assert main(["import-lstmvis", str(folder), "--out", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err == f"probe: error: {out}: already exists; pass --force to overwrite\n"
    assert out.read_text() == "mine"
    assert main(["import-lstmvis", str(folder), "--out", str(out), "--quiet", "--force"]) == 0
    with open_recording(out) as rec:
        assert len(rec) == len(SENTENCES.split())


def test_other_state_types_keep_their_names_and_a_duplicate_takes_its_path(tmp_path):
    config = CONFIG.replace("{type: output, layer: 2, path: output2}",
                            "{type: forget gate, layer: 1, path: output2}, {type: state, layer: 2, path: states1}")
    folder, _, states = project(tmp_path / "p", config=config, widths=(6, 6, 3))
    with open_recording(lstmvis.import_lstmvis(folder, tmp_path / "p.h5", progress=False)) as rec:
        assert rec.streams == ("c",) and set(rec.derived) == {(0, "forget_gate"), (1, "states1")}
        np.testing.assert_array_equal(rec.stream(0, "forget_gate")[:], states["output2"])
        np.testing.assert_array_equal(rec.stream(1, "states1")[:], states["states1"])


def bad(folder: Path, name: str) -> None:
    """Break the project in ``folder`` one way."""
    yml = folder / "lstm.yml"
    if name == "no config":
        yml.unlink()
    elif name == "bad yaml":
        yml.write_text("files: [states: {\n")
    elif name == "no states":
        yml.write_text(CONFIG.split("states:\n  file")[0])
    elif name == "no word ids":
        yml.write_text(CONFIG.replace("  path: word_ids\n", ""))
    elif name == "no states file":
        (folder / "states.hdf5").unlink()
    elif name == "no dataset":
        yml.write_text(CONFIG.replace("path: output2", "path: output9"))
    elif name == "not hdf5":
        (folder / "states.hdf5").write_text("not hdf5")
    elif name == "bad layer":
        yml.write_text(CONFIG.replace("layer: 2, path: output2", "layer: 0, path: output2"))
    elif name == "no common stream":
        yml.write_text(CONFIG.replace("{type: state, layer: 2, path: states2},", ""))


CASES = {  # how it is broken: (the file the error names, what it says)
    "no config": ("lstm.yml", "no such file (not an LSTMVis project)"),
    "bad yaml": ("lstm.yml", "not valid YAML (line 2"),
    "no states": ("lstm.yml", "lacks states"),
    "no word ids": ("lstm.yml", "lacks word_sequence.path"),
    "no states file": ("states.hdf5", "no such file (files.states in lstm.yml)"),
    "no dataset": ("states.hdf5", "no dataset 'output9' (states.types[2].path in lstm.yml)"),
    "not hdf5": ("states.hdf5", "not an HDF5 file"),
    "bad layer": ("lstm.yml", "states.types[2].layer must be a layer number from 1 (got 0)"),
    "no common stream": ("lstm.yml", "no state is listed on every layer (layer 1: c; layer 2: h)"),
    # built by project() itself
    "id outside the dict": ("train.hdf5", "word id 99 at position 2 is not in train.dict (1 positions"),
    "short states": ("states.hdf5", "dataset states1 has 16 rows but train.hdf5 holds 17 word ids"),
    "bad dict line": ("train.dict", "train.dict line 2: expected 'word id', got 'cat'"),
    "word twice": ("train.dict", "line 2: word 'the' has two ids (1 and 2)"),
    "states not [T, units]": ("states.hdf5", "dataset states1 has shape (17,); states are [T, units]"),
    "word ids not [T]": ("train.hdf5", "dataset word_ids has shape (17, 2); word ids are one per position"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_broken_project_is_one_line_naming_its_file(tmp_path, capsys, case):
    folder = tmp_path / "p"
    ids = [4, 5, 99, 4] + [1] * 13 if case == "id outside the dict" else None
    dict_text = {"bad dict line": "the 1\ncat\n", "word twice": "the 1\nthe 2\n"}.get(case)
    if dict_text is not None:
        ids = [1] * 17
    project(folder, ids=ids, dict_text=dict_text, rows=16 if case == "short states" else None)
    if case == "states not [T, units]":
        with h5py.File(folder / "states.hdf5", "a") as f:
            del f["states1"]
            f["states1"] = np.zeros(17, np.float32)
    if case == "word ids not [T]":
        with h5py.File(folder / "train.hdf5", "a") as f:
            del f["word_ids"]
            f["word_ids"] = np.ones((17, 2), np.int32)
    bad(folder, case)
    out = tmp_path / "out.h5"
    assert main(["import-lstmvis", str(folder), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    name, said = CASES[case]
    assert err.count("\n") == 1 and err.startswith(f"probe: error: {folder / name}") and said in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["p"]  # nothing half-written


def test_a_missing_folder_and_a_character_dict_that_is_not_characters(tmp_path):
    with pytest.raises(ProbeError, match="no such folder"):
        lstmvis.import_lstmvis(tmp_path / "nowhere", tmp_path / "x.h5")
    folder, _, _ = project(tmp_path / "p")
    with pytest.raises(ProbeError, match=r"train.dict: '<s>' is not one character \(tokens: chars\)"):
        lstmvis.import_lstmvis(folder, tmp_path / "x.h5", tokens="chars")


def test_named_characters_read_back():
    for s in (" ", "\n", "\t", "\r", "\u00a0", "\x00", "a", "<", "a b\nc"):
        assert lstmvis.unescape(lstmvis.escape(s)) == s
    assert lstmvis.escape("a b") == "a<space>b" and lstmvis.sanitize("forget gate") == "forget_gate"
