"""The causal tools on a word-level model (issue 28): a position is a token. Pinning equals
the step-by-step reference with the edit; feature summaries are per token; patching maps a
pair's character position to its token and drops pairs whose tokenizations do not align;
the circuit, gradient flow and saliency work per token (checked against autograd-free
references); sampling gives words of the vocabulary; loss_recovered reads tokens."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import CODE, PROSE, check_attribution
from probe.causal import circuit, gradients, intervene, patch
from probe.causal import pairs as pairs_mod
from probe.causal.intervene import Edit
from probe.causal.pairs import Pair
from probe.cli import main
from probe.errors import ProbeError
from probe.lm import recurrence
from probe.lm.model import LOG2E, load_model
from probe.lm.sample import sample
from probe.lm.stepwise import stepwise
from probe.text import features
from probe.text import tokens as toks

torch.set_num_threads(1)


def pinned(edits: list[Edit]):
    """The stepwise edit hook pinning each edit's unit to its number."""
    def hook(layer, stream, position, value):
        mine = [e for e in edits if (e.layer, e.stream) == (layer, stream)]
        if mine:
            value = value.clone()
            for e in mine:
                value[e.unit] = e.how
            return value
    return hook


def test_pinning_a_word_models_unit_equals_the_stepwise_reference(word_model):
    edits = [Edit(0, "c", 3, "zero"), Edit(1, "h", 2, 0.7), Edit(0, "h", 5, "mean")]
    got = intervene.losses(word_model, PROSE, edits)
    n = len(word_model.tokenizer.encode(PROSE)[0])
    assert got.shape == (4, n) and n < len(PROSE) / 3  # positions are words, not characters
    streams, clean = stepwise(word_model, PROSE)
    np.testing.assert_allclose(got[0], clean, rtol=1e-4, atol=1e-5)
    mean = float(streams[(0, "h")][:, 5].mean())  # the mean over the text's tokens
    for row, e in zip(got[1:], [Edit(0, "c", 3, 0.0), Edit(1, "h", 2, 0.7), Edit(0, "h", 5, mean)]):
        _, want = stepwise(word_model, PROSE, edit=pinned([e]))
        np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-5)
    assert intervene.resolve(word_model, [PROSE], edits[2:])[0].how == pytest.approx(mean, rel=1e-5)


def token_features(model, docs, names, regex=None):
    """Per-token features of documents, each computed alone and read at its tokens."""
    parts = []
    for name, text in docs:
        spans = model.tokenizer.encode(text)[1]
        parts.append(features.compute(text, names, document_names=[name], regex=regex, spans=spans))
    return {n: np.concatenate([p[n].to_numpy() for p in parts]) for n in names}


def test_ablation_effects_are_summarised_per_token(word_model):
    docs = [("a.txt", PROSE), ("b.py", CODE)]
    names = ["in_string", "in_comment", "bracket_depth"]
    got = intervene.position_features(word_model, [t for _, t in docs], names + ["the"], document_names=[n for n, _ in docs],
                                      regex={"the": r"\bthe\b"})
    want = token_features(word_model, docs, names + ["the"], regex={"the": r"\bthe\b"})
    assert len(got) == sum(len(word_model.tokenizer.encode(t)[0]) for _, t in docs)
    for n in names + ["the"]:
        np.testing.assert_array_equal(got[n].to_numpy(), want[n])
    assert want["in_string"].any() and want["in_comment"].any()  # the test can fail

    df = intervene.effects(word_model, docs, cells=[(0, "c", 3)], feature_names=["in_string", "in_comment"],
                           random=2, seed=0)
    bits = np.concatenate([intervene.losses(word_model, t, [Edit(0, "c", 3)]) for _, t in docs], axis=1)
    delta = np.full(bits.shape[1], np.nan)
    delta[:-1] = bits[1, 1:] - bits[0, 1:]
    for feature in ("in_string", "in_comment"):
        mask = want[feature] != 0
        r = df[(df.feature == feature) & (df.unit == 3)].iloc[0]
        assert r.positions == int(mask.sum())
        assert r.delta_bits == pytest.approx(np.nanmean(delta[mask]), rel=1e-4, abs=1e-6)
        assert r.delta_bits_elsewhere == pytest.approx(np.nanmean(delta[~mask]), rel=1e-4, abs=1e-6)
    assert "per next token" in intervene.report(df, unit="token")


