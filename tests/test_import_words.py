"""``probe import --tokens words|vocab``: a word-level model in the shape of PyTorch's
word_language_model (seq-first, log-softmax flattened to [T·B, V], a ``Dictionary``) comes
in with its vocabulary as a JSON list, a JSON object or idx2word one per line; the
checkpoint keeps the tokenizer, so a recording reads a text word by word as the model's own
``Corpus`` did; bad vocabulary files are one line naming the file; docs/byom.md's word-level
block runs as written."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import console_steps
from models_elsewhere import (
    WORDS_TRAIN,
    Dictionary,
    WordLMShape,
    trained_a_little,
    word_corpus,
    word_lm_scores,
)

from probe import open_recording
from probe.cli import main
from probe.errors import ProbeError
from probe.lm.adapt import adapt
from probe.lm.model import load_model
from probe.lm.stepwise import stepwise

ROOT = Path(__file__).resolve().parents[1]
WORDS = Dictionary()
TRAIN_IDS = word_corpus(WORDS_TRAIN, WORDS)  # the dictionary in first-seen order, <eos> and <unk> in it
V = len(WORDS)
HELD_OUT = "the dog sat on the mat .\nthe bird ran to the door , and the cat sat down .\n"  # 'bird', 'down': unknown

USER_PY = '''
import torch
from models_elsewhere import WordLMShape, word_lm_scores


def lstm():
    return WordLMShape("LSTM", {V}, 16, 16, 2, dropout=0.2, tie_weights=True)


def gru():
    return WordLMShape("GRU", {V}, 12, 20, 2)


def scores(module, ids):
    return word_lm_scores(module, ids)
'''


def trained(kind: str) -> WordLMShape:
    """The factory's module, trained a little on the word corpus's ids (seq-first)."""
    torch.manual_seed(0)
    m = (WordLMShape("LSTM", V, 16, 16, 2, dropout=0.2, tie_weights=True) if kind == "lstm"
         else WordLMShape("GRU", V, 12, 20, 2))
    return trained_a_little(m, lambda m, ids: word_lm_scores(m, ids), V, steps=20)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's folder: the factory file, each model's weights, the vocabulary three ways."""
    d = tmp_path_factory.mktemp("user")
    (d / "wordlm.py").write_text(USER_PY.format(V=V))
    for kind in ("lstm", "gru"):
        torch.save(trained(kind).state_dict(), d / f"{kind}.weights.pt")
    (d / "idx2word.txt").write_text("".join(w + "\n" for w in WORDS.idx2word))
    (d / "vocab.json").write_text(json.dumps(WORDS.idx2word))
    shuffled = dict(sorted(WORDS.word2idx.items()))  # an object's key order is not the ids' order
    (d / "word2idx.json").write_text(json.dumps(shuffled))
    (d / "held_out.txt").write_text(HELD_OUT)
    return d


def imported(user: Path, kind: str, vocab: str, out: Path, *extra: str) -> int:
    return main(["import", f"{user / 'wordlm.py'}:{kind}", "--weights", str(user / f"{kind}.weights.pt"),
                 "--vocab", str(user / vocab), "--tokens", "words", "--forward", f"{user / 'wordlm.py'}:scores",
                 "--out", str(out), *extra])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("vocab", ["idx2word.txt", "vocab.json", "word2idx.json"])
