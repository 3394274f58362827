"""Read probe recordings lazily: text, documents, loss and [T, width] streams per layer.

    with probe.open_recording("recordings/stdlib-test.h5") as rec:
        c = rec.stream(1, "c")          # lazy [T, rec.width(1, "c")], h5py-backed
        quote = rec.unit(0, "c", 89)    # numpy [T]: the shipped model's quote cell
        df = rec.frame(0, "c", units=[89], start=0, stop=1000)             # wide: unit_89
        long = rec.frame(0, "c", units=[88, 89], stop=1000, tidy=True)    # tidy: unit, value

``open_recording`` opens a file (``h5file.Recording``) or a folder of shards
(``shards.ShardedRecording``): the same interface (``base.Reader``). ``summary`` and
``verify`` are what ``probe info`` says about one.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from probe.recording import h5format
from probe.recording.base import READ_ERRORS, Dataset, Reader, damaged
from probe.recording.h5file import CACHE_BYTES, Recording
from probe.recording.shards import ShardedRecording

__all__ = ["open_recording", "summary", "verify", "Recording", "ShardedRecording", "Reader", "Dataset",
           "damaged", "READ_ERRORS", "CACHE_BYTES"]


def open_recording(path: str | os.PathLike) -> Recording:
    """Open and validate a probe recording: an ``.h5`` file, or a folder of shards opened as
    one (``probe.recording.shards.ShardedRecording``, with the same interface)."""
    if Path(path).is_dir():
        return ShardedRecording(path)
    return Recording(path)


def summary(rec: Reader) -> dict:
    """What ``probe info REC.h5`` prints about an open recording (a file or a folder of shards)."""
    cfg = {k: v for k, v in rec.model_config.items() if k != "vocab"}
    loss = rec.loss
    files = getattr(rec, "files", None)  # the shards of a folder
    size = sum(f.stat().st_size for f in files or [rec.path])
    return {
        "path": str(rec.path), "format": f"{h5format.FORMAT} v{rec.version}", "created": rec.created,
        "model": {"path": rec.model_path, "sha256": rec.model_sha256,
                  **cfg, "vocab_size": len(rec.model_config.get("vocab", ""))},
        "source": rec.source, "mode": rec.mode,
        "documents": len(rec.documents), "length": len(rec), "layers": rec.layers,
        **({"layer_ids": " ".join(map(str, rec.layer_ids))} if len(rec.layer_ids) != rec.layers else {}),
        "streams": " ".join(rec.streams), "units": rec.units,
        **({} if rec.uniform else {"widths": {f"{k}:{s}": w for (k, s), w in rec.widths.items()}}),
        **({"derived": {f"{k}/{s}": f"{info['kind']}, {len(info['unit_names'])} units, from "
                        f"{info.get('spec_name', '?')}" for (k, s), info in rec.derived.items()}}
           if rec.derived else {}),
        "dtype": rec.dtype,
        "compression": rec.compression, "chunks": str(rec.chunks),
        "checksums": (f"{rec.checksums} on every chunk (probe info --verify reads them all)"
                      if rec.checksums != "none" else "none (damage cannot be detected)"),
        "size_on_disk": f"{size / 1e6:.1f} MB ({size / max(1, len(rec)):.0f} bytes/char)",
        "mean_bits_per_char": round(float(np.nanmean(loss)), 4) if np.isfinite(loss).any() else None,
        "unknown_chars": rec.unknown_chars,
        **({"shards": f"{len(files)} files, {files[0].name} … {files[-1].name}"} if files else {}),
    }


def verify(rec: Reader, progress: bool = False) -> list[str] | None:
    """Read every chunk of every dataset: the damaged ranges (``"layers/1/c rows 0–4,096"``),
    [] if none, or None if the recording has no checksums to check (made before them)."""
    from tqdm.auto import tqdm
    if rec.checksums != "fletcher32":
        return None
    tokens = list(h5format.TOKEN_TABLES) if rec.version >= 3 else []  # spans, ids, documents' characters
    names = [n for n in h5format.TABLES if n != "documents/name"] + tokens + [
        h5format.path(k, s) for k in rec.layer_ids for s in rec.streams]
    bad = []
    parts = [(p, f"{p.path.name}: ") for p in rec.parts] if hasattr(rec, "parts") else [(rec, "")]
    for name in tqdm(names, desc="verifying", unit="dataset", disable=not progress):
        for part, shard in parts:  # a folder's damage is named by shard, in its own rows
            bad += [f"{shard}{name} rows {a:,}–{b:,}" for a, b in part.dataset(name).bad_rows()]
    return bad