def test_probe_ablate_on_a_word_model(word_model_path, tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text(PROSE)
    assert main(["ablate", "--model", str(word_model_path), "--text", str(src), "--cells", "0:c:3",
                 "--feature", "in_string", "--random", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "bits per next token" in out and "character" not in out
    spans = toks.of(load_model(word_model_path)).encode(PROSE)[1]
    n = int(features.compute(PROSE, ["in_string"], spans=spans)["in_string"].sum())
    assert n != int(features.compute(PROSE, ["in_string"])["in_string"].sum())  # tokens, not characters
    assert f"in_string  ({n:,} positions)" in out


def token_reference(model, pair, cell):
    """log2 p(target): base, source, and base with the cell's source values pasted in at
    every token from the first difference on, by the step-by-step reference; the target's
    token index counted from the text before it."""
    layer, stream, unit = cell
    b, s = pair.base[:pair.position], pair.source[:pair.position]
    bi, si = model.tokenizer.encode(b)[0], model.tokenizer.encode(s)[0]
    first = int(np.flatnonzero(bi != si)[0])
    src, _ = stepwise(model, s)

    def paste(k, st, t, value):
        if (k, st) == (layer, stream) and first <= t < len(si):
            value = value.clone()
            value[unit] = float(src[(layer, stream)][t, unit])
            return value

    def bits(text, edit=None):
        _, loss = stepwise(model, text + pair.target, edit=edit)
        return -float(loss[-1])
    return bits(b), bits(s), bits(b, paste)


BASE = "the cat sat on the mat, and the dog ran to the door.\nThe cat ran"


def test_patching_a_word_model_is_the_reference_with_the_source_pasted_in(word_model):
    at = BASE.rindex("ran")
    pair = Pair(BASE, BASE.replace("the dog", "the cat", 1), at, "ran")
    cells = [(0, "c", 3), (1, "h", 5)]
    base, source, patched = patch.run_pair(word_model, pair, [(*c, None) for c in cells])
    for cell, got in zip(cells, patched):
        want = token_reference(word_model, pair, cell)
        np.testing.assert_allclose([base, source, got], want, rtol=1e-4, atol=1e-5)
    assert abs(source - base) > 1e-3  # the pair moves the prediction: the test can fail
    # a position inside the target word, or in the space before it, maps to the same token
    for p in (at + 2, at - 1):
        again = patch.run_pair(word_model, Pair(pair.base, pair.source, p, "ran"), [(*c, None) for c in cells])
        np.testing.assert_allclose(again[2], patched, rtol=1e-6)


def test_pairs_whose_tokenizations_do_not_align_are_dropped_and_counted(word_model):
    at = BASE.rindex("ran")
    good = Pair(BASE, BASE.replace("the dog", "the cat", 1), at, "ran")
    extra = Pair(BASE, BASE.replace("the dog", "the bigger dog", 1), at, "ran")  # a word more before it
    tok = word_model.tokenizer
    assert patch.target_token(tok, extra.base, at)[1] != patch.target_token(tok, extra.source, at)[1]
    unknown = BASE.replace("door.", "zebra.")
    same = Pair(unknown, unknown.replace("zebra.", "camel."), unknown.rindex("ran"), "ran")  # both <unk>
    with pytest.raises(patch.Misaligned, match="different numbers of tokens"):
        patch.run_pair(word_model, extra, [(0, "c", 3, None)])
    res = patch.sweep(word_model, [extra, good, same], [(0, "c", 3, None)])
    assert res["kept"] == [1] and res["patched"].shape == (1, 1)
    assert sum(res["dropped"].values()) == 2 and any("same tokens" in why for why in res["dropped"])
    np.testing.assert_allclose(res["patched"][0, 0], patch.run_pair(word_model, good, [(0, "c", 3, None)])[2][0])
    out = patch.effects(word_model, [extra, good, same], cells=[(0, "c", 3)], random=1)
    assert out["pairs"] == 1 and "dropped 2 pairs" in patch.report(out)
    with pytest.raises(ProbeError, match="none of the 2 pairs"):
        patch.sweep(word_model, [extra, same], [(0, "c", 3, None)])
    with pytest.raises(ProbeError, match="not a token of the model's vocabulary"):
        patch.run_pair(word_model, Pair(BASE, good.source, at, "zebra"), [(0, "c", 3, None)])


def test_built_in_pairs_for_a_word_model_target_its_tokens(word_model):
    tok = word_model.tokenizer
    made, _ = pairs_mod.pairs("in_short_string", [("a.py", CODE), ("b.txt", PROSE)], n=20, seed=0, tokenizer=tok)
    for p in made:
        ids, spans, _ = tok.encode(p.base)
        j = int(np.flatnonzero((spans[:, 0] <= p.position) & (p.position < spans[:, 1]))[0])
        assert p.target == tok.vocab[ids[j]]
    res = patch.sweep(word_model, made, [(0, "c", 3, None)])
    assert res["kept"] and len(res["kept"]) + sum(res["dropped"].values()) == len(made)
    # a comment's '#' replaced by a space: a word model reads one token fewer when the '#' stood alone
    hashes, _ = pairs_mod.pairs("in_comment", [("b.txt", PROSE)], n=5, seed=0, tokenizer=tok)
    with pytest.raises(ProbeError, match="none of the 1 pairs can be patched at token level"):
        patch.sweep(word_model, hashes, [(0, "c", 3, None)])


def test_probe_patch_on_a_word_model_with_json_pairs(word_model_path, tmp_path, capsys):
    at = BASE.rindex("ran")
    lines = [{"base": BASE, "source": BASE.replace("the dog", "the cat", 1), "position": at, "target": "ran"},
             {"base": BASE, "source": BASE.replace("the dog", "the bigger dog", 1), "position": at, "target": "ran"}]
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(d) for d in lines))
    assert main(["patch", "--model", str(word_model_path), "--pairs", str(f), "--cells", "0:c:3", "--random", "1",
                 "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pairs"] == 1 and sum(doc["dropped"].values()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**lines[0], "target": "zebra"}))
    assert main(["patch", "--model", str(word_model_path), "--pairs", str(bad), "--cells", "0:c:3"]) != 0
    assert "bad.jsonl:1: target 'zebra' is not a token of the model's vocabulary" in capsys.readouterr().err