def test_a_word_model_imports_with_each_vocabulary_file(user, tmp_path, capsys, kind, vocab):
    out = tmp_path / "words.pt"
    assert imported(user, kind, vocab, out) == 0
    said = capsys.readouterr().out.splitlines()
    assert f"{V} tokens (words), embedding" in said[0] and (", tied head" in said[0]) == (kind == "lstm")
    assert said[1].startswith("parity against your forward")
    ck = torch.load(out, weights_only=True)  # data
    cfg = ck["config"]
    assert cfg["tokens"] == "words" and cfg["vocab"] == WORDS.idx2word and cfg["tied"] == (kind == "lstm")
    assert set(cfg["parity"]["checked"]) == {"random ids", "a text"} and cfg["parity"]["max_abs_diff"] <= 1e-5
    model = load_model(out)
    assert model.tokenizer.kind == "words" and model.vocab == tuple(WORDS.idx2word)
    # probe's copy is the user's model, on the ids its own Corpus makes of a text
    ids = word_corpus(HELD_OUT, WORDS, grow=False)
    module = trained(kind)
    module.load_state_dict(torch.load(user / f"{kind}.weights.pt", weights_only=True))
    with torch.no_grad():
        want = word_lm_scores(module.eval(), ids[None])
        got = torch.log_softmax(model(ids[None])[0], -1)
    assert float((got - want).abs().max()) <= 1e-5


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_recording_reads_the_text_word_by_word_as_the_models_corpus_did(user, tmp_path, kind):
    out = tmp_path / "words.pt"
    assert imported(user, kind, "idx2word.txt", out) == 0
    rec_path = tmp_path / "held.h5"
    assert main(["record", "--model", str(out), "--text", str(user / "held_out.txt"), "--out", str(rec_path),
                 "--dtype", "float32", "--quiet"]) == 0
    model = load_model(out)
    ids = word_corpus(HELD_OUT, WORDS, grow=False)  # word_language_model's way: split, <eos>, unknown → <unk>
    with open_recording(rec_path) as rec:
        assert not rec.char_level and rec.tokenizer["kind"] == "words" and rec.text == HELD_OUT
        words = [w for line in HELD_OUT.splitlines() for w in [*line.split(), "\n"]]
        assert rec.tokens == words and len(rec) == len(ids)
        assert all(HELD_OUT[a:b] == t for (a, b), t in zip(rec.spans.tolist(), rec.tokens))
        np.testing.assert_array_equal(rec.ids, ids.numpy())
        bird = rec.tokens.index("bird")
        assert rec.ids[bird] == WORDS.word2idx["<unk>"] and HELD_OUT[slice(*rec.spans[bird])] == "bird"
        want, loss = stepwise(model, HELD_OUT)
        for (layer, stream), values in want.items():
            np.testing.assert_allclose(rec.stream(layer, stream), values, atol=1e-5, err_msg=f"{layer}:{stream}")
        np.testing.assert_allclose(rec.loss, loss, atol=1e-4, equal_nan=True)
        # and the bits are the user's own model's, from its flattened log-softmax
        module = trained(kind)
        module.load_state_dict(torch.load(user / f"{kind}.weights.pt", weights_only=True))
        with torch.no_grad():
            logp, _ = module.eval()(ids[:, None], module.init_hidden(1))  # [T·1, V]
        bits = -logp[:-1].gather(1, ids[1:, None])[:, 0].numpy() / math.log(2)
        np.testing.assert_allclose(rec.loss[1:], bits, atol=1e-4)


def bad_files(d: Path) -> None:
    words = WORDS.idx2word
    (d / "dup.txt").write_text("".join(w + "\n" for w in words[:-1] + ["the"]))
    (d / "empty.txt").write_text("\n".join(words[:3] + [""] + words[4:]) + "\n")
    (d / "short.txt").write_text("".join(w + "\n" for w in words[:-1]))
    (d / "nounk.txt").write_text("".join(("<oov>" if w == "<unk>" else w) + "\n" for w in words))
    (d / "noeos.txt").write_text("".join(("<end>" if w == "<eos>" else w) + "\n" for w in words))
    (d / "twice.json").write_text(json.dumps(words[:-1] + ["the"]))
    (d / "numbers.json").write_text(json.dumps(words[:-1] + [7]))
    (d / "spaced.json").write_text(json.dumps(words[:-1] + ["a b"]))
    gap = dict(WORDS.word2idx)
    gap["the"] = V + 3
    (d / "gap.json").write_text(json.dumps(gap))
    same = dict(WORDS.word2idx)
    same["cat"] = same["the"]
    (d / "sameid.json").write_text(json.dumps(same))
    (d / "notjson.json").write_text("the cat sat")


