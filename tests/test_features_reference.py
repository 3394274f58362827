"""The line and bracket features of random texts cut into random documents (empty ones,
ones that end with and without a newline, blank and tab-indented lines) against a plain
character-by-character loop: every position, each document's first and last included."""
from __future__ import annotations

import numpy as np
import pytest

from probe.text.features import compute

NAMES = ["column", "line_length", "chars_to_eol", "indent", "bracket_depth"]


def reference(docs: list[str]) -> dict[str, list[int]]:
    """Each feature of every character, document by document, line by line."""
    out: dict[str, list[int]] = {n: [] for n in NAMES}
    for doc in docs:
        depth = 0
        for line in doc.splitlines(keepends=True):  # "\n" is the only line break drawn below
            content = line.removesuffix("\n")
            indent = len(content) - len(content.lstrip(" \t"))
            for col, ch in enumerate(line):
                depth = max(0, depth + (ch in "([{") - (ch in ")]}"))
                for name, v in zip(NAMES, (col, len(content), len(content) - col, indent, depth)):
                    out[name].append(v)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_line_and_bracket_features_equal_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    alphabet = list("ab  \t\n\n()[]{}")  # no quotes or #: the brackets always count
    docs = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 25)))) for _ in range(int(rng.integers(1, 5)))]
    if seed % 2:
        docs[-1] += "\n"  # the text's last character a newline, or not
    if seed % 3 == 0:
        docs.insert(0, "")  # an empty first document
    text = "".join(docs)
    if not text:
        return
    edges = np.cumsum([0] + [len(d) for d in docs])
    df = compute(text, NAMES, documents=list(zip(edges[:-1].tolist(), edges[1:].tolist())))
    want = reference(docs)
    for name in NAMES:
        assert df[name].tolist() == want[name], (name, docs)
    starts = [a for a, b in zip(edges[:-1], edges[1:]) if b > a]
    assert (df["column"].to_numpy()[starts] == 0).all()  # every document starts a line
    assert df["chars_to_eol"].iloc[-1] == (0 if text.endswith("\n") else 1)


def test_the_last_line_without_a_newline_counts_to_the_end_of_its_document():
    docs = ["(a\n  b", "[\tc\n", "d)"]
    df = compute("".join(docs), NAMES, documents=[(0, 6), (6, 10), (10, 12)])
    assert df.iloc[5].tolist() == [2, 3, 1, 2, 1]   # "b": the last of the first document
    assert df.iloc[6].tolist() == [0, 3, 3, 0, 1]   # "[": the first of the second
    assert df.iloc[9].tolist() == [3, 3, 0, 0, 1]   # its newline
    assert df.iloc[11].tolist() == [1, 2, 1, 0, 0]  # ")": the text's last character, depth reset
