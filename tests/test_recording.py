"""The recording file: CLI, format, reader, atomic writes, bad input, LSTMVis export."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml

from probe import ProbeError, open_recording
from probe.cli import main
from probe.output.export import export_lstmvis


def test_probe_record_writes_a_self_describing_file(model_path, tmp_path, text, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text(text)
    (src / "b.py").write_text("x = '<script>alert(1)</script>'\n")
    out = tmp_path / "rec.h5"
    assert main(["record", "--model", str(model_path), "--text", str(src), "--glob", "*.py",
                 "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: {len(text) + 32:,} characters, 2 documents")
    with h5py.File(out) as f:  # plain h5py, no probe: the file describes itself
        assert f.attrs["format"] == "probe-recording" and f.attrs["version"] == 3
        assert json.loads(f.attrs["model"])["units"] == 8
        assert json.loads(f.attrs["widths"]) == {f"{k}:{s}": 8 for k in range(2) for s in "ifgoch"}
        assert json.loads(f.attrs["source"])["kind"] == "text"
        assert f["layers/1/c"].shape == (len(text) + 32, 8) and f["layers/1/c"].dtype == np.float16
        assert list(f["documents/name"].asstr()) == ["a.py", "b.py"]
    with open_recording(out) as rec:
        assert rec.text == text + "x = '<script>alert(1)</script>'\n"
        assert rec.documents.start.tolist() == [0, len(text)]
        assert np.isnan(rec.loss[[0, len(text)]]).all()
        assert rec.unit(0, "f", 3).dtype == np.float32 and rec.unit(0, "f", 3).shape == (len(rec),)
        gates = rec.stream(1, "i")[:]
        assert (gates >= 0).all() and (gates <= 1).all()


def test_limit_and_info(model_path, tmp_path, text, capsys):
    f = tmp_path / "t.py"
    f.write_text(text)
    out = tmp_path / "r.h5"
    assert main(["record", "--model", str(model_path), "--text", str(f), "--limit", "50",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["length"] == 50 and info["units"] == 8 and info["layers"] == 2
    assert info["streams"] == "i f g o c h" and info["mean_bits_per_char"] > 0


def test_frame_is_a_tidy_pandas_table(recording_path):
    with open_recording(recording_path) as rec:
        df = rec.frame(1, "h", units=[0, 5], start=10, stop=60)
        assert list(df.columns) == ["position", "char", "document", "line", "column", "loss",
                                    "unit_0", "unit_5"]
        assert len(df) == 50 and df.position.iloc[0] == 10
        assert "".join(df.char) == rec.text[10:60]
        np.testing.assert_allclose(df.unit_5, rec.unit(1, "h", 5)[10:60])
        first_line = rec.text.index("\n")
        row = df[df.position == first_line + 1].iloc[0]
        assert row.line == 1 and row.column == 0
        second = rec.frame(0, "c", units=3, start=int(rec.documents.start[1]),
                           stop=int(rec.documents.start[1]) + 3)
        assert second.document.tolist() == [1, 1, 1] and second.line.tolist() == [0, 0, 0]


@pytest.mark.parametrize("call, message", [
    (lambda r: r.unit(5, "c", 0), "no layer 5"),
    (lambda r: r.unit(0, "x", 0), "no stream 'x'"),
    (lambda r: r.unit(0, "c", 8), "no unit 8"),
])
def test_reader_rejects_out_of_range(recording_path, call, message):
    with open_recording(recording_path) as rec, pytest.raises(ProbeError, match=message):
        call(rec)


def test_reader_rejects_foreign_truncated_and_old_files(recording_path, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(ProbeError, match="foreign.h5: not a probe recording"):
        open_recording(foreign)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(recording_path.read_bytes()[:3000])
    with pytest.raises(ProbeError, match="truncated.h5: not a readable HDF5 file"):
        open_recording(truncated)
    future = tmp_path / "future.h5"
    future.write_bytes(recording_path.read_bytes())
    with h5py.File(future, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(ProbeError, match="version 99 is not supported"):
        open_recording(future)
    missing = tmp_path / "missing.h5"
    missing.write_bytes(recording_path.read_bytes())
    with h5py.File(missing, "a") as f:
        del f["layers/1/g"]
    with pytest.raises(ProbeError, match="missing dataset 'layers/1/g'"):
        open_recording(missing)


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit must be a positive number"),
    (["--split", "training"], "unknown split 'training'"),
])
def test_record_bad_arguments(model_path, tmp_path, capsys, args, message):
    out = tmp_path / "r.h5"
    assert main(["record", "--model", str(model_path), "--corpus", "stdlib", "--out", str(out),
                 "--quiet", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_record_bad_text_and_targets(model_path, tmp_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"ok\ncaf\xe9\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = [
        (["--text", str(latin1), "--out", str(tmp_path / "a.h5")], "not UTF-8 text (invalid byte at offset 6)"),
        (["--text", str(empty), "--out", str(tmp_path / "b.h5")], "empty text"),
        (["--corpus", "stdlib", "--out", str(tmp_path / "empty.txt" / "c.h5")], "cannot create a folder inside"),
    ]
    for args, message in cases:
        assert main(["record", "--model", str(model_path), "--quiet", *args]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "latin1.txt", "tiny.pt"]


def test_existing_recording_is_never_overwritten_silently(recording_path, model_path, tmp_path, capsys):
    before = recording_path.read_bytes()
    f = tmp_path / "t.txt"
    f.write_text("hello\n")
    assert main(["record", "--model", str(model_path), "--text", str(f), "--out",
                 str(recording_path), "--quiet"]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert recording_path.read_bytes() == before
    assert main(["record", "--model", str(model_path), "--text", str(f), "--out",
                 str(recording_path), "--quiet", "--force"]) == 0
    with open_recording(recording_path) as rec:
        assert rec.text == "hello\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_recording_leaves_nothing_that_looks_complete(model_path, tmp_path, sig):
    big = tmp_path / "big.txt"
    big.write_text("def f(x):\n    return (x + 1) * 2  # comment\n" * 20000)
    out = tmp_path / "big.h5"
    proc = subprocess.Popen([sys.executable, "-m", "probe", "record", "--model", str(model_path),
                             "--text", str(big), "--out", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".big.h5.tmp") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "recording never started"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".big.h5.tmp")]
    if sig == signal.SIGINT:  # a clean interrupt removes its temporary file too
        assert leftovers == [] and "interrupted" in proc.stderr.read()
    for name in leftovers:  # kill -9 can leave only a hidden temporary, never the target
        with pytest.raises(ProbeError):
            open_recording(tmp_path / name)


def test_export_lstmvis_matches_its_documented_layout(recording_path, tmp_path):
    with open_recording(recording_path) as rec:
        out = export_lstmvis(rec, tmp_path / "lstmvis", streams=("c", "h", "f"), progress=False)
    cfg = yaml.safe_load((out / "lstm.yml").read_text())
    files = cfg["files"]
    # LSTMVis opens files ending .h5/.hdf5 as HDF5 and .dict/.txt as dictionaries
    assert all(v.endswith((".h5", ".hdf5", ".dict", ".txt")) for v in files.values())
    ws = cfg["word_sequence"]
    dict_lines = (out / files[ws["dict_file"]]).read_text(encoding="utf-8").splitlines()
    id_to_token = {}
    for line in dict_lines:  # LSTMVis: k, v = line.split()
        tok, i = line.split()
        id_to_token[int(i)] = tok
    with open_recording(recording_path) as rec, h5py.File(out / files[ws["file"]]) as w, \
            h5py.File(out / files[cfg["states"]["file"]]) as st:
        ids = w[ws["path"]][:]
        assert len(ids) == len(rec) and ids.min() >= 1
        tokens = [id_to_token[i] for i in ids]
        assert tokens[:4] == ["d", "e", "f", "<space>"] and "<nl>" in tokens
        assert len(cfg["states"]["types"]) == 2 * 3
        for t in cfg["states"]["types"]:
            assert t["type"] in ("state", "output") and t["layer"] in (1, 2)
            s = t["path"].split("_")[1]
            np.testing.assert_allclose(st[t["path"]][:], rec.stream(t["layer"] - 1, s)[:])
    with pytest.raises(ProbeError, match="not empty"), open_recording(recording_path) as rec:
        export_lstmvis(rec, out, progress=False)


def test_reading_a_recording_does_not_import_torch(recording_path):
    code = ("import sys; from probe.recording.reader import open_recording; from probe.analysis import cache, contexts\n"
            f"with open_recording({str(recording_path)!r}) as rec:\n"
            "    rec.text, rec.unit(0, 'c', 1), rec.frame(1, 'h', units=[0]), rec.model_sha256\n"
            "    contexts.top_contexts(rec.unit(0, 'c', 1), rec.documents)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m == 'probe.recording.record'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_recordings_made_before_the_batch_rename_still_open(recording_path, capsys):
    with h5py.File(recording_path, "a") as f:  # what probe record --streams 4 wrote before
        assert json.loads(f.attrs["mode"]) == {"batch": 1, "burn_in": 0}
        f.attrs["mode"] = json.dumps({"streams": 4, "burn_in": 256})
        del f.attrs["digest"], f.attrs["checksums"]  # not written then
    with open_recording(recording_path) as rec:
        assert rec.mode == {"batch": 4, "burn_in": 256}
    assert main(["info", str(recording_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == {"batch": 4, "burn_in": 256}


def test_the_recording_knows_where_it_came_from(recording_path, model_path):
    from probe.lm.model import file_sha256
    with open_recording(recording_path) as rec:
        assert rec.model_path == str(model_path) and rec.model_sha256 == file_sha256(model_path)
        assert rec.created.endswith("+00:00") and rec.source == {}
        assert rec.model_config["units"] == 8 and rec.mode == {"batch": 1, "burn_in": 0}
        assert rec.document_spans == [(0, int(rec.documents.stop[0])), (int(rec.documents.stop[0]), len(rec))]


def test_the_deprecated_streams_flag_still_batches(model_path, tmp_path, text, capsys):
    src = tmp_path / "a.py"
    src.write_text(text * 3)
    out = tmp_path / "b.h5"
    assert main(["record", "--model", str(model_path), "--text", str(src), "--out", str(out),
                 "--streams", "2", "--quiet"]) == 0
    assert capsys.readouterr().err == "probe: deprecated: --streams 2; write --batch 2\n"
    with open_recording(out) as rec:
        assert rec.mode == {"batch": 2, "burn_in": 256}


@pytest.mark.parametrize("command", ["record", "render"])
def test_a_folder_as_output_file_is_a_clear_error(recording_path, model_path, tmp_path, capsys, command):
    folder = tmp_path / "folder"
    folder.mkdir()
    args = (["record", "--model", str(model_path), "--corpus", "stdlib", "--quiet"] if command == "record"
            else ["render", str(recording_path), "--layer", "0", "--stream", "c", "--unit", "0"])
    assert main([*args, "--out", str(folder), "--force"]) == 1
    err = capsys.readouterr().err
    assert f"{folder}: is a folder" in err and err.count("\n") == 1
    assert list(folder.iterdir()) == []
