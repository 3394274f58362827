"""Interventions: pinning a unit equals the step-by-step cell with the edit applied; the
effects table on a constructed case; steering; the ``probe ablate`` CLI and its errors."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from probe.causal import intervene
from probe.causal.intervene import Edit
from probe.cli import main
from probe.lm.sample import sample
from probe.lm.stepwise import stepwise


def pinned(edit: Edit):
    """The stepwise edit hook that pins one unit, as an Edit with a number means it."""
    def hook(layer, stream, position, value):
        if (layer, stream) == (edit.layer, edit.stream):
            value = value.clone()
            value[edit.unit] = edit.how
            return value
    return hook


@pytest.mark.parametrize("batch", [1, 128])
def test_losses_equal_the_step_by_step_cell_with_the_edit(tiny_model, text, batch):
    edits = [Edit(0, "h", 3), Edit(1, "h", 5, 0.7), Edit(0, "c", 2, "mean"), Edit(1, "c", 1, -2.0)]
    got = intervene.losses(tiny_model, text, edits, batch=batch)
    assert got.shape == (5, len(text)) and np.isnan(got[:, 0]).all()
    _, plain = stepwise(tiny_model, text)
    np.testing.assert_allclose(got[0], plain, atol=1e-5, equal_nan=True)
    for row, edit in zip(got[1:], intervene.resolve(tiny_model, [text], edits)):
        _, want = stepwise(tiny_model, text, edit=pinned(edit))
        np.testing.assert_allclose(row, want, atol=1e-5, equal_nan=True, err_msg=str(edit))
        assert np.nanmax(np.abs(row - plain)) > 1e-3, f"{edit} changed nothing"  # the edits do act


def test_mean_is_the_units_mean_over_the_text(tiny_model, text):
    from probe.recording.record import activations
    streams, _ = activations(tiny_model, text)
    (edit,) = intervene.resolve(tiny_model, [text], [Edit(1, "c", 4, "mean")])
    assert edit.how == pytest.approx(float(streams[(1, "c")][:, 4].mean()), rel=1e-6)


def test_a_unit_nothing_reads_changes_nothing(tiny_model, text):
    deaf = copy.deepcopy(tiny_model)
    with torch.no_grad():  # unit 6 of the top layer: nothing reads its h (not the head, not itself)
        deaf.head.weight[:, 6] = 0
        deaf.rnn.weight_hh_l1[:, 6] = 0
    got = intervene.losses(deaf, text, [Edit(1, "h", 6), Edit(1, "h", 6, 3.0), Edit(1, "h", 2)])
    np.testing.assert_allclose(got[1], got[0], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6, equal_nan=True)
    assert np.nanmax(np.abs(got[3] - got[0])) > 1e-3  # a unit that is read does change it


def test_effects_arithmetic_on_a_constructed_case(tiny_model, monkeypatch):
    text = "x = 'ab'\n" * 4

    def fake_losses(model, doc, edits, batch=128, progress=False, bar=None):
        """Unit u raises the cost of the character after each position t by (u + 1) / 100
        where t is inside a string, and by 1 / 1000 elsewhere."""
        out = np.zeros((1 + len(edits), len(doc)), dtype=np.float32)
        out[:, 0] = np.nan
        from probe.text.features import compute
        mask = compute(doc, ["in_short_string"])["in_short_string"].to_numpy() != 0
        for j, e in enumerate(edits):
            out[1 + j, 1:] = np.where(mask[:-1], (e.unit + 1) / 100, 1 / 1000)
        return out
    monkeypatch.setattr(intervene, "losses", fake_losses)
    df = intervene.effects(tiny_model, [("a.py", text)], layer=0, feature_names=["in_short_string"],
                           random=4, seed=0)
    assert list(df.columns) == intervene.EFFECT_COLUMNS and len(df) == 8  # every unit of layer 0
    r = df.set_index("unit")
    assert r.loc[7, "delta_bits"] == pytest.approx(0.08) and r.loc[7, "delta_bits_elsewhere"] == pytest.approx(0.001)
    controls = sorted(np.random.default_rng(0).choice(8, 4, replace=False).tolist())
    median = float(np.median([(u + 1) / 100 for u in controls]))
    assert r.loc[7, "random_median"] == pytest.approx(median)
    assert r.loc[7, "ratio"] == pytest.approx(0.08 / median)
    assert r.loc[7, "percentile"] == 100.0 and r.loc[0, "percentile"] == 12.5  # 1 of 8 units <= unit 0
    from probe.text.features import compute
    assert r.loc[7, "positions"] == int(compute(text, ["in_short_string"])["in_short_string"].sum())


def test_clamping_steers_sampling_exactly_as_the_step_by_step_cell(tiny_model):
    free = sample(tiny_model, "def ", 40, temperature=0, seed=0)
    held = sample(tiny_model, "def ", 40, temperature=0, seed=0, clamp=[Edit(1, "h", 2, 0.9)])
    assert len(held) == 40 and held != free
    # greedy decoding through stepwise with the same pin gives the same characters
    text, edit = "def ", Edit(1, "h", 2, 0.9)
    for _ in range(40):
        streams, _ = stepwise(tiny_model, text, edit=pinned(edit))
        logits = tiny_model.head(torch.from_numpy(streams[(1, "h")][-1]))
        text += tiny_model.vocab[int(logits.argmax())]
    assert text[4:] == held


@pytest.mark.parametrize("argv, message", [
    (["ablate", "--cells", "0-3"], "--cells: '0-3' is not LAYER:STREAM:UNIT (e.g. 0:c:89,1:h:158)"),
    (["ablate", "--cells", "0:h:8"], "no unit 8 in layer 0 (units are 0..7)"),
    (["ablate", "--layer", "2"], "no layer 2 in the model (layers are 0..1)"),
    (["ablate", "--cells", "0:h:1", "--feature", "nope"], "unknown feature 'nope'"),
    (["ablate", "--cells", "0:h:1", "--random", "9"], "--random must be between 0 and the layer's 8 units, got 9"),
    (["ablate", "--cells", "0:h:1", "--how", "half"], "--how must be zero, mean or a number, got 'half'"),
    (["ablate", "--cells", "0:i:1"], "0:i:1: a cell to pin is a state of its layer (c or h in LSTM layers), not 'i'"),
    (["sample", "--clamp", "0:1"], "--clamp: '0:1' is not LAYER:STREAM:UNIT=VALUE"),
    (["sample", "--clamp", "0:h:9=1"], "no unit 9 in layer 0 (units are 0..7)"),
])
def test_ablate_and_clamp_bad_input_is_one_line(model_path, tmp_path, capsys, argv, message):
    src = tmp_path / "code.py"
    src.write_text("x = 'a'\n# note\n" * 20)
    extra = ["--text", str(src), "--quiet"] + ([] if "--random" in argv else ["--random", "4"]) if argv[0] == "ablate" else []
    assert main([*argv, "--model", str(model_path), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("probe: error: ") and message in err and err.count("\n") == 1, err


def test_probe_ablate_json(model_path, tmp_path, capsys):
    src = tmp_path / "code.py"
    src.write_text("x = 'a'  # note\ny = (1, \"b\")\n" * 20)
    assert main(["ablate", "--model", str(model_path), "--text", str(src), "--cells", "0:h:1,1:c:2",
                 "--random", "3", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["layer"], r["stream"], r["unit"]) for r in rows} == {(0, "h", 1), (1, "c", 2)}
    # every binary feature that holds somewhere in the text (no docstrings, no preprocessor lines)
    assert {r["feature"] for r in rows} == {"in_string", "in_short_string", "in_comment"}
    for r in rows:
        assert {"layer", "stream", "unit", "feature", "delta_bits", "delta_bits_elsewhere", "random_median", "ratio"} <= set(r)
    assert main(["ablate", "--model", str(model_path), "--text", str(src), "--layer", "1", "--feature",
                 "in_comment", "--random", "4", "--csv", str(tmp_path / "sweep.csv"), "--quiet"]) == 0
    import pandas as pd
    sweep = pd.read_csv(tmp_path / "sweep.csv")
    assert len(sweep) == 8 and sweep["percentile"].between(0, 100).all()


def test_analyze_causal_puts_the_effect_beside_each_score(recording_path, capsys):
    assert main(["analyze", str(recording_path), "--top", "2", "--causal", "--causal-chars", "600",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["best"]
    binary = [r for r in rows if r["metric"] == "auc"]
    assert binary and all(r["delta_bits"] is not None and r["ratio"] is not None for r in binary)
    assert all(r.get("delta_bits") is None for r in rows if r["metric"] == "r")
    assert main(["analyze", str(recording_path), "--top", "1", "--causal", "--causal-chars", "600"]) == 0
    assert "ablated: delta_bits  ratio" in capsys.readouterr().out


def test_the_old_cell_spellings_still_work_with_one_deprecation_line(model_path, tmp_path, capsys):
    src = tmp_path / "code.py"
    src.write_text("x = 'a'  # note\n" * 20)
    common = ["--model", str(model_path), "--text", str(src), "--random", "2", "--json", "--quiet"]
    assert main(["ablate", "--cells", "0:1", *common]) == 0
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and "deprecated: --cells 0:1; write 0:h:1" in out.err
    old = json.loads(out.out)
    assert main(["ablate", "--cells", "0:h:1", *common]) == 0
    assert json.loads(capsys.readouterr().out) == old  # the old form means h
    assert intervene.parse_clamp("0:89:c=5") == intervene.parse_clamp("0:c:89=5") == Edit(0, "c", 89, 5.0)
    assert intervene.parse_clamp("0:89=0.9") == Edit(0, "h", 89, 0.9)


def test_an_edit_is_written_as_its_cell_and_its_hook_pins_that_cell(tiny_model, text):
    edit = Edit(1, "c", 2, -1.5)
    assert str(edit) == "1:c:2=-1.5" and intervene.parse_clamp(str(edit)) == edit
    streams, _ = stepwise(tiny_model, text, edit=edit.hook())
    assert (streams[(1, "c")][:, 2] == -1.5).all() and not (streams[(1, "c")][:, 1] == -1.5).any()
