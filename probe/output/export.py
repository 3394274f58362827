"""Export a recording to the files LSTMVis loads (Strobelt et al. 2017).

LSTMVis reads a project folder holding ``lstm.yml``, a states HDF5 file with one
[T, width] dataset per layer and state (each at its own width), a word-id HDF5 file and a
``.dict`` file with one ``token id`` pair per line. Its parser splits dictionary lines on
whitespace, so whitespace and other invisible characters get names such as ``<space>``,
``<nl>``, ``<tab>`` and ``<U+00A0>``. It has one flat time axis: documents are concatenated.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from probe.files import atomic, check_target
from probe.recording import h5format

NAMED = {" ": "<space>", "\n": "<nl>", "\t": "<tab>", "\r": "<cr>"}
STATE_TYPE = {"c": "state", "h": "output"}  # gates are exported as extra states


def token(ch: str) -> str:
    """A dictionary token for one character: no whitespace, nothing invisible."""
    if ch in NAMED:
        return NAMED[ch]
    if ch.isspace() or not ch.isprintable():
        return f"<U+{ord(ch):04X}>"
    return ch


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def export_lstmvis(rec, outdir: str | os.PathLike, streams=("c", "h"), force: bool = False,
                   progress: bool = True, chunk: int = 65536) -> Path:
    """Write ``outdir/{lstm.yml, states.hdf5, chars.hdf5, chars.dict}`` from the open recording
    ``rec`` (the folder and its parents are created; an existing non-empty one only with ``force``)."""
    jobs = [(k, s) for k in rec.layer_ids for s in streams if s in rec.streams_of(k)]
    for s in streams:
        if not any(s == js for _, js in jobs):
            rec.check(rec.layer_ids[0], s)  # the one-line error: no such stream
    outdir = check_target(outdir, force, folder=True)
    with atomic(outdir, folder=True) as tmp:
        cps = rec.codepoints
        chars, ids = np.unique(cps, return_inverse=True)
        with open(tmp / "chars.dict", "w", encoding="utf-8", newline="\n") as f:
            for i, cp in enumerate(chars):
                f.write(f"{token(chr(cp))} {i + 1}\n")  # ids start at 1, as in LSTMVis's data
        with h5py.File(tmp / "chars.hdf5", "w") as f:
            f.create_dataset("words", data=(ids + 1).astype(np.int32))
        types = []
        with h5py.File(tmp / "states.hdf5", "w") as f:
            T = len(rec)
            bar = tqdm(total=T * len(jobs), unit="value", unit_scale=True, disable=not progress,
                       desc="exporting")
            for k, s in jobs:
                name = f"layer{k + 1}_{s}"
                U = rec.width(k, s)
                d = f.create_dataset(name, (T, U), np.float32, chunks=(min(T, 4096), min(U, 64)))
                src = rec.stream(k, s)
                for a in range(0, T, chunk):
                    d[a:a + chunk] = src[a:a + chunk].astype(np.float32)
                    bar.update(min(chunk, T - a))
                gate = h5format.is_unit_range(s)
                types.append(f"    - {{type: {STATE_TYPE.get(s, 'state')}, layer: {k + 1}, "
                             f"path: {name}, transform: {'tanh' if s == 'c' else 'none'}, "
                             f"unsigned: {'true' if gate else 'false'}}}")
            bar.close()
        name = rec.path.stem
        desc = (f"probe recording {rec.path.name}: {len(rec)} characters, "
                f"{rec.layers} layers x {'' if rec.uniform else 'up to '}{rec.units} units")
        (tmp / "lstm.yml").write_text("\n".join([
            f"name: {_yaml_str(name)}",
            f"description: {_yaml_str(desc)}",
            "files:",
            "  states: states.hdf5",
            "  chars: chars.hdf5",
            "  chars_dict: chars.dict",
            "word_sequence:",
            "  file: chars",
            "  path: words",
            "  dict_file: chars_dict",
            "states:",
            "  file: states",
            "  types:",
            *types, ""]), encoding="utf-8")
    return outdir
