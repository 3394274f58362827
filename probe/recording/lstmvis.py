"""Read an LSTMVis project (Strobelt et al. 2017) into a probe recording, without a model.

An LSTMVis project is a folder holding ``lstm.yml``::

    files: {states: states.hdf5, train: train.hdf5, words: train.dict}
    word_sequence: {file: train, path: word_ids, dict_file: words}
    states:
      file: states
      types: [{type: state, layer: 1, path: states1}, {type: output, layer: 1, path: output1}]

beside an HDF5 file of states ([T, units] per entry), an HDF5 file of word ids ([T]) and a
``.dict`` file of ``word id`` lines. ``import_lstmvis`` makes a recording of it:

- positions are the words, in order; the vocabulary is the ``.dict``'s words in id order
  (``<unk>`` and ``<eos>`` appended when it lacks them, which a ``words`` tokenizer needs);
- the text is the words joined by single spaces, an end-of-sentence marker (``<eos>``,
  ``</s>``) written as a line end (its span the newline); with ``tokens: chars`` (what probe's
  exporter writes for a character recording) or ``vocab``, the tokens are concatenated, their
  named characters (``<space>``, ``<nl>``, ``<U+00A0>``…) read back;
- LSTMVis layer L is probe layer L - 1; type ``state`` is the stream ``c``, ``output`` is
  ``h``; any other type (or the ``probe_stream`` key probe's exporter writes) names its stream,
  sanitised to letters, digits and ``_``; a second entry of the same layer and name is named
  after its ``path``;
- a stream listed on every layer is a recorded stream; one listed on only some layers is kept
  as a derived stream of kind ``lstmvis`` on those layers (the recording format gives every
  recorded layer every recorded stream);
- there is no model (``model_sha256`` empty) and no loss (NaN).

The states are copied in blocks of ``BLOCK`` rows; the word ids, the text and the spans are
held in memory (some 40 bytes per word). Every problem is one ``ProbeError`` line naming the
file.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.files import atomic, check_target
from probe.recording import h5format
from probe.text.tokens import EOS, UNK

CONFIG = "lstm.yml"
BLOCK = 65536                                   # rows of states read and written at a time
NAMED = {" ": "<space>", "\n": "<nl>", "\t": "<tab>", "\r": "<cr>"}
UNNAMED = {v: k for k, v in NAMED.items()}
NAME = re.compile(r"<space>|<nl>|<tab>|<cr>|<U\+([0-9A-F]{4,6})>")
EOS_MARKERS = (EOS, "</s>")                     # written as a line end in a words text
TYPES = {"state": "c", "output": "h"}           # LSTMVis's state types, as probe's streams
KINDS = ("words", "chars", "vocab")


def escape(token: str) -> str:
    """A token as a ``.dict`` word: whitespace and invisible characters named (LSTMVis splits
    its lines on whitespace)."""
    return "".join(NAMED.get(ch) or (f"<U+{ord(ch):04X}>" if ch.isspace() or not ch.isprintable() else ch)
                   for ch in token)


def unescape(word: str) -> str:
    """``escape`` undone: ``<space>`` → " ", ``<U+00A0>`` → U+00A0."""
    return NAME.sub(lambda m: chr(int(m.group(1), 16)) if m.group(1) else UNNAMED[m.group()], word)


def sanitize(name: str) -> str:
    """A stream name from a state type or path: letters, digits and ``_`` ("forget gate" → forget_gate)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "state"


@dataclass(frozen=True)
class State:
    """One entry of ``states.types``: where its values are and the stream it becomes."""
    file: Path
    path: str
    layer: int          # probe's, from 0
    stream: str
    type: str


@dataclass(frozen=True)
class Project:
    """What ``lstm.yml`` says, checked: the files exist, names resolve."""
    folder: Path
    name: str
    description: str
    tokens: str
    words_file: Path
    words_path: str
    dict_file: Path
    states: tuple[State, ...]


