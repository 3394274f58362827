"""Corpora and the character vocabulary.

A corpus is a list of documents ``(name, text)``. The built-in ``stdlib`` corpus is the
``.py`` source of the running interpreter's standard library (test suites excluded),
split by file into train/validation/test with a hash of each file's relative path, so the
split is deterministic and no file straddles two splits. ``stdlib-prose`` is the prose of
the same files, split the same way: their docstrings and comments (``probe.text.prose``),
the offline corpus word-level models train on.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import io
import os
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe.errors import ProbeError
from probe.text import prose

SPLITS = ("train", "val", "test")
SPLIT_PERCENT = {"train": 90, "val": 5, "test": 5}
UNK = "\ufffd"  # shown for characters outside the vocabulary; always index 0
BUILTIN = ("stdlib", "stdlib-prose", "linux")  # the corpora load() knows by name
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


@dataclass
class Corpus:
    """Documents of one split plus a description of where they came from."""

    documents: list[tuple[str, str]]  # (name, text)
    source: dict  # JSON-able description: kind, path/split, fingerprint

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.documents)

    def limited(self, limit: int | None) -> "Corpus":
        """The first ``limit`` characters of the documents (the last one cut short)."""
        if limit is None:
            return self
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ProbeError(f"--limit must be a positive number of characters, got {limit!r}")
        docs, n = [], 0
        for name, text in self.documents:
            if n >= limit:
                break
            docs.append((name, text[: limit - n]))
            n += len(docs[-1][1])
        return Corpus(docs, {**self.source, "limit": limit})


def fingerprint(text: str) -> str:
    """sha256 of the UTF-8 text: recorded with anything trained or recorded on it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(name: str) -> str:
    """The split a document belongs to, from a hash of its name (stable across runs)."""
    bucket = int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    return "val" if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["val"] else "test"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ProbeError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative name, path) of every stdlib .py file outside test suites, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
        for f in filenames:
            if f.endswith(".py"):
                p = Path(dirpath) / f
                out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def stdlib(split: str = "train") -> Corpus:
    """The stdlib corpus, one split of it."""
    _check_split(split)
    docs = []
    for name, path in stdlib_files():
        if split_of(name) == split:
            text = path.read_bytes().decode("utf-8", errors="replace")
            if text:
                docs.append((name, text))
    src = {"kind": "stdlib", "split": split, "root": sysconfig.get_paths()["stdlib"],
           "documents": len(docs)}
    c = Corpus(docs, src)
    src["fingerprint"] = fingerprint(c.text)
    return c


def stdlib_prose(split: str = "train", limit: int | None = None) -> Corpus:
    """The docstrings and comments of the stdlib corpus's files, one split of it (the same
    files as ``stdlib(split)``, so a held-out file is held out in both); one paragraph per
    line, files without prose left out. With ``limit``, files are read only until that many
    characters are in (parsing every file takes seconds)."""
    _check_split(split)
    docs, n = [], 0
    for name, path in stdlib_files():
        if limit is not None and n >= limit:
            break
        if split_of(name) == split:
            text = prose.prose(path.read_bytes().decode("utf-8", errors="replace"))
            if text:
                docs.append((name, text))
                n += len(text)
    src = {"kind": "stdlib-prose", "split": split, "root": sysconfig.get_paths()["stdlib"],
           "documents": len(docs)}
    c = Corpus(docs, src)
    src["fingerprint"] = fingerprint(c.text)
    return c


def read_text_file(path: Path) -> str:
    """Read one UTF-8 text file, or raise a one-line error naming the file and byte offset."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProbeError(f"{path}: cannot read: {e.strerror}") from None
    if b"\x00" in data[:8192]:
        raise ProbeError(f"{path}: looks like a binary file (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProbeError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None


def text_files(path: str | os.PathLike, glob: str = "**/*") -> Corpus:
    """A text file, or a folder of text files matching ``glob``, as one corpus (no split)."""
    p = Path(path)
    if not p.exists():
        raise ProbeError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted(q for q in p.glob(glob) if q.is_file())
        if not files:
            raise ProbeError(f"{p}: no files match {glob!r}")
        docs = [(f.relative_to(p).as_posix(), read_text_file(f)) for f in files]
    else:
        docs = [(p.name, read_text_file(p))]
    docs = [(n, t) for n, t in docs if t]
    if not docs:
        raise ProbeError(f"{p}: empty text")
    c = Corpus(docs, {"kind": "text", "path": str(p.resolve()), "glob": glob if p.is_dir() else None,
                      "documents": len(docs)})
    c.source["fingerprint"] = fingerprint(c.text)
    return c


def linux(split: str = "train") -> Corpus:
    """C sources and headers of the Linux kernel from Debian's linux-source-* tarball."""
    _check_split(split)
    tars = sorted(globlib.glob("/usr/src/linux-source-*.tar.*"))
    if not tars:
        raise ProbeError("linux corpus: no /usr/src/linux-source-*.tar.* found; install it with "
                         "'apt-get install linux-source' (about 150 MB)")
    docs = []
    with tarfile.open(tars[-1]) as tf:
        for m in tf:
            if m.isfile() and m.name.endswith((".c", ".h")) and split_of(m.name) == split:
                f = tf.extractfile(m)
                docs.append((m.name, io.TextIOWrapper(f, "utf-8", errors="replace").read()))
    docs.sort()
    c = Corpus(docs, {"kind": "linux", "split": split, "path": tars[-1], "documents": len(docs)})
    c.source["fingerprint"] = fingerprint(c.text)
    return c


def load(corpus: str | None = None, split: str = "train", text: str | None = None,
         glob: str = "**/*", limit: int | None = None) -> Corpus:
    """Pick a corpus by CLI-style arguments: ``text`` path wins, else a built-in name;
    ``limit``: its first characters only (``Corpus.limited``)."""
    if text is not None:
        return text_files(text, glob).limited(limit)
    name = corpus or "stdlib"
    if name == "stdlib":
        return stdlib(split).limited(limit)
    if name == "stdlib-prose":
        return stdlib_prose(split, limit).limited(limit)
    if name == "linux":
        return linux(split).limited(limit)
    raise ProbeError(f"unknown corpus {name!r}: choose {', '.join(BUILTIN)}, or give --text PATH")


# ---- vocabulary ---------------------------------------------------------------------------

def build_vocab(text: str) -> str:
    """The vocabulary as one string: UNK at index 0, then the text's characters sorted."""
    chars = sorted(set(text) - {UNK})
    return UNK + "".join(chars)


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as int32 [T], without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int32)


def encode(text: str, vocab: str) -> tuple[np.ndarray, int]:
    """Map text to vocabulary ids (int64 [T]); characters outside it become 0 (probe's own
    vocabularies hold the unknown symbol there; an imported one may not have one, and its
    0 is then whatever token it lists first). Returns (ids, n_unknown)."""
    cps = codepoints(text)
    if cps.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    vcp = codepoints(vocab)
    size = int(max(cps.max(), vcp.max())) + 1
    table = np.full(size, -1, dtype=np.int64)
    table[vcp] = np.arange(len(vocab))
    ids = table[cps]
    unknown = ids < 0
    ids[unknown] = 0
    return ids, int(np.count_nonzero(unknown))


def decode(ids, vocab: str) -> str:
    return "".join(vocab[i] for i in ids)