@pytest.mark.parametrize("vocab, extra, message", [
    ("dup.txt", [], "dup.txt: lines 1 and 25 both hold 'the': each token once"),
    ("empty.txt", [], "empty.txt: line 4 is empty"),
    ("short.txt", [], "short.txt: the vocabulary has 24 tokens but the embedding encoder has 25 rows"),
    ("nounk.txt", [], "nounk.txt: a words vocabulary needs <unk>"),
    ("noeos.txt", [], "noeos.txt: a words vocabulary needs <eos>"),
    ("twice.json", [], "twice.json: the vocabulary lists 'the' twice (ids 0 and 24)"),
    ("numbers.json", [], "numbers.json: the tokens are strings; got 7"),
    ("spaced.json", [], "spaced.json: the words vocabulary holds 'a b', which has whitespace"),
    ("gap.json", [], "gap.json: no token has id 0 (ids run to 28): ids are 0..24, each once"),
    ("sameid.json", [], "sameid.json: 'the' and 'cat' both have id 0: each id once"),
    ("notjson.json", [], "notjson.json: not JSON"),
    ("idx2word.txt", ["--tokens", "chars"], "idx2word.txt: a chars vocabulary must be single characters"),
    ("idx2word.txt", ["--tokens", "bpe"], "invalid choice: 'bpe'"),
])
def test_a_bad_vocabulary_is_one_line_naming_the_file_and_writes_nothing(user, tmp_path, capsys, monkeypatch,
                                                                           vocab, extra, message):
    bad_files(user)
    monkeypatch.chdir(tmp_path)
    if "invalid choice" in message:  # argparse's own refusal
        with pytest.raises(SystemExit):
            imported(user, "lstm", vocab, Path("out.pt"), *extra)
        assert message in capsys.readouterr().err
    else:
        code = imported(user, "lstm", vocab, Path("out.pt"), *extra)
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("probe: error: ") and message in err and err.count("\n") == 1, err
    if "nounk" in vocab:
        assert "rename the token such words should read as" in err
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def longest(text: str, pieces: list[str]) -> list[str]:
    """Greedy longest match, written out plainly: the oracle for the tokenizer's spans."""
    out, i = [], 0
    while i < len(text):
        n = max((len(p) for p in pieces if p != "<unk>" and text.startswith(p, i)), default=1)
        out.append(text[i:i + n])
        i += n
    return out


def test_a_subword_vocabulary_reads_by_longest_match_end_to_end(tmp_path, capsys):
    text = "the cat sat on the mat.\nthe hat, the cats!\n"
    pieces = ["<unk>", *sorted(set("the cat sat on mat.\n")), "the", " the", "cat", " cat", "at", " sat", "on "]
    (tmp_path / "pieces.json").write_text(json.dumps(pieces))
    (tmp_path / "sub.py").write_text(
        f"from models_elsewhere import WordLMShape, word_lm_scores\nimport torch\n\n"
        f"def build():\n    torch.manual_seed(3)\n    return WordLMShape('LSTM', {len(pieces)}, 8, 12, 1, dropout=0.0)\n\n"
        f"def scores(module, ids):\n    return word_lm_scores(module, ids)\n")
    (tmp_path / "text.txt").write_text(text)
    out = tmp_path / "sub.pt"
    assert main(["import", f"{tmp_path / 'sub.py'}:build", "--vocab", str(tmp_path / "pieces.json"), "--tokens",
                 "vocab", "--forward", f"{tmp_path / 'sub.py'}:scores", "--out", str(out)]) == 0
    assert f"{len(pieces)} tokens (vocab)" in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["config"]["tokens"] == "vocab"
    rec_path = tmp_path / "sub.h5"
    assert main(["record", "--model", str(out), "--text", str(tmp_path / "text.txt"), "--out", str(rec_path),
                 "--dtype", "float32", "--quiet"]) == 0
    want = longest(text, pieces)
    assert "the" in want and " the" in want and " cat" in want and "h" in want  # pieces of several lengths
    with open_recording(rec_path) as rec:
        assert rec.tokens == want and rec.tokenizer["kind"] == "vocab"
        assert [pieces[i] if pieces[i] != "<unk>" else t for i, t in zip(rec.ids, rec.tokens)] == want
        assert rec.tokens.count("!") == 1 and rec.ids[rec.tokens.index("!")] == 0  # not in the pieces: <unk>
        values, loss = stepwise(load_model(out), text)
        np.testing.assert_allclose(rec.stream(0, "c"), values[(0, "c")], atol=1e-5)
        np.testing.assert_allclose(rec.loss, loss, atol=1e-4, equal_nan=True)


