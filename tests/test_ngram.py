"""Character n-gram baselines (issue 17): interpolated Kneser-Ney probabilities are a
distribution in every context, order 1 without a discount is the unigram frequencies, the
per-character bits follow the recorded loss convention, and files round-trip."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import CODE

from probe.errors import ProbeError
from probe.text import corpus, ngram

DOCS = [("a.py", CODE * 3), ("b.py", CODE.replace("return", "yield") * 2), ("c.py", "x = 1\n")]
VOCAB = corpus.build_vocab("".join(t for _, t in DOCS) + "Q")  # Q: in the vocabulary, never seen


@pytest.fixture(scope="module")
def model():
    return ngram.train(DOCS, VOCAB, order=5)


def every_next(model, prefix_docs):
    """p(w | the document so far) for every w of the vocabulary: [order, V], by scoring
    the document extended by each character in turn."""
    name, text = prefix_docs
    rows = []
    for w in model.vocab:
        p = ngram.probabilities(model, [(name, text + w)])
        rows.append(p[:, -1])
    return np.stack(rows, axis=1)


@pytest.mark.parametrize("prefix", ["", "d", "def f(a", "    return {a: b}", "zzz unseen ("])
def test_probabilities_sum_to_one_in_every_context(model, prefix):
    p = every_next(model, ("d.py", prefix))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)
    assert (p > 0).all()  # every character, seen or not, keeps some mass


START = None  # the start symbol before each document, in the reference


def kneser_ney_reference(train_docs, vocab: str, order: int, discounts):
    """Interpolated Kneser-Ney as the module documents it, by plain counting of n-gram tuples:
    raw counts at the top order, continuation counts (distinct symbols before, the start
    symbol included) below it, raw counts kept for n-grams that begin with the start symbol,
    the last k - 1 symbols as context (all of them if fewer), p_0 = 1 / V. Returns
    p(w, history, k) for the order-k model."""
    raw = {}
    for _, text in train_docs:
        s = (START, *text)
        for t in range(1, len(s)):
            for n in range(1, min(order, t + 1) + 1):
                raw[s[t - n + 1:t + 1]] = raw.get(s[t - n + 1:t + 1], 0) + 1

    def cont(gram):
        if gram[0] is START:
            return raw[gram]
        return sum(1 for g in raw if len(g) == len(gram) + 1 and g[1:] == gram)

    def p(w, history, k, top=True):
        if k == 0:
            return 1 / len(vocab)
        if len(history) < k - 1:
            return p(w, history, k - 1, top)
        h = tuple(history[len(history) - (k - 1):])
        count = (lambda g: raw.get(g, 0)) if top else (lambda g: cont(g) if g in raw else 0)
        followers = [g for g in raw if len(g) == k and g[:-1] == h]
        total = sum(count(g) for g in followers)
        lower = p(w, history, k - 1, False)
        if total == 0:
            return lower
        D = discounts[k]
        return (max(count(h + (w,)) - D, 0) + D * len(followers) * lower) / total
    return p, raw


@pytest.mark.parametrize("discount", [None, 0.75])
def test_kneser_ney_probabilities_match_a_plain_reference(discount):
    """Exact probabilities of orders 1..3 on a tiny corpus, at every character of the
    training documents (first and last included) and of a text with unseen contexts and an
    unseen character, against the reference with the discounts the model reports."""
    train = [("a.py", "abracadabra\n"), ("b.py", "cabbage\ncab")]
    vocab = corpus.build_vocab("".join(t for _, t in train) + "z")  # z: never seen
    m = ngram.train(train, vocab, order=3, discount=discount)
    p, raw = kneser_ney_reference(train, vocab, 3, m.discounts)
    for k in (1, 2, 3):  # the discounts are n1 / (n1 + 2 n2) of each order's raw counts
        n1 = sum(1 for g, c in raw.items() if len(g) == k and c == 1)
        n2 = sum(1 for g, c in raw.items() if len(g) == k and c == 2)
        assert m.discounts[k] == (discount if discount is not None else n1 / (n1 + 2 * n2))
    docs = train + [("t.py", "zcadgebra\nzab"), ("u.py", "c")]
    got = ngram.probabilities(m, docs)
    want = [[p(ch, (START, *text[:t]), k) for _, text in docs for t, ch in enumerate(text)]
            for k in (1, 2, 3)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got.shape == (3, sum(len(t) for _, t in docs))


def test_order_one_without_discount_is_the_unigram_frequencies():
    m = ngram.train(DOCS, VOCAB, order=1, discount=0.0)
    ids = np.concatenate([corpus.encode(t, VOCAB)[0] for _, t in DOCS])
    freq = np.bincount(ids, minlength=len(VOCAB)) / len(ids)
    p = every_next(m, ("d.py", "anything"))[0]
    np.testing.assert_allclose(p, freq, rtol=1e-12)


def test_a_longer_context_predicts_the_training_text_better(model):
    b = ngram.bits(model, DOCS)
    means = np.nanmean(b, axis=1)
    assert b.shape == (5, sum(len(t) for _, t in DOCS))
    assert all(means[k + 1] < means[k] for k in range(4)), means
    starts = np.cumsum([0] + [len(t) for _, t in DOCS])[:-1]
    assert np.isnan(b[:, starts]).all() and np.isfinite(np.delete(b, starts, axis=1)).all()


def test_documents_do_not_leak_into_each_other():
    """The first characters of a file are predicted from the start symbol, not from the end
    of the file before it: scoring a document alone or after another gives the same bits."""
    m = ngram.train(DOCS, VOCAB, order=4)
    alone = ngram.bits(m, [DOCS[1]])
    after = ngram.bits(m, [DOCS[0], DOCS[1]])[:, len(DOCS[0][1]):]
    np.testing.assert_array_equal(alone, after)


def test_save_load_round_trip_and_errors(model, tmp_path):
    path = ngram.save(model, tmp_path / "m.ngram.npz")
    back = ngram.load(path)
    assert back.order == 5 and back.vocab == VOCAB
    np.testing.assert_array_equal(ngram.bits(back, DOCS), ngram.bits(model, DOCS))
    (tmp_path / "x.npz").write_bytes(b"not a model")
    with pytest.raises(ProbeError, match="x.npz: not a probe n-gram model"):
        ngram.load(tmp_path / "x.npz")
    with pytest.raises(ProbeError, match="order must be a whole number from 1 to 20, got 0"):
        ngram.train(DOCS, VOCAB, order=0)
    with pytest.raises(ProbeError, match="has orders 1..5, not 7"):
        ngram.bits(model, DOCS, order=7)


def test_closing_brackets_know_how_far_back_their_opener_is():
    from probe.analysis import advantage
    text = 'f(a, [b], "(")\n{x}'
    skip = np.zeros(len(text), bool)
    skip[text.index('"'):text.rindex('"') + 1] = True  # the string's "(" is no opener
    d = advantage.closing_distances(text, skip, [(0, len(text))])
    assert d[text.index("]")] == text.index("]") - text.index("[")
    assert d[text.index(")", 11)] == text.index(")", 11) - 1
    assert d[text.index("}")] == 2 and d.sum() == d[[text.index("]"), text.index(")", 11), text.index("}")]].sum()


def test_cli_ngram_train_and_errors(recording_path, model_path, tmp_path, capsys):
    import json

    from probe.analysis import advantage
    from probe.cli import main
    from probe.lm.model import load_model
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "a.py").write_text(CODE * 20)
    ng = tmp_path / "tiny.ngram.npz"
    assert main(["ngram", "train", "--text", str(folder), "--model", str(model_path), "--order", "3",
                 "--out", str(ng), "--quiet"]) == 0, capsys.readouterr().err
    assert "orders 1..3" in capsys.readouterr().out
    assert main(["errors", str(recording_path), "--ngram", str(ng), "--json"]) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert set(res["bpc"]["ngram"]) == {"1", "2", "3"} and res["bpc"]["lstm"] > 0
    assert [r["distance"] for r in res["advantage_by_distance"]] == ["1–5", "6–20", "21–100", "> 100"]
    assert res["advantage_by_feature"][-1]["where"] == "everything"
    assert list(res["errors"]) == list(advantage.CATEGORIES) and res["wrong"] > 0
    assert sum(res["errors"].values()) == pytest.approx(1.0)
    assert res["advantage_by_feature"][-1]["advantage"] == pytest.approx(
        res["bpc"]["ngram"]["3"] - res["bpc"]["lstm"], abs=1e-6)  # advantage is float32
    # stored as a derived stream, then analysed like any stream; a second store needs --force
    assert main(["errors", str(recording_path), "--ngram", str(ng), "--store", "--quiet"]) == 0
    assert "added stream ngram to layer 1 (advantage, ngram_bits, category)" in capsys.readouterr().err
    from probe.analysis import cache as analysis
    from probe.recording.reader import open_recording
    with open_recording(recording_path) as rec:
        assert rec.unit_names(1, "ngram") == ["advantage", "ngram_bits", "category"]
        adv = rec.unit(1, "ngram", 0)
        assert np.nanmean(adv) == pytest.approx(res["bpc"]["ngram"]["3"] - res["bpc"]["lstm"], abs=1e-3)
        cat = rec.unit(1, "ngram", 2)
        assert set(np.unique(cat[np.isfinite(cat)])) <= set(range(-1, len(advantage.CATEGORIES)))
    with open_recording(recording_path) as rec:
        scores = analysis.analysis(rec)["scores"]
    assert set(scores[scores["stream"] == "ngram"]["unit"]) == {0, 1, 2}
    assert main(["errors", str(recording_path), "--ngram", str(ng), "--store"]) == 1
    assert "already has derived stream 1/ngram (from tiny.ngram.npz); pass --force" in capsys.readouterr().err
    # another vocabulary: refused, or a note with --force
    other = ngram.train([("x", "abc")], "\x00abc", order=2)
    ngram.save(other, tmp_path / "other.npz")
    assert main(["errors", str(recording_path), "--ngram", str(tmp_path / "other.npz")]) == 1
    assert "vocabulary (4 characters) is not the recording's model's" in capsys.readouterr().err
    assert main(["errors", str(recording_path), "--ngram", str(tmp_path / "other.npz"), "--force"]) == 0
    assert "note: the n-gram model's vocabulary" in capsys.readouterr().out
    assert main(["ngram", "train", "--text", str(folder), "--order", "0", "--out", str(tmp_path / "z.npz")]) == 1
    assert "order must be a whole number from 1 to 20" in capsys.readouterr().err
    assert load_model(model_path).vocab == ngram.load(ng).vocab
    assert main(["info", str(ng), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["order"] == 3 and info["smoothing"] == "interpolated Kneser-Ney" and info["characters"] > 0


def test_the_dynamic_memory_oracle_looks_back_within_the_document():
    from probe.analysis import advantage
    cps = np.array([ord(c) for c in "abcXabcYabc"])
    got = advantage.repeated(cps, [(0, 11)], n=3, within=100)
    assert np.flatnonzero(got).tolist() == [6, 10]
    assert np.flatnonzero(advantage.repeated(cps, [(0, 11)], n=3, within=3)).tolist() == []
    assert np.flatnonzero(advantage.repeated(cps, [(0, 4), (4, 11)], n=3, within=100)).tolist() == [10]


def test_each_error_goes_to_the_first_oracle_that_explains_it(tmp_path):
    """A constructed recording: the model is wrong everywhere (2 bits), the n-gram right at
    one position; the other errors fall to memory, rare names, name starts, punctuation,
    whitespace and the rest, in that order."""
    from probe.analysis import advantage
    from probe.recording import h5format
    from probe.recording.reader import open_recording
    text = "x = common + rare_name + 7\n"
    T = len(text)
    loss = np.full(T, 2.0, np.float32)
    loss[0] = np.nan
    path = h5format.write(tmp_path / "r.h5", text, {(0, "h"): np.zeros((T, 2))}, loss=loss)
    ng = ngram.train([("t.py", "common " * 10 + "rare_name")], VOCAB, order=3)
    nbits = np.full((3, T), 3.0)
    nbits[-1, 6] = 0.5  # the n-gram model gets the first "m" of "common" right
    with open_recording(path) as rec:
        cat = advantage.breakdown(rec, ng, nbits, loss.astype(np.float64), np.isfinite(loss))
    name = dict(enumerate(advantage.CATEGORIES))
    got = {f"{text[t]}@{t}": name.get(int(c), "-") for t, c in enumerate(cat)}
    assert got["x@0"] == "-"                      # no loss at a document's first character
    assert got["m@6"] == "n-gram"
    assert got[" @24"] == "dynamic memory"        # " + " occurred 12 characters before
    assert got["r@13"] == "rare identifier" and got["e@21"] == "rare identifier"  # seen once
    assert got["c@4"] == "identifier start"       # "common": seen ten times
    assert got["o@5"] == "the rest" and got["7@25"] == "the rest"
    assert got["=@2"] == "punctuation" and got["+@11"] == "punctuation"
    assert got[" @1"] == "whitespace" and got["\n@26"] == "whitespace"


def test_the_default_ngram_model_is_built_once_and_cached(recording_path, tmp_path, monkeypatch):
    """Without --ngram: the model of the recording's model's training corpus, built on the
    first use and read from the cache after; a model trained on other text is refused."""
    from probe.analysis import advantage
    from probe.recording.reader import open_recording
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    built = []

    class Fake:
        documents = DOCS

    def fake_load(kind, split):
        built.append((kind, split))
        return Fake()
    monkeypatch.setattr(advantage.corpora, "load", fake_load)
    with open_recording(recording_path) as rec:
        with pytest.raises(ProbeError, match="not trained on a built-in corpus .stdlib, stdlib-prose, linux.: give an n-gram model"):
            advantage.default_ngram(rec, order=3)
        rec.model_config["corpus"] = {"kind": "stdlib", "split": "train", "fingerprint": "f" * 64}
        a = advantage.default_ngram(rec, order=3)
        b = advantage.default_ngram(rec, order=3)
    assert built == [("stdlib", "train")] and a.vocab == b.vocab == rec.model_config["vocab"]
    assert len(list((tmp_path / "cache").glob("stdlib-train-*-3.ngram.npz"))) == 1


def test_a_recording_without_loss_is_refused(tmp_path):
    from probe.analysis import advantage
    from probe.recording import h5format
    from probe.recording.reader import open_recording
    text = "x = 1\n" * 20
    path = h5format.write(tmp_path / "r.h5", text, {(0, "h"): np.zeros((len(text), 2))},
                          loss=np.full(len(text), np.nan, np.float32), model={"layers": 1, "units": 2, "vocab": VOCAB})
    with open_recording(path) as rec:
        with pytest.raises(ProbeError, match="r.h5: no characters with a loss to compare"):
            advantage.compare(rec, ngram.train(DOCS, VOCAB, order=2))