def test_the_circuit_of_a_word_model_is_per_token(word_model):
    at = 12
    res = circuit.circuit(word_model, PROSE, (1, "c", 2), at, steps=4, top=5, sets=4)
    words = PROSE.split()
    assert res["target"]["char"] == words[at] and res["target"]["position_unit"] == "token"
    assert f"({'token ' + repr(words[at])})" in circuit.report(res)
    streams, _ = stepwise(word_model, PROSE)
    assert res["target"]["value"] == pytest.approx(float(streams[(1, "c")][at, 2]), abs=1e-5)
    ids = word_model.tokenizer.encode(PROSE)[0][:at + 1]
    check_attribution(word_model, ids, (1, "c", 2))  # gradient x value = finite difference x value
    with pytest.raises(ProbeError, match=r"outside the text \(token positions 0\.\."):
        circuit.circuit(word_model, PROSE, (1, "c", 2), len(PROSE) - 1)


def test_gradient_flow_of_a_word_model_at_k0_is_the_heads_gradient(word_model):
    span = 5
    flow = gradients.flow(word_model, PROSE, span=span, positions=1, seed=2)
    ids = word_model.tokenizer.encode(PROSE)[0]
    start = int(np.random.default_rng(2).choice(len(ids) - span - 1, 1, replace=False)[0])
    streams, _ = stepwise(word_model, PROSE)
    h = torch.tensor(streams[(1, "h")][start + span])
    with torch.no_grad():
        p = torch.softmax(word_model.head(h), -1)
        p[ids[start + span + 1]] -= 1  # d cross-entropy / d logits
        want = float((word_model.head.weight.T @ p).norm())
    got = next(r for r in flow["layers"] if (r["layer"], r["stream"]) == (1, "h"))["mean"][0]
    assert got == pytest.approx(want, rel=1e-4)
    with pytest.raises(ProbeError, match="at least 502 tokens"):
        gradients.flow(word_model, PROSE, span=500)