def test_adapt_takes_a_dictionary_and_keeps_the_tokenizer():
    m = trained("gru")
    model = adapt(m, WORDS, tokens="words", forward=lambda ids: word_lm_scores(m, ids))
    assert model.config["tokens"] == "words" and model.config["vocab"] == WORDS.idx2word
    assert model.config["parity"]["checked"]["a text"] <= 1e-5
    with pytest.raises(ProbeError, match=r"a chars vocabulary must be single characters .*'the'.*--tokens"):
        adapt(m, WORDS)  # a word vocabulary read as characters
    with pytest.raises(ProbeError, match="unknown tokens 'bpe'"):
        adapt(m, WORDS, tokens="bpe")


def test_the_parity_text_is_the_vocabularys_own_words_read_by_the_tokenizer():
    """The text check's ids: the vocabulary's words in index order, joined with spaces and
    line ends and read back by the words tokenizer (so <eos> comes as a line end)."""
    from probe.lm.adapt import sample_ids
    tok = adapt(trained("gru"), WORDS, tokens="words").tokenizer
    ids = sample_ids(tok)
    assert len(ids) >= 64 and WORDS.word2idx["<eos>"] in ids
    assert tok.decode(ids[:5]) == WORDS.idx2word[:5]


# docs/byom.md's word-level section: its console block runs as written, shorter
SECTION = (ROOT / "docs" / "byom.md").read_text().split("## A word-level model", 1)[1].split("\n## ", 1)[0]


def test_the_pages_word_level_block_runs_as_written(tmp_path):
    steps = console_steps(SECTION)
    assert [shlex.split(c)[:2] for c, _ in steps] == [["python", "examples/byom/word_lm.py"], ["probe", "import"],
                                                        ["probe", "record"], ["probe", "info"]]
    (tmp_path / "examples").mkdir()
    shutil.copytree(ROOT / "examples" / "byom", tmp_path / "examples" / "byom",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PROBE_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    said = {}
    for command, shown in steps:
        argv = shlex.split(command) + (["--steps", "20"] if command.startswith("python") else [])
        exe = sys.executable if argv[0] == "python" else shutil.which("probe")
        done = subprocess.run([exe, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"$ {command}\n{done.stderr[-2000:]}"
        said[argv[1] if argv[0] == "probe" else "train"] = done.stdout
        if argv[1] == "import":
            lines = done.stdout.splitlines()
            assert lines[0] == shown[0]
            assert re.fullmatch(r"parity against your forward: max \|log p difference\| \S+ \(tolerance 1e-05 "
                                r"\+ 1e-06 x \|log p\|\) on random ids and a text", lines[1]), lines[1]
    ck = torch.load(tmp_path / "runs" / "word_lm.pt", weights_only=True)
    assert ck["config"]["tokens"] == "words" and ck["config"]["parity"]["max_abs_diff"] <= 1e-5
    assert ck["config"]["vocab"] == (tmp_path / "runs" / "word_lm.vocab.txt").read_text().splitlines()
    # probe reads the held-out text as the script's own Corpus did: the same perplexity
    theirs = float(re.search(r"held-out perplexity (\S+)", said["train"]).group(1))
    mine = float(re.search(r"perplexity: (\S+)", said["info"]).group(1))
    assert abs(mine - theirs) <= 0.5 + 0.005 * theirs, (mine, theirs)
    with open_recording(tmp_path / "recordings" / "byom" / "word_lm.h5") as rec:
        assert rec.tokenizer["kind"] == "words" and "<unk>" in rec.tokens[:2000]
