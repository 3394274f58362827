"""Derived streams (issue 19): a read-out of recorded streams, written into the recording by
``probe encode``, is then a stream like any other: opened, checked, analysed, rendered,
exported and shown without special cases; a spec from another model, a name taken, a
second encode and an interrupted one are handled in one line."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import CODE, write_recording

from probe.analysis import cache as analysis
from probe.cli import main
from probe.errors import ProbeError
from probe.output import export, render
from probe.recording import derived
from probe.recording.reader import open_recording

UNITS = 4


@pytest.fixture
def rec_path(tmp_path):
    """2 layers × 4 units of c and h over ~3,000 characters of code; h of layer 1 random."""
    text = CODE * 25
    rng = np.random.default_rng(0)
    data = {(k, s): rng.normal(size=(len(text), UNITS)) for k in (0, 1) for s in ("c", "h")}
    return write_recording(tmp_path / "rec.h5", text, data, streams=("c", "h"))


def encode(path, spec_path, **kw) -> list:
    """``derived.encode`` into the recording at ``path``, open for the call."""
    with open_recording(path) as rec:
        return derived.encode(rec, spec_path, **kw)


def spec_for(rec_path, W=None, stream="dir", inputs=((1, "h"),), sha=None) -> dict:
    """A directions spec by hand: unit j = standardised inputs @ W[:, j] + b[j]."""
    with open_recording(rec_path) as rec:
        created, T, model_sha = rec.created, len(rec), rec.model_sha256
    D = UNITS * len(inputs)
    W = np.random.default_rng(1).normal(size=(D, 2)).astype(np.float32) if W is None else W
    return {"format": derived.FORMAT, "version": derived.VERSION, "kind": "directions", "stream": stream,
            "layer": max(k for k, _ in inputs), "inputs": [list(i) for i in inputs],
            "unit_names": ["alpha", "beta"], "model_sha256": model_sha if sha is None else sha,
            "fitted_on": {"path": str(rec_path), "length": T, "created": created},
            "mean": torch.full((D,), 0.1), "scale": torch.full((D,), 2.0),
            "params": {"W": torch.from_numpy(W), "b": torch.tensor([0.5, -0.5]),
                       "state_mean": torch.zeros(D)},
            "metrics": {}, "config": {}}


def test_an_encoded_stream_is_a_stream(rec_path, tmp_path):
    spec = spec_for(rec_path)
    spec_path = derived.save(spec, tmp_path / "dirs.pt")
    with open_recording(rec_path) as rec:
        [(file, layer, name)] = derived.encode(rec, spec_path)
        assert (layer, name) == (1, "dir") and file == rec_path
        assert rec.streams == ("c", "h")                      # the recorded ones, unchanged
        assert rec.streams_of(1) == ("c", "h", "dir") and rec.streams_of(0) == ("c", "h")
        assert rec.units_of(1, "dir") == 2 and rec.unit_names(1, "dir") == ["alpha", "beta"]
        assert rec.unit_names(1, "h") is None and (1, "dir") in rec.pairs
        h = rec.window(1, "h", 0, len(rec))
        want = (h - 0.1) / 2.0 @ spec["params"]["W"].numpy() + spec["params"]["b"].numpy()  # h: no tanh
        got = rec.window(1, "dir", 0, len(rec))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # float32 recording: float32 stream
        info = rec.derived[(1, "dir")]
        assert info["kind"] == "directions" and info["spec_name"] == "dirs.pt"
        with pytest.raises(ProbeError, match="no stream 'dir'"):
            rec.check(0, "dir")
        with pytest.raises(ProbeError, match=r"units of dir are 0..1"):
            rec.check(1, "dir", 2)
    # analysed like a recorded stream: every unit of it ranked against every feature
    with open_recording(rec_path) as rec:
        scores = analysis.analysis(rec)["scores"]
        # rendered (over its own range, sequential palette), named by its unit's name
        page = render.render_recording(rec, 1, "dir", 1, 0, 200)
    dir_rows = scores[scores["stream"] == "dir"]
    assert set(dir_rows["unit"]) == {0, 1} and set(dir_rows["layer"]) == {1}
    assert "unit 1 (beta)" in page and 'class="s' in page
    # matched: where else its units are on together (LSTMVis's rule, on tanh of the values)
    from probe.analysis import match
    with open_recording(rec_path) as rec:
        on = np.tanh(rec.window(1, "dir", 0, len(rec))) >= 0.3
        bits = match.index(rec, 1, "dir", 0.3)
        assert bits.shape == (len(rec), 1)
        np.testing.assert_array_equal((bits[:, 0, None] >> np.arange(2, dtype=np.uint64)) & np.uint64(1), on)
        hits = match.search(rec, 1, "dir", [0, 1], 0.3, top=5)
        assert len(hits) and all(on[int(h.start):int(h.stop)].all() for h in hits.itertuples())
    # exported where it lives
    with open_recording(rec_path) as rec:
        out = export.export_lstmvis(rec, tmp_path / "lv", streams=("h", "dir"), progress=False)
    with h5py.File(out / "states.hdf5") as f:
        assert f["layer2_dir"].shape == (len(got), 2) and "layer1_dir" not in f


def test_a_c_input_is_read_through_tanh(rec_path, tmp_path):
    spec = spec_for(rec_path, inputs=((0, "c"),))
    spec_path = derived.save(spec, tmp_path / "c.pt")
    encode(rec_path, spec_path)
    with open_recording(rec_path) as rec:
        c = rec.window(0, "c", 0, 500)
        want = (np.tanh(c) - 0.1) / 2.0 @ spec["params"]["W"].numpy() + spec["params"]["b"].numpy()
        np.testing.assert_allclose(rec.window(0, "dir", 0, 500), want, atol=1e-5)


def test_encoding_twice_another_model_and_missing_inputs_are_refused(rec_path, tmp_path):
    spec_path = derived.save(spec_for(rec_path), tmp_path / "dirs.pt")
    encode(rec_path, spec_path)
    before = rec_path.stat().st_mtime_ns
    with pytest.raises(ProbeError, match="already has derived stream 1/dir .*--force"):
        encode(rec_path, spec_path)
    assert rec_path.stat().st_mtime_ns == before  # refused before the file is opened for writing
    other = derived.save(spec_for(rec_path, W=np.ones((UNITS, 2), np.float32)), tmp_path / "other.pt")
    encode(rec_path, other, force=True)  # replaces it
    with open_recording(rec_path) as rec:
        assert rec.derived[(1, "dir")]["spec_name"] == "other.pt"
        assert len(rec.derived) == 1
    foreign = derived.save(spec_for(rec_path, stream="d2", sha="ab" * 32), tmp_path / "foreign.pt")
    with open_recording(rec_path) as rec:
        theirs = rec.model_sha256
    if theirs:  # a recording that names its model: another model's spec is refused
        with pytest.raises(ProbeError, match="another model .*--force"):
            encode(rec_path, foreign)
    missing = derived.save(spec_for(rec_path, stream="d3", inputs=((1, "q"),)), tmp_path / "missing.pt")
    with pytest.raises(ProbeError, match="missing.pt: reads a stream rec.h5 lacks"):
        encode(rec_path, missing)
    taken = derived.save(spec_for(rec_path, stream="h"), tmp_path / "taken.pt")
    with pytest.raises(ProbeError, match="taken by a recorded stream"):
        encode(rec_path, taken)
    wide = spec_for(rec_path, stream="d4")
    wide["mean"], wide["scale"] = torch.zeros(UNITS + 1), torch.ones(UNITS + 1)
    wide["params"]["W"] = torch.zeros(UNITS + 1, 2)
    with pytest.raises(ProbeError, match="reads 5 values per position"):
        encode(rec_path, derived.save(wide, tmp_path / "wide.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(ProbeError, match="junk.pt: not a probe directions/dictionary file"):
        derived.load(tmp_path / "junk.pt")


def test_an_interrupted_encode_leaves_no_stream(rec_path, tmp_path, monkeypatch):
    spec_path = derived.save(spec_for(rec_path), tmp_path / "dirs.pt")
    calls = []
    real = derived.transform

    def interrupted(spec, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(spec, x)
    monkeypatch.setattr(derived, "transform", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encode(rec_path, spec_path, chunk=1000)
    with open_recording(rec_path) as rec:
        assert rec.derived == {} and rec.streams_of(1) == ("c", "h")
    with h5py.File(rec_path, "a") as f:  # as kill -9 would leave it: a hidden partial dataset
        assert ".dir.partial" not in f["layers/1"]
        f["layers/1"].create_dataset(".dir.partial", data=np.zeros((10, 2)))
    with open_recording(rec_path) as rec:
        assert rec.derived == {}
    monkeypatch.setattr(derived, "transform", real)
    encode(rec_path, spec_path)
    with h5py.File(rec_path) as f:
        assert set(f["layers/1"]) == {"c", "h", "dir"}


def test_cli_encode_and_info(rec_path, tmp_path, capsys):
    spec_path = derived.save(spec_for(rec_path), tmp_path / "dirs.pt")
    assert main(["encode", str(rec_path), "--directions", str(spec_path), "--quiet"]) == 0
    assert "added stream dir to layer 1 (2 units)" in capsys.readouterr().out
    assert main(["encode", str(rec_path), "--dictionary", str(spec_path), "--quiet"]) == 1
    assert "is a directions file; pass it as --directions" in capsys.readouterr().err
    assert main(["info", str(spec_path), "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "directions" and info["units"] == 2 and info["inputs"] == "1/h"
    assert main(["info", str(rec_path), "--json"]) == 0
    assert "1/dir" in json.loads(capsys.readouterr().out)["derived"]


def test_cli_directions_dictionary_encode_analyze(model_path, tmp_path, capsys):
    """The commands end to end on a tiny model: fit directions and a dictionary on one
    recording, add both to another, and they are analysed like recorded streams."""
    from probe.lm.model import load_model
    from probe.recording.record import record
    model = load_model(model_path)
    text = (CODE * 40)
    fit_on, other = tmp_path / "fit.h5", tmp_path / "other.h5"
    record(model, [("a.py", text)], fit_on, dtype="float32", progress=False)
    record(model, [("b.py", CODE.replace("f(", "g(") * 10)], other, progress=False)
    dirs, dic = tmp_path / "dirs.pt", tmp_path / "dict.pt"
    assert main(["directions", str(fit_on), "--out", str(dirs), "--features", "in_comment,column",
                 "--sample", "4000", "--quiet"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "in_comment" in out and "column" in out and "probe encode REC.h5 --directions" in out
    assert main(["dictionary", str(fit_on), "--layer", "1", "--stream", "h", "--size", "16", "--k", "2",
                 "--steps", "30", "--batch", "128", "--out", str(dic), "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["info", str(dic), "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert {"explained_variance", "l0", "dead_fraction", "loss_recovered"} <= set(info)
    assert info["kind"] == "dictionary" and info["units"] == 16
    for flag, spec in (("--directions", dirs), ("--dictionary", dic)):
        assert main(["encode", str(other), flag, str(spec), "--quiet"]) == 0, capsys.readouterr().err
    with open_recording(other) as rec:
        assert rec.streams_of(1)[-2:] == ("dict", "dir") and rec.unit_names(1, "dir") == ["in_comment", "column"]
    capsys.readouterr()
    assert main(["analyze", str(other), "--json", "--top", "50"]) == 0
    best = json.loads(capsys.readouterr().out)["best"]
    assert {"dir", "dict"} <= {b["stream"] for b in best}


def test_a_folder_of_shards_gets_the_stream_in_every_shard(model_path, tmp_path):
    """probe encode on a folder: each shard gets the stream, and the folder reads it as one,
    equal to encoding the same text in one file."""
    from test_shards import record_shards, record_whole

    from probe.lm.model import load_model
    model = load_model(model_path)
    whole, folder = record_whole(model, tmp_path / "whole.h5"), record_shards(model, tmp_path / "sharded", 3)
    with open_recording(whole) as rec:
        sha = rec.model_sha256
    spec = spec_for(whole, inputs=((1, "h"),), sha=sha)
    spec["mean"], spec["scale"] = torch.zeros(8), torch.ones(8)
    spec["params"]["W"] = torch.from_numpy(np.random.default_rng(2).normal(size=(8, 2)).astype(np.float32))
    spec["params"]["state_mean"] = torch.zeros(8)
    spec_path = derived.save(spec, tmp_path / "d.pt")
    assert len(encode(folder, spec_path)) == 3
    encode(whole, spec_path)
    with open_recording(folder) as sharded, open_recording(whole) as one:
        assert (1, "dir") in sharded.derived and sharded.unit_names(1, "dir") == ["alpha", "beta"]
        np.testing.assert_array_equal(sharded.window(1, "dir", 0, len(one)), one.window(1, "dir", 0, len(one)))
