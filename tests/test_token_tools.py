"""The analysis side on recordings whose positions are tokens (issue 28, item 3): analysis
and leaderboards, probes, directions and encode, the dictionary, match, contexts, n-gram
errors over the same tokens, probe info and record, and shards of a word recording."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import CODE, PROSE, STREAMS

from probe import ProbeError, open_recording
from probe.analysis import advantage, contexts, detectors, match
from probe.analysis import cache as analysis
from probe.cli import main
from probe.readout import dictionary, directions, probes, readable
from probe.recording import derived, h5format, shards
from probe.recording import record as recorder
from probe.text import features, ngram, tokens


def token_docs(n: int = 40) -> list[tuple[str, str]]:
    """Python documents of code, then prose with quotes, brackets and a comment."""
    return [(f"d{i}.py", CODE.replace("a", "ab"[i % 2]) + PROSE) for i in range(n)]


@pytest.fixture
def word_synthetic(tmp_path):
    """A 2-layer, 5-unit token recording (no model) over 2,880 whitespace words with planted
    cells: layer 1 c unit 3 is in_string read at each token (with noise), unit 4 on exactly in
    comments, layer 0 h unit 2 the bracket depth; the rest random."""
    docs = token_docs()
    tok = tokens.words(tokens.word_vocab([t for _, t in docs], 40))
    text = "".join(t for _, t in docs)
    ids, spans, parts, text_docs, at, c = [], [], [], [], 0, 0
    for name, t in docs:
        i, s, _ = tok.encode(t)
        ids.append(i)
        spans.append(s + c)
        parts.append((name, at, at + len(i)))
        text_docs.append((c, c + len(t)))
        at, c = at + len(i), c + len(t)
    ids, spans = np.concatenate(ids), np.concatenate(spans)
    feats = features.compute(text, spans=spans, documents=text_docs, document_names=[n for n, _ in docs])
    T = len(ids)
    rng = np.random.default_rng(0)
    values = {(k, s): rng.normal(size=(T, 5)) for k in range(2) for s in STREAMS}
    for k in range(2):
        for s in "ifo":
            values[(k, s)] = 1 / (1 + np.exp(-2 * values[(k, s)]))
    values[(1, "c")][:, 3] = feats["in_string"] + rng.normal(0, 0.3, T)
    values[(0, "h")][:, 2] = np.tanh(feats["bracket_depth"] / 2 + rng.normal(0, 0.1, T))
    values[(1, "c")][:, 4] = 3.0 * feats["in_comment"] - 1.5  # tanh: 0.91 in comments, -0.91 elsewhere
    path = h5format.write(tmp_path / "wsyn.h5", text, values, streams=STREAMS, documents=parts, spans=spans,
                          ids=ids, tokens=tok.config(), text_documents=text_docs,
                          loss=rng.random(T).astype(np.float32))
    return path, feats, values


# ---- analysis and leaderboards -------------------------------------------------------------

def test_analysis_ranks_the_planted_token_cells_first(word_synthetic):
    path, feats, _ = word_synthetic
    with open_recording(path) as rec:
        assert not rec.char_level and len(rec) == len(feats) < len(rec.text) / 3
        default = detectors.default_features(rec)
        pd.testing.assert_frame_equal(default, feats, check_dtype=False)  # one row per token
        res = analysis.analysis(rec)
        sc = res["scores"]
        assert len(sc[["layer", "stream", "unit"]].drop_duplicates()) == 2 * len(STREAMS) * 5
        assert set(sc["feature"]) == set(feats.columns)
        best = detectors.best(sc, 1).set_index("feature")
        assert tuple(best.loc["in_string", ["layer", "stream", "unit"]]) == (1, "c", 3)
        assert best.loc["in_string", "score"] > 0.95
        assert tuple(best.loc["bracket_depth", ["layer", "stream", "unit"]]) == (0, "h", 2)
        summ = analysis.summaries(rec)
        assert summ["strip_edges"][-1] == len(rec)


def test_the_causal_column_reads_a_word_recordings_documents(word_recording_path):
    with open_recording(word_recording_path) as rec:
        assert rec.document_texts() == [("a.txt", PROSE), ("b.py", CODE + PROSE.replace("cat", "bird"))]
        top = detectors.best(analysis.analysis(rec)["scores"], 1)
        eff = analysis.causal(rec, top, chars=len(rec.text), random=4)
        binary = top[top["metric"] == "auc"]
        assert len(eff) == len(binary) and np.isfinite(eff["delta_bits"]).all()


def test_probe_analyze_speaks_of_tokens(word_synthetic, capsys):
    path, _, _ = word_synthetic
    assert main(["analyze", str(path), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "in_string" in out and "saturation: mean fraction of tokens with gate" in out
    assert main(["analyze", str(path), "--top", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["positions"] == "tokens"


def test_a_feature_table_of_characters_is_refused_in_tokens(word_synthetic):
    path, _, _ = word_synthetic
    with open_recording(path) as rec:
        per_char = features.compute(rec.text, ["in_string"])
        with pytest.raises(ProbeError, match=rf"features have {len(rec.text)} rows but the recording has "
                                             rf"{len(rec)} tokens$"):
            detectors.scores(rec, per_char)


def test_contexts_are_tokens(word_synthetic):
    path, feats, values = word_synthetic
    with open_recording(path) as rec:
        v = rec.unit(1, "c", 3)
        top = contexts.top_contexts(v, rec.documents, k=3, width=2)
        for row in top[top["kind"] == "top"].itertuples():
            assert feats["in_string"][row.position] == 1
            assert row.stop - row.start <= 5 and rec.document_of([row.start])[0] == rec.document_of([row.position])[0]


# ---- probes, directions and encode, the dictionary -----------------------------------------

def test_probes_and_directions_read_the_planted_token_cell(word_synthetic, tmp_path):
    path, feats, _ = word_synthetic
    with open_recording(path) as rec:
        curve = probes.probe_curve(rec, None, "in_string", ks=[1, 2])
        assert curve["metric"].tolist() == ["auc", "auc"] and curve["score"].iloc[0] > 0.95
        spec = directions.fit(rec, features=["in_string", "bracket_depth"], sample=2_000)
        m = spec["metrics"]
        assert m["in_string"]["score"] > 0.95 and m["in_string"]["best_cell"]["unit"] == 3
        assert spec["fitted_on"]["length"] == len(rec)
    spec_path = derived.save(spec, tmp_path / "d.pt")
    with open_recording(path) as rec:
        derived.encode(rec, spec_path)
    with open_recording(path) as rec:
        (key, info), = rec.derived.items()
        stream = rec.stream(*key)
        assert stream.shape == (len(rec), 2) and info["unit_names"] == ["in_string", "bracket_depth"]
        assert detectors.auc_exact(stream[:, 0], feats["in_string"].to_numpy()) > 0.95


def test_a_dictionary_trains_on_a_token_recording(word_synthetic):
    path, _, _ = word_synthetic
    with open_recording(path) as rec:
        spec = dictionary.train(rec, 1, "c", features=8, k=2, steps=30, batch=64)
        q = dictionary.quality(spec, rec, loss_chars=0)
        assert spec["fitted_on"]["length"] == len(rec) and 0 < q["rows"] <= len(rec)
        with pytest.raises(ProbeError, match="training tokens"):
            dictionary.train(rec, 1, "c", features=8, k=2, steps=1, batch=10 ** 6)


def test_readable_labels_a_word_models_tokens(word_model):
    docs = [("a.py", CODE + PROSE), ("b.py", PROSE + CODE)]
    X, y, names, doc = readable.states(word_model, docs, "in_string")
    n = [len(word_model.tokenizer.encode(t)[0]) for _, t in docs]
    assert len(X) == len(y) == len(doc) == sum(n) and doc.tolist() == [0] * n[0] + [1] * n[1]
    _, spans, _ = word_model.tokenizer.encode(docs[0][1])
    want = features.compute(docs[0][1], ["in_string"], spans=spans)["in_string"].to_numpy() > 0
    np.testing.assert_array_equal(y[:n[0]], want)
    assert want.any() and not want.all()


# ---- match ---------------------------------------------------------------------------------

def test_match_selects_and_matches_tokens(word_synthetic):
    path, feats, _ = word_synthetic
    with open_recording(path) as rec:
        inside = feats["in_comment"].to_numpy() == 1
        a = int(np.flatnonzero(np.diff(inside.astype(int)) == 1)[3]) + 1  # the 4th comment's first token
        assert inside[a:a + 2].all() and rec.tokens[a] == "#"
        units = match.select(rec, 1, "c", a, a + 2, threshold=0.5)
        assert 4 in units
        hits = match.search(rec, 1, "c", [4], threshold=0.5, top=10)
        assert len(hits) == 10
        for r in hits.itertuples():
            s0, s1 = rec.spans[r.start, 0], rec.spans[r.stop - 1, 1]
            assert r.text == rec.text[s0:s1][:80] and r.text.startswith("#")
            assert r.text.endswith(rec.tokens[r.stop - 1]) and inside[r.start:r.stop].all()
        why = match.explain(rec, hits).set_index("feature")
        assert why.loc["in_comment", "matched"] == 1 and why.loc["in_comment", "enrichment"] > 2
        with pytest.raises(ProbeError, match=r"on every token of 0:1"):
            match.select(rec, 1, "c", 0, 1, threshold=0.99)


def test_probe_match_prints_the_tokens_text(word_synthetic, capsys):
    path, _, _ = word_synthetic
    assert main(["match", str(path), "--layer", "1", "--stream", "c", "--units", "4", "--threshold", "0.5",
                 "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "fraction of matched tokens" in out and "'# a comment" in out  # a comment's tokens, spaces kept


# ---- n-gram errors over the same tokens ----------------------------------------------------

@pytest.fixture
def word_ngram(word_model):
    docs = [("a.txt", PROSE), ("b.py", CODE + PROSE.replace("cat", "bird"))] * 3
    return ngram.train(docs, word_model.vocab, 3, tokens="words")


def test_the_ngram_baseline_reads_the_models_tokens(word_model, word_recording_path, tmp_path):
    docs = [("a.txt", PROSE), ("b.py", CODE + PROSE.replace("cat", "bird"))]
    ng = ngram.train(docs, word_model.vocab, 1, discount=0.0, tokens="words")  # unigram frequencies
    with open_recording(word_recording_path) as rec:
        nbits = ngram.bits(ng, rec.document_texts())
        assert nbits.shape == (1, len(rec))
        # the order-1 model with no discount: each token's frequency among the recorded ids
        freq = np.bincount(rec.ids, minlength=len(word_model.vocab)) / len(rec)
        starts = rec.documents["start"].to_numpy()
        want = -np.log2(freq[rec.ids])
        want[starts] = np.nan
        np.testing.assert_allclose(nbits[0], want, rtol=1e-5)
        assert ng.info["tokens"] == len(rec) and "characters" not in ng.info
    ngram.save(ng, tmp_path / "w.npz")
    back = ngram.load(tmp_path / "w.npz")
    assert back.tokens == "words" and back.vocab == word_model.vocab
    assert ngram.summary(tmp_path / "w.npz")["tokenizer"] == "words"


def test_errors_compare_like_with_like_on_tokens(word_recording_path, word_ngram):
    with open_recording(word_recording_path) as rec:
        res = advantage.compare(rec, word_ngram)
        T = len(rec)
        ok = np.isfinite(rec.loss) & np.isfinite(res["ngram_bits"])
        assert res["unit"] == "token" and res["tokens"] == int(ok.sum()) and res["advantage"].shape == (T,)
        assert res["bpc"]["lstm"] == pytest.approx(float(np.nanmean(np.where(ok, rec.loss, np.nan))))
        assert list(res["errors"]) == list(advantage.TOKEN_CATEGORIES) == res["categories"]
        cat = res["category"]
        assert res["wrong"] == int((cat >= 0).sum()) > 0
        eos = np.array([t == "\n" for t in rec.tokens])
        unk = rec.ids == list(rec.tokenizer["vocab"]).index("<unk>")
        names = dict(enumerate(advantage.TOKEN_CATEGORIES))
        for t in np.flatnonzero(cat >= 0):  # each error in the first category that explains it
            if names[cat[t]] == "unknown token":
                assert unk[t]
            if names[cat[t]] == "whitespace":
                assert eos[t] and not unk[t]
        text = advantage.report(res)
        assert "bits per token on the same" in text and "tokens the model gets wrong" in text
        assert "identifier start" not in text
        assert advantage.store(rec, res, "w.npz", word_ngram.order) == (1, "ngram")
    with open_recording(word_recording_path) as rec:
        assert rec.derived[(1, "ngram")]["categories"] == list(advantage.TOKEN_CATEGORIES)


def test_brackets_are_counted_in_tokens_back_to_the_opener():
    text = "f(a b) g(x) [one\ntwo three]\n"
    tok = tokens.words(["f(a", "b)", "g(x)", "[one", "two", "three]", "<unk>", "<eos>"])
    _, spans, _ = tok.encode(text)
    dist = advantage.closing_distances(text, np.zeros(len(text), bool), [(0, len(text))])
    got = advantage.token_distances(dist, spans)
    # 'b)' closes the '(' of 'f(a' one token back; 'g(x)' closes its own; 'three]' is 3 back
    assert got.tolist() == [0, 1, 0, 0, 0, 0, 3, 0]


def test_a_character_ngram_model_is_refused_for_tokens(word_recording_path, tiny_model):
    ng = ngram.train([("a", CODE)], tiny_model.vocab, 2)
    with open_recording(word_recording_path) as rec:
        with pytest.raises(ProbeError, match=r"words.h5: the n-gram model reads chars but the recording's "
                                             r"model reads words"):
            advantage.compare(rec, ng, force=True)


def test_probe_ngram_and_errors_on_a_word_model(word_model_path, word_recording_path, tmp_path, capsys):
    src = tmp_path / "train"
    src.mkdir()
    (src / "a.txt").write_text(PROSE * 3)
    (src / "b.py").write_text(CODE + PROSE)
    out = tmp_path / "w.ngram.npz"
    assert main(["ngram", "train", "--text", str(src), "--model", str(word_model_path), "--order", "3",
                 "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    ng = ngram.load(out)
    assert ng.tokens == "words" and f"over {ng.info['tokens']:,} tokens" in said
    assert main(["errors", str(word_recording_path), "--ngram", str(out), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    with open_recording(word_recording_path) as rec:
        assert 0 < res["tokens"] < len(rec) and set(res["errors"]) == set(advantage.TOKEN_CATEGORIES)


# ---- probe info, probe record, shards ------------------------------------------------------

def test_probe_info_gives_bits_per_token_and_perplexity(word_recording_path, capsys):
    assert main(["info", str(word_recording_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with open_recording(word_recording_path) as rec:
        bits = float(np.nanmean(rec.loss))
        assert info["length"] == f"{len(rec):,} tokens" and info["characters"] == f"{len(rec.text):,}"
        assert info["tokens"] == {"kind": "words", "vocab_size": len(rec.tokenizer["vocab"])}
    assert info["mean_bits_per_token"] == pytest.approx(bits, abs=1e-4)
    assert info["perplexity"] == pytest.approx(2 ** bits, rel=1e-3)
    assert "mean_bits_per_char" not in info and "bytes/token" in info["size_on_disk"]
    assert info["unknown_tokens"] > 0


def test_probe_info_of_a_character_recording_is_unchanged(recording_path, capsys):
    assert main(["info", str(recording_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "mean_bits_per_char" in info and "perplexity" not in info and "bytes/char" in info["size_on_disk"]


def test_probe_record_says_tokens_for_a_word_model(word_model_path, tmp_path, capsys):
    (tmp_path / "t.txt").write_text(PROSE)
    out = tmp_path / "r.h5"
    assert main(["record", "--model", str(word_model_path), "--text", str(tmp_path / "t.txt"), "--out", str(out),
                 "--quiet"]) == 0
    said = capsys.readouterr().out
    with open_recording(out) as rec:
        assert f"wrote {out}: {len(rec):,} tokens ({len(PROSE):,} characters), 1 documents" in said


def test_a_word_recording_in_shards_opens_as_one(word_model, tmp_path):
    docs = [(f"d{i}.txt", PROSE.replace("cat", f"cat{i}") * (1 + i)) for i in range(5)]
    source = {"kind": "text", "fingerprint": "x"}
    whole = recorder.record(word_model, docs, tmp_path / "whole.h5", source=source, dtype="float32",
                            progress=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in (1, 2, 3):
        part, src = shards.take(docs, source, i, 3)
        recorder.record(word_model, part, folder / f"p{i}.h5", source=src, dtype="float32", progress=False)
    with open_recording(whole) as one, open_recording(folder) as many:
        assert len(many) == len(one) < len(many.text) and many.unit_name == "token"
        assert many.text == one.text and many.tokens == one.tokens
        np.testing.assert_array_equal(many.spans, one.spans)
        np.testing.assert_array_equal(many.ids, one.ids)
        pd.testing.assert_frame_equal(many.documents, one.documents)
        assert many.text_documents == one.text_documents and many.document_spans == one.document_spans
        np.testing.assert_allclose(many.stream(1, "c")[:], one.stream(1, "c")[:], atol=1e-5)
        pd.testing.assert_frame_equal(many.features(), one.features())
    (folder / "p2.h5").unlink()
    with pytest.raises(ProbeError, match="missing shard 2/3"):
        open_recording(folder)


def test_ngram_train_reads_the_word_models_own_training_corpus(word_model, tmp_path, capsys, monkeypatch):
    """Without --corpus or --text, probe ngram train counts the --model's own training corpus
    (the built-in one its checkpoint names), through its tokenizer."""
    from probe.cli import ngram as ngram_cli
    from probe.lm.model import save_checkpoint
    seen = []
    real = ngram_cli.load

    def spy(name, split, **kw):
        seen.append((name, split))
        return real(None, split, text=str(tmp_path / "prose.txt"))
    (tmp_path / "prose.txt").write_text(PROSE * 3)
    monkeypatch.setattr(ngram_cli, "load", spy)
    path = tmp_path / "w.pt"
    save_checkpoint(path, word_model, {"kind": "stdlib-prose", "split": "train"})
    assert main(["ngram", "train", "--model", str(path), "--order", "2", "--out", str(tmp_path / "a.npz"),
                 "--quiet"]) == 0
    save_checkpoint(path, word_model, {"kind": "text", "path": "elsewhere"})
    assert main(["ngram", "train", "--model", str(path), "--order", "2", "--out", str(tmp_path / "b.npz"),
                 "--quiet"]) == 0
    assert main(["ngram", "train", "--model", str(path), "--corpus", "linux", "--order", "2",
                 "--out", str(tmp_path / "c.npz"), "--quiet"]) == 0
    assert seen == [("stdlib-prose", "train"), ("stdlib", "train"), ("linux", "train")]
    assert "tokens" in capsys.readouterr().out
