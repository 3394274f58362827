"""Export a recording to the files LSTMVis loads (Strobelt et al. 2017).

LSTMVis reads a project folder holding ``lstm.yml``, a states HDF5 file with one
[T, width] dataset per layer and state (each at its own width), a word-id HDF5 file and a
``.dict`` file with one ``token id`` pair per line. Its parser splits dictionary lines on
whitespace, so whitespace and other invisible characters get names such as ``<space>``,
``<nl>``, ``<tab>`` and ``<U+00A0>``. It has one flat time axis: documents are concatenated.

A character recording's dictionary is the characters of its text (``chars.hdf5``,
``chars.dict``); a token recording's is its tokenizer's vocabulary, its word ids the
recorded input ids (``words.hdf5``, ``words.dict``), ids counted from 1 either way. Two keys
LSTMVis ignores let ``probe import-lstmvis`` (``probe.recording.lstmvis``) read the project
back exactly: ``word_sequence.tokens`` (chars, words or vocab) and each state's ``probe_stream``.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.files import atomic, check_target
from probe.recording import h5format
from probe.recording.lstmvis import NAMED, escape  # noqa: F401  (NAMED: the names of whitespace)

STATE_TYPE = {"c": "state", "h": "output"}  # gates are exported as extra states
BLOCK = 65536


def token(ch: str) -> str:
    """A dictionary token for one character: no whitespace, nothing invisible."""
    return escape(ch)


def dictionary(rec) -> tuple[str, list[str], np.ndarray | None]:
    """(file stem, the dictionary's words in id order, each character's index for a
    character recording; None for a token one, whose indexes are ``rec.ids``)."""
    if rec.char_level:
        chars, ids = np.unique(rec.codepoints, return_inverse=True)
        return "chars", [token(chr(cp)) for cp in chars], ids
    words = [escape(t) for t in rec.tokenizer["vocab"]]
    seen: dict[str, str] = {}
    for t, w in zip(rec.tokenizer["vocab"], words):
        if not w or w in seen:
            raise ProbeError(f"{rec.path}: the token {t!r} cannot be written to a .dict file "
                             + ("(it is empty)" if not w else f"(it reads as {w!r}, as {seen[w]!r} does)"))
        seen[w] = t
    return "words", words, None


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def export_lstmvis(rec, outdir: str | os.PathLike, streams=("c", "h"), force: bool = False,
                   progress: bool = True, chunk: int = 65536) -> Path:
    """Write ``outdir/{lstm.yml, states.hdf5, chars.hdf5, chars.dict}`` (``words.*`` for a
    token recording) from the open recording ``rec`` (the folder and its parents are created;
    an existing non-empty one only with ``force``)."""
    jobs = [(k, s) for k in rec.layer_ids for s in streams if s in rec.streams_of(k)]
    for s in streams:
        if not any(s == js for _, js in jobs):
            rec.check(rec.layer_ids[0], s)  # the one-line error: no such stream
    outdir = check_target(outdir, force, folder=True)
    stem, words, ids = dictionary(rec)
    with atomic(outdir, folder=True) as tmp:
        with open(tmp / f"{stem}.dict", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{w} {i + 1}\n" for i, w in enumerate(words))  # ids from 1, as in LSTMVis's data
        with h5py.File(tmp / f"{stem}.hdf5", "w") as f:
            if ids is not None:
                f.create_dataset("words", data=(ids + 1).astype(np.int32))
            else:
                d = f.create_dataset("words", (len(rec),), np.int32)
                for a in range(0, len(rec), BLOCK):
                    d[a:a + BLOCK] = np.asarray(rec.ids[a:a + BLOCK], np.int64) + 1
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
                             f"unsigned: {'true' if gate else 'false'}, probe_stream: {_yaml_str(s)}}}")
            bar.close()
        name = rec.path.stem
        desc = (f"probe recording {rec.path.name}: {len(rec)} {rec.unit_name}s, "
                f"{rec.layers} layers x {'' if rec.uniform else 'up to '}{rec.units} units")
        (tmp / "lstm.yml").write_text("\n".join([
            f"name: {_yaml_str(name)}",
            f"description: {_yaml_str(desc)}",
            "files:",
            "  states: states.hdf5",
            f"  {stem}: {stem}.hdf5",
            f"  {stem}_dict: {stem}.dict",
            "word_sequence:",
            f"  file: {stem}",
            "  path: words",
            f"  dict_file: {stem}_dict",
            f"  tokens: {rec.tokenizer['kind']}",
            "states:",
            "  file: states",
            "  types:",
            *types, ""]), encoding="utf-8")
    return outdir
