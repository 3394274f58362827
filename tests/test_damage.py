"""Damage is detected, not just crashes caught: every chunk carries a Fletcher-32 checksum,
the metadata a digest, and a read of damaged data is a one-line ProbeError naming the
file, the dataset and the rows. A byte-flip fuzz test holds the reader to it."""
from __future__ import annotations

import multiprocessing
import queue

import numpy as np
import pytest
from conftest import TEXT

from probe import ProbeError, open_recording
from probe.cli import main
from probe.lm.model import load_model
from probe.recording.record import record


def everything(path) -> dict:
    """All a user can read from a recording, through the reader."""
    with open_recording(path) as rec:
        out = {"text": rec.text, "loss": rec.loss, "documents": rec.documents.to_dict("list"),
               "meta": (rec.model_config, rec.source, rec.mode, rec.created, rec.model_path,
                        rec.model_sha256, rec.layers, rec.units, rec.streams, rec.dtype)}
        for k in range(rec.layers):
            for s in rec.streams:
                out[(k, s)] = rec.stream(k, s)[:]
        out["unit"] = rec.unit(1, "c", 3)
        out["frame"] = rec.frame(0, "h", units=[1], start=5, stop=50).to_dict("list")
    return out


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN in a frame's loss column


@pytest.fixture(params=["zstd", "gzip", "none"])
def small(request, model_path, tmp_path):
    """A small float16 recording as probe record makes it, compressed or not."""
    out = tmp_path / f"small-{request.param}.h5"
    record(load_model(model_path), [("a.py", TEXT * 3), ("b.py", TEXT)], out, compression=request.param,
           progress=False)
    return out


def read_all(paths: list, original, timeout: float = 10.0) -> dict[str, int]:
    """``everything`` of each damaged file, read one after another in a forked child, counted
    by outcome: "same", "refused" (a one-line ProbeError naming the file), "different",
    "crashed" or "hung" (HDF5's C code can loop on damaged metadata, and nothing in Python
    interrupts it: the child is killed and a new one goes on from the next file)."""
    ctx = multiprocessing.get_context("fork")
    outcomes: dict[str, int] = {}
    start = 0
    while start < len(paths):
        q = ctx.Queue()

        def child(first: int) -> None:
            for i in range(first, len(paths)):
                try:
                    got = "same" if same(everything(paths[i]), original) else "different"
                except ProbeError as e:
                    got = "refused" if "\n" not in str(e) and str(paths[i]) in str(e) else f"bad message: {e}"
                q.put((i, got))
        p = ctx.Process(target=child, args=(start,))
        p.start()
        while start < len(paths):
            try:
                i, got = q.get(timeout=timeout)
            except queue.Empty:
                got = "hung" if p.is_alive() else f"crashed ({p.exitcode})"
                i = start
            outcomes[got] = outcomes.get(got, 0) + 1
            start = i + 1
            if got == "hung" or got.startswith("crashed"):
                break
        p.kill()
        p.join()
    return outcomes


def test_flipped_bytes_give_the_original_values_or_a_probe_error(small, tmp_path):
    original = everything(small)
    data = bytearray(small.read_bytes())
    rng = np.random.default_rng(0)
    paths = []
    for trial in range(300):
        bad = bytearray(data)
        # half the trials anywhere, half in the first 4 KB where HDF5 keeps most metadata
        span = len(bad) if trial % 2 else min(len(bad), 4096)
        for pos in rng.integers(0, span, size=int(rng.integers(1, 4))):
            bad[pos] ^= int(rng.integers(1, 256))
        paths.append(tmp_path / f"damaged-{trial}.h5")
        paths[-1].write_bytes(bad)
    outcomes = read_all(paths, original)
    assert sum(outcomes.values()) == len(paths)
    # never a wrong value, a traceback or a crash; both outcomes happen
    assert set(outcomes) <= {"same", "refused", "hung"}, outcomes
    assert outcomes.get("refused", 0) > 50 and outcomes.get("same", 0) > 10, outcomes
    # HDF5 itself (2.0) loops forever on a few flips in its attribute heap; probe cannot stop
    # it (docs/recording-format.md, "Damage"). Rare, and counted here rather than hidden.
    assert outcomes.get("hung", 0) <= 3, outcomes


