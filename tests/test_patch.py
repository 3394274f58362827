"""Counterfactual patching: pairs made from real text are minimal and aligned; a patch equals
the step-by-step reference with the source's values pasted in; the summary's arithmetic;
bad input is one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import check_attribution

from probe.causal import pairs as pairs_mod
from probe.causal import patch
from probe.causal.pairs import Pair
from probe.errors import ProbeError
from probe.lm.model import LOG2E, CharRNN
from probe.lm.stepwise import stepwise
from probe.text import corpus

CODE = '''import os


def greet(name, excited=False):
    """Say hello to someone."""
    message = "hello, " + name  # build the greeting
    if excited:
        message += '!' * (len(name) % 3 + 1)  # more for longer names
    return [message, os.sep]


class Point:
    def __init__(self, x, y=[1, (2, 3)]):
        self.x, self.y = x, y  # keep both
'''
DOCS = [("a.py", CODE), ("b.py", CODE.replace("greet", "welcome").replace("hello", "hi"))]


def model_of(cell: str) -> CharRNN:
    torch.manual_seed(0)
    m = CharRNN(corpus.build_vocab(CODE + "_"), layers=2, units=8, embedding=4, cell=cell)
    with torch.no_grad():
        for p in m.rnn.parameters():
            p.mul_(2.5)
    return m.eval()


@pytest.mark.parametrize("feature", pairs_mod.FEATURES)
def test_pairs_are_minimal_aligned_and_end_at_their_target(feature):
    made, report = pairs_mod.pairs(feature, DOCS, n=50, seed=0)
    assert report["made"] == len(made) == min(50, report["offered"]) > 0
    for p in made:
        assert len(p.base) == len(p.source) == p.position + 1 and p.base[-1] == p.target
        differ = [i for i, (a, b) in enumerate(zip(p.base, p.source)) if a != b]
        assert differ and differ[-1] < p.position, p
        if feature in ("in_short_string", "in_comment", "bracket_depth"):
            assert len(differ) == 1 and p.source[differ[0]] == " "
            assert p.base[differ[0]] in {"in_short_string": "'\"", "in_comment": "#", "bracket_depth": "([{"}[feature]


def reference(model, pair, cell, steps_back=None) -> tuple[float, float, float]:
    """log2 p(target): base, source, and base with the cell's source values pasted in, all
    by the step-by-step reference."""
    layer, stream, unit = cell
    b, s = pair.base[:pair.position], pair.source[:pair.position]
    first = next(i for i, (x, y) in enumerate(zip(b, s)) if x != y)
    src, _ = stepwise(model, s)
    last = len(b) - 1

    def paste(k, st, t, value):
        if (k, st) == (layer, stream) and first <= t <= last and (steps_back is None or t == last - steps_back):
            value = value.clone()
            value[unit] = float(src[(layer, stream)][t, unit])
            return value

    def bits(text, edit=None):
        _, loss = stepwise(model, text + pair.target, edit=edit)
        return -float(loss[-1])
    return bits(b), bits(s), bits(b, paste)


@pytest.mark.parametrize("cell_type", ["lstm", "gru", "rnn"])
def test_a_patch_is_the_reference_with_the_source_pasted_in(cell_type):
    model = model_of(cell_type)
    made, _ = pairs_mod.pairs("in_short_string", DOCS, n=3, seed=1)
    streams = ("c", "h") if cell_type == "lstm" else ("h",)
    cells = [(k, s, u, None) for k in (0, 1) for s in streams for u in (1, 6)] + \
        [(0, streams[0], 3, back) for back in (0, 1, 2, 5)]
    res = patch.sweep(model, made, cells)
    for i, pair in enumerate(made):
        for j, (k, s, u, back) in enumerate(cells):
            base, source, pasted = reference(model, pair, (k, s, u), back)
            assert res["base"][i] == pytest.approx(base, abs=1e-4)
            assert res["source"][i] == pytest.approx(source, abs=1e-4)
            assert res["patched"][i, j] == pytest.approx(pasted, abs=1e-4), (pair.where, k, s, u, back)
    assert np.abs(res["patched"] - res["base"][:, None]).max() > 1e-3  # the patches act


def test_the_summary_arithmetic():
    res = {"base": np.array([-1.0, -2.0, -3.0]), "source": np.array([-5.0, -2.0, -1.0]),
           "patched": np.array([[-3.0, -1.0], [-2.5, -2.0], [-2.0, -3.0]])}
    cells = [(0, "c", 0, None), (0, "c", 1, None)]
    rows = patch.summarise(res, cells, {cells[0]: [1]})
    # effects: unit 0: -2, -0.5, +1 -> mean -0.5; unit 1: 0, 0, 0 -> 0
    assert rows[0]["effect_bits"] == pytest.approx(-0.5) and rows[1]["effect_bits"] == 0
    # IIA over pairs 0 and 2 (pair 1's base and source agree): unit 0 moves 2/4 and 1/2 -> both >= 0.5
    assert rows[0]["iia"] == 1.0 and rows[1]["iia"] == 0.0
    assert np.isnan(rows[0]["ratio"])  # its control's median |effect| is 0


def test_users_pairs_from_json_lines(tmp_path):
    good = {"base": "x = 'ab'", "source": "x = _ab'", "position": 7, "target": "'"}
    (tmp_path / "p.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "position": 6, "target": "b"}) + "\n")
    made = pairs_mod.load(tmp_path / "p.jsonl")
    assert made == [Pair("x = 'ab'", "x = _ab'", 7, "'"), Pair("x = 'ab'", "x = _ab'", 6, "b")]


@pytest.mark.parametrize("line, message", [
    ({"base": "x = 'ab'", "source": "x = _ab'", "position": 9, "target": "'"}, "p.jsonl:1: position 9 is outside"),
    ({"base": "x = 'ab'", "source": "x = 'ab'", "position": 7, "target": "'"}, "the same before position 7"),
    ({"base": "x = 'ab'", "source": "x = _ab'", "position": 7, "target": "''"}, "target must be one character"),
    ({"base": "x"}, "a pair needs base, source, position and target"),
    ("not json", "p.jsonl:1: not JSON"),
])
def test_bad_pairs_are_one_line(tmp_path, line, message):
    (tmp_path / "p.jsonl").write_text(line if isinstance(line, str) else json.dumps(line))
    with pytest.raises(ProbeError, match=message):
        pairs_mod.load(tmp_path / "p.jsonl")


def test_bad_cells_features_and_targets_are_one_line():
    model = model_of("gru")
    made, _ = pairs_mod.pairs("in_short_string", DOCS, n=2, seed=0)
    with pytest.raises(ProbeError, match="no unit 8 in layer 0"):
        patch.sweep(model, made, [(0, "h", 8, None)])
    with pytest.raises(ProbeError, match="0:c:1: a cell to pin is a state"):
        patch.sweep(model, made, [(0, "c", 1, None)])
    with pytest.raises(ProbeError, match="no pairs are made for 'line_length'"):
        pairs_mod.pairs("line_length", DOCS)
    with pytest.raises(ProbeError, match="the text offers no in_comment pairs"):
        pairs_mod.pairs("in_comment", [("x.py", "x = 1\n")])
    with pytest.raises(ProbeError, match="target '€' is not in the model's vocabulary"):
        patch.sweep(model, [Pair("x = 'a€", "x = _a€", 6, "€")], [(0, "h", 1, None)])
    assert LOG2E  # bits are log2


def test_the_circuit_is_checked_by_intervention():
    from probe.causal import circuit
    model = model_of("lstm")
    at = CODE.index("excited:") + 5
    res = circuit.circuit(model, CODE, (1, "c", 2), at, steps=6, top=5, sets=8)
    assert len(res["edges"]) == 5 and res["method"] == "gradient x activation"
    weights = [abs(e["weight"]) for e in res["edges"]]
    assert weights == sorted(weights, reverse=True)
    assert all(0 <= e["from"]["steps_back"] <= 6 for e in res["edges"])
    assert all((e["from"]["layer"], e["from"]["stream"], e["from"]["unit"], e["from"]["steps_back"]) != (1, "c", 2, 0)
               for e in res["edges"])
    c = res["check"]
    assert c["k"] == 5 and c["random_sets"] == 8 and c["top_k_effect"] > 0

    # the check's numbers are an independent run's: the top nodes zeroed by the reference
    nodes = {(e["from"]["layer"], e["from"]["stream"], e["from"]["unit"], at - e["from"]["steps_back"])
             for e in res["edges"]}

    def zero(k, s, t, value):
        hit = [u for (kk, ss, u, tt) in nodes if (kk, ss, tt) == (k, s, t)]
        if hit:
            value = value.clone()
            value[hit] = 0
            return value
    clean, _ = stepwise(model, CODE[:at + 1])
    zeroed, _ = stepwise(model, CODE[:at + 1], edit=zero)
    assert c["top_k_effect"] == pytest.approx(abs(zeroed[(1, "c")][at, 2] - clean[(1, "c")][at, 2]), abs=1e-5)
    assert res["target"]["value"] == pytest.approx(float(clean[(1, "c")][at, 2]), abs=1e-5)


def test_gradient_times_activation_is_the_finite_difference_times_the_value():
    """A node's weight is d cell / d node × node: checked for the strongest nodes by nudging
    the node in the recurrence and reading the cell."""
    model = model_of("gru")
    check_attribution(model, corpus.encode(CODE, model.vocab)[0][:61], (1, "h", 3))


def test_probe_patch_and_circuit_commands(tmp_path, capsys):
    from probe.cli import main
    from probe.lm.model import save_checkpoint
    model = model_of("lstm")
    save_checkpoint(tmp_path / "m.pt", model)
    (tmp_path / "code.py").write_text(CODE * 3)
    base = ["patch", "--model", str(tmp_path / "m.pt"), "--text", str(tmp_path / "code.py"), "--quiet"]
    assert main([*base, "--feature", "in_short_string", "--layer", "0", "--stream", "c", "--random", "3",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["feature"] == "in_short_string" and doc["pairs"] > 0 and len(doc["rows"]) == 8
    assert {"layer", "stream", "unit", "effect_bits", "random_median", "ratio", "iia"} <= set(doc["rows"][0])
    assert 0.5 <= doc["readable"]["best_cell_auc"] <= 1
    assert main([*base, "--feature", "bracket_depth", "--cells", "1:h:2,0:c:5", "--random", "3", "--csv",
                 str(tmp_path / "o.csv")]) == 0
    assert (tmp_path / "o.csv").read_text().startswith("layer,stream,unit,steps_back,effect_bits")
    assert "beside: best single cell" in capsys.readouterr().out
    (tmp_path / "p.jsonl").write_text(json.dumps({"base": "x = 'ab'", "source": "x = _ab'", "position": 7,
                                                  "target": "'"}) + "\n")
    assert main(["patch", "--model", str(tmp_path / "m.pt"), "--pairs", str(tmp_path / "p.jsonl"), "--cells",
                 "0:h:1", "--random", "2", "--steps-back", "3", "--quiet"]) == 0
    assert "0:h:1 by steps back:" in capsys.readouterr().out
    # bad input: one line each
    for argv, message in [
        ([*base, "--feature", "in_comment", "--cells", "0:c:9"], "no unit 9 in layer 0"),
        ([*base, "--feature", "nothing", "--cells", "0:c:1"], "no pairs are made for 'nothing'"),
        ([*base, "--feature", "in_comment", "--cells", "0:c:1", "--png", str(tmp_path / "x.png")], "--steps-back"),
        (["circuit", "0:c:1", "--model", str(tmp_path / "m.pt"), "--text", str(tmp_path / "code.py"), "--at",
          "99999"], "position 99999 is outside the text"),
        (["circuit", "0:x:1", "--model", str(tmp_path / "m.pt"), "--text", str(tmp_path / "code.py"), "--at",
          "50"], "no stream 'x' in layer 0"),
    ]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("probe: error: ") and message in err and err.count("\n") == 1, err
    assert main(["circuit", "1:c:2", "--model", str(tmp_path / "m.pt"), "--text", str(tmp_path / "code.py"),
                 "--at", "120", "--steps", "5", "--top", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["edges"]) == 4 and {"top_k_effect", "random_effect", "ratio"} <= set(res["check"])


def test_the_check_draws_its_random_nodes_from_the_others():
    from probe.causal import circuit
    model = model_of("rnn")
    with pytest.raises(ProbeError, match="no upstream node to explain it"):
        circuit.circuit(model, CODE, (0, "h", 1), 0)
    few = circuit.circuit(model, CODE, (0, "h", 1), 1, steps=1, top=50)  # every node is in the top
    assert few["check"]["random_sets"] == 0 and np.isnan(few["check"]["random_effect"])