def test_saliency_of_a_word_model_names_tokens_and_is_the_finite_difference(word_model):
    position, window = 14, 6
    res = gradients.salient(word_model, PROSE, position, window, top=3)
    words = [w if w != "\n" else "\n" for w in toks.WORD.findall(PROSE)]
    assert res["start"] == position + 1 - window and res["tokens"] == words[res["start"]:position + 1]
    assert res["predicted"] == words[position + 1]
    assert [t for _, t, _ in res["top"]] == [words[p] for p, _, _ in res["top"]]
    ids = torch.from_numpy(word_model.tokenizer.encode(PROSE)[0])
    x = recurrence.embedded(word_model, ids[res["start"]:position + 1]).detach()

    def loss(scale_j, eps):
        y = x.clone()
        y[scale_j] *= 1 + eps
        top, _ = recurrence.run(word_model, y[None], head=False)
        return -torch.log_softmax(recurrence.logits(word_model, top[0, -1]), -1)[ids[position + 1]].item()
    fd = [(loss(j, 1e-2) - loss(j, -1e-2)) / 2e-2 for j in range(window)]  # float32: a wide step
    np.testing.assert_allclose(res["values"], fd, rtol=2e-2, atol=2e-4)
    assert np.abs(fd).max() > 10 * 2e-4  # large enough for the test to fail
    assert res["bits"] == pytest.approx(loss(0, 0.0) * LOG2E, rel=1e-5)
    with pytest.raises(ProbeError, match="no next token"):
        gradients.saliency(word_model, PROSE, len(ids) - 1)


def test_sampling_a_word_model_gives_its_words_and_a_clamp_steers_it(word_model):
    vocab = set(word_model.vocab) - {toks.UNK, toks.EOS}
    text = sample(word_model, "The cat", 30, temperature=1.0, seed=0)
    assert text.startswith((" ", "\n"))  # the prime does not end in a space: the first word is set apart
    assert set(text.split()) <= vocab
    assert len(word_model.tokenizer.encode(text)[0]) == 30
    edit = Edit(1, "h", 4, -1.0)
    held = sample(word_model, "The cat ", 12, temperature=0, clamp=[edit])
    free = sample(word_model, "The cat ", 12, temperature=0)
    assert held != free
    ids = list(word_model.tokenizer.encode("The cat ")[0])
    for _ in range(12):  # greedy through stepwise with the same pin gives the same words
        streams, _ = stepwise(word_model, " ".join(word_model.vocab[i] for i in ids), edit=pinned([edit]))
        ids.append(int(word_model.head(torch.from_numpy(streams[(1, "h")][-1])).argmax()))
    assert held == word_model.tokenizer.join(ids[2:])


def test_loss_recovered_reads_a_word_recordings_tokens(word_recording_path, word_model):
    from probe.readout.loss_recovered import piece_ids, pieces
    from probe.recording.reader import open_recording
    with open_recording(word_recording_path) as rec:
        test = np.zeros(len(rec), bool)
        test[10:40] = True
        test[len(rec) - 30:] = True
        cut = pieces(rec, test, 1000)
        assert cut and all(b <= len(rec) for _, b in cut)
        for a, b in cut:
            np.testing.assert_array_equal(piece_ids(rec, word_model, a, b), rec.ids[a:b])


def test_removing_a_direction_from_a_word_model_is_summarised_per_token(word_model_path, tmp_path):
    from probe.readout import directions
    from probe.recording.reader import open_recording
    from probe.recording.record import record
    model = load_model(word_model_path)
    record(model, [("a.txt", PROSE * 4), ("b.py", CODE * 4)], tmp_path / "long.h5", dtype="float32", progress=False)
    with open_recording(tmp_path / "long.h5") as rec:
        spec = directions.fit(rec, features=["in_string", "bracket_depth"])
    docs = [("a.txt", PROSE), ("b.py", CODE)]
    df = directions.ablate(model, docs, spec, random=2, chars=10_000)
    rows = [directions.direction(spec, f) for f in spec["unit_names"]] + directions.random_directions(spec, 2)
    bits = np.concatenate([directions.losses(model, t, rows) for _, t in docs], axis=1)
    delta = np.full(bits.shape[1], np.nan)
    delta[:-1] = bits[1, 1:] - bits[0, 1:]  # the first feature's direction
    want = token_features(model, docs, ["in_string", "bracket_depth"])
    assert bits.shape[1] == len(want["in_string"]) < len(PROSE + CODE) / 2
    r = df[df.feature == "in_string"].iloc[0]
    mask = want["in_string"] != 0
    assert r.positions == int(mask.sum()) > 0
    assert r.delta_bits == pytest.approx(np.nanmean(delta[mask]), abs=1e-6)
    assert df[df.feature == "bracket_depth"].iloc[0].positions == len(mask)  # a count: every token
    assert "per next token" in directions.report(df, "token")