def chunk_offset(path, name: str, index: tuple) -> int:
    import h5py
    with h5py.File(path) as f:
        return f[name].id.get_chunk_info_by_coord(index).byte_offset


def test_damage_in_a_chunk_names_the_dataset_and_rows(tmp_path, model_path, capsys):
    out = tmp_path / "long.h5"
    record(load_model(model_path), [("a.py", TEXT * 40)], out, compression="none", progress=False)
    at = chunk_offset(out, "layers/1/c", (4096, 0)) + 100  # inside the second chunk row
    data = bytearray(out.read_bytes())
    data[at] ^= 0x10
    out.write_bytes(data)
    with open_recording(out) as rec:
        assert rec.unit(1, "c", 3, 0, 4096).shape == (4096,)  # the first chunk row is fine
        with pytest.raises(ProbeError) as e:
            rec.unit(1, "c", 3)
    assert str(e.value) == f"{out}: damaged data in layers/1/c rows 4,096–8,192 (checksum mismatch)"
    # the analysis and the export refuse it and write nothing
    for argv in (["analyze", str(out)], ["export-lstmvis", str(out), str(tmp_path / "lstmvis"), "--quiet"]):
        assert main(argv) == 1
        assert capsys.readouterr().err == f"probe: error: {e.value}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.h5", "tiny.pt"]
    # probe info --verify reads every chunk and lists what is damaged
    assert main(["info", str(out), "--verify"]) == 1
    captured = capsys.readouterr()
    assert f"{out}: damaged: layers/1/c rows 4,096–8,192" in captured.out
    assert captured.err == f"probe: error: {out}: 1 damaged range (see above)\n"


def test_verify_passes_a_sound_recording_and_says_when_it_cannot_check(recording_path, tmp_path, capsys):
    assert main(["info", str(recording_path), "--verify"]) == 0
    assert "verified: every chunk of every dataset matches its checksum" in capsys.readouterr().out
    import h5py
    old = tmp_path / "old.h5"
    old.write_bytes(recording_path.read_bytes())
    with h5py.File(old, "a") as f:  # as recordings were before checksums
        del f.attrs["digest"]
        f.attrs["checksums"] = "none"
    assert main(["info", str(old), "--verify"]) == 0
    assert "cannot verify: recorded without checksums" in capsys.readouterr().out


def test_verify_reads_a_token_recordings_spans_and_ids(word_recording_path, tmp_path, capsys):
    """Version 3's own tables (each position's span and id) are checked like every other."""
    bad = tmp_path / "bad-spans.h5"
    bad.write_bytes(word_recording_path.read_bytes())
    data = bytearray(bad.read_bytes())
    data[chunk_offset(bad, "spans", (0, 0)) + 5] ^= 0x10
    bad.write_bytes(data)
    assert main(["info", str(bad), "--verify"]) == 1
    assert f"{bad}: damaged: spans rows 0–" in capsys.readouterr().out
    with pytest.raises(ProbeError, match=r"bad-spans.h5: damaged data in spans"):
        with open_recording(bad) as rec:
            rec.tokens


def test_our_fletcher32_is_hdf5s(tmp_path):
    """The recorder appends its own checksums: they must be exactly what HDF5 computes."""
    import h5py

    from probe.recording import h5format
    rng = np.random.default_rng(1)
    for n in (1, 7, 8, 1001, 4096 * 32):  # odd and even lengths, a whole float16 chunk
        data = rng.integers(0, 256, n).astype(np.uint8)
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("x", data=data, chunks=(n,), fletcher32=True)
        with h5py.File(tmp_path / "f.h5") as f:
            _, stored = f["x"].id.read_direct_chunk((0,))
        assert stored[-4:] == h5format.fletcher32(stored[:-4]).to_bytes(4, "little"), n
        assert h5format.fletcher32_numpy(stored[:-4]) == h5format.fletcher32(stored[:-4]), n
    assert h5format.fletcher32(bytes(100)) == h5format.fletcher32_numpy(bytes(100)) == 0
    for data in (b"\xff" * 131071, b"\x00" * 9 + b"\x01", bytes(range(256)) * 3000):  # sums that wrap, a lone 1
        assert h5format.fletcher32(data) == h5format.fletcher32_numpy(data)