def read_config(folder: Path) -> dict:
    """``lstm.yml`` parsed; one line for a missing folder, file or bad YAML."""
    if not folder.is_dir():
        raise ProbeError(f"{folder}: no such folder (an LSTMVis project is a folder holding {CONFIG})")
    where = folder / CONFIG
    if not where.is_file():
        raise ProbeError(f"{where}: no such file (not an LSTMVis project)")
    try:
        config = yaml.safe_load(where.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise ProbeError(f"{where}: not valid YAML ({at}{getattr(e, 'problem', None) or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise ProbeError(f"{where}: not UTF-8 text") from None
    if not isinstance(config, dict):
        raise ProbeError(f"{where}: not an LSTMVis config (expected a mapping with files, word_sequence, states)")
    return config


def project(folder: str | os.PathLike, tokens: str | None = None) -> Project:
    """The project in ``folder``, its config checked; ``tokens`` (words, chars, vocab)
    overrides ``word_sequence.tokens`` (default words)."""
    folder = Path(folder)
    config = read_config(folder)
    where = folder / CONFIG

    def need(mapping, key: str, what: str, kind=dict):
        value = mapping.get(key) if isinstance(mapping, dict) else None
        if not isinstance(value, kind) or (kind is str and not value):
            raise ProbeError(f"{where}: lacks {what}{key}" + ("" if value is None else f" (got {value!r})"))
        return value

    files = need(config, "files", "")

    def file(ref, what: str) -> Path:
        if ref not in files:
            raise ProbeError(f"{where}: {what} {ref!r} is not one of files: {', '.join(map(str, files))}")
        path = folder / str(files[ref])
        if not path.is_file():
            raise ProbeError(f"{path}: no such file (files.{ref} in {CONFIG})")
        return path

    ws = need(config, "word_sequence", "")
    words_file = file(need(ws, "file", "word_sequence.", str), "word_sequence.file")
    words_path = need(ws, "path", "word_sequence.", str)
    dict_file = file(need(ws, "dict_file", "word_sequence.", str), "word_sequence.dict_file")
    kind = tokens or str(ws.get("tokens", "words"))
    if kind not in KINDS:
        raise ProbeError(f"{where}: word_sequence.tokens {kind!r} is not one of {', '.join(KINDS)}")
    st = need(config, "states", "")
    types = need(st, "types", "states.", list)
    if not types:
        raise ProbeError(f"{where}: states.types lists no states")
    states, taken = [], {}
    for j, t in enumerate(types):
        what = f"states.types[{j}]"
        if not isinstance(t, dict):
            raise ProbeError(f"{where}: {what} is not a mapping (type, layer, path)")
        ref = t.get("file", st.get("file"))
        if ref is None:
            raise ProbeError(f"{where}: {what} has no file and states has no default file")
        path = need(t, "path", f"{what}.", str)
        layer = t.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 1:
            raise ProbeError(f"{where}: {what}.layer must be a layer number from 1 (got {layer!r})")
        kind_of = str(t.get("type", "state"))
        name = sanitize(t["probe_stream"]) if "probe_stream" in t else TYPES.get(kind_of, sanitize(kind_of))
        if (layer, name) in taken:
            name = sanitize(path)
            if (layer, name) in taken:
                raise ProbeError(f"{where}: {what} and states.types[{taken[layer, name]}] both give layer "
                                 f"{layer} the stream {name!r}")
        taken[(layer, name)] = j
        states.append(State(file(ref, f"{what}.file"), path, layer - 1, name, kind_of))
    return Project(folder, str(config.get("name") or folder.name), str(config.get("description") or ""),
                   kind, words_file, words_path, dict_file, tuple(states))


def read_dict(path: Path) -> dict[int, str]:
    """{id: word} of a ``.dict`` file: ``word id`` per line (a line starting with a space
    followed by an id is the space, as LSTMVis reads it); blank lines skipped."""
    out: dict[int, str] = {}
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise ProbeError(f"{path}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1 and line[0] == " ":
            parts = [" ", parts[0]]
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise ProbeError(f"{path} line {n}: expected 'word id', got {line[:60]!r}")
        word, i = parts[0], int(parts[1])
        if i in out:
            raise ProbeError(f"{path} line {n}: id {i} is given twice ({out[i]!r} and {word!r})")
        if word in seen:
            raise ProbeError(f"{path} line {n}: word {word!r} has two ids ({seen[word]} and {i})")
        out[i], seen[word] = word, i
    if not out:
        raise ProbeError(f"{path}: no 'word id' lines")
    return out


def open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError:
        raise ProbeError(f"{path}: not an HDF5 file") from None


def dataset(f: h5py.File, name: str, where: Path, what: str) -> h5py.Dataset:
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise ProbeError(f"{where}: no dataset {name!r} ({what} in {CONFIG})")
    return ds


def read_ids(p: Project, words: dict[int, str]) -> np.ndarray:
    """Each position's index into the vocabulary (the dict's words in id order), int64 [T]."""
    with open_h5(p.words_file) as f:
        ds = dataset(f, p.words_path, p.words_file, "word_sequence.path")
        shape = ds.shape
        if len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]
        if len(shape) != 1:
            raise ProbeError(f"{p.words_file}: dataset {p.words_path} has shape {ds.shape}; word ids are one "
                             "per position, [T]")
        if ds.dtype.kind not in "iuf":
            raise ProbeError(f"{p.words_file}: dataset {p.words_path} holds {ds.dtype}, not word ids")
        raw = ds[:].reshape(-1)
    if raw.dtype.kind == "f":  # Lua Torch wrote doubles: whole numbers are ids
        whole = np.isfinite(raw) & (raw == np.round(raw))
        if not whole.all():
            t = int(np.flatnonzero(~whole)[0])
            raise ProbeError(f"{p.words_file}: dataset {p.words_path} holds {float(raw[t])} at position {t}, "
                             "not a word id")
    raw = raw.astype(np.int64)
    if not len(raw):
        raise ProbeError(f"{p.words_file}: dataset {p.words_path} holds no words")
    keys = np.array(sorted(words), dtype=np.int64)
    at = np.clip(np.searchsorted(keys, raw), 0, len(keys) - 1)
    bad = np.flatnonzero(keys[at] != raw)
    if len(bad):
        t = int(bad[0])
        raise ProbeError(f"{p.words_file}: word id {raw[t]} at position {t} is not in {p.dict_file.name} "
                         f"({len(bad):,} positions hold ids outside it)")
    return at


def vocabulary(p: Project, words: dict[int, str]) -> tuple[list[str], list[str]]:
    """(the tokenizer's vocabulary, each entry's text): the dict's words in id order, then
    ``<unk>``/``<eos>`` if a words/vocab tokenizer needs them and the dict lacks them."""
    listed = [words[i] for i in sorted(words)]
    if p.tokens == "words":
        vocab = listed + [t for t in (UNK, EOS) if t not in listed]
        return vocab, ["\n" if w in EOS_MARKERS else w for w in vocab]
    texts = [unescape(w) for w in listed]
    if p.tokens == "chars":
        bad = next((w for w, t in zip(listed, texts) if len(t) != 1), None)
        if bad is not None:
            raise ProbeError(f"{p.dict_file}: {bad!r} is not one character (tokens: chars)")
    if len(set(texts)) != len(texts):
        twice = next(t for t, n in Counter(texts).items() if n > 1)
        raise ProbeError(f"{p.dict_file}: two words read as the same token {twice!r} (tokens: {p.tokens})")
    if p.tokens == "chars":
        return texts, texts
    vocab = texts + ([UNK] if UNK not in texts else [])
    return vocab, vocab


def layout(x: np.ndarray, texts: list[str], sep_eos: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(code points of the whole text, int32 [N]; each position's span, int64 [T, 2]) of
    vocabulary indexes ``x``: tokens concatenated, or (``sep_eos``: which entries end a line)
    joined by one space except next to a line end."""
    cps = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.int32) for t in texts]
    lens = np.array([len(c) for c in cps], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    flat = np.concatenate(cps) if cps else np.zeros(0, np.int32)
    L = lens[x]
    sep = np.zeros(len(x), dtype=np.int64)
    if sep_eos is not None:
        eos = sep_eos[x]
        sep[1:] = ~(eos[1:] | eos[:-1])
    stops = np.cumsum(L + sep)
    starts = stops - L
    text = np.full(int(stops[-1]), 32, dtype=np.int32)  # the separators are spaces
    step = 1 << 20
    for a in range(0, len(x), step):  # in blocks: the index arrays are a few times the text
        Lb = L[a:a + step]
        inner = np.arange(int(Lb.sum())) - np.repeat(np.cumsum(Lb) - Lb, Lb)
        text[np.repeat(starts[a:a + step], Lb) + inner] = flat[np.repeat(first[x[a:a + step]], Lb) + inner]
    return text, np.stack([starts, stops], 1)


def import_lstmvis(folder: str | os.PathLike, out: str | os.PathLike, force: bool = False,
                   tokens: str | None = None, compression: str = h5format.COMPRESSIONS[0],
                   progress: bool = True, block: int = BLOCK) -> Path:
    """Write the LSTMVis project in ``folder`` as the probe recording ``out`` (refused if it
    exists, unless ``force``); ``tokens`` overrides the project's (words by default)."""
    out = check_target(out, force)
    p = project(folder, tokens)
    words = read_dict(p.dict_file)
    x = read_ids(p, words)
    T = len(x)
    vocab, texts = vocabulary(p, words)
    eos = np.array([w in EOS_MARKERS for w in vocab]) if p.tokens == "words" else None
    cps, spans = layout(x, texts, eos)
    files = {f: open_h5(f) for f in dict.fromkeys(s.file for s in p.states)}
    try:
        sources = {}
        for j, s in enumerate(p.states):
            ds = dataset(files[s.file], s.path, s.file, f"states.types[{j}].path")
            if ds.ndim != 2 or ds.shape[1] < 1:
                raise ProbeError(f"{s.file}: dataset {s.path} has shape {ds.shape}; states are [T, units]")
            if ds.shape[0] != T:
                raise ProbeError(f"{s.file}: dataset {s.path} has {ds.shape[0]:,} rows but {p.words_file.name} "
                                 f"holds {T:,} word ids")
            if ds.dtype.kind not in "fiu":
                raise ProbeError(f"{s.file}: dataset {s.path} holds {ds.dtype}, not numbers")
            sources[(s.layer, s.stream)] = (ds, s)
        write(p, out, x, vocab, cps, spans, sources, compression, progress, block)
    finally:
        for f in files.values():
            f.close()
    return out


def write(p: Project, out: Path, x: np.ndarray, vocab: list[str], cps: np.ndarray, spans: np.ndarray,
          sources: dict, compression: str, progress: bool, block: int) -> None:
    """The recording itself: header, text, then every state copied in blocks, atomically."""
    layer_ids = sorted({k for k, _ in sources})
    names = list(dict.fromkeys(s for _, s in sources))
    common = tuple(s for s in names if all((k, s) in sources for k in layer_ids))
    if not common:
        listed = "; ".join(f"layer {k + 1}: {' '.join(s for kk, s in sources if kk == k)}" for k in layer_ids)
        raise ProbeError(f"{p.folder / CONFIG}: no state is listed on every layer ({listed}); probe "
                         "needs at least one stream that every layer has")
    widths = {key: int(ds.shape[1]) for key, (ds, _) in sources.items()}
    T = len(x)
    model = {"layers": layer_ids[-1] + 1, "units": max(widths.values()), "tokens": p.tokens}
    source = {"kind": "lstmvis", "path": str(p.folder.resolve()), "name": p.name,
              "description": p.description}
    bar = tqdm(total=T * len(sources), unit="value", unit_scale=True, disable=not progress, desc="importing")
    with bar, atomic(out) as tmp, h5format.create(tmp) as f:
        h5format.write_header(f, model=model, layers=layer_ids[-1] + 1, layer_ids=tuple(layer_ids),
                              widths={key: widths[key] for key in widths if key[1] in common},
                              length=T, streams=common, dtype="float32", compression=compression,
                              source=source, tokens={"kind": p.tokens, "vocab": vocab})
        loss = h5format.write_text(f, cps, [p.name], [0], [T], spans=spans, ids=x,
                                   text_starts=[0], text_stops=[len(cps)])
        for a in range(0, T, block):
            loss[a:a + block] = np.full(min(block, T - a), np.nan, np.float32)
        for (k, name), (ds, s) in sources.items():
            out_ds = h5format.create_stream(f, k, name, T, widths[(k, name)], "float32", compression)
            if name not in common:
                out_ds.attrs["derived"] = json.dumps({
                    "kind": "lstmvis", "spec_name": f"{s.file.name}:{s.path}", "inputs": [],
                    "unit_names": [str(u) for u in range(widths[(k, name)])],
                    "lstmvis": {"type": s.type, "layer": k + 1, "file": s.file.name, "path": s.path}})
            for a in range(0, T, block):
                out_ds[a:a + block] = np.asarray(ds[a:a + block], dtype=np.float32)
                bar.update(min(block, T - a))
        h5format.finish(f)
