"""``probe info``: what a file is — a checkpoint, a recording, a directions/dictionary file or
an n-gram model — each described by its owning module's ``summary``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from probe.cli.common import command
from probe.errors import ProbeError
from probe.lm import model
from probe.recording import derived, reader
from probe.text import ngram


def add_parser(sub) -> None:
    i = command(sub, "info", "describe a model checkpoint, a recording, or a directions/dictionary file", run, [
        "probe info probe/models/stdlib.pt", "probe info recordings/stdlib-test.h5",
        "probe info recordings/stdlib-test.h5 --verify", "probe info dict.pt --json",
        "probe info stdlib-10.ngram.npz"])
    i.add_argument("path", nargs="?", help="a .pt checkpoint, a .h5 recording (or a folder of shards), a file "
                   "from probe directions or probe dictionary, or an n-gram model (default: shipped model)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--verify", action="store_true",
                   help="read every chunk of a recording and check its checksum (exit 1 if damaged)")


def is_recording(path: str | None) -> bool:
    """A .h5 file or a folder (of shards)."""
    return bool(path) and (path.endswith((".h5", ".hdf5")) or Path(path).is_dir())


def run(a: argparse.Namespace) -> int:
    if a.verify:
        return verify(a.path)
    if is_recording(a.path):
        with reader.open_recording(a.path) as rec:
            info = describe(rec)
    elif a.path and a.path.endswith(".npz"):  # an n-gram model (probe ngram train)
        info = ngram.summary(a.path)
    elif a.path and derived.is_spec(a.path):  # from probe directions / probe dictionary
        info = derived.summary(a.path)
    else:
        info = model.summary(a.path, history=a.json)  # the learning curve only in JSON
    if a.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print("\n".join(tree(info)))
    return 0


def describe(rec) -> dict:
    """``reader.summary`` of an open recording, said in its own positions: a word-level
    recording's bits, bytes and unknowns are per token, with the perplexity (2 ** mean bits
    per token, what word-level language models report), its tokenizer and its text's
    length in characters."""
    info = reader.summary(rec)
    if rec.char_level:
        return info
    out = {}
    for k, v in info.items():
        if k == "length":
            out["length"] = f"{v:,} tokens"
            out["characters"] = f"{len(rec.codepoints):,}"
            out["tokens"] = {"kind": rec.tokenizer["kind"], "vocab_size": len(rec.tokenizer["vocab"])}
        elif k == "size_on_disk":
            size = sum(f.stat().st_size for f in getattr(rec, "files", None) or [rec.path])
            out[k] = f"{size / 1e6:.1f} MB ({size / max(1, len(rec)):.0f} bytes/token)"
        elif k == "mean_bits_per_char":
            out["mean_bits_per_token"] = v
            out["perplexity"] = None if v is None else round(float(2.0 ** float(np.nanmean(rec.loss))), 2)
        elif k == "unknown_chars":
            out["unknown_tokens"] = v
        else:
            out[k] = v
    return out


def verify(path: str | None) -> int:
    """probe info --verify: every chunk against its checksum; damage is exit 1."""
    if not is_recording(path):
        raise ProbeError("--verify checks a recording (.h5); checkpoints are checked whenever loaded")
    with reader.open_recording(path) as rec:  # opening checks the metadata's digest
        bad = reader.verify(rec, progress=sys.stderr.isatty())
    if bad is None:
        print(f"{path}: cannot verify: recorded without checksums (before probe stored them)")
    elif not bad:
        print(f"{path}: verified: every chunk of every dataset matches its checksum")
    else:
        print("\n".join(f"{path}: damaged: {b}" for b in bad))
        raise ProbeError(f"{path}: {len(bad)} damaged range{'s' if len(bad) > 1 else ''} (see above)")
    return 0


def tree(d: dict, indent: int = 0) -> list[str]:
    """A nested dict as indented ``key: value`` lines."""
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines += [" " * indent + f"{k}:", *tree(v, indent + 2)]
        else:
            lines.append(" " * indent + f"{k}: {v}")
    return lines
